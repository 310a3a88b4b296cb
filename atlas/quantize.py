"""Quantized variants: a model loaded through a weight quantizer, scored like any other model.

A quantization is part of a variant's key (``FAMILY-SIZE+LABEL``) and is recorded in the
``quantizations`` table (method, bits, group size, type, compute dtype, library and version).
The labels:

=====================  ==========================================================================
``int8``, ``int4-g32``  torchao weight-only integers (``IntxWeightOnlyConfig``: symmetric, per
                        output channel, or per group of ``-gN`` inputs), applied in memory to the
                        loaded float model. Runs wherever torch runs: the always-available path.
``bnb-int8``            bitsandbytes LLM.int8() (outlier columns kept in fp16), as in the
``bnb-nf4``/``bnb-fp4`` reference papers; 4-bit NormalFloat / FP4 blocks of 64. bitsandbytes has
                        a CPU backend since 0.49 (used here on CPU; CUDA and XPU too).
``gptq-4bit-g128``      GPTQ (bits 2, 3, 4 or 8; group size, or none): quantized on ingest by
                        GPTQModel with calibration texts disjoint from the scored text set, cached
                        as a GPTQ checkpoint and loaded back by ``from_pretrained``, as any
                        pre-quantized checkpoint is.
``gguf-q4_k_m`` …       a GGUF file as the source: its quant type, read from the file.
``gptq-…``/``awq-…``    a pre-quantized GPTQ or AWQ checkpoint as the source: read from its config.
=====================  ==========================================================================

A quantization applied to an already-quantized source (a GGUF file, whose weights transformers
dequantizes on load) is labelled by both, ``gguf-q4_1.int8``: the dequantized model is the
reference it is compared with.

Why GPTQModel and not AutoGPTQ, which users ask for by name: AutoGPTQ is unmaintained since 2024,
does not import with transformers 5, and cannot quantize without CUDA. GPTQModel is its
maintained successor (transformers' own GPTQ integration loads through it) and quantizes on the
CPU. Two things it needs, handled here: ``offload_to_disk=False`` (its default offloads modules
to disk and fails on untied output heads), and a CPU worker pool of at least two threads (its
default is half the cores, and its model loader asks for two: a 2-core machine fails with
"requests 2 workers but parent 'cpu' only has 1"). It is installed without its dependencies
(``data/quantization.txt``) because it pins numpy to one version; its real needs are in the
``quantization`` extra. HQQ is not offered: transformers 5 refuses ``HqqConfig``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import torch

from atlas.caching import atomic_dir, cache_root
from atlas.loading import (
    LoadedModel,
    load_model,
    resolve_device,
    resolve_dtype,
    size_gptqmodel_pool,
)
from atlas.specs import ModelSpec, QuantizeError, QuantSpec, version_of

CALIBRATION_TEXTS = 128  # GPTQ's usual calibration size
QUANTIZATION_REQUIREMENTS = "pip install -e '.[quantization]' && pip install --no-deps -r " \
                            "data/quantization.txt"


def require(spec: QuantSpec, device: torch.device) -> None:
    """Fail before any loading when the library is missing or cannot run on ``device``."""
    if version_of(spec.library) is None:
        raise QuantizeError(f"{spec.label} needs {spec.library}, which is not installed; run: "
                            f"{QUANTIZATION_REQUIREMENTS}")
    supported = {"torchao": ("cpu", "cuda"), "bnb": ("cpu", "cuda", "xpu"),
                 "gptq": ("cpu", "cuda", "xpu")}[spec.method]
    if device.type not in supported:
        raise QuantizeError(f"{spec.label}: {spec.library} does not run on {device.type} "
                            f"(it runs on {', '.join(supported)}); pass --device "
                            f"{supported[0]}")


# -- sources that are quantized already ------------------------------------------------------

def gguf_quant(path: Path) -> QuantSpec:
    """The quant type of a GGUF file (``general.file_type``), e.g. Q4_K_M."""
    stat = path.stat()
    return _gguf_quant(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _gguf_quant(path: str, size: int, mtime_ns: int) -> QuantSpec:
    """Cached by file identity: GGUFReader parses every tensor header (~4 s for SmolLM2's), and
    one ingest asks for the label before loading and again to record it."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        raise QuantizeError(f"{path}: the GGUF file does not say its quant type "
                            "(general.file_type); give the variant's label with --quant")
    name = LlamaFileType(int(field.parts[field.data[0]][0])).name  # e.g. MOSTLY_Q4_K_M
    return QuantSpec("gguf", None, None, name.removeprefix("MOSTLY_"))


def checkpoint_quant(config) -> QuantSpec | None:
    """A pre-quantized checkpoint's quantization, from its config's ``quantization_config``."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    method = str(quant.get("quant_method", "unknown")).lower()
    if method == "bitsandbytes":
        if quant.get("load_in_8bit"):
            return QuantSpec("bnb", 8)
        return QuantSpec("bnb", 4, None, quant.get("bnb_4bit_quant_type", "nf4"))
    group = quant.get("group_size")
    return QuantSpec(method, quant.get("bits"), group if group and group > 0 else None)


# -- applying a quantization -----------------------------------------------------------------

def pretrained_kwargs(spec: QuantSpec, dtype: torch.dtype) -> dict:
    """What ``from_pretrained`` needs to quantize while loading (bitsandbytes)."""
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=spec.qtype, bnb_4bit_compute_dtype=dtype)}


def compute_dtype(spec: QuantSpec, dtype: torch.dtype) -> torch.dtype:
    """LLM.int8() multiplies in float16 whatever the model's dtype; the others in the model's."""
    return torch.float16 if spec.method == "bnb" and spec.bits == 8 else dtype


def quantize_in_memory(model: torch.nn.Module, spec: QuantSpec) -> None:
    """torchao weight-only integers, in place, on every linear layer but the output head.

    The head stays in float as every quantizer here leaves it (GPTQ, bitsandbytes and GGUF's
    usual types keep it at higher precision), so the methods are compared on the same layers.
    """
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    head = model.get_output_embeddings()
    dtype = getattr(torch, f"int{spec.bits}")
    granularity = PerGroup(spec.group_size) if spec.group_size else PerAxis(0)
    bad = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
           and module is not head and spec.group_size
           and module.in_features % spec.group_size]
    if bad:
        raise QuantizeError(f"{spec.label}: group size {spec.group_size} does not divide the "
                            f"inputs of {bad[0]} ({len(bad)} layers); choose a divisor of the "
                            "hidden sizes, or no group size (per channel)")
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity),
              filter_fn=lambda module, _: isinstance(module, torch.nn.Linear)
              and module is not head)


def calibration_texts(exclude: Sequence[str], n: int = CALIBRATION_TEXTS,
                      path: str | Path | None = None) -> list[str]:
    """GPTQ calibration texts: a file's, or the default text set's training split, never a text
    of the scored set (``exclude``): calibrating on the evaluation texts would flatter GPTQ."""
    if path is not None:
        from atlas.textsets import load_textset

        texts = load_textset(path).texts
    else:
        from atlas.textsources import build_default

        texts = build_default().train.texts
    scored = set(exclude)
    chosen = [text for text in texts if text not in scored][:n]
    if not chosen:
        raise QuantizeError("no calibration texts left once the scored texts are excluded; "
                            "pass --calibration FILE with other texts")
    return chosen


def gptq_checkpoint(source: str, revision: str | None, spec: QuantSpec, calibration: list[str],
                    device: torch.device, trust_remote_code: bool = False) -> Path:
    """Quantize ``source`` with GPTQModel into the cache (once) and return the checkpoint folder.

    The folder is named by a hash of source, revision, label, calibration texts and the
    GPTQModel version, so a changed calibration set or library never reuses a stale model.
    """
    payload = json.dumps([source, revision, spec.label, calibration, version_of("gptqmodel")])
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    target = cache_root() / "quantized" / f"{spec.label}-{digest}"
    if (target / "quantize_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.with_name(f"{target.name}.log")
    with log.open("w") as stream, redirect_stdout(stream), redirect_stderr(stream):
        model, tokenizer = _gptq_quantize(source, revision, spec, calibration, device,
                                          trust_remote_code, log)
        atomic_dir(target, lambda tmp: (model.save(str(tmp)), tokenizer.save_pretrained(tmp)))
    return target


def _gptq_quantize(source: str, revision: str | None, spec: QuantSpec, calibration: list[str],
                   device: torch.device, trust_remote_code: bool, log: Path):
    """GPTQModel's load + quantize (its tables and banners go to ``log``, not the terminal)."""
    size_gptqmodel_pool()
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.looper import loop_processor
    from transformers import AutoTokenizer

    # It writes per-layer logs to ./logs of whatever folder the user is in: keep them with ours.
    loop_processor._PROJECT_LOG_DIR = log.with_suffix(".layers")

    kwargs = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                              **kwargs)
    config = QuantizeConfig(bits=spec.bits, group_size=spec.group_size or -1,
                            offload_to_disk=False)
    model = GPTQModel.load(source, config, device=str(device),
                           trust_remote_code=trust_remote_code, **kwargs)
    examples = [tokenizer(text, truncation=True, max_length=512) for text in calibration]
    try:
        model.quantize([{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}
                        for e in examples], batch_size=1)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        raise QuantizeError(f"{source}: GPTQModel cannot quantize this model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}; its log: "
                            f"{log})") from exc
    return model, tokenizer


def count_parameters(config) -> int:
    """Parameters of the unquantized architecture (packed weights would undercount them)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def dequantized_gguf(spec: ModelSpec) -> ModelSpec:
    """A GGUF source as a float safetensors checkpoint in the cache (made once).

    transformers dequantizes a GGUF file on every load (~20 s for a 135M model); bitsandbytes and
    GPTQModel need a checkpoint folder anyway. Keyed by the file's path, size and mtime.
    """
    path = spec.gguf_file
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_root() / "dequantized" / f"{path.stem}-{digest.hexdigest()[:16]}"
    if not (target / "config.json").is_file():
        loaded = load_model(replace(spec, dtype="float32", device="cpu"))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_dir(target, lambda tmp: _save_dequantized(loaded, tmp))
    return replace(spec, source=str(target), revision=None)


def _save_dequantized(loaded: LoadedModel, folder: Path) -> None:
    """Save a model read from GGUF: its weights are floats already, but transformers keeps a
    GGUF quantizer on it that refuses ``save_pretrained``; dropped, the model saves as float."""
    loaded.model.hf_quantizer = None
    if hasattr(loaded.model.config, "quantization_config"):
        del loaded.model.config.quantization_config
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)


def load_quantized(spec: ModelSpec, quant: QuantSpec,
                   calibration: list[str] | None = None) -> LoadedModel:
    """``spec`` loaded and quantized by ``quant`` (``calibration``: GPTQ's texts)."""
    device = resolve_device(spec.device)
    require(quant, device)
    base = dequantized_gguf(spec) if spec.gguf_file else spec
    if quant.method == "torchao":
        loaded = load_model(base)
        quantize_in_memory(loaded.model, quant)
        return loaded
    if quant.method == "bnb":
        loaded = load_model(base, **pretrained_kwargs(quant, resolve_dtype(spec.dtype, device)))
    else:
        _check_gptq_architecture(base)
        folder = gptq_checkpoint(base.source, base.revision, quant, calibration or [], device,
                                 base.trust_remote_code)
        with open(f"{folder}.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
            loaded = load_model(replace(base, source=str(folder), revision=None))
    loaded.n_params = count_parameters(loaded.model.config)
    return loaded


def quantized_copy(loaded: LoadedModel, quant: QuantSpec) -> LoadedModel:
    """A torchao-quantized copy of a loaded float model: one load serves many quantizations.

    Only torchao quantizes a model in memory; bitsandbytes and GPTQ quantize while loading
    (``load_quantized``).
    """
    import copy

    if quant.method != "torchao":
        raise QuantizeError(f"{quant.label}: {quant.library} quantizes while loading; use "
                            "load_quantized")
    require(quant, loaded.device)
    model = copy.deepcopy(loaded.model)
    quantize_in_memory(model, quant)
    return replace(loaded, model=model)


def _check_gptq_architecture(spec: ModelSpec) -> None:
    """GPTQModel guesses the layout of architectures it does not know; refuse them instead."""
    from atlas.layers import model_type_of, peek_config

    size_gptqmodel_pool()
    with redirect_stdout(io.StringIO()):  # its import prints a banner
        from gptqmodel.models.auto import SUPPORTED_MODELS

    config = peek_config(spec.source, spec.revision, spec.trust_remote_code)
    model_type = model_type_of(config) if config is not None else "unknown"
    if model_type not in SUPPORTED_MODELS:
        raise QuantizeError(f"{spec.source}: GPTQModel {version_of('gptqmodel')} does not support "
                            f"the {model_type} architecture; use int8/int4 (torchao) or "
                            "bitsandbytes for this model")


def describe(spec: ModelSpec, loaded: LoadedModel) -> dict | None:
    """The ``quantizations`` row of what was loaded: the quantization applied, else the source's
    own (a GGUF file, a pre-quantized checkpoint), else None (a float model)."""
    if spec.quantize is not None:
        return spec.quantize.record(compute_dtype(spec.quantize, loaded.dtype))
    own = gguf_quant(spec.gguf_file) if spec.gguf_file else checkpoint_quant(loaded.model.config)
    return None if own is None else own.record(loaded.dtype)


def source_label(spec: ModelSpec) -> str | None:
    """The label of a source that is quantized already (GGUF type, GPTQ/AWQ config), if any."""
    if spec.gguf_file:
        return gguf_quant(spec.gguf_file).label
    from atlas.layers import peek_config

    config = peek_config(spec.source, spec.revision, spec.trust_remote_code)
    own = None if config is None else checkpoint_quant(config)
    return None if own is None else own.label


def key_quant(spec: ModelSpec, given: str | None) -> str | None:
    """The key's quant part: the label of what is loaded; a ``--quant`` given must agree."""
    derived = spec.quantize.label if spec.quantize is not None else source_label(spec)
    if given is not None and derived is not None and given != derived:
        raise QuantizeError(f"--quant {given}: this variant is {derived} (from the source and "
                            f"--quantize); drop --quant or give --quant {derived}")
    return given or derived


def load_for_scoring(spec: ModelSpec, texts: Sequence[str]) -> LoadedModel:
    """The model as it is scored: quantized when ``spec.quantize`` says so, GPTQ calibrated on
    texts that are not among the scored ``texts``."""
    if spec.quantize is None:
        return load_model(spec)
    calibration = calibration_texts(texts, path=spec.calibration) if (
        spec.quantize.method == "gptq") else None
    return load_quantized(spec, spec.quantize, calibration)
