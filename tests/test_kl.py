"""method.md §7: the exact identities any implementation must satisfy."""

import math

import numpy as np
import pytest

from atlas.kl import double_centre, kl_bpb, kl_matrix, kl_se_bpb, scaled_coordinates

MEAN_BYTES = 972.3188


@pytest.fixture
def loglik():
    rng = np.random.default_rng(7)
    base = rng.normal(-900, 120, size=400)  # per-text difficulty shared by all models
    return base + rng.normal(0, 1, size=(6, 1)) * 30 + rng.normal(0, 4, size=(6, 400))


def test_double_centring_zero_sums(loglik):
    q = double_centre(loglik)
    assert np.allclose(q.sum(axis=0), 0, atol=1e-8)
    assert np.allclose(q.sum(axis=1), 0, atol=1e-8)


def test_kl_invariant_to_model_and_text_offsets(loglik):
    reference = kl_matrix(loglik, MEAN_BYTES).kl
    shifted = loglik + np.arange(6)[:, None] * 123.4  # ℓ_i → ℓ_i + c_i
    shared = loglik + np.random.default_rng(1).normal(0, 50, size=400)  # same per-text vector
    assert np.allclose(kl_matrix(shifted, MEAN_BYTES).kl, reference, rtol=1e-9, atol=1e-12)
    assert np.allclose(kl_matrix(shared, MEAN_BYTES).kl, reference, rtol=1e-9, atol=1e-12)


def test_symmetric_and_zero_on_identical(loglik):
    result = kl_matrix(loglik, MEAN_BYTES)
    assert np.array_equal(result.kl, result.kl.T)
    assert np.all(np.diag(result.kl) == 0)
    assert kl_bpb(loglik[0], loglik[0].copy(), MEAN_BYTES) == 0.0


def test_scaled_distance_is_kl(loglik):
    q = scaled_coordinates(loglik, MEAN_BYTES)
    for i, j in [(0, 1), (2, 5), (3, 4)]:
        expected = np.var(loglik[i] - loglik[j]) / (2 * MEAN_BYTES * math.log(2))
        assert np.sum((q[i] - q[j]) ** 2) == pytest.approx(expected, rel=1e-10)


def test_pair_kl_independent_of_other_models(loglik):
    alone = kl_matrix(loglik[[1, 4]], MEAN_BYTES).kl[0, 1]
    among_all = kl_matrix(loglik, MEAN_BYTES).kl[1, 4]
    assert alone == pytest.approx(among_all, rel=1e-10)


def test_matrix_matches_pairwise_kl_and_se(loglik):
    result = kl_matrix(loglik, MEAN_BYTES)
    for i in range(6):
        for j in range(6):
            if i == j:
                continue
            assert result.kl[i, j] == pytest.approx(kl_bpb(loglik[i], loglik[j], MEAN_BYTES),
                                                    rel=1e-9)
            assert result.se[i, j] == pytest.approx(kl_se_bpb(loglik[i], loglik[j], MEAN_BYTES),
                                                    rel=1e-7)


def test_relative_se_bound():
    """Relative SE ≥ √(2/N) holds for any difference distribution (m4 ≥ m2²)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=10_000), rng.normal(size=10_000)
    assert kl_se_bpb(a, b, 1.0) / kl_bpb(a, b, 1.0) >= math.sqrt(2 / 10_000) * 0.999


def test_jeffreys_is_twice_kl(loglik):
    """‖q_i − q_j‖²/N without the ½ estimates the Jeffreys divergence (KL both ways)."""
    q = double_centre(loglik)
    jeffreys_nats = np.sum((q[0] - q[1]) ** 2) / loglik.shape[1]
    kl_nats = kl_bpb(loglik[0], loglik[1], 1.0) * math.log(2)  # bits/byte with B̄ = 1 → nats
    assert jeffreys_nats == pytest.approx(2 * kl_nats, rel=1e-9)


@pytest.mark.parametrize("third", [None, -1_000.0, -20_503.0 + 3_000.0])
def test_matrix_se_is_stable_beside_a_heavy_tailed_text(third):
    """Two close models (per-text SD of Δℓ 0.3 nats) on texts of which one sits at −20,503
    nats: the expanded fourth moment used to cancel to an SE of 0.0. With a third model far
    from both on that text, double centring alone cannot help: those pairs are recomputed."""
    rng = np.random.default_rng(7)
    base = -rng.uniform(100, 1500, 10_000)
    base[123] = -20_503.71
    models = [base, base + rng.normal(0, 0.3, base.size)]
    if third is not None:
        far = base + rng.normal(0, 5.0, base.size)
        far[123] = third
        models.append(far)
    loglik = np.array(models)
    result = kl_matrix(loglik, 972.3188)
    for i, j in [(0, 1), (1, 0)] + ([(0, 2), (1, 2)] if third is not None else []):
        expected = kl_se_bpb(loglik[i], loglik[j], 972.3188)
        assert expected > 0
        assert result.se[i, j] == pytest.approx(expected, rel=1e-6)
        assert result.kl[i, j] == pytest.approx(kl_bpb(loglik[i], loglik[j], 972.3188),
                                                rel=1e-9)
