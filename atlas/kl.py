"""KL divergence between models from their log-likelihood vectors (method.md §3).

KL_bpb(p_i, p_j) = Var_s(ℓ_i − ℓ_j) / (2 · B̄ · ln 2), population variance over the N texts.
Only row centring matters for a pair, so a pair's KL never depends on the other models; the
matrix form uses the Gram matrix of row-centred vectors (one BLAS call) and the delta-method SEs
use the same trick on powers of the centred values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
PAIR_BLOCK = 1 << 16  # doubles of differences held at once: 512 KB stay in cache (pair_kl at
# 10⁴ × 10⁴: 1.5 s for 30,000 pairs against 7 s with 128 MB blocks that go to memory each pass)
Indices = Sequence[int] | np.ndarray  # rows of a K × N matrix, one per pair


def bpb_scale(mean_bytes: float) -> float:
    """The factor that turns ½·Var (nats per text) into bits per byte."""
    return 1.0 / (2.0 * mean_bytes * LN2)


def kl_bpb(a: np.ndarray, b: np.ndarray, mean_bytes: float) -> float:
    """KL estimate in bits/byte between two vectors on the same texts."""
    return float(pair_kl(np.stack([a, b]), [0], [1], mean_bytes)[0][0])


def kl_se_bpb(a: np.ndarray, b: np.ndarray, mean_bytes: float) -> float:
    """Delta-method standard error of ``kl_bpb`` over texts: √((m4 − m2²)/N) / (2 B̄ ln 2)."""
    return float(pair_kl(np.stack([a, b]), [0], [1], mean_bytes)[1][0])


def pair_moments(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m2, m4 − m2²) of each row of a pairs × N block of differences, centring it in place:
    the one formula behind every pair's KL and SE (``kl_bpb``, ``pair_kl``, and the pairs
    ``kl_matrix`` recomputes directly)."""
    diff -= diff.mean(axis=1, keepdims=True)
    square = diff * diff
    m2 = square.mean(axis=1)
    square *= square
    return m2, square.mean(axis=1) - m2 * m2


def pair_kl(loglik: np.ndarray, a: Indices, b: Indices, mean_bytes: float,
            block: int = PAIR_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """KL and SE (bits/byte) of the pairs (a[p], b[p]) of the rows of a K × N matrix, each equal
    to ``kl_bpb``/``kl_se_bpb`` of the two rows.

    Only the pairs asked for are computed, ``block`` doubles of differences at a time: memory
    is the vectors plus a few blocks, never K × K (the scale's settings need a few pairs per
    model, not all K² of them).
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    n_texts = loglik.shape[1]
    m2, var4 = np.empty(a.size), np.empty(a.size)
    step = max(1, block // max(n_texts, 1))
    for start in range(0, a.size, step):
        chosen = slice(start, start + step)
        diff = np.asarray(loglik[a[chosen]], dtype=np.float64)  # a copy: gathered rows
        diff -= loglik[b[chosen]]
        m2[chosen], var4[chosen] = pair_moments(diff)
    scale = bpb_scale(mean_bytes)
    return m2 * scale, np.sqrt(np.maximum(var4, 0.0) / n_texts) * scale


def double_centre(loglik: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Q = (I − 11ᵀ/K) L (I − 11ᵀ/N): every row and column sums to zero. ``overwrite``
    computes it in ``loglik``'s own memory when that is float64 (K × N may be gigabytes)."""
    matrix = np.asarray(loglik, dtype=np.float64)
    if overwrite:
        matrix -= matrix.mean(axis=1, keepdims=True)
        centred = matrix
    else:
        centred = matrix - matrix.mean(axis=1, keepdims=True)
    centred -= centred.mean(axis=0, keepdims=True)
    return centred


def scaled_coordinates(loglik: np.ndarray, mean_bytes: float,
                       overwrite: bool = False) -> np.ndarray:
    """q̃ = Q / √(2 N B̄ ln 2): squared Euclidean distances between rows are KL in bits/byte.
    ``overwrite``: in ``loglik``'s memory, as in ``double_centre``."""
    n_texts = np.asarray(loglik).shape[1]
    q = double_centre(loglik, overwrite)
    q *= math.sqrt(bpb_scale(mean_bytes) / n_texts)
    return q


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
    every = slice(0, q.shape[0])
    kl, se = _block(q, every, every, bpb_scale(mean_bytes), with_se)
    np.fill_diagonal(kl, 0.0)
    np.fill_diagonal(se, 0.0)
    names = keys if keys is not None else [str(i) for i in range(q.shape[0])]
    return KLMatrix(keys=list(names), kl=kl, se=se)


def kl_blocks(loglik: np.ndarray, mean_bytes: float, block: int = 1024, with_se: bool = True
              ) -> Iterator[tuple[slice, slice, np.ndarray, np.ndarray]]:
    """``kl_matrix`` one tile at a time: (rows, cols, kl, se) for every block × block tile on or
    above the diagonal, so that memory is the K × N vectors plus a few tiles, not K × K.

    A tile's entries are ``kl_matrix``'s (the same ``_block``); its pairs are ``tile_pairs``
    (a diagonal tile holds each of its pairs twice).
    """
    q = double_centre(loglik)
    n_models, scale = q.shape[0], bpb_scale(mean_bytes)
    for top in range(0, n_models, block):
        rows = slice(top, min(top + block, n_models))
        for left in range(top, n_models, block):
            cols = slice(left, min(left + block, n_models))
            yield rows, cols, *_block(q, rows, cols, scale, with_se)


def tile_pairs(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Local indices (i, j) of a tile's pairs rows.start + i < cols.start + j, row by row."""
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    return np.nonzero(np.triu(np.ones(shape, bool), rows.start - cols.start + 1))


def sq_distances(qa: np.ndarray, qb: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray
                 ) -> np.ndarray:
    """‖a − b‖² for every row pair of ``qa`` × ``qb`` (row norms² ``sq_a``, ``sq_b``) from one
    matrix product, built in place: one len(a) × len(b) array and temporaries of 256 rows.
    The norms are summed first, (sq_a + sq_b) − 2 a·b, so a square tile stays symmetric."""
    d2 = qa @ qb.T
    d2 *= -2.0
    for start in range(0, len(d2), 256):
        rows = slice(start, start + 256)
        d2[rows] += sq_a[rows, None] + sq_b[None, :]
    return d2


def _block(q: np.ndarray, rows: slice, cols: slice, scale: float, with_se: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """KL and SE (bits/byte) of the pairs q[rows] × q[cols] of the double-centred vectors."""
    n_texts = q.shape[1]
    square = rows == cols  # a diagonal tile: its products are symmetric
    qa, qb = q[rows], q[cols]
    sq_a = np.einsum("ij,ij->i", qa, qa)
    sq_b = sq_a if square else np.einsum("ij,ij->i", qb, qb)
    m2 = sq_distances(qa, qb, sq_a, sq_b)
    m2 /= n_texts
    np.maximum(m2, 0.0, out=m2)
    var4 = np.zeros_like(m2)
    if with_se:
        qa2 = qa * qa
        qb2 = qa2 if square else qb * qb
        s4_a = np.sum(qa2 * qa2, axis=1)
        s4_b = s4_a if square else np.sum(qb2 * qb2, axis=1)
        cross31 = (qa2 * qa) @ qb.T  # Σ q_i³ q_j
        cross13 = cross31.T if square else qa @ (qb2 * qb).T  # Σ q_i q_j³
        m4 = s4_a[:, None] + s4_b[None, :] - 4.0 * (cross31 + cross13) + 6.0 * (qa2 @ qb2.T)
        var4 = m4 / n_texts - m2 * m2
        _recompute_imprecise(q, rows, cols, m2, var4, (sq_a, sq_b), (s4_a, s4_b))
    return m2 * scale, np.sqrt(np.maximum(var4, 0.0) / n_texts) * scale


ROUNDING = 64 * np.finfo(np.float64).eps  # generous: BLAS sums in blocks, in any order
TARGET = 1e-8  # relative precision every pair keeps


def _recompute_imprecise(q: np.ndarray, rows: slice, cols: slice, m2: np.ndarray,
                         var4: np.ndarray, sq: tuple[np.ndarray, np.ndarray],
                         s4: tuple[np.ndarray, np.ndarray]) -> None:
    """Recompute, in place, the pairs i < j of the tile whose expanded moments may have lost
    precision (a diagonal tile gets both of its triangles).

    Bounds: |m2 error| ≤ ROUNDING·(sq_i + sq_j)/N·4 and, as every term of the m4 expansion is at
    most 8·(s4_i + s4_j) in size (Cauchy–Schwarz), |m4 error| ≤ ROUNDING·8·(s4_i + s4_j)/N.
    """
    n_texts = q.shape[1]
    m2_error = ROUNDING * 4.0 * (sq[0][:, None] + sq[1][None, :]) / n_texts
    var4_error = (ROUNDING * 8.0 * (s4[0][:, None] + s4[1][None, :]) / n_texts
                  + 2.0 * m2 * m2_error)
    suspect = (m2_error > TARGET * m2) | (var4_error > TARGET * np.abs(var4))
    tile_i, tile_j = np.nonzero(np.triu(suspect, k=rows.start - cols.start + 1))
    step = max(1, PAIR_BLOCK // max(n_texts, 1))
    for start in range(0, tile_i.size, step):
        i, j = tile_i[start:start + step], tile_j[start:start + step]
        m2[i, j], var4[i, j] = pair_moments(q[rows.start + i] - q[cols.start + j])
        if rows == cols:
            m2[j, i], var4[j, i] = m2[i, j], var4[i, j]
