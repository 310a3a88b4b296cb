"""Scoring a unit: one model load → the complete vector record of each of its variants.

The float model is loaded once and serves the output, every lens layer and every in-memory
(torchao) quantization; output and lens layers of one (quantization, text set) come from one
forward pass per batch, the lens's final index being the model's own output, bit-identical to
a plain scoring (atlas.scoring). Nothing here opens the atlas: texts come in, records go out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from atlas.errors import AtlasError
from atlas.layers import (
    LensOverride,
    layer_count,
    lens_spec,
    model_type_of,
    parse_layers,
    peek_config,
    resolve_layers,
)
from atlas.lens import Lens
from atlas.loading import LoadedModel, load_model
from atlas.pipeline.units import Unit, Variant, config_id
from atlas.scoring import PartialScores, Scorer, Scores
from atlas.specs import ModelSpec
from atlas.store import VectorRecord
from atlas.weights import WeightError, WeightSketch, sketch_parameters

LENS_ONLY_PROVENANCE = ("forward", "lens")  # what a lens pass adds to a plain scoring's record


@dataclass
class ScoredPass:
    """The records of one (quantization, text set) pass, and what it took."""

    records: list[VectorRecord]
    tokens: int  # scored in this run (resumed texts excluded)
    resumed: int  # texts taken from a partial side file
    seconds: float  # scoring alone
    warning: str | None  # truncation, for the user


class Loads:
    """The models of one unit: the float load (kept when it serves several passes) and the
    quantized ones, with the time spent loading."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.base: LoadedModel | None = None
        self.seconds = 0.0

    def get(self, quantize: str | None, texts: Sequence[str], shared: bool = False
            ) -> LoadedModel:
        """``shared``: other passes follow, so a torchao quantization copies the float load."""
        started = time.perf_counter()
        spec = self.unit.spec(quantize)
        try:
            if spec.quantize is None:
                return self._base()
            from atlas.quantize import load_for_scoring, quantized_copy

            if spec.quantize.method == "torchao" and (shared or self.base is not None):
                return quantized_copy(self._base(), spec.quantize)
            return load_for_scoring(spec, texts)  # quantized while loading
        finally:
            self.seconds += time.perf_counter() - started

    def _base(self) -> LoadedModel:
        if self.base is None:
            self.base = load_model(self.unit.spec())
        return self.base


def score_unit(unit: Unit, variants: Sequence[Variant], texts: Mapping[str, list[str]], *,
               loads: Loads | None = None,
               partial_path: Callable[[list[Variant]], Path | None] = lambda group: None,
               progress: bool = False) -> Iterator[ScoredPass]:
    """Score ``variants`` of ``unit`` on ``texts`` (text set name → texts): one pass per
    (quantization, text set), the float model first. ``partial_path``: where a pass keeps the
    sums scored so far (a killed run resumes from it)."""
    check_config(unit, variants)
    loads = loads or Loads(unit)
    passes = sorted({v.quantize for v in variants}, key=lambda q: (q is not None, q or ""))
    for quantize in passes:
        group = [v for v in variants if v.quantize == quantize]
        textsets = list(dict.fromkeys(v.textset for v in group))
        model = loads.get(quantize, texts[textsets[0]], shared=len(passes) > 1)
        sketch = _Sketch(model, unit.settings.sketch_dim, progress)
        for textset in textsets:
            members = [v for v in group if v.textset == textset]
            started = time.perf_counter()
            scorer, scores = score_pass(model, texts[textset], [v.key.layer for v in members],
                                        unit, partial_path(members), progress)
            seconds = time.perf_counter() - started
            records = [sketch.add(make_record(member, scores[member.key.layer], unit, model))
                       for member in members]
            first = next(iter(scores.values()))
            yield ScoredPass(records, first.scored_tokens, first.n_resumed, seconds,
                             scorer.truncation_warning(first.n_truncated, len(texts[textset])))


class _Sketch:
    """The weight sketch of one loaded model, made once, for its model-output records."""

    def __init__(self, loaded: LoadedModel, dim: int, progress: bool) -> None:
        self.loaded, self.dim, self.progress = loaded, dim, progress
        self.made: tuple[WeightSketch | None, str | None] | None = None

    def add(self, record: VectorRecord) -> VectorRecord:
        if record.key.layer is None:  # lens layers share the output variant's weights
            self.made = self.made or sketch_weights(
                self.loaded.model, self.dim, self.progress,
                quantized=record.provenance["quantization"] is not None)
            record.sketch, record.sketch_note = self.made
        return record


def check_config(unit: Unit, variants: Sequence[Variant]) -> None:
    """The planner's config id must be this machine's, or the vector would conflict."""
    for variant in variants:
        here = config_id(unit, variant.key, variant.quantize)
        if here != variant.config_id:
            raise AtlasError(
                f"{variant.key}: this worker's scoring config ({here}) is not the planner's "
                f"({variant.config_id}): 'dtype = \"auto\"' resolves differently on this "
                "machine's device; set dtype (and device) explicitly in the manifest")


def score_pass(loaded: LoadedModel, texts: list[str], layers: Sequence[int | None], unit: Unit,
               partial: Path | None = None, progress: bool = False
               ) -> tuple[Scorer, dict[int | None, Scores]]:
    """Scores of the output (None) and lens layers of one model on one text set, all from one
    forward pass per batch; the sums so far are kept in ``partial`` if scoring stops."""
    settings = unit.settings
    lens = sorted({layer for layer in layers if layer is not None})
    output = None in layers
    if not lens:
        scorer = Scorer(loaded, batch_size=settings.batch_size, max_length=settings.max_length)
        sums = PartialScores(partial, len(texts))
        return scorer, {None: _resumably(lambda: scorer.score(texts, progress, sums), sums)}
    final = layer_count(loaded.model.config)
    scored = sorted(set(lens) | ({final} if output else set()))
    scorer = Scorer(loaded, batch_size=settings.batch_size, max_length=settings.max_length,
                    layers=scored, lens=unit.lens)
    sums = PartialScores(partial, len(texts), rows=len(scored))
    scores = _resumably(lambda: scorer.score_layers(texts, progress, sums), sums)
    found: dict[int | None, Scores] = {layer: scores[layer] for layer in lens}
    if output:
        plain = {k: v for k, v in scores[final].provenance.items()
                 if k not in LENS_ONLY_PROVENANCE}
        found[None] = replace(scores[final], provenance=plain)
    return scorer, found


def _resumably(score: Callable, partial: PartialScores):
    try:
        return score()
    except BaseException:
        partial.flush()  # an error or Ctrl-C keeps what was scored for the next run
        raise


def make_record(variant: Variant, scores: Scores, unit: Unit,
                loaded: LoadedModel) -> VectorRecord:
    """The record of one scored variant: how it was scored, where the model came from, and its
    quantization (the store files that in ``quantizations``)."""
    from atlas.quantize import describe

    spec = unit.spec(variant.quantize)
    allowed = {"allow_missing": {"patterns": sorted(set(spec.allow_missing)),
                                 **loaded.allowed_weights}} if spec.allow_missing else {}
    provenance = {**scores.provenance, "source": spec.source, "revision": spec.revision,
                  "quantization": describe(spec, loaded), **allowed}
    return VectorRecord(variant.key, scores.loglik, variant.config_id, provenance,
                        scores.n_tokens, scores.n_truncated, loaded.n_params, unit.parent,
                        spec.source, spec.revision, textset=variant.textset)


def sketch_weights(model, sketch_dim: int, progress: bool = False,
                   quantized: bool = False) -> tuple[WeightSketch | None, str | None]:
    """The weight sketch of the loaded model, or None and why (sketching must not fail)."""
    if sketch_dim <= 0:
        return None, "disabled (sketch_dim 0)"
    if quantized:  # packed integers are not the weights; the float variant carries the sketch
        return None, "quantized weights are not sketched (the unquantized variant's sketch is)"
    try:
        return sketch_parameters(model, dim=sketch_dim, progress=progress), None
    except WeightError as exc:  # quantized or offloaded weights: the vector is still worth it
        return None, str(exc)


# lens layers from the config, before the weights load ---------------------------------------
def lens_plan(spec: ModelSpec, requested: str | list[int], lens: LensOverride | None,
              config=None) -> tuple[list[int], int]:
    """(layers to score, number of blocks) from the config; raises on a layer the model does
    not have or an architecture without a lens, before the weights load. (-1 blocks: the config
    cannot be read without the weights; decided after loading.)"""
    if config is None:
        gguf = spec.gguf_file
        config = peek_config(str(gguf.parent) if gguf else spec.source, spec.revision,
                             spec.trust_remote_code, gguf.name if gguf else None)
        if config is None:
            return [], -1
    lens_spec(model_type_of(config), lens)  # an architecture we cannot read fails here
    if lens is not None and lens.given:  # a user-given module path that does not exist too
        skeleton = _weightless(config, spec.trust_remote_code)
        if skeleton is not None:
            Lens.of(skeleton, lens)
    n_layers = layer_count(config)
    return resolve_layers(requested, n_layers, spec.source), n_layers


def _weightless(config, trust_remote_code: bool):
    """The model ``config`` describes, on the meta device: its modules without weights or memory
    (None if transformers cannot build it from the config alone; loading explains why)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, OSError, ImportError):
        return None


def lens_layers(spec: ModelSpec, layers: str | Sequence[int],
                lens: LensOverride | None = None) -> list[int] | None:
    """The hidden states ``layers`` names for ``spec``'s model, from its config alone (None when
    the config cannot be read without the weights); raises ``LensError`` as ingest would."""
    wanted, n_layers = lens_plan(spec, parse_layers(layers), lens)
    return wanted if n_layers >= 0 else None
