"""Units of work: one model load and the variants (vectors) it gives.

A variant is decided exactly as every writer decides it (same key, config id and conflict
rules), so bulk skips what ingest stored and the reverse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from atlas.keys import ModelKey, safe_name
from atlas.layers import LensOverride
from atlas.specs import ModelSpec, QuantSpec, Settings


@dataclass(frozen=True)
class Unit:
    """One model load and what to score with it."""

    base: ModelKey  # family, size, seed, checkpoint, and the quant label of what is loaded
    source: str
    revision: str | None
    parent: str | None
    settings: Settings
    line: int  # of the manifest entry (0: not from a manifest)
    layers: tuple[int, ...] = ()  # lens hidden states, resolved from the config
    source_quant: str | None = None  # the label of a source quantized already (GGUF, GPTQ)
    lens: LensOverride | None = None  # user-given lens module paths
    calibration: str | None = None  # GPTQ calibration texts (a text-set file)
    allow_missing: tuple[str, ...] = ()  # globs of weights the checkpoint may lack

    @property
    def id(self) -> str:
        payload = [str(self.base), self.source, self.revision]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]

    def spec(self, quantize: str | None = None) -> ModelSpec:
        """How to load it; ``quantize``: a label of ``settings.quantizations`` applied on top."""
        return ModelSpec(self.source, self.revision, self.settings.device, self.settings.dtype,
                         self.settings.trust_remote_code,
                         quantize=QuantSpec.parse(quantize).on(self.source_quant)
                         if quantize else None,
                         calibration=self.calibration, allow_missing=self.allow_missing)

    def variant_keys(self) -> Iterator[tuple[ModelKey, str | None]]:
        """(key, quantization to apply) of every variant, per text set: output, then layers;
        a quantized variant's key carries the label ``atlas ingest --quantize`` gives it."""
        for quantize in self.settings.quantizations:
            quant_key = replace(self.base, quant=self.spec(quantize).quantize.label) if (
                quantize) else self.base
            for layer in (None, *self.layers):
                yield replace(quant_key, layer=layer), quantize


@dataclass(frozen=True)
class Variant:
    """One vector to make: a key on a text set, under one scoring config."""

    key: ModelKey
    textset: str
    quantize: str | None
    config_id: str

    @property
    def shard_name(self) -> str:
        return f"{safe_name(str(self.key))}.{safe_name(self.textset)}.{self.config_id}"


def normalise_source(source: str) -> str:
    """Local paths become absolute (re-runs from elsewhere match); hub ids stay as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def scoring_config_id(spec: ModelSpec, key: ModelKey, max_length: int | None,
                      lens: LensOverride | None = None) -> str:
    """What makes two scorings of a variant the same, known before loading anything."""
    from atlas.loading import resolve_device, resolve_dtype

    dtype = resolve_dtype(spec.dtype, resolve_device(spec.device))
    payload = {"source": spec.source, "revision": spec.revision, "quant": key.quant,
               "dtype": str(dtype).removeprefix("torch."), "max_length": max_length}
    if lens is not None and lens.given:  # user-given lens paths make another scoring
        payload["lens"] = lens.as_dict()
    if spec.quantize is not None and spec.quantize.method == "gptq":  # GPTQ depends on them
        payload["calibration"] = spec.calibration or "default text set, training split"
    if spec.allow_missing:  # randomly initialised weights make another model
        payload["allow_missing"] = sorted(set(spec.allow_missing))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def config_id(unit: Unit, key: ModelKey, quantize: str | None, planning: bool = False) -> str:
    """The config id of the unit's variant ``key``. ``planning``: on any machine, since the
    device does not enter the config once the dtype is explicit."""
    spec = unit.spec(quantize)
    if planning and spec.dtype != "auto":
        spec.device = "cpu"
    return scoring_config_id(spec, key, unit.settings.max_length, unit.lens)


def variant(unit: Unit, key: ModelKey, textset: str, quantize: str | None,
            planning: bool = False) -> Variant:
    return Variant(key, textset, quantize, config_id(unit, key, quantize, planning))


def variants_of(unit: Unit) -> Iterator[Variant]:
    """The unit's variants, with their config ids."""
    for textset in unit.settings.textsets:
        for key, quantize in unit.variant_keys():
            yield variant(unit, key, textset, quantize, planning=True)
