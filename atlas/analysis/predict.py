"""Benchmark prediction from the atlas (the reference papers' P2), and per-domain losses.

Features are the reference's: the vectors of the chosen models clipped below at the q-quantile
(2 %) of all their values, then double-centred (Q; atlas.kl.double_centre) over the chosen set,
so a prediction belongs to the model set it was made on. A ridge regression whose alpha
(10¹ … 10⁹) scikit-learn's ``RidgeCV`` chooses by its efficient leave-one-out CV predicts the
metric; its quality is measured out of fold: K-fold CV (5, shuffled with a fixed seed), alpha
chosen again inside every training fold, R² and Pearson r over the out-of-fold predictions.
Models without the metric get the prediction of the fit on all models that have it.
Predictions of a bounded score (0–100 leaderboard scores) are clipped to its bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atlas.errors import AtlasError
from atlas.kl import double_centre

ALPHAS = tuple(10.0 ** e for e in range(1, 10))
CLIP_Q = 0.02
SEED = 0


class PredictError(AtlasError):
    """A prediction that cannot be made (too few models with the metric …)."""


@dataclass
class Prediction:
    """Predictions of ``metric`` for ``keys`` (out of fold where ``observed`` is known)."""

    metric: str
    keys: list[str]
    observed: np.ndarray  # NaN where the model lacks the metric
    predicted: np.ndarray
    r2: float
    pearson: float
    alpha: float  # of the fit on every model with the metric
    fold_alphas: list[float]
    threshold: float  # the clipping floor (q-quantile of the chosen vectors)
    folds: int
    bounds: tuple[float, float] | None

    @property
    def out_of_fold(self) -> np.ndarray:
        return ~np.isnan(self.observed)

    @property
    def n_models(self) -> int:
        return int(self.out_of_fold.sum())

    def summary(self) -> dict:
        return {"metric": self.metric, "r2": self.r2, "pearson": self.pearson,
                "n_models": self.n_models, "n_predicted": int((~self.out_of_fold).sum()),
                "alpha": self.alpha, "fold_alphas": self.fold_alphas, "folds": self.folds,
                "clip_threshold": self.threshold, "bounds": self.bounds}


def features(loglik: np.ndarray, q: float = CLIP_Q) -> tuple[np.ndarray, float]:
    """(Q, floor): the vectors clipped below at their q-quantile, double-centred."""
    matrix = np.asarray(loglik, dtype=np.float64)
    floor = float(np.quantile(matrix, q))
    return double_centre(np.maximum(matrix, floor)), floor


def _ridge():
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=ALPHAS)


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: int,
                bounds: tuple[float, float] | None) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold predictions of ``y`` and the alpha each training fold chose."""
    from sklearn.model_selection import KFold

    predicted = np.empty_like(y)
    alphas = []
    for train, test in KFold(folds, shuffle=True, random_state=SEED).split(x):
        model = _ridge().fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
        alphas.append(float(model.alpha_))
    return _bounded(predicted, bounds), alphas


def _bounded(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    return values if bounds is None else np.clip(values, *bounds)


def predict_metric(metric: str, keys: list[str], loglik: np.ndarray, observed: np.ndarray, *,
                   folds: int = 5, q: float = CLIP_Q,
                   bounds: tuple[float, float] | None = None) -> Prediction:
    """Predict ``observed`` (NaN = unknown) from the vectors ``loglik`` (one row per key)."""
    observed = np.asarray(observed, dtype=np.float64)
    known = ~np.isnan(observed)
    if known.sum() < max(folds, 3) or folds < 2:
        raise PredictError(
            f"{metric}: {int(known.sum())} of the {len(keys)} chosen models have it; "
            f"{folds}-fold CV needs at least {max(folds, 3)} (and --folds at least 2): import "
            "more scores (atlas import metrics) or widen --where")
    x, floor = features(loglik, q)
    y = observed[known]
    oof, fold_alphas = out_of_fold(x[known], y, folds, bounds)
    final = _ridge().fit(x[known], y)
    predicted = np.empty_like(observed)
    predicted[known] = oof
    if (~known).any():
        predicted[~known] = _bounded(final.predict(x[~known]), bounds)
    return Prediction(metric, list(keys), observed, predicted, r2(y, oof), pearson(y, oof),
                      float(final.alpha_), fold_alphas, floor, folds, bounds)


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else math.nan


def pearson(y: np.ndarray, predicted: np.ndarray) -> float:
    if np.std(y) == 0 or np.std(predicted) == 0:
        return math.nan
    return float(np.corrcoef(y, predicted)[0, 1])


def domain_losses(loglik: np.ndarray, domains: list[str | None], n_bytes: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """Per domain, each model's loss on its texts in bits/byte: −Σℓ / (ln 2 · Σ bytes), from
    the stored vectors alone (no re-scoring). Texts without a domain are left out."""
    matrix = np.asarray(loglik, dtype=np.float64)
    sizes = np.asarray(n_bytes, dtype=np.float64)
    found = {}
    for domain in sorted({d for d in domains if d is not None}):
        mask = np.array([d == domain for d in domains])
        found[domain] = -matrix[:, mask].sum(axis=1) / (math.log(2.0) * sizes[mask].sum())
    return found
