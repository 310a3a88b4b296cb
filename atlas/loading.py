"""Loading a causal LM and its tokenizer from a hub id, a local directory or a GGUF file.

Everything goes through transformers' own ``from_pretrained`` so that what we score is what any
user of the model gets. The returned provenance is stored with every vector.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from atlas.errors import LoadError
from atlas.specs import DTYPE_NAMES, ModelSpec

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    n_params: int
    # weights the checkpoint lacked (randomly initialised) or held unused, let through by
    # ``ModelSpec.allow_missing``: {"missing": [...], "unexpected": [...]}, empty kinds left out
    allowed_weights: dict[str, list[str]] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that has it, else fp16 on GPUs; fp32 on the CPU (bf16 on request)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise LoadError(f"--dtype {dtype}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _explain_load_failure(spec: ModelSpec, what: str, exc: Exception) -> LoadError:
    message = str(exc)
    local = Path(spec.source).exists()
    if "Unrecognized configuration class" in message or ("does not support" in message.lower() and (
        "causal" in message.lower()
    )):
        return LoadError(
            f"{spec.source}: not a causal language model ({type(exc).__name__}: "
            f"{message.splitlines()[0]}); LM Atlas scores decoder-only models "
            "(AutoModelForCausalLM)"
        )
    if not local and ("connect" in message.lower() or "offline" in message.lower() or _offline()
                      or "not a valid model identifier" in message
                      or "does not appear to have" in message):
        return LoadError(
            f"{spec.source}: no local copy of this {what} and the hub cannot be reached "
            "(offline or no network). Pass a local directory, or download it on a connected "
            f"machine first (hf download {spec.source}"
            + (f" --revision {spec.revision}" if spec.revision else "") + ")."
        )
    if type(exc).__name__ == "SafetensorError":
        return LoadError(f"{spec.source}: a safetensors weights file is unreadable ({message}: "
                         "truncated or corrupt); download or save the model again")
    if local and what == "tokenizer":
        return LoadError(
            f"{spec.source}: no usable tokenizer in this directory ({message.splitlines()[0]}). "
            "Save the model's tokenizer beside it (tokenizer.save_pretrained(dir))."
        )
    return LoadError(f"{spec.source}: cannot load the {what}: {message.splitlines()[0]}")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that names no file was meant as a
    local path (absolute, relative with ./ or ~, deeper than owner/name, or a .gguf file)."""
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
            or source.endswith(".gguf") or (len(source) > 1 and source[1] == ":"))


def check_source(spec: ModelSpec) -> None:
    """Refuse a local source that cannot be a model before anything is loaded or stored.

    Cheap checks of what transformers would otherwise report late or as a traceback: a path
    that does not exist, a file that is not GGUF, a config that is not JSON or names an
    architecture transformers does not know, a folder without weights, a truncated
    safetensors file. Hub ids are left to ``from_pretrained``.
    """
    path = Path(spec.source).expanduser()
    if not path.exists():
        if _looks_like_path(spec.source):
            raise LoadError(
                f"{spec.source}: no such file or directory; give the path of a saved model "
                "(a directory with config.json and weights, or a .gguf file) or a hub id such "
                "as EleutherAI/pythia-70m")
        return
    if path.is_file():
        _check_gguf(path)
        return
    _check_config(path / "config.json", spec.trust_remote_code)
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise LoadError(
            f"{path}: no weights file in this directory (model.safetensors, pytorch_model.bin "
            "…); save the model there with model.save_pretrained(dir) or download its weights")
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)


def _check_gguf(path: Path) -> None:
    if path.suffix != ".gguf":
        raise LoadError(f"{path}: a file, but not a .gguf file; give a .gguf file or the "
                        "directory of a saved model (config.json and weights)")
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise LoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'; "
                        "truncated or another format?); download or convert it again")


def _check_config(path: Path, trust_remote_code: bool) -> None:
    from transformers import CONFIG_MAPPING, __version__

    if not path.is_file():
        raise LoadError(f"{path.parent}: no config.json in this directory; save the model "
                        "there with model.save_pretrained(dir), or give its .gguf file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(
            exc, json.JSONDecodeError) else str(exc)
        raise LoadError(f"{path}: not valid JSON ({where}); repair it or save the config again "
                        "(model.config.save_pretrained(dir))") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in CONFIG_MAPPING and not (trust_remote_code and "auto_map" in config):
        raise LoadError(
            f"{path}: model_type {model_type!r} is not an architecture transformers "
            f"{__version__} knows; upgrade transformers, fix model_type, or pass "
            "--trust-remote-code if the model ships its own code (auto_map)")


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise LoadError(f"{path}: unreadable safetensors file ({exc}: truncated or corrupt); "
                        "download or save the model again") from exc


def allowed_patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
    """``--allow-missing`` globs, checked: an empty one would hide nothing it was meant to."""
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise LoadError(f"--allow-missing {pattern!r}: give a glob of weight names, such "
                            "as 'lm_head.weight' or 'model.layers.*.mlp.*'")
    return patterns


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_weights(info: dict, spec: ModelSpec, model: torch.nn.Module) -> dict[str, list[str]]:
    """Refuse a checkpoint whose weights do not fill the model, from ``from_pretrained``'s
    loading info: transformers initialises a missing weight randomly and drops an unused one,
    so either would be scored silently as a different model. Tied weights (an unembedding
    that shares the embeddings) are not reported missing. Keys matching a glob of
    ``spec.allow_missing`` pass; returns them ({"missing": …, "unexpected": …})."""
    name = type(model).__name__
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, stored, wanted = mismatched[0]
        raise LoadError(
            f"{spec.source}: weight {key} has shape {list(stored)} in the checkpoint but "
            f"{list(wanted)} in the {name} its config describes ({len(mismatched)} such "
            "weights); config.json does not match the weights: fix its sizes")
    if info.get("error_msgs"):
        raise LoadError(f"{spec.source}: the weights do not load into {name}: "
                        f"{info['error_msgs'][0]}")
    found = {kind: sorted(info.get(f"{kind}_keys") or []) for kind in ("missing", "unexpected")}
    refused = {kind: [key for key in keys if not any(
        fnmatch.fnmatchcase(key, pattern) for pattern in spec.allow_missing)]
        for kind, keys in found.items()}
    if refused["missing"]:
        keys = refused["missing"]
        raise LoadError(
            f"{spec.source}: the checkpoint lacks {len(keys)} weight(s) that {name} needs "
            f"({_few(keys)}); transformers would initialise them randomly and score a different "
            "model. Download or save the checkpoint again in full, or, if they are meant to be "
            f"initialised, pass --allow-missing '{keys[0]}' (a glob, repeatable)")
    if refused["unexpected"]:
        keys = refused["unexpected"]
        raise LoadError(
            f"{spec.source}: the checkpoint holds {len(keys)} weight(s) that {name} does not "
            f"use ({_few(keys)}), so config.json may not describe these weights (another "
            "architecture or size?). Fix the config, or, to score without them, pass "
            f"--allow-missing '{keys[0]}' (a glob, repeatable)")
    return {kind: keys for kind, keys in found.items() if keys}


def _pretrained_args(spec: ModelSpec) -> tuple[str, dict]:
    gguf = spec.gguf_file
    if gguf is not None:
        return str(gguf.parent), {"gguf_file": gguf.name}
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    return spec.source, kwargs


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    source, kwargs = _pretrained_args(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise _explain_load_failure(spec, "tokenizer", exc) from exc
    # transformers builds an empty tokenizer from a config alone: catch that here.
    if len(tokenizer) < 2 or not tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise _explain_load_failure(
            spec, "tokenizer", ValueError(f"the tokenizer found has {len(tokenizer)} tokens"))
    return tokenizer


def _check_vocabulary(model: torch.nn.Module, tokenizer, source: str) -> None:
    """Token ids beyond the embedding table: tokenizer and model do not belong together."""
    config = getattr(model.config, "text_config", None) or model.config
    largest = max(tokenizer(PROBE_TEXT)["input_ids"])
    if largest >= config.vocab_size:
        raise LoadError(
            f"{source}: the tokenizer produces token id {largest} but the model has only "
            f"{config.vocab_size} embeddings; the tokenizer does not belong to this model")


def _check_causal(model: torch.nn.Module, source: str) -> None:
    """Refuse models whose prediction at t sees tokens after t (e.g. BERT loaded as a 'causal' LM).

    Changing the last token of a probe must leave every earlier position's logits unchanged.
    """
    config = getattr(model.config, "text_config", None) or model.config
    device = next(model.parameters()).device
    probe = (torch.arange(1, 9, device=device) % config.vocab_size).unsqueeze(0)
    altered = probe.clone()
    altered[0, -1] = (altered[0, -1] + 1) % config.vocab_size
    with torch.inference_mode():
        before = model(input_ids=probe).logits[0, :-1].float()
        after = model(input_ids=altered).logits[0, :-1].float()
    if not torch.allclose(before, after, atol=1e-5, rtol=1e-5, equal_nan=True):  # causal
        raise LoadError(
            f"{source}: not a causal language model (its predictions depend on later tokens; "
            f"{type(model).__name__} with is_decoder={getattr(config, 'is_decoder', None)}). "
            "LM Atlas scores decoder-only models")


def size_gptqmodel_pool() -> None:
    """Call before GPTQModel is imported (it loads GPTQ/AWQ checkpoints and quantizes GPTQ).

    It sizes its CPU pool at half the cores but its model loader asks for two threads, so on a
    2-core machine it fails ("requests 2 workers but parent 'cpu' only has 1") unless told.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 2) // 2)))


def portable_bnb_cpu(model: torch.nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers on its portable CPU path; returns how many were switched.

    On CPUs with AVX512-BF16 (and only there), bitsandbytes 0.50 repacks a 4-bit weight on its
    first no-grad forward for a fused kernel that casts activations to bf16 and assumes
    in_features is a multiple of the block size (64): narrower layers crash ("shape '[96, 0]'
    is invalid"), wider ones score in bf16 whatever the compute dtype. The portable path
    (dequantize, then a matmul in the compute dtype) is correct for every shape and gives the
    same numbers on every x86 CPU, so a vector does not depend on the machine that scored it.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def load_model(spec: ModelSpec, **pretrained: object) -> LoadedModel:
    """Load model and tokenizer on the resolved device and dtype, in eval mode.

    ``pretrained`` goes to ``from_pretrained`` (a ``quantization_config``, atlas.quantize); a
    model quantized while loading is placed by ``device_map``, as bitsandbytes requires.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours (rich) is the one progress display
    check_source(spec)
    size_gptqmodel_pool()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = load_tokenizer(spec)
    source, kwargs = _pretrained_args(spec)
    if "quantization_config" in pretrained:
        kwargs["device_map"] = str(device)
    try:  # mismatched shapes are reported in the info (and refused) rather than raised bare
        model, info = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True,
            **kwargs, **pretrained)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _explain_load_failure(spec, "model", exc) from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    portable_bnb_cpu(model)
    _check_vocabulary(model, tokenizer, spec.source)
    _check_causal(model, spec.source)
    allowed = check_weights(info, spec, model)
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                       n_params=n_params, allowed_weights=allowed)
