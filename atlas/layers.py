"""Lens descriptions and layer selections, as plain data (no torch).

Which hidden states a run asks for (``--layers all|0,6,12|0-4``), how many a model has (from its
config alone), and where each architecture keeps its final norm and unembedding (``LENSES``,
``--lens-norm``/``--lens-head``). atlas.lens applies them to a loaded model; a bulk manifest is
checked and planned with them on a core install.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atlas.errors import AtlasError


class LensError(AtlasError, ValueError):
    """No lens fits the model, or the layers asked for do not exist."""


@dataclass(frozen=True)
class LensSpec:
    """Where one architecture keeps its final norm and unembedding (paths from the top model)."""

    norm: tuple[str, ...]  # applied in order to a hidden state before the unembedding; () = none
    head: str | None = None  # the unembedding; None = the model's get_output_embeddings()
    blocks: str | None = None  # the ModuleList of blocks (for the checks); None = found by size
    optional: tuple[str, ...] = ()  # paths that may hold None in some configs (then skipped)
    source: str = "built-in"  # built-in | override


# The unembedding is the model's own output embeddings (``get_output_embeddings()``, what the
# plain scorer uses; GPT-NeoX's is ``embed_out`` in transformers 4 and ``lm_head`` in 5), so the
# built-in lenses name only the norm chain and the blocks.
_MODEL_NORM = LensSpec(("model.norm",), None, "model.layers")

# model_type → lens. Each entry is verified against the model's own logits when it is used.
LENSES: dict[str, LensSpec] = {
    "gpt_neox": LensSpec(("gpt_neox.final_layer_norm",), None, "gpt_neox.layers"),
    "gpt2": LensSpec(("transformer.ln_f",), None, "transformer.h"),
    # OPT: the final norm is absent in post-LN models (opt-350m) and project_out is present only
    # where word_embed_proj_dim != hidden_size; both run, in this order, before lm_head.
    "opt": LensSpec(("model.decoder.final_layer_norm", "model.decoder.project_out"), None,
                    "model.decoder.layers",
                    optional=("model.decoder.final_layer_norm", "model.decoder.project_out")),
    # Gemma-3 multimodal checkpoints (Gemma3ForConditionalGeneration); gemma3_text is below.
    "gemma3": LensSpec(("model.language_model.norm",), None, "model.language_model.layers"),
    **{model_type: _MODEL_NORM for model_type in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
        "olmo", "olmo2", "phi3", "smollm3")},
}

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class LensOverride:
    """User-given module paths (``--lens-norm``, ``--lens-head``); unset parts keep the built-in.

    ``norm``: comma-separated module paths applied in order ("none": no norm).
    """

    norm: str | None = None
    head: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("norm", self.norm), ("head", self.head)):
            if value is None:
                continue
            parts = [] if (name == "norm" and value.strip().lower() == "none") else [
                p.strip() for p in value.split(",")]
            bad = [p for p in parts if not _PATH_RE.match(p)]
            if bad or (name == "head" and len(parts) != 1):
                raise LensError(f"--lens-{name} {value!r}: give module paths such as "
                                + ("model.norm (comma-separated, or none)" if name == "norm"
                                   else "lm_head"))

    @property
    def given(self) -> bool:
        return self.norm is not None or self.head is not None

    def as_dict(self) -> dict:
        return {"norm": self.norm, "head": self.head}

    def norm_paths(self) -> tuple[str, ...]:
        if self.norm is None or self.norm.strip().lower() == "none":
            return ()
        return tuple(p.strip() for p in self.norm.split(","))


def model_type_of(config) -> str:
    return getattr(config, "model_type", None) or type(config).__name__


def lens_spec(model_type: str, override: LensOverride | None = None) -> LensSpec:
    """The lens of an architecture, with the user's paths in place of the built-in ones."""
    builtin = LENSES.get(model_type)
    if override is None or not override.given:
        if builtin is None:
            raise LensError(
                f"architecture {model_type} has no lens description; pass --lens-norm/--lens-head "
                "(module paths of its final norm and unembedding, e.g. --lens-norm model.norm "
                "--lens-head lm_head)")
        return builtin
    if override.norm is None and builtin is None:
        raise LensError(
            f"architecture {model_type} has no lens description: pass --lens-norm (its final "
            "norm's module path, e.g. model.norm, or none) as well as --lens-head")
    norm = override.norm_paths() if override.norm is not None else builtin.norm
    head = override.head if override.head is not None else (builtin.head if builtin else None)
    optional = tuple(p for p in (builtin.optional if builtin else ()) if p in norm
                     and override.norm is None)
    return LensSpec(norm, head, builtin.blocks if builtin else None, optional, "override")


def parse_layers(text: str | Sequence[int]) -> str | list[int]:
    """``all``, or a sorted list from ``0,6,12`` / ``0-4,8`` (or a sequence of ints)."""
    if not isinstance(text, str):
        layers = [text] if isinstance(text, int) else list(text)
        if not layers or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                             for v in layers):
            raise LensError(f"layers {layers!r}: give non-negative hidden-state indices")
        return sorted(set(layers))
    cleaned = text.strip().lower()
    if cleaned == "all":
        return "all"
    layers: set[int] = set()
    for part in cleaned.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise LensError(
                f"--layers {text!r}: give 'all' or hidden-state indices such as 0,6,12 or 0-4 "
                "(0 = embeddings, l = output of block l)")
        low = int(match.group(1))
        layers.update(range(low, int(match.group(2) or low) + 1))
    return sorted(layers)


def resolve_layers(requested: str | list[int], n_layers: int,
                   model: str = "the model") -> list[int]:
    """The hidden-state indices to score; an index past the last block is an error."""
    if requested == "all":
        return list(range(n_layers + 1))
    beyond = [layer for layer in requested if layer > n_layers]
    if beyond:
        raise LensError(
            f"--layers {','.join(map(str, beyond))}: {model} has {n_layers} blocks, so its "
            f"hidden states are 0..{n_layers} (0 = embeddings, {n_layers} = the model's output)")
    return list(requested)


def format_layers(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2,5``."""
    parts, run = [], []
    for layer in sorted(layers):
        if run and layer == run[-1] + 1:
            run.append(layer)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [layer]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def text_config(config):
    return getattr(config, "text_config", None) or config


def layer_count(config) -> int:
    """Blocks of the language model: hidden states are 0..layer_count."""
    value = getattr(text_config(config), "num_hidden_layers", None)
    if not isinstance(value, int) or value < 1:
        raise LensError(f"{model_type_of(config)}: the config does not give num_hidden_layers")
    return value


def peek_config(source: str, revision: str | None = None, trust_remote_code: bool = False,
                gguf_file: str | None = None):
    """The model's config without its weights (None if it cannot be read that way).

    A local folder's config is read once per version of its config.json (a plan of 10,000
    checkpoints of one folder read it 10,000 times, 4 ms each); a local folder has no
    revisions, so ``revision`` does not key it. Each caller gets its own copy."""
    local = Path(source) / "config.json"
    if gguf_file is None and local.is_file():
        stat = local.stat()
        config = _local_config(source, trust_remote_code, stat.st_mtime_ns, stat.st_size)
        return copy.deepcopy(config)
    return _read_config(source, revision, trust_remote_code, gguf_file)


@functools.lru_cache(maxsize=64)
def _local_config(source: str, trust_remote_code: bool, mtime_ns: int, size: int):
    return _read_config(source, None, trust_remote_code, None)


def _read_config(source: str, revision: str | None, trust_remote_code: bool,
                 gguf_file: str | None):
    from transformers import AutoConfig

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except Exception:  # loading the model later explains the failure properly
        return None


