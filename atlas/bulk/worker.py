"""The worker: load one model, score every variant of its unit, write each vector as a shard.

It never opens the atlas: texts come from the shard directory and vectors go back to it, so any
number of workers (processes, Ray tasks on other machines) run beside readers and one merger.
Scoring is the pipeline's (atlas.pipeline.score), so a shard holds exactly the record
``atlas ingest`` of the same variant would store.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from atlas.bulk.shards import ShardDir
from atlas.pipeline.records import to_parquet
from atlas.pipeline.score import Loads, score_unit
from atlas.pipeline.units import Unit, Variant


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
    """(vectors written, tokens scored, seconds loading): the unit scored by the pipeline,
    each record written as a shard."""
    texts = {name: shards.load_texts(task.textset_hashes[name])
             for name in dict.fromkeys(v.textset for v in task.variants)}
    names = {(v.key, v.textset): v.shard_name for v in task.variants}
    loads = Loads(task.unit)
    written = tokens = 0
    for scored in score_unit(task.unit, task.variants, texts, loads=loads):
        for record in scored.records:
            shards.write(names[record.key, record.textset], task.tag, to_parquet(record), {
                "key": str(record.key), "textset": record.textset,
                "textset_hash": task.textset_hashes[record.textset],
                "config_id": record.config_id, "unit": task.unit.id,
                "attempt": task.attempt, "sketch_note": record.sketch_note})
            written += 1
        tokens += scored.tokens
    return written, tokens, loads.seconds
