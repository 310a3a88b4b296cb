"""Which optional extra each job needs, and the error that says so.

The core install (duckdb, polars, numpy, pyarrow, click, rich, textual) opens, queries, imports
vectors into and browses an atlas. Scoring, figures and t-SNE/UMAP maps need extras; a job that
lacks one fails before it starts with the command that installs it, not with an ImportError
from deep inside a library.
"""

from __future__ import annotations

import importlib.util

from atlas.errors import AtlasError

# import name → the extra that installs it
EXTRA_OF = {
    "torch": "score", "transformers": "score", "tokenizers": "score", "safetensors": "score",
    "matplotlib": "plot", "sklearn": "maps", "umap": "maps", "gguf": "gguf", "accelerate": "gguf",
    "torchao": "quantization", "bitsandbytes": "quantization", "ray": "ray",
}


class MissingExtraError(AtlasError, ImportError):
    """A job whose optional dependencies are not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'lm-atlas[{extra}]' (in a checkout: pip install -e '.[{extra}]')"


def require(job: str, *modules: str) -> None:
    """Fail with the install command unless every module of ``modules`` can be imported."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise missing_extra(job, missing[0])


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a finder that knows it is absent
        return False


def missing_extra(job: str, module: str) -> MissingExtraError:
    """The error for ``job`` when ``module`` (a top-level import name) is not installed."""
    extra = EXTRA_OF.get(module)
    if extra is None:
        return MissingExtraError(f"{job} needs the Python package {module!r}, which is not "
                                 f"installed: pip install {module}")
    return MissingExtraError(f"{job} needs the '{extra}' extra ({module} is not installed): "
                             f"{install_hint(extra)}")


def require_scoring(job: str) -> None:
    require(job, "torch", "transformers", "tokenizers", "safetensors")
