"""The runner: plan, hand units to workers, retry failures with backoff, merge as shards land.

Workers (processes, Ray tasks, or this process with ``workers=0``) only write shards; one merger
thread in the runner folds them into the atlas every second, and once more at the end. Killing
the runner at any moment loses at most the units in flight: finished shards are merged by the
next run (or ``atlas bulk merge``), and the plan skips everything stored or scored.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.bulk.manifest import MAX_LOADS, read_manifest
from atlas.bulk.merge import MergeReport, merge_ready
from atlas.bulk.plan import Plan, make_plan
from atlas.bulk.shards import ShardDir, default_shard_dir
from atlas.bulk.worker import Outcome, Task, run_task
from atlas.processes import guarded_pool
from atlas.progress import progress_bar
from atlas.store import Store

MERGE_INTERVAL = 1.0  # seconds between merge rounds during a run
BACKOFF_SECONDS = 2.0  # before the second attempt; doubles for each further one


@dataclass
class RunReport:
    units: int = 0  # units given to workers
    variants: int = 0  # vectors they were to score
    done: int = 0  # vectors of the manifest stored already when the run was planned
    written: int = 0  # shards written
    tokens: int = 0
    seconds: float = 0.0
    failed: list[Outcome] = field(default_factory=list)  # units out of attempts
    merge: MergeReport = field(default_factory=MergeReport)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# backends ------------------------------------------------------------------------------------
class InlineBackend:
    """Scores in the runner's own process, one unit at a time (``--workers 0``)."""

    name, workers = "inline", 1

    def submit(self, task: Task) -> Future:
        future: Future = Future()
        future.set_result(run_task(task))
        return future

    def shutdown(self) -> None:
        """Nothing to stop."""


class ProcessBackend:
    """N spawned worker processes on this machine, the cores shared out among them."""

    name = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._start()

    def _start(self) -> None:
        """Workers that die with the runner (a kill of the runner alone must not leave them
        writing shards); started by the thread that submits, which outlives them."""
        self.executor = guarded_pool(self.workers)

    def submit(self, task: Task) -> Future:
        return self.executor.submit(run_task, replace(task, threads=self.threads))

    def restart(self) -> None:
        """After a worker died (OOM, segfault) the pool is broken: start a fresh one."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._start()

    def shutdown(self) -> None:
        self.executor.shutdown(cancel_futures=True)


def make_backend(workers: int, ray_address: str | None):
    if ray_address is not None:
        from atlas.bulk.ray_backend import RayBackend  # Ray is imported only here

        return RayBackend(ray_address, workers or None)
    return InlineBackend() if workers == 0 else ProcessBackend(workers)


# merging while running -----------------------------------------------------------------------
class Merger(threading.Thread):
    """The single writer: merges ready shards every ``MERGE_INTERVAL`` seconds."""

    def __init__(self, db_path: Path, shards: ShardDir) -> None:
        super().__init__(name="atlas-bulk-merger", daemon=True)
        self.store = Store(db_path)
        self.store.release()
        self.shards = shards
        self.report = MergeReport()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(MERGE_INTERVAL):
            self.merge()

    def merge(self) -> None:
        try:
            self.report.add(merge_ready(self.store, self.shards))
        except Exception as exc:  # surfaced by finish(); the shards stay ready
            self.error = exc

    def finish(self) -> MergeReport:
        """Stop the thread and merge what is left."""
        self._stop_event.set()
        self.join()
        self.merge()
        if self.error is not None:
            raise self.error
        return self.report


# the run -------------------------------------------------------------------------------------
def prepare(manifest_path: Path, db_path: Path, shard_dir: Path | None, max_attempts: int,
            merge: bool = True, max_loads: int = MAX_LOADS) -> tuple[Plan, ShardDir]:
    """Read, merge what earlier runs left (unless ``merge`` is off: a read-only look), plan;
    the store is released afterwards."""
    manifest = read_manifest(manifest_path, max_loads)
    shards = ShardDir(shard_dir or default_shard_dir(db_path)).create()
    store = Store(db_path, read_only=not merge)
    if merge:
        merge_ready(store, shards)
    return make_plan(manifest, store, shards, max_attempts=max_attempts), shards


def tasks_of(plan: Plan, shards: ShardDir, db_path: Path, retry_failed: bool) -> list[Task]:
    """The plan's work as tasks; the texts they need exported to the shard dir once."""
    store = Store(db_path, read_only=True)
    hashes = {}
    for name, stored in plan.textsets.items():
        shards.export_texts(stored.content_hash, store.texts(stored.textset_id))
        hashes[name] = stored.content_hash
    store.release()
    run_id = uuid.uuid4().hex[:12]
    return [Task(unit, tuple(variants), hashes, str(shards.path),
                 attempt=1 if retry_failed else plan.failures.get(unit.id, 0) + 1,
                 run_id=run_id)
            for unit, variants in plan.work(retry_failed)]


def run_bulk(manifest_path: str | Path, db_path: str | Path, *, workers: int = 1,
             ray_address: str | None = None, shard_dir: str | Path | None = None,
             max_attempts: int = 3, retry_failed: bool = False, progress: bool = True,
             backoff: float = BACKOFF_SECONDS, max_loads: int = MAX_LOADS) -> RunReport:
    """Score every variant of the manifest not yet in the atlas, and merge it."""
    db_path = Path(db_path)
    plan, shards = prepare(Path(manifest_path), db_path,
                           Path(shard_dir) if shard_dir else None, max_attempts,
                           max_loads=max_loads)
    tasks = tasks_of(plan, shards, db_path, retry_failed)
    report = RunReport(units=len(tasks), variants=sum(len(t.variants) for t in tasks),
                       done=plan.counts()["done"])
    shards.write_run({"started": time.time(), "manifest": str(Path(manifest_path).resolve()),
                      "db": str(db_path.resolve()), "workers": workers, "pid": os.getpid(),
                      "host": socket.gethostname(), "max_attempts": max_attempts,
                      "units": {t.unit.id: len(t.variants) for t in tasks},
                      "variants": report.variants, "counts": dict(plan.counts())})
    merger = Merger(db_path, shards)
    merger.start()
    started = time.perf_counter()
    try:
        if tasks:
            backend = make_backend(workers, ray_address)
            try:
                _execute(backend, tasks, shards, report, max_attempts, backoff, progress)
            finally:
                backend.shutdown()
    finally:
        report.seconds = time.perf_counter() - started
        report.merge = merger.finish()
    return report


def _execute(backend, tasks: list[Task], shards: ShardDir, report: RunReport,
             max_attempts: int, backoff: float, progress: bool) -> None:
    """Keep the workers busy; a failed unit goes back in the queue after its backoff, until
    it has used ``max_attempts``."""
    queue: deque[tuple[Task, float]] = deque((task, 0.0) for task in tasks)
    running: dict[Future, Task] = {}
    started = time.perf_counter()
    with _display(progress, report.variants) as show:
        while queue or running:
            _submit_due(backend, queue, running)
            if not running:
                time.sleep(0.1)
                continue
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                outcome = _outcome(backend, future, task, shards)
                report.written += outcome.written
                report.tokens += outcome.tokens
                if outcome.error is None:
                    continue
                if task.attempt < max_attempts:
                    delay = backoff * 2 ** (task.attempt - 1)
                    queue.append((replace(task, attempt=task.attempt + 1),
                                  time.monotonic() + delay))
                else:
                    report.failed.append(outcome)
            show(report, time.perf_counter() - started, len(running))


def _submit_due(backend, queue: deque, running: dict) -> None:
    """Submit tasks whose backoff is over, keeping about two per worker queued."""
    for _ in range(len(queue)):
        if len(running) >= 2 * backend.workers:
            return
        task, due = queue.popleft()
        if due > time.monotonic():
            queue.append((task, due))
            continue
        running[backend.submit(task)] = task


def _outcome(backend, future: Future, task: Task, shards: ShardDir) -> Outcome:
    """The worker's outcome; a worker that died (not a failed unit) is logged here."""
    try:
        return future.result()
    except Exception as exc:  # the process or Ray worker itself was lost
        if isinstance(exc, BrokenProcessPool):
            backend.restart()
        error = f"worker lost: {type(exc).__name__}: {exc}"
        shards.log("failed", unit=task.unit.id, label=str(task.unit.base),
                   attempt=task.attempt, error=error)
        return Outcome(task.unit.id, str(task.unit.base), error=error)


@contextlib.contextmanager
def _display(enabled: bool, total: int):
    """A live line: vectors done/total, tokens/s, failures, ETA."""
    if not enabled:
        yield lambda *args: None
        return
    with progress_bar("bulk", "{task.fields[info]}", remaining_label="ETA") as bar:
        task = bar.add_task("bulk", total=total, info="")

        def show(report: RunReport, elapsed: float, running: int) -> None:
            info = (f"{report.tokens / elapsed if elapsed else 0:,.0f} tok/s · "
                    f"{running} running · {len(report.failed)} failed")
            bar.update(task, completed=report.written, info=info)

        yield show


def merge_standalone(db_path: str | Path, shard_dir: str | Path | None = None) -> MergeReport:
    """``atlas bulk merge``: fold finished shards into the atlas (safe during a run)."""
    db_path = Path(db_path)
    shards = ShardDir(shard_dir or default_shard_dir(db_path)).create()
    return merge_ready(Store(db_path), shards)
