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
from atlas.keys import ModelKey, quant_label
from atlas.kl import kl_bpb, kl_se_bpb
from atlas.weights import sketch_distance


@dataclass
class Trajectory:
    keys: list[str]
    steps: np.ndarray
    loglik: np.ndarray  # checkpoints × texts, nats
    mean_bytes: float
    weight_sq: np.ndarray | None  # ‖W_i − W_j‖² from sketches; None unless every one is sketched


def _is(column: str, value) -> pl.Expr:
    return pl.col(column).is_null() if value is None else pl.col(column) == value


def run_label(family: str, size: str, seed: int | None, quant: str | None = None) -> str:
    """``FAMILY-SIZE[/sSEED][+QUANT]``: a run as the keys of its checkpoints begin."""
    return str(ModelKey(family, size, seed, quant))


def checkpoints(atlas, family: str, size: str, seed: int | None,
                quant: str | None = None) -> pl.DataFrame:
    """The run's output variants with a numeric step, in step order; ``quant`` picks the run of
    a quantized variant (None, "" or "none": the unquantized one)."""
    quant = quant_label(quant)
    models = atlas.models()
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


def _run_textset(atlas, keys: list[str]) -> str:
    """The one text set holding a vector of every checkpoint of the run."""
    shared = atlas.sql("SELECT textset FROM loglik_vectors WHERE list_contains(?, key) "
                       "GROUP BY textset HAVING count(*) = ? ORDER BY textset",
                       [keys, len(keys)])["textset"].to_list()
    if len(shared) != 1:
        raise AtlasError("name a text set (--textset): every checkpoint of the run has vectors on "
                         + (", ".join(shared) if shared else "no common text set"))
    return shared[0]


def load(atlas, family: str, size: str, seed: int | None, textset: str | None = None,
         quant: str | None = None) -> Trajectory:
    run = checkpoints(atlas, family, size, seed, quant)
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
        save: bool = False, quant: str | None = None) -> DiffusionResult:
    """c_q, c_w and α of one run (method.md §5) with bootstrap intervals; ``save`` stores the
    fit in ``diffusion_fits`` with its window (replacing an earlier fit of the same settings).
    ``quant`` picks the run of a quantized variant."""
    path = load(atlas, family, size, seed, textset, quant)
    result = diffusion(path.steps, path.loglik, path.mean_bytes, weight_sq=path.weight_sq,
                       window=window, t0=t0, n_boot=n_boot)
    if save:
        store_fit(atlas, (family, size, seed, textset or _run_textset(atlas, path.keys), t0),
                  result, quant_label(quant))
    return result


def store_fit(atlas, run: tuple, result: DiffusionResult, quant: str | None = None) -> None:
    """One row of ``diffusion_fits``: the identifying settings, the three estimates, the JSON.
    An unquantized run's fit_id is what it was before runs had a quant."""
    family, size, seed, textset, t0 = run
    fitted = result.to_dict()
    ident = [family, size, seed, textset, result.window, t0, result.n_boot]
    fit_id = hashlib.sha256(json.dumps(ident + ([quant] if quant else [])).encode()
                            ).hexdigest()[:16]
    estimates = [fitted[name][part] for name in ("c_q", "c_w", "alpha")
                 for part in ("value", "ci_low", "ci_high")]
    columns = ("fit_id, family, size, seed, textset, lags, t0, n_boot, ci_level, c_q, c_q_low, "
               "c_q_high, c_w, c_w_low, c_w_high, alpha, alpha_low, alpha_high, result, quant")
    with atlas.store.transaction() as con:
        con.execute(f"INSERT OR REPLACE INTO diffusion_fits ({columns}) VALUES "
                    f"({', '.join('?' * 20)})",
                    [fit_id, *ident, result.ci_level, *estimates, json.dumps(fitted), quant])


def consecutive(atlas, family: str, size: str, seed: int | None, textset: str | None = None,
                quant: str | None = None) -> pl.DataFrame:
    """KL (bits/byte, with SE) between each checkpoint of the run and the next one."""
    path = load(atlas, family, size, seed, textset, quant)
    rows = [{"step": int(path.steps[i]), "next_step": int(path.steps[i + 1]),
             "key": path.keys[i], "next_key": path.keys[i + 1],
             "kl": kl_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "se": kl_se_bpb(path.loglik[i], path.loglik[i + 1], path.mean_bytes),
             "weight_sq": None if path.weight_sq is None else float(path.weight_sq[i, i + 1])}
            for i in range(len(path.keys) - 1)]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "next_step": pl.Int64, "key": pl.String,
                                      "next_key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                      "weight_sq": pl.Float64})
