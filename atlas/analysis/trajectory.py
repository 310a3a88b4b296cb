"""Training trajectories read from the atlas: the checkpoints of one (family, size, seed) run.

A trajectory is the output variants (no quant, no layer) of one run, ordered by step. Its weight
distances come from the stored sketches (atlas.weights), so a diffusion fit needs no model load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.analysis.diffusion import DiffusionResult, diffusion
from atlas.errors import AtlasError
from atlas.weights import sketch_distance


@dataclass
class Trajectory:
    keys: list[str]
    steps: np.ndarray
    loglik: np.ndarray  # checkpoints × texts, nats
    mean_bytes: float
    weight_sq: np.ndarray | None  # ‖W_i − W_j‖² from sketches; None unless every one is sketched


def checkpoints(atlas, family: str, size: str, seed: int | None) -> pl.DataFrame:
    """The run's output variants with a numeric step, in step order."""
    models = atlas.models()
    run = models.filter(
        (pl.col("family") == family) & (pl.col("size") == size) & pl.col("quant").is_null()
        & pl.col("layer").is_null() & pl.col("step").is_not_null()
        & (pl.col("seed").is_null() if seed is None else pl.col("seed") == seed))
    if run.is_empty():
        runs = models.filter(pl.col("step").is_not_null()).select("family", "size", "seed")
        known = ", ".join(f"{f}-{s}" + ("" if d is None else f"/s{d}")
                          for f, s, d in runs.unique().sort("family", "size", "seed").rows())
        raise AtlasError(f"no checkpoints of {family}-{size}"
                         + ("" if seed is None else f" seed {seed}")
                         + f" in the atlas; runs with checkpoints: {known or 'none'}")
    return run.sort("step")


def load(atlas, family: str, size: str, seed: int | None, textset: str | None = None
         ) -> Trajectory:
    run = checkpoints(atlas, family, size, seed)
    keys = run["key"].to_list()
    found, loglik, mean_bytes = atlas.store.matrix(keys, textset or atlas._only_textset())
    order = [found.index(k) for k in keys]
    sketches = atlas.store.sketches(keys)
    weight_sq = None
    if len(sketches) == len(keys):
        weight_sq = np.array([[sketch_distance(sketches[a], sketches[b]) for b in keys]
                              for a in keys])
    return Trajectory(keys, run["step"].to_numpy(), loglik[order], mean_bytes, weight_sq)


def fit(atlas, family: str, size: str, seed: int | None, *, window: int = 10,
        t0: float | None = None, textset: str | None = None, n_boot: int = 200
        ) -> DiffusionResult:
    """c_q, c_w and α of one run (method.md §5) with bootstrap intervals."""
    path = load(atlas, family, size, seed, textset)
    return diffusion(path.steps, path.loglik, path.mean_bytes, weight_sq=path.weight_sq,
                     window=window, t0=t0, n_boot=n_boot)
