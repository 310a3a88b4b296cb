"""How fast the TUI opens and filters a big atlas: 100,000 variants against 1,000.

Builds synthetic atlases through the real import path (``Atlas.import_vectors`` on generated
Parquet files, a 16-text text set so the vectors are short), caches them under ``--cache``
(``/tmp/tui_bench``; the 100,000-variant one takes 30–50 minutes to import on 2 cores, once), then
drives the real app under ``App.run_test()`` and times, as a person would see it:

- open: from creating the app until the Models table shows rows;
- a substring filter typed into the filter box (one keystroke after another, debounce included)
  until the table shows the filtered rows; a ``where …`` filter from Enter until shown;
- sort (``s``), group by family (``g``) and back, the next page (ctrl+end), and a model's
  detail screen (nearest models, related KLs), from the key press until shown.

Baselines measured in the same run: the same app on the 1,000-variant atlas, and the previous
approach of loading every variant into the DataTable (one query, all rows added). Run:

    python bench/bench_tui_open.py [--variants 100000] [--baseline 1000] [--repeats 5]

``--atlas PATH`` times an existing atlas instead (e.g. bench_scale.py's 10⁶-variant one, keys
``m-<i>``: ``--text m-123456 --where "key like 'm-12%'"``), alone: no baseline and no all-rows
load (10⁶ rows at ~1 ms a row). It is opened read-only, as the TUI does; open a copy writable
once first if it was built by an older version (to bring its schema and macros up to date).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import polars as pl

import atlas
from atlas.textsets import TextSet

N_TEXTS = 16
CHUNK = 5_000  # variants per Parquet file (each file is validated as a whole before writing)
FAMILIES, SIZES, SEEDS = 25, ("70m", "160m", "410m", "1b"), 10
SIZE_PARAMS = {"70m": 70_000_000, "160m": 160_000_000, "410m": 410_000_000, "1b": 1_000_000_000}


# the atlas ---------------------------------------------------------------------------------------
def variant(i: int) -> dict:
    """The i-th synthetic variant: families vary fastest, then sizes, seeds and checkpoints, so
    any prefix of the sequence spans every family (25 × 4 × 10 × steps)."""
    rest, family = divmod(i, FAMILIES)
    rest, size = divmod(rest, len(SIZES))
    step, seed = divmod(rest, SEEDS)
    label = SIZES[size]
    return {"family": f"fam{family:02d}", "size": label, "seed": seed,
            "checkpoint": f"step{step * 1000}", "n_params": SIZE_PARAMS[label]}


def build(path: Path, n_variants: int) -> float:
    """Write the atlas through ``Atlas.import_vectors``; returns the seconds it took."""
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    db = atlas.open(partial)
    db.import_textset(TextSet([f"bench text {i} " * (1 + i % 5) for i in range(N_TEXTS)],
                              source="bench_tui_open"), "bench-16")
    rng = np.random.default_rng(0)
    parquet = path.with_suffix(".chunk.parquet")
    for first in range(0, n_variants, CHUNK):
        rows = [variant(i) for i in range(first, min(first + CHUNK, n_variants))]
        loglik = rng.normal(-300, 40, size=(len(rows), N_TEXTS)).astype(np.float32)
        frame = pl.DataFrame(rows).with_columns(loglik=pl.Series(list(loglik)))
        frame.write_parquet(parquet)
        db.import_vectors(parquet, "bench-16")
        print(f"  imported {first + len(rows):,} of {n_variants:,} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    db.close()
    parquet.unlink()
    partial.rename(path)
    return time.perf_counter() - started


def cached_atlas(cache: Path, n_variants: int) -> Path:
    path = cache / f"atlas-{n_variants}x{N_TEXTS}.duckdb"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"building {path} through Atlas.import_vectors …", flush=True)
        print(f"  built in {build(path, n_variants):.0f} s", flush=True)
    return path


# driving the app ---------------------------------------------------------------------------------
async def until(pilot, done: Callable[[], bool], timeout: float = 120.0) -> None:
    """Let the app run until ``done()`` (checked after each round of messages)."""
    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the app did not get there")
        await pilot.pause(0.002)


def shows(screen, **fields) -> Callable[[], bool]:
    """The Models table shows the first page of a query with these fields, nothing pending."""
    def done() -> bool:
        page = screen.page
        return (page is not None and screen.settled and page.query == screen.query_spec
                and all(getattr(page.query, k) == v for k, v in fields.items()))
    return done


async def timed(pilot, action: Callable[[], Awaitable[None]], done: Callable[[], bool]) -> float:
    started = time.perf_counter()
    await action()
    await until(pilot, done)
    return time.perf_counter() - started


TEXT, WHERE = "fam07-1b/s3", "size = '1b' and step >= 10000"  # filters for the synthetic atlas


async def session(path: Path, text: str = TEXT, clause: str = WHERE) -> dict[str, float]:
    """One run of the app: open, then each interaction, as seconds until the table shows it."""
    from textual.widgets import DataTable, Input

    from tui.app import AtlasApp
    from tui.screens import models

    started = time.perf_counter()
    app = AtlasApp(path)
    times = {}
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        table = screen.query_one("#models", DataTable)
        await until(pilot, lambda: table.row_count > 0)
        times["open"] = time.perf_counter() - started
        await pilot.press("slash", *text[:-1])
        times["substring filter (last key → rows)"] = await timed(
            pilot, lambda: pilot.press(text[-1]), shows(screen, text=text))
        screen.query_one("#filter", Input).value = "where " + clause
        times["where filter (Enter → rows)"] = await timed(
            pilot, lambda: pilot.press("enter"), shows(screen, where=clause))
        screen.query_one("#filter", Input).value = ""
        await until(pilot, shows(screen, text="", where=None))
        await pilot.press("escape")
        times["sort (s → rows)"] = await timed(pilot, lambda: pilot.press("s"),
                                               shows(screen, sort="family"))
        times["group by family (g → rows)"] = await timed(pilot, lambda: pilot.press("g"),
                                                          shows(screen, grouped=True))
        times["ungroup (g → rows)"] = await timed(pilot, lambda: pilot.press("g"),
                                                  shows(screen, grouped=False))
        times["next page (ctrl+end → rows)"] = await timed(
            pilot, lambda: pilot.press("ctrl+end"),
            lambda: screen.loaded > models.PAGE_ROWS and screen.settled)
        times["open a model (Enter → detail)"] = await timed(
            pilot, lambda: pilot.press("enter"),
            lambda: getattr(app.screen, "detail", None) is not None)
    return times


async def all_rows_session(path: Path) -> float:
    """The previous approach: every variant in one query, all rows added to the DataTable."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from atlas.api import ModelPage, ModelQuery
    from tui.backend import Backend

    class AllRows(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable(id="models")

        def on_mount(self) -> None:
            self.run_worker(self.load, thread=True)

        def load(self) -> None:
            spec = ModelQuery()
            page = Backend(path).call(lambda a: a.model_page(spec, 0, 10**9))
            self.call_from_thread(self.fill, page)

        def fill(self, page: ModelPage) -> None:
            table = self.query_one(DataTable)
            table.add_columns(*page.query.columns)
            table.add_rows(page.rows.select(page.query.columns).rows())

    started = time.perf_counter()
    app = AllRows()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(DataTable)
        await until(pilot, lambda: table.row_count > 0)
        return time.perf_counter() - started


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def import_seconds() -> float:
    """A fresh interpreter's ``import tui.app`` (what `atlas tui` pays before opening)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                          "import tui.app; print(time.perf_counter() - t)"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def one_atlas(path: Path, repeats: int, text: str, clause: str) -> None:
    """Time the app on an existing atlas alone (``--atlas``)."""
    asyncio.run(session(path, text, clause))  # warm the OS file cache and the imports
    result = medians([asyncio.run(session(path, text, clause)) for _ in range(repeats)])
    print(f"\n{path}: medians of {repeats} runs, seconds (App.run_test, 120×40), "
          f"load average {os.getloadavg()[0]:.2f}:")
    for name, seconds in result.items():
        print(f"{name:38} {seconds:10.3f}")
    print(f"import tui.app in a fresh interpreter: {import_seconds():.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tui_bench"))
    parser.add_argument("--atlas", type=Path, help="time this existing atlas alone")
    parser.add_argument("--text", default=TEXT, help="the substring filter typed")
    parser.add_argument("--where", default=WHERE, help="the where … filter entered")
    args = parser.parse_args()
    if args.atlas is not None:
        one_atlas(args.atlas, args.repeats, args.text, args.where)
        return
    big, small = (cached_atlas(args.cache, n) for n in (args.variants, args.baseline))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.system()}")
    results = {}
    for n, path in ((args.baseline, small), (args.variants, big)):
        asyncio.run(session(path, args.text, args.where))  # warm the OS file cache, the imports
        results[n] = medians([asyncio.run(session(path, args.text, args.where))
                              for _ in range(args.repeats)])
    all_rows = statistics.median(asyncio.run(all_rows_session(big))
                                 for _ in range(max(1, args.repeats // 2)))
    print(f"\nmedians of {args.repeats} runs, seconds (App.run_test, 120×40):")
    print(f"{'':38} {args.baseline:>10,} {args.variants:>10,}   ratio")
    for name, seconds in results[args.variants].items():
        base = results[args.baseline][name]
        print(f"{name:38} {base:10.3f} {seconds:10.3f}   {seconds / base:5.2f}×")
    opened = results[args.variants]["open"]
    print(f"\nall {args.variants:,} rows into the DataTable (the previous approach): "
          f"{all_rows:.2f} s to first rows, {all_rows / opened:.1f}× the paged open")
    print(f"import tui.app in a fresh interpreter: {import_seconds():.2f} s")


if __name__ == "__main__":
    main()
