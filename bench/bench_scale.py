"""Nearest at scale: a bare DuckDB client against an in-memory numpy GEMV, on synthetic atlases.

Per size K (models) × N (texts): builds an atlas through the real Parquet import (low-rank
structure, per-model noise and close pairs, like checkpoints and fine-tunes; the file written a
block of 4,096 rows at a time, one row group each, imported in a fresh process whose time and
peak RSS are the import's), then measures the file size per model, ``SELECT * FROM nearest(key,
10)`` from a plain ``duckdb`` connection (no atlas code: median and p95 over --queries keys, once
as a new client finds the file, once with every part in DuckDB's buffer pool, and once more so
with each side's calls back to back in a block of their own), the
exact numpy top 10 (a GEMV over the centred float32 matrix, held in memory: 4 GB at 10⁵ × 10⁴,
with precomputed norms; each of the two timed from idle, IDLE_S) and recall@10 against it,
the sketch basis fit, ``kl_matrix`` (K ≤ 10,000), this process's peak memory and the load
average. Run it from a checkout no one is editing (e.g. a ``git worktree`` on PYTHONPATH): it
opens each cached atlas writable, applying this checkout's SQL.

With --cache FOLDER the atlas of each size is kept there (with what its import measured) and
reused by later runs, which then time the queries only; without it, it is built in a temporary
folder and deleted.
Run: ``python bench/bench_scale.py --sizes 10000x10000 100000x10000 1000000x256 --cache /tmp/s``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import atlas
from atlas.kl import kl_matrix
from atlas.sketches import SketchBasis
from atlas.textsets import TextSet

BLOCK = 4096  # rows generated and written at a time (a row group of the import's file)
# Seconds of idle before each timed operation. OpenBLAS's workers spin for ~0.1 s after a GEMV,
# on both of this machine's cores, so a query timed right after one shared them: nearest at
# 10⁴ × 10⁴ took 71–87 ms just after a GEMV and 59–62 ms after ≥ 0.1 s idle, while the GEMV
# took 15.4 ms after idle and 16.0 ms just after a query. Each side is timed from idle.
IDLE_S = 0.25


def synthetic_blocks(n_models: int, n_texts: int, seed: int = 0) -> Iterator[np.ndarray]:
    """ℓ, BLOCK float32 rows at a time: text difficulty + model offset + rank-32 structure +
    per-model noise; every 7th model a close copy of another (a fine-tune or quantization of
    it)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(-900, 150, n_texts)
    directions = rng.normal(0, 1, (32, n_texts)) * (8 / np.arange(1, 33) ** 0.7)[:, None]
    for start in range(0, n_models, BLOCK):
        rows = min(BLOCK, n_models - start)
        block = (difficulty + rng.normal(0, 30, (rows, 1))
                 + rng.normal(0, 1, (rows, 32)) @ directions
                 + rng.normal(0, 5, (rows, n_texts)) * rng.uniform(0.5, 1.5, (rows, 1)))
        block[1::7] = block[0::7][:len(block[1::7])] + rng.normal(0, 1, (len(block[1::7]), n_texts))
        yield block.astype(np.float32)


def synthetic(n_models: int, n_texts: int) -> np.ndarray:
    """The whole K × N float32 matrix (the numpy baseline's input: 4 GB at 10⁵ × 10⁴)."""
    out = np.empty((n_models, n_texts), dtype=np.float32)
    for start, block in zip(range(0, n_models, BLOCK), synthetic_blocks(n_models, n_texts),
                            strict=True):
        out[start:start + len(block)] = block
    return out


def write_parquet(path: Path, n_models: int, n_texts: int, keys: list[str] | None = None
                  ) -> None:
    """The import's input, one row group per block: never more than a block of ℓ in memory;
    rows keyed ``keys`` (default m-0, m-1, …)."""
    names = keys or [f"m-{i}" for i in range(n_models)]
    schema = pa.schema({"key": pa.string(), "loglik": pa.large_list(pa.float32())})
    with pq.ParquetWriter(path, schema) as writer:
        start = 0
        for block in synthetic_blocks(n_models, n_texts):
            rows = len(block)
            offsets = pa.array(np.arange(0, (rows + 1) * n_texts, n_texts, dtype=np.int64))
            writer.write_table(pa.table({
                "key": names[start:start + rows],
                "loglik": pa.LargeListArray.from_arrays(offsets, pa.array(block.ravel()))},
                schema=schema))
            start += rows


# Run in a fresh process, so that its peak RSS is the import's alone: the high-water mark of its
# own memory (VmHWM). ru_maxrss is not: Linux carries it over an exec from the forking parent,
# so every import after the first reported the bench's own peak (5.44 and 7.43 GB in run E).
IMPORT_CHILD = """
import json, re, resource, sys, time
import atlas
db = atlas.open(sys.argv[1])
start = time.perf_counter()
db.import_vectors(sys.argv[2], "bench")
seconds = time.perf_counter() - start
db.close()
try:
    with open("/proc/self/status") as status:
        peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) / 2**20
except OSError:  # no /proc (macOS): ru_maxrss, in bytes there
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**30
print(json.dumps({"import_s": seconds, "import_peak_rss_gb": peak}))
"""


def build(folder: Path, n_models: int, n_texts: int, keys: list[str] | None = None) -> dict:
    """The atlas through ``Atlas.import_vectors`` of a Parquet file (``write_parquet``),
    imported in a fresh process: the import's time and peak RSS."""
    with atlas.open(folder / "scale.duckdb") as db:
        db.import_textset(TextSet([f"text {i} " * (1 + i % 50) for i in range(n_texts)]),
                          "bench")
    path = folder / "vectors.parquet"
    write_parquet(path, n_models, n_texts, keys)
    child = subprocess.run([sys.executable, "-c", IMPORT_CHILD, str(folder / "scale.duckdb"),
                            str(path)], check=True, stdout=subprocess.PIPE, text=True)
    path.unlink()
    return json.loads(child.stdout.splitlines()[-1])


def numpy_top(centred: np.ndarray, norms: np.ndarray, query: int, k: int) -> list[int]:
    d2 = norms + norms[query] - 2.0 * (centred @ centred[query])
    d2[query] = np.inf
    top = np.argpartition(d2, k)[:k]
    return list(top[np.argsort(d2[top])])


def exact_top(loglik: np.ndarray, query: int, k: int) -> set[int]:
    """The true top k: float64 distances of the row-centred vectors, a block at a time (the
    float32 GEMV above rounds near-ties differently: 1 of 300 neighbours at 10⁴ × 10⁴)."""
    target = loglik[query].astype(np.float64)
    target -= target.mean()
    d2 = np.empty(len(loglik))
    for start in range(0, len(loglik), BLOCK):
        block = loglik[start:start + BLOCK].astype(np.float64)
        block -= block.mean(axis=1, keepdims=True)
        d2[start:start + BLOCK] = np.einsum("ij,ij->i", block - target, block - target)
    d2[query] = np.inf
    return set(np.lexsort((np.arange(len(d2)), d2))[:k].tolist())


def cached_atlas(cache: Path, n_models: int, n_texts: int) -> tuple[Path, dict]:
    """The atlas of K × N in ``cache`` (built once, upgraded to this version's schema and
    macros when reused) and what its import measured."""
    folder = cache / f"scale-{n_models}x{n_texts}"
    done = folder / "import.json"
    if done.exists():
        atlas.open(folder / "scale.duckdb").close()
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        done.write_text(json.dumps(build(folder, n_models, n_texts)))
    return folder / "scale.duckdb", json.loads(done.read_text())


def timed_queries(path: Path, loglik: np.ndarray, queries: int) -> dict:
    """nearest from a bare client and the numpy GEMV, alternating per query (same load), each
    timed from idle (IDLE_S), twice: first as a new client finds the file (each query's parts
    read from it on first touch), then with every part in DuckDB's buffer pool, as the GEMV's
    matrix is in memory; then warm again, each side back to back in a block. ``loglik`` is
    centred in place (one K × N float32 matrix, not two)."""
    picks = np.random.default_rng(1).choice(len(loglik), queries, replace=False)
    truth = [exact_top(loglik, int(query), 10) for query in picks]  # before centring in float32
    centred = loglik
    centred -= loglik.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    norms = np.einsum("ij,ij->i", centred, centred)
    con = duckdb.connect(str(path), read_only=True)  # a bare client
    con.execute("SELECT * FROM nearest('m-0', 10)").fetchall()  # warm: first read of the file
    cold = _alternate(con, picks, centred, norms)
    con.execute("SELECT sum(loglik[1]) FROM vector_parts").fetchall()  # every part read once
    warm = _alternate(con, picks, centred, norms)
    busy = _in_blocks(con, picks, centred, norms)
    con.close()
    runs = (("cold", cold), ("warm", warm), ("warm_back_to_back", busy))
    times = {f"{name}_{when}": value for when, run in runs
             for name, value in run.items() if name not in ("found", "gemv")}
    found = [key for _, run in runs for key in run["found"]]
    gemv = [key for _, run in runs for key in run["gemv"]]
    return {**times, "recall_at_10": _recall(found, truth * 3),
            "numpy_recall_at_10": _recall(gemv, truth * 3)}


def _alternate(con: duckdb.DuckDBPyConnection, picks: np.ndarray, centred: np.ndarray,
               norms: np.ndarray) -> dict:
    """Each query and its GEMV, alternating, each after IDLE_S asleep."""
    sql_ms, np_ms, found, gemv = [], [], [], []
    for query in picks:
        time.sleep(IDLE_S)
        found.append(_nearest_keys(con, query, sql_ms))
        time.sleep(IDLE_S)
        gemv.append(_gemv_top(centred, norms, query, np_ms))
    return _summary(sql_ms, np_ms, found, gemv)


def _in_blocks(con: duckdb.DuckDBPyConnection, picks: np.ndarray, centred: np.ndarray,
               norms: np.ndarray) -> dict:
    """Every query back to back, then every GEMV: each side as a client calling it in a loop
    finds the machine (alternating, a query would share the cores with OpenBLAS's spinning
    workers)."""
    sql_ms, np_ms = [], []
    found = [_nearest_keys(con, query, sql_ms) for query in picks]
    gemv = [_gemv_top(centred, norms, query, np_ms) for query in picks]
    return _summary(sql_ms, np_ms, found, gemv)


def _nearest_keys(con: duckdb.DuckDBPyConnection, query: int, times: list[float]) -> set[int]:
    start = time.perf_counter()
    keys = con.execute("SELECT key FROM nearest(?, 10)", [f"m-{query}"]).fetchall()
    times.append((time.perf_counter() - start) * 1000)
    return {int(key[2:]) for (key,) in keys}


def _gemv_top(centred: np.ndarray, norms: np.ndarray, query: int, times: list[float]) -> set[int]:
    start = time.perf_counter()
    top = set(numpy_top(centred, norms, int(query), 10))
    times.append((time.perf_counter() - start) * 1000)
    return top


def _summary(sql_ms: list[float], np_ms: list[float], found: list[set[int]],
             gemv: list[set[int]]) -> dict:
    return {"nearest_ms_median": float(np.median(sql_ms)),
            "nearest_ms_p95": float(np.percentile(sql_ms, 95)),
            "numpy_ms_median": float(np.median(np_ms)),
            "ratio": float(np.median(sql_ms) / np.median(np_ms)), "found": found, "gemv": gemv}


def _recall(found: list[set[int]], truth: list[set[int]]) -> float:
    return sum(len(a & b) for a, b in zip(found, truth, strict=True)) / (10 * len(truth))


def measure(folder: Path, n_models: int, n_texts: int, queries: int) -> dict:
    path, built = cached_atlas(folder, n_models, n_texts)
    loglik = synthetic(n_models, n_texts)
    result = {"models": n_models, "texts": n_texts, **built,
              "bytes_per_model": path.stat().st_size / n_models,
              "raw_bytes_per_model": 4 * n_texts}
    start = time.perf_counter()
    SketchBasis.fit(loglik[:512].astype(np.float64))
    result["basis_fit_s"] = time.perf_counter() - start
    if n_models <= 10_000:
        start = time.perf_counter()
        kl_matrix(loglik, 5.0, with_se=False)
        result["kl_matrix_s"] = time.perf_counter() - start
    result.update(timed_queries(path, loglik, queries))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["load_avg"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["1000x10000", "10000x10000"],
                        help="MODELSxTEXTS, e.g. 100000x2000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the built atlases here and reuse them")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    for size in args.sizes:
        n_models, n_texts = (int(part) for part in size.lower().split("x"))
        folder = args.cache or Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-scale-"))
        try:
            print(json.dumps(measure(folder, n_models, n_texts, args.queries)), flush=True)
        finally:
            if args.cache is None:
                shutil.rmtree(folder)


if __name__ == "__main__":
    main()
