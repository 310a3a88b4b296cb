"""The worker: load one model, score every variant of its unit, write each vector as a shard.

It never opens the atlas: texts come from the shard directory and vectors go back to it, so any
number of workers (processes, Ray tasks on other machines) run beside readers and one merger.
Scoring reuses ingest's pieces (Scorer, lens, config id, provenance, weight sketch), so a shard
holds exactly what ``atlas ingest`` of the same variant would store. Output and lens layers of
one (quantization, text set) come from one forward pass per batch: the lens's final index is the
model's own output, bit-identical to a plain scoring (atlas.scoring).
"""

from __future__ import annotations

import io
import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from atlas.bulk.plan import Unit, Variant, config_id
from atlas.bulk.shards import ShardDir
from atlas.errors import AtlasError
from atlas.ingest import load_for_scoring, sketch_weights, vector_provenance
from atlas.layers import layer_count
from atlas.loading import LoadedModel, load_model
from atlas.quantize import quantized_copy
from atlas.scoring import Scorer, Scores
from atlas.specs import ModelSpec
from atlas.weights import WeightSketch

LENS_ONLY_PROVENANCE = ("forward", "lens")  # what a lens pass adds to a plain scoring's record


@dataclass(frozen=True)
class Task:
    """One unit of work as sent to a worker (picklable: processes and Ray)."""

    unit: Unit
    variants: tuple[Variant, ...]
    textset_hashes: dict[str, str]  # text set name → content hash (its file in the shard dir)
    shard_dir: str
    attempt: int = 1
    threads: int | None = None  # torch threads in this worker
    run_id: str = ""  # unique per run: with the attempt, it names this attempt's shards

    @property
    def tag(self) -> str:
        return f"{self.run_id}-a{self.attempt}"


@dataclass(frozen=True)
class Outcome:
    unit_id: str
    label: str
    written: int = 0
    tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    error: str | None = None


def run_task(task: Task) -> Outcome:
    """Score a unit; every failure is logged and returned, never raised, so a bad model cannot
    stop a run (the runner decides about retries)."""
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    shards = ShardDir(task.shard_dir)
    unit = task.unit
    common = {"unit": unit.id, "label": str(unit.base), "attempt": task.attempt}
    shards.log("start", variants=len(task.variants), **common)
    started = time.perf_counter()
    try:
        written, tokens, load_seconds = _score_unit(task, shards)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        shards.log("failed", error=error, seconds=seconds,
                   traceback=traceback.format_exc(limit=8), **common)
        return Outcome(unit.id, str(unit.base), seconds=seconds, error=error)
    seconds = time.perf_counter() - started
    shards.log("done", written=written, tokens=tokens, seconds=seconds,
               load_seconds=load_seconds, **common)
    return Outcome(unit.id, str(unit.base), written, tokens, seconds, load_seconds)


def _score_unit(task: Task, shards: ShardDir) -> tuple[int, int, float]:
    """(vectors written, tokens scored, seconds loading). The float model is loaded once and
    serves the output, every lens layer and every in-memory (torchao) quantization."""
    unit = task.unit
    _check_config(unit, task.variants)
    written = tokens = 0
    loads = _Loads(unit)
    # None first, then torchao copies of the float model, then quantizations that load anew
    passes = sorted({v.quantize for v in task.variants}, key=lambda q: (q is not None, q or ""))
    for quantize in passes:
        group = [v for v in task.variants if v.quantize == quantize]
        texts = {name: shards.load_texts(task.textset_hashes[name])
                 for name in dict.fromkeys(v.textset for v in group)}
        spec = unit.spec(quantize)
        model = loads.get(quantize, next(iter(texts.values())))
        sketch, note = None, None
        for textset, batch in texts.items():
            variants = [v for v in group if v.textset == textset]
            scores = score_pass(model, batch, [v.key.layer for v in variants], unit)
            for variant in variants:
                provenance = vector_provenance(scores[variant.key.layer], spec, model)
                if variant.key.layer is None and sketch is None and note is None:
                    sketch, note = sketch_weights(model.model, unit.settings.sketch_dim,
                                                  quantized=provenance["quantization"] is not None)
                shards.write(variant.shard_name, task.tag, shard_parquet(
                    variant, scores[variant.key.layer], provenance, spec, unit, model.n_params,
                    sketch if variant.key.layer is None else None), {
                    "key": str(variant.key), "textset": textset,
                    "textset_hash": task.textset_hashes[textset],
                    "config_id": variant.config_id, "unit": unit.id,
                    "attempt": task.attempt, "sketch_note": note})
                written += 1
            tokens += next(iter(scores.values())).scored_tokens
    return written, tokens, loads.seconds


class _Loads:
    """The models of one unit: the float load (kept for in-memory quantizations) and the
    quantized ones, with the time spent loading."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.base: LoadedModel | None = None
        self.seconds = 0.0

    def get(self, quantize: str | None, texts: list[str]) -> LoadedModel:
        started = time.perf_counter()
        spec = self.unit.spec(quantize)
        try:
            if spec.quantize is not None and spec.quantize.method != "torchao":
                return load_for_scoring(spec, texts)  # quantized while loading (bnb, GPTQ)
            if self.base is None:
                self.base = load_model(self.unit.spec())
            return self.base if spec.quantize is None else quantized_copy(self.base,
                                                                          spec.quantize)
        finally:
            self.seconds += time.perf_counter() - started


def _check_config(unit: Unit, variants: Sequence[Variant]) -> None:
    """The planner's config id must be this worker's, or the shard would conflict at merge."""
    for variant in variants:
        here = config_id(unit, variant.key, variant.quantize)
        if here != variant.config_id:
            raise AtlasError(
                f"{variant.key}: this worker's scoring config ({here}) is not the planner's "
                f"({variant.config_id}): 'dtype = \"auto\"' resolves differently on this "
                "machine's device; set dtype (and device) explicitly in the manifest")


def score_pass(loaded: LoadedModel, texts: list[str], layers: Sequence[int | None],
               unit: Unit) -> dict[int | None, Scores]:
    """Scores of the output (None) and lens layers of one model on one text set, all from one
    forward pass per batch."""
    settings = unit.settings
    lens = sorted({layer for layer in layers if layer is not None})
    if not lens:
        scorer = Scorer(loaded, batch_size=settings.batch_size, max_length=settings.max_length)
        return {None: scorer.score(texts, progress=False)}
    final = layer_count(loaded.model.config)
    output = None in layers
    scorer = Scorer(loaded, batch_size=settings.batch_size, max_length=settings.max_length,
                    layers=sorted(set(lens) | ({final} if output else set())))
    scores = scorer.score_layers(texts, progress=False)
    found: dict[int | None, Scores] = {layer: scores[layer] for layer in lens}
    if output:
        plain = {k: v for k, v in scores[final].provenance.items()
                 if k not in LENS_ONLY_PROVENANCE}
        found[None] = replace(scores[final], provenance=plain)
    return found


def shard_parquet(variant: Variant, scores: Scores, provenance: dict, spec: ModelSpec,
                  unit: Unit, n_params: int, sketch: WeightSketch | None) -> bytes:
    """One row: the vector in float64 (the store rounds it as ingest does) and its record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sketch_meta = None if sketch is None else json.dumps(
        {f.name: getattr(sketch, f.name) for f in fields(sketch) if f.name != "sketch"})
    table = pa.table({
        "key": [str(variant.key)], "textset": [variant.textset],
        "config_id": [variant.config_id],
        "loglik": pa.array([scores.loglik.tolist()], pa.list_(pa.float64())),
        "n_tokens": pa.array([scores.n_tokens.tolist()], pa.list_(pa.int64())),
        "n_truncated": [int(scores.n_truncated)], "n_params": [int(n_params)],
        "parent": pa.array([unit.parent], pa.string()), "source": [spec.source],
        "revision": pa.array([spec.revision], pa.string()),
        "provenance": [json.dumps(provenance)],
        "sketch": pa.array([None if sketch is None else sketch.sketch.tolist()],
                           pa.list_(pa.float64())),
        "sketch_meta": pa.array([sketch_meta], pa.string()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
