"""Views: derived, versioned transforms of a text set's vectors, never baked into stored ones.

A view is fitted once on a chosen model set and stored with what it fitted (``views`` table,
sql/views.sql, whose macros apply it in SQL too: ``kl(a, b, view := NAME)``): later models get
the stored result, so adding models never changes a view.

* ``clip`` (method.md §3, §8): the global ``q``-quantile of every value of the model set
  (numpy's linear quantile) is the threshold; a view raises every value below it to it.
* ``drop-texts`` (P1's outlier texts): per text, the maximum over runs of |Δℓ| between
  consecutive checkpoints of the run with step ≥ ``warmup`` (after the clip when composed); the
  top ``fraction`` of texts (rounded to a count) are dropped and B̄ is recomputed on the kept
  texts. A text's rank ties go to the lower index.

Stages compose in the order given (P1: clip, then drop-texts); a view's kind is its stages joined
by ``+``, its params one object per stage (a single stage's params are that object itself, as
the release's clip view stores them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas.errors import AtlasError
from atlas.kl import bpb_scale

STAGES = ("clip", "drop-texts")


class ViewError(AtlasError):
    """A view that cannot be made or applied as asked."""


@dataclass(frozen=True)
class View:
    """A fitted view: its stages' params, ready to apply to any vector of its text set."""

    name: str
    textset: str
    stages: tuple[str, ...]
    params: dict  # stage → its fitted params

    @property
    def kind(self) -> str:
        return "+".join(self.stages)

    def stored_params(self) -> dict:
        """What the views table holds: one stage's params, or one object per stage."""
        return self.params[self.stages[0]] if len(self.stages) == 1 else self.params

    @classmethod
    def from_row(cls, name: str, kind: str, params: dict, textset: str) -> View:
        stages = tuple(kind.split("+"))
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ViewError(f"view {name!r} has kind {kind!r}, which this atlas version cannot "
                            f"apply (it knows {', '.join(STAGES)}); upgrade atlas or drop it")
        per_stage = {stages[0]: params} if len(stages) == 1 else params
        return cls(name, textset, stages, per_stage)


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """The stages in P1's order (clip before drop-texts); unknown or repeated ones refused."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or len(set(stages)) != len(stages):
        raise ViewError(f"view kinds {', '.join(stages) or 'none'}: give one or both of "
                        f"{', '.join(STAGES)}, each once")
    return tuple(s for s in STAGES if s in stages)


def clip_threshold(loglik: np.ndarray, q: float) -> float:
    """The global ``q``-quantile of every value of the model set."""
    if not 0.0 <= q <= 1.0:
        raise ViewError(f"--q {q}: a quantile lies between 0 and 1 (P1: 0.02)")
    return float(np.quantile(loglik, q))


def outlier_scores(loglik: np.ndarray, runs: Sequence[np.ndarray]) -> np.ndarray:
    """Per text, the maximum over runs of |Δℓ| between consecutive rows of each run (``runs``:
    row indices in step order, already restricted to the steps that count)."""
    score = np.zeros(loglik.shape[1])
    for rows in runs:
        if len(rows) > 1:
            score = np.maximum(score, np.abs(np.diff(loglik[rows], axis=0)).max(axis=0))
    return score


def dropped_texts(scores: np.ndarray, fraction: float) -> list[int]:
    """The indices of the top ``fraction`` of texts by score (ties: lower index first), sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ViewError(f"--fraction {fraction}: give the share of texts to drop, in [0, 1) "
                        "(P1: 0.03)")
    count = round(fraction * scores.size)
    order = np.argsort(-scores, kind="stable")
    return sorted(int(i) for i in order[:count])


def fit(name: str, textset: str, stages: Sequence[str], loglik: np.ndarray,
        runs: Sequence[np.ndarray], q: float = 0.02, fraction: float = 0.03,
        warmup: int = 2_000, run_set: str = "") -> View:
    """Fit a view on the model set's matrix (``runs``: the drop-texts runs' row indices in step
    order, steps ≥ ``warmup`` only; recorded with ``warmup`` and ``run_set``)."""
    stages = check_stages(stages)
    params: dict[str, dict] = {}
    values = loglik
    if "clip" in stages:
        threshold = clip_threshold(loglik, q)
        params["clip"] = {"threshold": threshold, "q": q,
                          "fraction_clipped": float(np.mean(loglik < threshold))}
        values = np.maximum(loglik, threshold)
    if "drop-texts" in stages:
        if not any(len(rows) > 1 for rows in runs):
            raise ViewError("drop-texts needs a run with two or more checkpoints at step ≥ "
                            f"{warmup} in the model set; widen --where or lower --warmup")
        dropped = dropped_texts(outlier_scores(values, runs), fraction)
        params["drop-texts"] = {"fraction": fraction, "warmup": warmup, "runs": run_set,
                                "n_runs": sum(len(r) > 1 for r in runs), "dropped": dropped}
    return View(name, textset, stages, params)


def apply(view: View, loglik: np.ndarray, n_bytes: np.ndarray) -> tuple[np.ndarray, float]:
    """(the viewed matrix, its B̄): the stored threshold and dropped texts, in stage order."""
    values = loglik
    keep = np.ones(loglik.shape[1], dtype=bool)
    if "clip" in view.stages:
        values = np.maximum(values, view.params["clip"]["threshold"])
    if "drop-texts" in view.stages:
        keep[view.params["drop-texts"]["dropped"]] = False
    return values[:, keep], float(np.mean(n_bytes[keep]))


def run_rows(runs: Sequence[tuple[Sequence[str], Sequence[int]]], keys: Sequence[str],
             warmup: int) -> list[np.ndarray]:
    """Each run's rows of the matrix over ``keys``, in step order, steps ≥ ``warmup`` only
    (``runs``: each run's checkpoint keys and steps)."""
    index = {key: i for i, key in enumerate(keys)}
    found = []
    for run_keys, steps in runs:
        kept = sorted((s, index[k]) for k, s in zip(run_keys, steps, strict=True)
                      if s >= warmup and k in index)
        found.append(np.array([i for _, i in kept], dtype=np.int64))
    return found


def nearest(keys: Sequence[str], loglik: np.ndarray, mean_bytes: float, key: str,
            k: int) -> list[tuple[str, float, float]]:
    """(key, kl, se) of the ``k`` rows nearest to ``key`` by KL (ties by key), as the SQL
    ``nearest`` ranks the raw vectors: for a matrix that went through a view."""
    i = list(keys).index(key)
    diff = loglik - loglik[i]
    centred = diff - diff.mean(axis=1, keepdims=True)
    m2 = np.mean(centred ** 2, axis=1)
    scale = bpb_scale(mean_bytes)
    se = np.sqrt(np.maximum(np.mean(centred ** 4, axis=1) - m2 ** 2, 0.0) / diff.shape[1]) * scale
    ranked = sorted((float(m2[j] * scale), keys[j], float(se[j]))
                    for j in range(len(keys)) if j != i)
    return [(name, kl, err) for kl, name, err in ranked[:k]]
