"""nearest through a stored view: SQL's macro from a bare DuckDB client against the numpy path.

Per size K (models) × N (texts): bench_scale's synthetic atlas (built through the import, or
reused from --cache), a clip + drop-texts view stored on it through the API (the floor at the 5 %
quantile of the values, 1 % of the texts dropped at random: what nearest computes does not
depend on how a view was fitted), then over --queries keys, alternating: ``SELECT * FROM
nearest(key, 10, view := 'bench-view')`` (SQL alone, no atlas code in the query) against
``Atlas.nearest(key, 10, view=View)`` (numpy: every vector of the set read and viewed), their
medians and ratio, and whether both found the same top 10 with KLs and SEs to 10⁻⁹. Each path's
peak memory is a fresh process's high-water mark (VmHWM) over one query.
Run: ``python bench/bench_views.py --sizes 1000x10000 10000x10000 --cache /tmp/s`` (from a
checkout no one is editing: the cached atlas is opened writable, taking this checkout's SQL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_scale import cached_atlas

import atlas
from atlas.analysis.views import View
from atlas.queries import save_view

VIEW = "bench-view"
CHILD = """
import sys, duckdb, atlas
path, key, how, view = sys.argv[1:5]
if how == "sql":
    duckdb.connect(path, read_only=True).execute(
        "SELECT * FROM nearest(?, 10, view := ?)", [key, view]).fetchall()
else:
    with atlas.open(path, read_only=True) as db:
        db.nearest(key, 10, view=db.view(view))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def store_view(path: Path) -> View:
    """The bench's view on the atlas's one text set, stored (replacing an earlier one)."""
    with atlas.open(path) as db:
        textset = db.sql("SELECT name, n_texts FROM textsets").row(0)
        floor = db.sql("SELECT quantile_cont(loglik[1], 0.05) AS q FROM vector_parts")["q"][0]
        dropped = np.random.default_rng(0).choice(textset[1], textset[1] // 100, replace=False)
        view = View(VIEW, textset[0], ("clip", "drop-texts"),
                    {"clip": {"threshold": float(floor)},
                     "drop-texts": {"dropped": sorted(int(i) for i in dropped)}})
        save_view(db, view, db.sql("SELECT key FROM models")["key"].to_list(), replace=True)
        return view


def timed(path: Path, view: View, queries: int) -> dict:
    """Both paths alternating in one process: the SQL through the API's own DuckDB connection
    (DuckDB refuses a second, differently configured one on the same file in one process)."""
    sql_s, numpy_s, same = [], [], True
    with atlas.open(path, read_only=True) as db, db.store.connect() as con:
        n_models = con.execute("SELECT count(*) FROM vector_rows").fetchone()[0]
        for i in np.random.default_rng(2).choice(n_models, queries, replace=False):
            start = time.perf_counter()
            found = con.execute("SELECT key, kl, se FROM nearest(?, 10, view := ?)",
                                [f"m-{i}", VIEW]).fetchall()
            sql_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            expected = db.nearest(f"m-{i}", 10, view=view)
            numpy_s.append(time.perf_counter() - start)
            same &= [r[0] for r in found] == expected["key"].to_list() and np.allclose(
                [r[1:] for r in found], expected.select("kl", "se").to_numpy(), rtol=1e-9,
                atol=1e-15)
    return {"sql_s_median": float(np.median(sql_s)), "numpy_s_median": float(np.median(numpy_s)),
            "ratio": float(np.median(sql_s) / np.median(numpy_s)), "same_top10": bool(same)}


def peak_gb(path: Path, how: str) -> float:
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), "m-1", how, VIEW], check=True,
                           stdout=subprocess.PIPE, text=True)
    return int(child.stdout.split()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["1000x10000"])
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None,
                        help="bench_scale's cache: keep the built atlases there and reuse them")
    args = parser.parse_args()
    for size in args.sizes:
        n_models, n_texts = (int(part) for part in size.lower().split("x"))
        folder = args.cache or Path(tempfile.mkdtemp(prefix="bench-views-"))
        try:
            path, _ = cached_atlas(folder, n_models, n_texts)
            view = store_view(path)
            result = {"models": n_models, "texts": n_texts, **timed(path, view, args.queries),
                      "sql_peak_gb": peak_gb(path, "sql"), "numpy_peak_gb": peak_gb(path, "numpy")}
            print(json.dumps(result), flush=True)
        finally:
            if args.cache is None:
                shutil.rmtree(folder)


if __name__ == "__main__":
    main()
