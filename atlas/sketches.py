"""What `nearest` reads instead of whole vectors: each vector's sketch and residual sketch.

A text set's basis B (the top principal directions of its centred vectors) gives every vector
x = c − μ (c = ℓ − mean(ℓ)) a sketch s = Bx and a residual e = x − Bᵀs of norm r, so that
‖s_a − s_b‖² + (r_a − r_b)² ≤ ‖c_a − c_b‖²: a lower bound whatever the data. It is loose where
vectors differ in what B leaves out (per-model noise: ‖e_a − e_b‖² ≈ r_a² + r_b², bounded by
(r_a − r_b)² ≈ 0). The residual sketch g = Re (R: RESID_DIM × N random signs ±1/√RESID_DIM,
drawn once per text set, independent of the vectors) tightens it: ‖e_a − e_b‖² ≥
RESID_BOUND · ‖g_a − g_b‖², failing for a given pair with probability ≤ RESID_FAILURE over R
(`residual_bound`). So a vector that belongs in a query's top k is missed with probability at most
k · RESID_FAILURE, for any vectors not chosen knowing R (R is stored in the file: the bound is
against chance, not against an adversary who reads it). Sets of at most SKETCH_DIM + RESID_DIM
texts get no residual sketch: there a vector is hardly longer than its residual sketch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SKETCH_DIM = 64  # the width of vector_rows.sketch (SQL_CONSTANTS)
RESID_DIM = 256  # the width of vector_rows.resid_sketch (SQL_CONSTANTS)
RESID_FAILURE = 1e-12  # chance that the residual bound fails for one pair of vectors
BASIS_MIN = 128  # vectors a text set holds before its sketch basis is fitted
BASIS_SAMPLE = 512  # vectors the basis is fitted on, at most (its cost: BASIS_SAMPLE² × N)


def residual_bound(dim: int = RESID_DIM, failure: float = RESID_FAILURE) -> float:
    """λ with P(λ‖Rx‖² > ‖x‖²) ≤ failure for a fixed x and R of ±1/√dim signs: λ = 1/(1 + ε),
    (dim/2)(ε − ln(1 + ε)) = ln(1/failure). Why: for a row ρ of ±1 signs, Q = ⟨ρ, x⟩/‖x‖ has
    E[Q^{2j}] ≤ E[Z^{2j}] for Z ~ N(0, 1) (a Rademacher sum's even moments are sums of the
    Gaussian's terms with smaller coefficients), so E[exp(hQ²)] ≤ (1 − 2h)^{-1/2}, and the
    Chernoff bound over dim independent rows at h = ε/(2(1 + ε)) gives
    P(‖Rx‖² ≥ (1 + ε)‖x‖²) ≤ ((1 + ε)e^{−ε})^{dim/2} (Achlioptas 2003, Lemma 5's argument)."""
    target = 2 * math.log(1 / failure) / dim
    low, high = 0.0, 1.0
    while high - math.log1p(high) < target:
        high *= 2
    for _ in range(200):  # bisection: ε − ln(1 + ε) increases with ε
        mid = (low + high) / 2
        low, high = (mid, high) if mid - math.log1p(mid) < target else (low, mid)
    return 1 / (1 + high)  # the larger end: λ a little smaller, the bound still safe


RESID_BOUND = residual_bound()


@dataclass(frozen=True)
class SketchBasis:
    """A text set's sketch basis: μ and orthonormal rows B, so s = B(c − μ) (c centred ℓ); and
    R, the residual's projection (None for a set of at most SKETCH_DIM + RESID_DIM texts)."""

    mean: np.ndarray  # N
    basis: np.ndarray  # SKETCH_DIM × N
    projection: np.ndarray | None = None  # RESID_DIM × N, entries ±1/√RESID_DIM

    @classmethod
    def fit(cls, loglik: np.ndarray, seed: int = 0) -> SketchBasis:
        """Top principal directions of the row-centred vectors (at most BASIS_SAMPLE of them,
        sampled with a fixed seed), padded with random orthonormal directions when the sample
        has fewer than SKETCH_DIM: PCA keeps the structure models share (family, size,
        training), which is what separates near neighbours from far ones."""
        rng = np.random.default_rng(seed)
        if len(loglik) > BASIS_SAMPLE:
            loglik = loglik[np.sort(rng.choice(len(loglik), BASIS_SAMPLE, replace=False))]
        centred = loglik - loglik.mean(axis=1, keepdims=True)
        mean = centred.mean(axis=0)
        x = centred - mean
        values, vectors = np.linalg.eigh(x @ x.T)
        top = np.argsort(values)[::-1][:SKETCH_DIM]
        top = top[values[top] > values.max() * 1e-12]
        rows = (vectors[:, top].T @ x) / np.sqrt(values[top])[:, None]
        extra = rng.normal(size=(SKETCH_DIM - len(rows), x.shape[1]))
        q, _ = np.linalg.qr(np.vstack([rows, extra]).T)  # orthonormal, the PCA rows first
        basis = q.T[:SKETCH_DIM]
        if len(basis) < SKETCH_DIM:  # fewer texts than dimensions: those rows span them all,
            padding = np.zeros((SKETCH_DIM - len(basis), x.shape[1]))  # the rest is zero
            basis = np.vstack([basis, padding])
        return cls(mean=mean, basis=basis, projection=draw_projection(x.shape[1], rng))


def draw_projection(n_texts: int, rng: np.random.Generator) -> np.ndarray | None:
    """R for a set of ``n_texts``: random signs ±1/√RESID_DIM (exact in float32, as stored)."""
    if n_texts <= SKETCH_DIM + RESID_DIM:
        return None
    signs = rng.integers(0, 2, size=(RESID_DIM, n_texts)) * 2 - 1
    return signs / math.sqrt(RESID_DIM)


def vector_columns(loglik: np.ndarray, basis: SketchBasis | None) -> dict[str, np.ndarray]:
    """The stored columns of K vectors (K × N, float64 in): float32 ℓ, its mean (of the float32
    values, in float64), and with a basis the sketch (float32), its residual norm and the
    residual sketch (float32). Every writer of vectors builds them here, so a vector and its
    sketches always agree."""
    stored = np.asarray(loglik).astype(np.float32)
    wide = stored.astype(np.float64)
    mean = wide.mean(axis=1)
    columns = {"loglik": stored, "loglik_mean": mean}
    if basis is not None:
        x = wide - mean[:, None] - basis.mean
        sketch = x @ basis.basis.T
        resid = np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", sketch, sketch)
        columns["sketch"] = sketch.astype(np.float32)
        columns["sketch_resid"] = np.sqrt(np.maximum(resid, 0.0))
        if basis.projection is not None:
            residual = x - sketch @ basis.basis
            columns["resid_sketch"] = (residual @ basis.projection.T).astype(np.float32)
    return columns
