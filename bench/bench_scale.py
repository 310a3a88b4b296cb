"""Nearest at scale: a bare DuckDB client against an in-memory numpy GEMV, on synthetic atlases.

Per size K (models) × N (texts): builds an atlas under --dir through the real Parquet import
(low-rank structure, per-model noise and close pairs, like checkpoints and fine-tunes), then
measures the import, the file size per model, ``SELECT * FROM nearest(key, 10)`` from a plain
``duckdb`` connection (no atlas code: median and p95 over --queries keys), the exact numpy top 10
(a GEMV over the centred float32 matrix with precomputed norms) and recall@10 against it, the
sketch basis fit, and ``kl_matrix`` with its peak memory. The atlas is deleted afterwards.
Run: ``python bench/bench_scale.py --models 1000 10000 --texts 10000``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

import atlas
from atlas.kl import kl_matrix
from atlas.store import SketchBasis
from atlas.textsets import TextSet


def synthetic(n_models: int, n_texts: int, seed: int = 0) -> np.ndarray:
    """ℓ = text difficulty + model offset + rank-32 structure + per-model noise; every 7th model
    a close copy of another (a fine-tune or quantization of it)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_models, n_texts), dtype=np.float32)
    difficulty = rng.normal(-900, 150, n_texts)
    directions = rng.normal(0, 1, (32, n_texts)) * (8 / np.arange(1, 33) ** 0.7)[:, None]
    for start in range(0, n_models, 4096):
        rows = min(4096, n_models - start)
        block = (difficulty + rng.normal(0, 30, (rows, 1))
                 + rng.normal(0, 1, (rows, 32)) @ directions
                 + rng.normal(0, 5, (rows, n_texts)) * rng.uniform(0.5, 1.5, (rows, 1)))
        block[1::7] = block[0::7][:len(block[1::7])] + rng.normal(0, 1, (len(block[1::7]), n_texts))
        out[start:start + rows] = block
    return out


def build(folder: Path, loglik: np.ndarray) -> float:
    db = atlas.open(folder / "scale.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 50) for i in range(loglik.shape[1])]),
                      "bench")
    path = folder / "vectors.parquet"
    pl.DataFrame({"key": [f"m-{i}" for i in range(len(loglik))], "loglik": list(loglik)},
                 schema={"key": pl.String, "loglik": pl.List(pl.Float32)}).write_parquet(path)
    start = time.perf_counter()
    db.import_vectors(path, "bench")
    seconds = time.perf_counter() - start
    db.close()
    path.unlink()
    return seconds


def numpy_top(centred: np.ndarray, norms: np.ndarray, query: int, k: int) -> list[int]:
    d2 = norms + norms[query] - 2.0 * (centred @ centred[query])
    d2[query] = np.inf
    top = np.argpartition(d2, k)[:k]
    return list(top[np.argsort(d2[top])])


def measure(folder: Path, n_models: int, n_texts: int, queries: int) -> dict:
    loglik = synthetic(n_models, n_texts)
    import_s = build(folder, loglik)
    size = (folder / "scale.duckdb").stat().st_size
    centred = loglik - loglik.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    norms = np.einsum("ij,ij->i", centred, centred)
    picks = np.random.default_rng(1).choice(n_models, queries, replace=False)
    con = duckdb.connect(str(folder / "scale.duckdb"), read_only=True)  # a bare client
    sql_ms, np_ms, hits = [], [], 0
    for query in picks:
        start = time.perf_counter()
        found = con.execute("SELECT key FROM nearest(?, 10)", [f"m-{query}"]).fetchall()
        sql_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        exact = numpy_top(centred, norms, int(query), 10)
        np_ms.append((time.perf_counter() - start) * 1000)
        hits += len({f"m-{i}" for i in exact} & {key for (key,) in found})
    con.close()
    start = time.perf_counter()
    SketchBasis.fit(loglik[:512].astype(np.float64))
    fit_s = time.perf_counter() - start
    matrix_s = None
    if n_models <= 10_000:
        start = time.perf_counter()
        kl_matrix(loglik, 5.0, with_se=False)
        matrix_s = time.perf_counter() - start
    return {"models": n_models, "texts": n_texts, "import_s": import_s,
            "bytes_per_model": size / n_models, "raw_bytes_per_model": 4 * n_texts,
            "nearest_ms_median": float(np.median(sql_ms)),
            "nearest_ms_p95": float(np.percentile(sql_ms, 95)),
            "numpy_ms_median": float(np.median(np_ms)),
            "ratio": float(np.median(sql_ms) / np.median(np_ms)),
            "recall_at_10": hits / (10 * queries), "basis_fit_s": fit_s,
            "kl_matrix_s": matrix_s,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    for n_models in args.models:
        folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-scale-"))
        try:
            print(measure(folder, n_models, args.texts, args.queries), flush=True)
        finally:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
