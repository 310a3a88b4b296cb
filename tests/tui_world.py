"""The small hand-built atlas the TUI and data-layer tests share (tests/test_tui.py,
tests/test_queries.py).

Text set 'eval' (48 texts); family ``toy`` in sizes s and m × seeds 1 and 2, each a run of 8
checkpoints (steps 0 … 64) with a random-walk trajectory; ``toy-m/s1`` also has weight sketches
(so the diffusion fit has c_w and α); a fine-tune ``toyft-m/s1@step10`` whose parent is
``toy-m/s1@step64``; a lone ``other-1b``; a second text set 'tiny' on which only three models are
scored; and a stored PCA map ``pca-eval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

import atlas
from atlas.textsets import TextSet
from atlas.weights import WeightSketch

N_TEXTS = 48
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
RUNS = [(size, seed) for size in ("s", "m") for seed in (1, 2)]
PARENT = "toy-m/s1@step64"
FINE_TUNE = "toyft-m/s1@step10"
N_MODELS = len(RUNS) * len(STEPS) + 2
TINY = [PARENT, FINE_TUNE, "other-1b"]  # the models with vectors on text set 'tiny' too


def build_world(root: Path) -> Path:
    path = root / "atlas.duckdb"
    db_ = atlas.open(path)
    db_.import_textset(TextSet([f"text {i} " * (1 + i % 7) for i in range(N_TEXTS)],
                               source="tui-tests"), "eval")
    rng = np.random.default_rng(7)
    base_ = rng.normal(-200, 30, size=N_TEXTS)
    growth = np.sqrt(np.diff(STEPS, prepend=-1))[:, None]
    vectors: dict[str, np.ndarray] = {}
    for size, factor in (("s", 1.0), ("m", 1.4)):
        offset = rng.normal(0, 3, size=N_TEXTS)
        for seed in (1, 2):
            shift = rng.normal(0, 1, size=N_TEXTS)
            walk = np.cumsum(rng.normal(0, 1, size=(len(STEPS), N_TEXTS)) * growth, axis=0)
            for i, step in enumerate(STEPS):
                vectors[f"toy-{size}/s{seed}@step{step}"] = (base_ + factor * (walk[i] + shift)
                                                             + offset)
    vectors[FINE_TUNE] = vectors[PARENT] + rng.normal(0, 2, size=N_TEXTS)
    vectors["other-1b"] = base_ + rng.normal(0, 8, size=N_TEXTS)
    pl.DataFrame({"key": list(vectors),
                  "parent": [PARENT if k == FINE_TUNE else None for k in vectors],
                  "loglik": [v.tolist() for v in vectors.values()]},
                 schema={"key": pl.String, "parent": pl.String, "loglik": pl.List(pl.Float32)}
                 ).write_parquet(root / "vectors.parquet")
    db_.import_vectors(root / "vectors.parquet", "eval")
    weights = np.cumsum(rng.normal(0, 1, size=(len(STEPS), 32)) * growth, axis=0)
    for step, values in zip(STEPS, weights, strict=True):
        db_.store.write_sketch(f"toy-m/s1@step{step}", WeightSketch(
            sketch=values, sq_norm=float(values @ values), n_params=1000, dim=32, seed=0,
            layout_hash="toy"))
    # a second, smaller text set scored by three of the models only
    db_.import_textset(TextSet([f"tiny {i} " * (1 + i % 3) for i in range(12)]), "tiny")
    pl.DataFrame({"key": TINY, "loglik": [rng.normal(-50, 5, size=12).tolist() for _ in TINY]},
                 schema={"key": pl.String, "loglik": pl.List(pl.Float32)}
                 ).write_parquet(root / "tiny.parquet")
    db_.import_vectors(root / "tiny.parquet", "tiny")
    db_.fit_map("pca", textset="eval", name="pca-eval")
    db_.close()
    return path
