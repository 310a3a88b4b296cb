"""Training trajectories read from the atlas: the checkpoints of one (family, size, seed) run.

A trajectory is the output variants (no quant, no layer) of one run, ordered by step. Its weight
distances come from the stored sketches (atlas.weights), so a diffusion fit needs no model load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.analysis.diffusion import DiffusionResult, diffusion
from atlas.errors import AtlasError, StoreError, UnknownKeyError
from atlas.kl import kl_bpb, kl_se_bpb
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


def _run_textset(atlas, keys: list[str]) -> str:
    """The one text set holding a vector of every checkpoint of the run."""
    shared = atlas.sql("SELECT textset FROM loglik_vectors WHERE list_contains(?, key) "
                       "GROUP BY textset HAVING count(*) = ? ORDER BY textset",
                       [keys, len(keys)])["textset"].to_list()
    if len(shared) != 1:
        raise AtlasError("name a text set (--textset): every checkpoint of the run has vectors on "
                         + (", ".join(shared) if shared else "no common text set"))
    return shared[0]


def load(atlas, family: str, size: str, seed: int | None, textset: str | None = None
         ) -> Trajectory:
    run = checkpoints(atlas, family, size, seed)
    keys = run["key"].to_list()
    found, loglik, mean_bytes = atlas.store.matrix(keys, textset or _run_textset(atlas, keys))
    order = [found.index(k) for k in keys]
    try:
        sketches = atlas.store.sketches(keys)
    except (UnknownKeyError, StoreError):  # imported vectors, older atlases: no weights, no c_w
        sketches = {}
    weight_sq = None
    if len(sketches) == len(keys):
        weight_sq = np.array([[sketch_distance(sketches[a], sketches[b]) for b in keys]
                              for a in keys])
    return Trajectory(keys, run["step"].to_numpy(), loglik[order], mean_bytes, weight_sq)


def fit(atlas, family: str, size: str, seed: int | None, *, window: int = 10,
        t0: float | None = None, textset: str | None = None, n_boot: int = 200,
        save: bool = False) -> DiffusionResult:
    """c_q, c_w and α of one run (method.md §5) with bootstrap intervals; ``save`` stores the
    fit in ``diffusion_fits`` with its window (replacing an earlier fit of the same settings)."""
    path = load(atlas, family, size, seed, textset)
    result = diffusion(path.steps, path.loglik, path.mean_bytes, weight_sq=path.weight_sq,
                       window=window, t0=t0, n_boot=n_boot)
    if save:
        store_fit(atlas, (family, size, seed, textset or _run_textset(atlas, path.keys), t0),
                  result)
    return result


def store_fit(atlas, run: tuple, result: DiffusionResult) -> None:
    """One row of ``diffusion_fits``: the identifying settings, the three estimates, the JSON."""
    family, size, seed, textset, t0 = run
    fitted = result.to_dict()
    ident = [family, size, seed, textset, result.window, t0, result.n_boot]
    fit_id = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    estimates = [fitted[name][part] for name in ("c_q", "c_w", "alpha")
                 for part in ("value", "ci_low", "ci_high")]
    with atlas.store.transaction() as con:
        con.execute("INSERT OR REPLACE INTO diffusion_fits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                    [fit_id, *ident, result.ci_level, *estimates, json.dumps(fitted)])


def consecutive(atlas, family: str, size: str, seed: int | None, textset: str | None = None
                ) -> pl.DataFrame:
    """KL (bits/byte, with SE) between each checkpoint of the run and the next one."""
    path = load(atlas, family, size, seed, textset)
    rows = [{"step": int(path.steps[i]), "next_step": int(path.steps[i + 1]),
             "key": path.keys[i], "next_key": path.keys[i + 1],
             "kl": kl_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "se": kl_se_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "weight_sq": None if path.weight_sq is None else float(path.weight_sq[i, i + 1])}
            for i in range(len(path.keys) - 1)]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "next_step": pl.Int64, "key": pl.String,
                                      "next_key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                      "weight_sq": pl.Float64})
