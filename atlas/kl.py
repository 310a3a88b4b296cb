"""KL divergence between models from their log-likelihood vectors (method.md §3).

KL_bpb(p_i, p_j) = Var_s(ℓ_i − ℓ_j) / (2 · B̄ · ln 2), population variance over the N texts.
Only row centring matters for a pair, so a pair's KL never depends on the other models; the
matrix form uses the Gram matrix of row-centred vectors (one BLAS call) and the delta-method SEs
use the same trick on powers of the centred values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


def bpb_scale(mean_bytes: float) -> float:
    """The factor that turns ½·Var (nats per text) into bits per byte."""
    return 1.0 / (2.0 * mean_bytes * LN2)


def kl_bpb(a: np.ndarray, b: np.ndarray, mean_bytes: float) -> float:
    """KL estimate in bits/byte between two vectors on the same texts."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(diff.var() * bpb_scale(mean_bytes))


def kl_se_bpb(a: np.ndarray, b: np.ndarray, mean_bytes: float) -> float:
    """Delta-method standard error of ``kl_bpb`` over texts: √((m4 − m2²)/N) / (2 B̄ ln 2)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    centred = diff - diff.mean()
    m2 = np.mean(centred**2)
    m4 = np.mean(centred**4)
    return float(math.sqrt(max(m4 - m2 * m2, 0.0) / diff.size) * bpb_scale(mean_bytes))


def double_centre(loglik: np.ndarray) -> np.ndarray:
    """Q = (I − 11ᵀ/K) L (I − 11ᵀ/N): every row and column sums to zero."""
    matrix = np.asarray(loglik, dtype=np.float64)
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    return centred - centred.mean(axis=0, keepdims=True)


def scaled_coordinates(loglik: np.ndarray, mean_bytes: float) -> np.ndarray:
    """q̃ = Q / √(2 N B̄ ln 2): squared Euclidean distances between rows are KL in bits/byte."""
    n_texts = np.asarray(loglik).shape[1]
    return double_centre(loglik) * math.sqrt(bpb_scale(mean_bytes) / n_texts)


@dataclass
class KLMatrix:
    """All-pairs KL (bits/byte) and its delta-method SE for ``keys``."""

    keys: list[str]
    kl: np.ndarray
    se: np.ndarray

    def to_polars(self):
        """Long form: one row per ordered pair (key_a, key_b, kl, se)."""
        import polars as pl

        n = len(self.keys)
        return pl.DataFrame({
            "key_a": np.repeat(self.keys, n), "key_b": np.tile(self.keys, n),
            "kl": self.kl.ravel(), "se": self.se.ravel(),
        })


def kl_matrix(loglik: np.ndarray, mean_bytes: float, keys: list[str] | None = None,
              with_se: bool = True) -> KLMatrix:
    """All pairs with BLAS: ‖q_i − q_j‖²/N from the Gram matrix of the double-centred vectors.

    Double centring leaves every pair's difference as it is (q_i − q_j is ℓ_i − ℓ_j centred)
    but removes what all models share, such as one text at −20,000 nats for every model, which
    would otherwise swamp the expansion in rounding. The SE needs m4 of each difference;
    expanding (q_i − q_j)⁴ gives it from three more matrix products of element-wise powers.
    Where a pair's own moments are too small for that expansion to keep 1e-8 relative
    precision (close pairs beside a text on which the population differs widely), the pair is
    computed directly from its difference, so every value equals ``kl_bpb``/``kl_se_bpb``.
    """
    q = double_centre(loglik)
    n_models, n_texts = q.shape
    gram = q @ q.T
    sq = np.diag(gram).copy()
    m2 = np.maximum((sq[:, None] + sq[None, :] - 2.0 * gram) / n_texts, 0.0)
    scale = bpb_scale(mean_bytes)
    var4 = np.zeros_like(m2)
    if with_se:
        q2 = q * q
        s4 = np.sum(q2 * q2, axis=1)
        cross31 = (q2 * q) @ q.T  # Σ q_i³ q_j
        m4 = (s4[:, None] + s4[None, :] - 4.0 * (cross31 + cross31.T) + 6.0 * (q2 @ q2.T))
        var4 = m4 / n_texts - m2 * m2
        _recompute_imprecise(q, m2, var4, sq, s4)
    np.fill_diagonal(m2, 0.0)
    se = np.sqrt(np.maximum(var4, 0.0) / n_texts) * scale
    np.fill_diagonal(se, 0.0)
    names = keys if keys is not None else [str(i) for i in range(n_models)]
    return KLMatrix(keys=list(names), kl=m2 * scale, se=se)


ROUNDING = 64 * np.finfo(np.float64).eps  # generous: BLAS sums in blocks, in any order
TARGET = 1e-8  # relative precision every pair keeps
PAIR_BLOCK = 1 << 24  # doubles of differences held at once (128 MB)


def _recompute_imprecise(q: np.ndarray, m2: np.ndarray, var4: np.ndarray, sq: np.ndarray,
                         s4: np.ndarray) -> None:
    """Recompute, in place, the pairs whose expanded moments may have lost precision.

    Bounds: |m2 error| ≤ ROUNDING·(sq_i + sq_j)/N·4 and, as every term of the m4 expansion is at
    most 8·(s4_i + s4_j) in size (Cauchy–Schwarz), |m4 error| ≤ ROUNDING·8·(s4_i + s4_j)/N.
    """
    n_texts = q.shape[1]
    m2_error = ROUNDING * 4.0 * (sq[:, None] + sq[None, :]) / n_texts
    var4_error = ROUNDING * 8.0 * (s4[:, None] + s4[None, :]) / n_texts + 2.0 * m2 * m2_error
    suspect = (m2_error > TARGET * m2) | (var4_error > TARGET * np.abs(var4))
    rows, cols = np.nonzero(np.triu(suspect, k=1))
    step = max(1, PAIR_BLOCK // max(n_texts, 1))
    for start in range(0, rows.size, step):
        i, j = rows[start:start + step], cols[start:start + step]
        diff = q[i] - q[j]  # centred already: the rows of q sum to zero
        pair_m2 = np.mean(diff * diff, axis=1)
        pair_var4 = np.mean(diff**4, axis=1) - pair_m2 * pair_m2
        m2[i, j] = m2[j, i] = pair_m2
        var4[i, j] = var4[j, i] = pair_var4
