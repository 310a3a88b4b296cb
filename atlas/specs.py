"""What to load and how, as plain data: model specs, quantization labels, dtype names.

No torch here: a bulk manifest is parsed, a plan printed and a key's quant label checked on a
core install; atlas.loading and atlas.quantize turn these descriptions into loaded models.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from atlas.errors import AtlasError
from atlas.weights import DEFAULT_DIM

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # --dtype, besides auto


@dataclass(frozen=True)
class Settings:
    """How a unit's variants are scored: a bulk manifest's ``[defaults]`` (overridden per
    entry) or ``atlas ingest``'s options."""

    textsets: tuple[str, ...] = ()
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    max_length: int | None = None
    sketch_dim: int = DEFAULT_DIM
    layers: str | tuple[int, ...] | None = None  # logit-lens hidden states, besides the output
    quantizations: tuple[str | None, ...] = (None,)  # None: the weights as loaded
    trust_remote_code: bool = False


@dataclass
class ModelSpec:
    """Where a model comes from and how to run it."""

    source: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    quantize: QuantSpec | None = None  # a quantization applied on loading (atlas.quantize)
    calibration: str | None = None  # GPTQ calibration texts (a text-set file); None: default
    allow_missing: tuple[str, ...] = ()  # globs of weights the checkpoint may lack or not use

    @property
    def gguf_file(self) -> Path | None:
        path = Path(self.source)
        return path if path.suffix == ".gguf" and path.is_file() else None


METHODS = ("torchao", "bnb", "gptq")
LIBRARIES = {"torchao": "torchao", "bnb": "bitsandbytes", "gptq": "gptqmodel",
             "awq": "gptqmodel", "gguf": "gguf"}
GPTQ_BITS = (2, 3, 4, 8)
GPTQ_GROUPS = (32, 64, 128, 256)
LABEL_HELP = ("int8 or int4-g32 (torchao), bnb-int8, bnb-nf4 or bnb-fp4 (bitsandbytes), "
              "gptq-4bit-g128 (GPTQModel)")


class QuantizeError(AtlasError):
    """A quantization that cannot be done: unknown label, missing library, unsupported device."""


@dataclass(frozen=True)
class QuantSpec:
    """One weight quantization: what the ``quantizations`` table records about a variant."""

    method: str  # torchao | bnb | gptq (applied here) ; awq | gguf | bitsandbytes … (a source's)
    bits: int | None
    group_size: int | None = None  # None: per output channel (or the format's own blocks)
    qtype: str | None = None  # nf4 / fp4 for bitsandbytes 4-bit, Q4_K_M … for GGUF
    source_quant: str | None = None  # the label of an already-quantized source (GGUF)

    @property
    def label(self) -> str:
        """The key's quant part."""
        if self.method == "torchao":
            own = f"int{self.bits}" + (f"-g{self.group_size}" if self.group_size else "")
        elif self.method == "bnb":
            own = f"bnb-{self.qtype or 'int8'}"
        elif self.method == "gguf":
            own = f"gguf-{(self.qtype or '').lower()}"
        else:  # gptq, awq and other pre-quantized checkpoints
            own = f"{self.method}-{self.bits}bit" + (
                f"-g{self.group_size}" if self.group_size else "")
        return f"{self.source_quant}.{own}" if self.source_quant else own

    @classmethod
    def parse(cls, label: str) -> QuantSpec:
        """The quantization a label names (the inverse of ``label`` for methods applied here)."""
        if match := re.fullmatch(r"int([1-8])(?:-g([0-9]+))?", label):
            return cls("torchao", int(match[1]), _group(match[2]))
        if match := re.fullmatch(r"bnb-(int8|nf4|fp4)", label):
            return cls("bnb", 8 if match[1] == "int8" else 4, None,
                       None if match[1] == "int8" else match[1])
        if match := re.fullmatch(r"gptq-([0-9])bit(?:-g([0-9]+))?", label):
            return cls("gptq", int(match[1]), _group(match[2])).checked()
        raise QuantizeError(f"unknown quantization {label!r}: use {LABEL_HELP}")

    @classmethod
    def from_options(cls, method: str, bits: int | None = None, group_size: int | None = None,
                     qtype: str | None = None) -> QuantSpec:
        """``--quantize METHOD --bits B --group-size G --quant-type T``, or a label alone."""
        if method not in METHODS:
            if bits is not None or group_size is not None or qtype is not None:
                raise QuantizeError(f"--quantize {method}: a label says it all; --bits, "
                                    "--group-size and --quant-type go with a method "
                                    f"({', '.join(METHODS)})")
            return cls.parse(method)
        if method == "bnb":
            return cls._bnb(bits, group_size, qtype)
        if qtype is not None:
            raise QuantizeError(f"--quant-type is for bitsandbytes 4-bit (nf4, fp4), not {method}")
        if method == "torchao":
            return cls("torchao", bits or 8, group_size or None).checked()
        return cls("gptq", bits or 4, 128 if group_size is None else group_size or None).checked()

    @classmethod
    def _bnb(cls, bits: int | None, group_size: int | None, qtype: str | None) -> QuantSpec:
        if group_size is not None:
            raise QuantizeError("bitsandbytes has fixed blocks: drop --group-size")
        bits = bits or (4 if qtype else 8)
        if bits == 8 and qtype is None:
            return cls("bnb", 8)
        if bits == 4 and (qtype or "nf4") in ("nf4", "fp4"):
            return cls("bnb", 4, None, qtype or "nf4")
        raise QuantizeError(f"bitsandbytes quantizes to 8 bits, or 4 bits as nf4 or fp4 (got "
                            f"{bits} bits{', ' + qtype if qtype else ''})")

    def checked(self) -> QuantSpec:
        if self.method == "torchao" and not 1 <= (self.bits or 0) <= 8:
            raise QuantizeError(f"torchao integer weights have 1 to 8 bits, not {self.bits}")
        if self.method == "gptq" and self.bits not in GPTQ_BITS:
            raise QuantizeError(f"GPTQ quantizes to {GPTQ_BITS} bits, not {self.bits}")
        if self.method == "gptq" and self.group_size not in (None, *GPTQ_GROUPS):
            raise QuantizeError(f"GPTQ group sizes are {GPTQ_GROUPS} (its CPU kernel's) or "
                                f"none, not {self.group_size}")
        return self

    def on(self, source_quant: str | None) -> QuantSpec:
        """This quantization applied to a source that is quantized already."""
        return replace(self, source_quant=source_quant)

    @property
    def library(self) -> str:
        return LIBRARIES.get(self.method, self.method)

    def record(self, compute_dtype: object | None) -> dict:
        """The ``quantizations`` row (without the key)."""
        fields = asdict(self)
        fields["compute_dtype"] = str(compute_dtype).removeprefix("torch.") if (
            compute_dtype is not None) else None
        fields["library"] = self.library
        fields["library_version"] = version_of(self.library)
        return fields


def _group(text: str | None) -> int | None:
    return int(text) if text else None


def version_of(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


