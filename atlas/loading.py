"""Loading a causal LM and its tokenizer from a hub id, a local directory or a GGUF file.

Everything goes through transformers' own ``from_pretrained`` so that what we score is what any
user of the model gets. The returned provenance is stored with every vector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
    if local and what == "tokenizer":
        return LoadError(
            f"{spec.source}: no usable tokenizer in this directory ({message.splitlines()[0]}). "
            "Save the model's tokenizer beside it (tokenizer.save_pretrained(dir))."
        )
    return LoadError(f"{spec.source}: cannot load the {what}: {message.splitlines()[0]}")


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
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours (rich) is the one progress display
    size_gptqmodel_pool()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = load_tokenizer(spec)
    source, kwargs = _pretrained_args(spec)
    if "quantization_config" in pretrained:
        kwargs["device_map"] = str(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **pretrained)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain_load_failure(spec, "model", exc) from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    portable_bnb_cpu(model)
    _check_vocabulary(model, tokenizer, spec.source)
    _check_causal(model, spec.source)
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                       n_params=n_params)
