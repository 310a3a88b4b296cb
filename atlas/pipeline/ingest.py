"""``Atlas.ingest``: the pipeline run in this process on a one-unit plan.

Idempotent: the same variant + text set + scoring config is a no-op decided before any model is
loaded. Resumable: the store is not held open while scoring, and each vector is written in one
transaction at the end, so a killed ingest leaves nothing partial in the atlas; the sums scored
so far are saved beside it (``ATLAS.duckdb.pending/``) every 30 s, and re-running the same
ingest scores only the texts still missing.

With ``layers`` (the logit lens, atlas.lens) one forward pass per batch scores every requested
hidden state, and each is stored as its own variant ``FAMILY-SIZE#LAYER``, one transaction per
vector. Which layers are missing is decided from the model's config before its weights load, so
a re-run loads nothing when every layer is stored, and scores only the missing ones otherwise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.errors import StoreError
from atlas.keys import ModelKey
from atlas.layers import LensError, LensOverride, format_layers, parse_layers
from atlas.pipeline.records import pending_path
from atlas.pipeline.score import Loads, ScoredPass, lens_plan, score_unit
from atlas.pipeline.units import Unit, Variant, normalise_source, variant
from atlas.pipeline.writer import write_or_keep
from atlas.scoring import check_scoring_options
from atlas.specs import ModelSpec, Settings
from atlas.store import Store
from atlas.weights import DEFAULT_DIM

LENS_SKETCH_NOTE = ("lens layers share the weights of the model output variant: ingest it "
                    "without --layers for a weight sketch")


@dataclass
class IngestResult:
    key: str
    textset: str
    status: str  # stored | skipped
    seconds: float = 0.0  # the whole ingest
    tokens: int = 0
    n_params: int | None = None
    score_seconds: float = 0.0  # scoring alone, without loading the model
    resumed: int = 0  # texts whose scores came from an interrupted run of the same config
    sketched: bool = False  # a weight sketch was stored with the vector
    sketch_note: str | None = None  # why no sketch was stored (disabled, quantized weights …)
    layers: dict[int, str] = field(default_factory=dict)  # lens runs: layer → stored | skipped
    n_truncated: int = 0  # texts longer than max_length tokens, scored on their first ones
    warnings: list[str] = field(default_factory=list)  # for the user: the CLI prints them

    @property
    def tokens_per_second(self) -> float:
        """Scoring throughput (model loading excluded)."""
        return self.tokens / self.score_seconds if self.score_seconds else 0.0


def one_unit(spec: ModelSpec, key: ModelKey, textset: str, *, parent: str | None,
             batch_size: int | None, max_length: int | None, sketch_dim: int,
             lens: LensOverride | None) -> tuple[Unit, str | None]:
    """The unit ``atlas ingest`` scores, and the quantization label its variants apply."""
    own = None if spec.quantize is None else replace(spec.quantize, source_quant=None).label
    settings = Settings(textsets=(textset,), dtype=spec.dtype, device=spec.device,
                        batch_size=batch_size, max_length=max_length, sketch_dim=sketch_dim,
                        quantizations=(own,), trust_remote_code=spec.trust_remote_code)
    return Unit(key, spec.source, spec.revision, parent, settings, line=0,
                source_quant=None if spec.quantize is None else spec.quantize.source_quant,
                lens=lens, calibration=spec.calibration,
                allow_missing=spec.allow_missing), own


def ingest(store: Store, spec: ModelSpec, key: ModelKey, textset: str, *,
           parent: str | None = None, batch_size: int | None = None, max_length: int | None = None,
           force: bool = False, progress: bool = True,
           sketch_dim: int = DEFAULT_DIM, layers: str | Sequence[int] | None = None,
           lens: LensOverride | None = None) -> IngestResult:
    """Score ``spec`` on ``textset`` and store the vector under ``key``.

    With ``sketch_dim`` > 0 the loaded model's weights are also sketched (atlas.weights) and the
    sketch stored beside the vector, so weight distances need no second load of the checkpoint.
    With ``layers`` ("all", "0,6,12" or a list of hidden-state indices) the logit-lens vectors
    of those hidden states are stored instead, each under ``key`` with its layer set.
    """
    check_scoring_options(batch_size, max_length)
    if layers is None and lens is not None and lens.given:
        raise LensError("--lens-norm/--lens-head describe the logit lens: they need --layers")
    if layers is not None and key.layer is not None:
        raise LensError(f"{key}: the key of a layers run has no #LAYER; each layer sets its own")
    requested = None if layers is None else parse_layers(layers)
    spec.source = normalise_source(spec.source)
    unit, quantize = one_unit(spec, key, textset, parent=parent, batch_size=batch_size,
                              max_length=max_length, sketch_dim=sketch_dim, lens=lens)
    run = _Run(store, unit, quantize, textset, force)
    wanted, n_layers = ([], 0) if requested is None else lens_plan(spec, requested, lens)
    if n_layers >= 0 and not run.missing(wanted if requested is not None else None):
        return IngestResult(str(key), textset, "skipped",
                            layers={layer: "skipped" for layer in wanted})
    label = str(key) if requested is None else (
        f"{key}#{format_layers(wanted) if wanted else requested}")
    return run.execute(label, requested, wanted, n_layers, progress)


class _Run:
    """One ingest: its variants, what is missing, and the ``ingest_runs`` row around scoring."""

    def __init__(self, store: Store, unit: Unit, quantize: str | None, textset: str,
                 force: bool) -> None:
        self.store, self.unit, self.quantize, self.force = store, unit, quantize, force
        self.textset = store.textset(textset)

    def missing(self, layers: list[int] | None) -> list[Variant]:
        """The variants to score: the output (``layers`` None) or the lens layers not stored."""
        keys = [self.unit.base] if layers is None else [
            replace(self.unit.base, layer=layer) for layer in layers]
        variants = [variant(self.unit, key, self.textset.name, self.quantize) for key in keys]
        return [v for v in variants if self.store.needs_vector(
            str(v.key), self.textset.textset_id, self.unit.source, v.config_id, self.force)]

    def execute(self, label: str, requested, wanted: list[int], n_layers: int,
                progress: bool) -> IngestResult:
        run_id = self.store.start_run(label, self.textset.name, self.unit.source)
        started = time.perf_counter()
        try:
            texts = self.store.texts(self.textset.textset_id)
            self.store.release()  # let readers in while we score; the write reopens it
            loads = Loads(self.unit)
            if n_layers < 0:  # the config could not be read on its own: decide now
                loaded = loads.get(self.quantize, texts)
                wanted, _ = lens_plan(self.unit.spec(self.quantize), requested, self.unit.lens,
                                      loaded.model.config)
            missing = self.missing(wanted if requested is not None else None)
            self.store.release()
            scored, written = self._score(missing, texts, loads, progress) if missing else (
                None, [])
        except BaseException as exc:
            with contextlib.suppress(StoreError):  # locked, full: marked interrupted next time
                self.store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                                      seconds=time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        self.store.finish_run(run_id, "done" if any(written) else "skipped", seconds=seconds,
                              tokens=scored.tokens if scored else 0)
        result = IngestResult(str(self.unit.base), self.textset.name,
                              "stored" if any(written) else "skipped", seconds,
                              n_params=loads.base.n_params if loads.base else None,
                              layers={layer: "skipped" for layer in wanted})
        return _completed(result, scored, written, lens=requested is not None)

    def _score(self, missing: list[Variant], texts: list[str], loads: Loads,
               progress: bool) -> tuple[ScoredPass, list[bool]]:
        """Score the missing variants in one pass, then write each: (the pass, written)."""
        partial = self._partial_path(missing)
        if self.force:
            partial.unlink(missing_ok=True)  # --force re-scores every text
        (scored,) = score_unit(self.unit, missing, {self.textset.name: texts}, loads=loads,
                               partial_path=lambda group: partial, progress=progress)
        written = write_or_keep(self.store, scored.records, self.textset.textset_id, self.force)
        partial.unlink(missing_ok=True)  # the vectors are stored: the sums so far are done with
        partial.with_suffix(".tmp.npy").unlink(missing_ok=True)
        return scored, written

    def _partial_path(self, missing: list[Variant]) -> Path:
        layers = [v.key.layer for v in missing if v.key.layer is not None]
        suffix = f".{self.textset.textset_id}.{missing[0].config_id}" + (
            f".layers-{format_layers(layers)}" if layers else "") + ".partial.npy"
        return pending_path(self.store.path, self.unit.base, suffix)


def _completed(result: IngestResult, scored: ScoredPass | None, written: list[bool],
               lens: bool) -> IngestResult:
    """``result`` with what scoring and writing did: per-layer statuses, tokens, truncation,
    whether a weight sketch was stored and why not."""
    if scored is None:
        return result
    record = scored.records[0]
    stored = any(written)
    result.n_params = record.n_params
    result.tokens, result.score_seconds = scored.tokens, scored.seconds
    result.resumed, result.n_truncated = scored.resumed, record.n_truncated
    result.warnings = [scored.warning] if scored.warning else []
    if lens:
        result.layers.update({r.key.layer: "stored" if w else "skipped"
                              for r, w in zip(scored.records, written, strict=True)})
        result.sketch_note = LENS_SKETCH_NOTE if stored else None
    else:
        result.sketched = stored and record.sketch is not None
        result.sketch_note = record.sketch_note if stored else None
    return result
