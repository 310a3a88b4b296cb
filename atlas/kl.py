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
    """All pairs with BLAS: ‖c_i − c_j‖²/N from the Gram matrix of row-centred vectors.

    The SE needs m4 of each pairwise difference; expanding (c_i − c_j)⁴ gives it from three more
    matrix products of element-wise powers, so it is O(K²N) in BLAS too.
    """
    matrix = np.asarray(loglik, dtype=np.float64)
    n_models, n_texts = matrix.shape
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    gram = centred @ centred.T
    sq = np.diag(gram)
    m2 = np.maximum((sq[:, None] + sq[None, :] - 2.0 * gram) / n_texts, 0.0)
    np.fill_diagonal(m2, 0.0)
    scale = bpb_scale(mean_bytes)
    se = np.zeros_like(m2)
    if with_se:
        c2, c3 = centred**2, centred**3
        s4 = np.sum(c2 * c2, axis=1)
        cross31 = c3 @ centred.T  # Σ c_i³ c_j
        m4 = (s4[:, None] + s4[None, :] - 4.0 * (cross31 + cross31.T) + 6.0 * (c2 @ c2.T))
        m4 /= n_texts
        se = np.sqrt(np.maximum(m4 - m2 * m2, 0.0) / n_texts) * scale
        np.fill_diagonal(se, 0.0)
    names = keys if keys is not None else [str(i) for i in range(n_models)]
    return KLMatrix(keys=list(names), kl=m2 * scale, se=se)
