"""Query speed at atlas scale: SQL ``nearest``/``kl`` and the BLAS KL matrix.

Builds an atlas of K synthetic vectors over N texts through the real import path (Parquet), then
times, in this process: ``nearest(key, 10)`` in SQL (vectorised ``list_distance`` on the stored
centred vectors) against a baseline SQL query that computes the same KLs from raw vectors with
``kl_bpb`` (per-element lambdas), one ``kl(a, b)`` call, and ``Atlas.kl_matrix`` (all pairs with
SEs, numpy/BLAS). Run: ``python bench/bench_queries.py [--models 1000 --texts 10000]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

import atlas
from atlas.textsets import TextSet


def build(directory: Path, n_models: int, n_texts: int) -> atlas.Atlas:
    rng = np.random.default_rng(0)
    db = atlas.open(directory / "bench.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 50) for i in range(n_texts)]), "bench")
    difficulty = rng.normal(-900, 150, size=n_texts)
    offsets = rng.normal(0, 30, size=(n_models, 1))
    loglik = (difficulty + offsets + rng.normal(0, 5, size=(n_models, n_texts))).astype(np.float32)
    path = directory / "vectors.parquet"
    pl.DataFrame({"key": [f"bench-m{i}" for i in range(n_models)], "loglik": list(loglik)},
                 schema={"key": pl.String, "loglik": pl.List(pl.Float32)}).write_parquet(path)
    db.import_vectors(path, "bench")
    return db


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        db = build(Path(folder), args.models, args.texts)
        build_seconds = time.perf_counter() - start
        query = "bench-m0"
        nearest = best_of(args.repeats, lambda: db.nearest(query, 10))
        raw = best_of(1, lambda: db.sql(
            "SELECT b.key, kl_bpb(a.loglik, b.loglik, a.mean_bytes) AS kl "
            "FROM loglik_vectors a, loglik_vectors b WHERE a.key = ? AND b.key <> a.key "
            "ORDER BY kl LIMIT 10", [query]))
        pair = best_of(args.repeats, lambda: db.kl(query, "bench-m1"))
        matrix = best_of(args.repeats, lambda: db.kl_matrix(textset="bench"))
        same = db.nearest(query, 10)["key"].to_list() == db.sql(
            "SELECT b.key FROM loglik_vectors a, loglik_vectors b WHERE a.key = ? AND "
            "b.key <> a.key ORDER BY kl_bpb(a.loglik, b.loglik, a.mean_bytes), b.key LIMIT 10",
            [query])["key"].to_list()
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores; atlas of {args.models} models × "
          f"{args.texts} texts built in {build_seconds:.1f} s through the Parquet import")
    print(f"nearest(key, 10), SQL on stored centred vectors: {nearest * 1000:8.1f} ms")
    print(f"  baseline: the same from raw vectors (kl_bpb):  {raw * 1000:8.1f} ms  "
          f"→ {raw / nearest:.1f}× faster; same top 10: {same}")
    print(f"kl(a, b) with its key resolution, SQL:            {pair * 1000:8.1f} ms")
    print(f"kl_matrix, all {args.models}² pairs + SEs, BLAS:  {matrix * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
