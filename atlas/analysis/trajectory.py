"""Training trajectories: the checkpoints of one (family, size, seed) run, as arrays.

A trajectory is the output variants (no quant, no layer) of one run, ordered by step. Its weight
distances come from the stored sketches (atlas.weights), so a diffusion fit needs no model load.
Everything here is arrays and frames in, results out: ``Atlas.trajectory`` and
``Atlas.diffusion`` read the vectors and sketches and store the fits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.analysis.diffusion import DiffusionResult, diffusion
from atlas.errors import AtlasError
from atlas.keys import quant_label, run_label
from atlas.kl import kl_bpb, kl_se_bpb
from atlas.weights import WeightSketch, sketch_distance


@dataclass
class Trajectory:
    keys: list[str]
    steps: np.ndarray
    loglik: np.ndarray  # checkpoints × texts, nats
    mean_bytes: float
    weight_sq: np.ndarray | None  # ‖W_i − W_j‖² from sketches; None unless every one is sketched


def _is(column: str, value) -> pl.Expr:
    return pl.col(column).is_null() if value is None else pl.col(column) == value


def checkpoints(models: pl.DataFrame, family: str, size: str, seed: int | None,
                quant: str | None = None) -> pl.DataFrame:
    """The run's output variants with a numeric step, in step order (``models``: the atlas's
    model_variants); ``quant`` picks the run of a quantized variant (None, "" or "none": the
    unquantized one)."""
    quant = quant_label(quant)
    run = models.filter(
        (pl.col("family") == family) & (pl.col("size") == size) & _is("quant", quant)
        & pl.col("layer").is_null() & pl.col("step").is_not_null() & _is("seed", seed))
    if run.is_empty():
        runs = models.filter(pl.col("step").is_not_null() & pl.col("layer").is_null()).select(
            "family", "size", "seed", "quant").unique().sort("family", "size", "seed", "quant")
        known = ", ".join(run_label(*row) for row in runs.rows())
        quants = runs.filter((pl.col("family") == family) & (pl.col("size") == size)
                             & _is("seed", seed))["quant"].to_list()
        hint = "; choose one with --quant " + " or --quant ".join(
            q or "none" for q in quants) if quants else ""
        raise AtlasError(f"no checkpoints of {run_label(family, size, seed, quant)} in the "
                         f"atlas; runs with checkpoints: {known or 'none'}{hint}")
    return run.sort("step")


def weight_distances(keys: list[str], sketches: dict[str, WeightSketch]) -> np.ndarray | None:
    """‖W_i − W_j‖² between the checkpoints from their sketches; None unless all are sketched."""
    if len(sketches) != len(keys):
        return None
    return np.array([[sketch_distance(sketches[a], sketches[b]) for b in keys] for a in keys])


def fit(path: Trajectory, *, window: int = 10, t0: float | None = None,
        n_boot: int = 200, min_t0: float | None = None) -> DiffusionResult:
    """c_q, c_w and α of one run (method.md §5) with bootstrap intervals; starts at step ≥
    ``min_t0`` (default: the evenly spaced tail's first step, atlas.analysis.diffusion)."""
    return diffusion(path.steps, path.loglik, path.mean_bytes, weight_sq=path.weight_sq,
                     window=window, t0=t0, n_boot=n_boot, min_t0=min_t0)


def fit_row(run: tuple, result: DiffusionResult, quant: str | None = None,
            min_t0: float | None = None) -> list:
    """The row of ``diffusion_fits`` for a fit of ``run`` = (family, size, seed, textset, t0):
    the id (a hash of the identifying settings), those settings, the three estimates, the JSON;
    a refit with the same settings has the same id and replaces it. An unquantized run's id, and
    that of a fit with the default ``min_t0``, is what it was before runs had a quant and fits a
    min_t0 (the fit's JSON holds the min_t0 it used)."""
    family, size, seed, textset, t0 = run
    fitted = result.to_dict()
    ident = [family, size, seed, textset, result.window, t0, result.n_boot]
    extra = ([quant] if quant else []) + ([] if min_t0 is None else [{"min_t0": min_t0}])
    fit_id = hashlib.sha256(json.dumps(ident + extra).encode()).hexdigest()[:16]
    estimates = [fitted[name][part] for name in ("c_q", "c_w", "alpha")
                 for part in ("value", "ci_low", "ci_high")]
    return [fit_id, *ident, result.ci_level, *estimates, json.dumps(fitted), quant]


def consecutive(path: Trajectory) -> pl.DataFrame:
    """KL (bits/byte, with SE) between each checkpoint of the run and the next one."""
    rows = [{"step": int(path.steps[i]), "next_step": int(path.steps[i + 1]),
             "key": path.keys[i], "next_key": path.keys[i + 1],
             "kl": kl_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "se": kl_se_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "weight_sq": None if path.weight_sq is None else float(path.weight_sq[i, i + 1])}
            for i in range(len(path.keys) - 1)]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "next_step": pl.Int64, "key": pl.String,
                                      "next_key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                      "weight_sq": pl.Float64})
