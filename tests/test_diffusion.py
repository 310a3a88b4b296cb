"""Diffusion exponents (method.md §5): the log-log fitter, the bootstrap, fBm of known exponent."""

import json
import time

import numpy as np
import pytest

from atlas.analysis.diffusion import (
    DiffusionError,
    Estimate,
    diffusion,
    fbm_paths,
    fit_loglog,
)
from atlas.errors import AtlasError

MEAN_BYTES = 972.3188


def drift(steps, profile, n_texts=300, seed=0):
    """L with ℓ_t = profile(t) · z: every D_q and every text resample of it is (Δprofile)² ×
    a constant, so each start's slope is the same in every bootstrap draw."""
    z = np.random.default_rng(seed).normal(0, 5, size=n_texts)
    base = np.random.default_rng(seed + 1).normal(-900, 100, size=n_texts)
    return base + np.asarray(profile(np.asarray(steps, dtype=float)))[:, None] * z


# ------------------------------------------------------------------------------ fit_loglog


def test_fit_loglog_matches_polyfit():
    rng = np.random.default_rng(3)
    lags = np.sort(rng.uniform(1, 500, size=12))
    values = 0.03 * lags**0.27 * np.exp(rng.normal(0, 0.2, size=12))
    fit = fit_loglog(lags, values)
    slope, intercept = np.polyfit(np.log(lags), np.log(values), 1)
    y, predicted = np.log(values), intercept + slope * np.log(lags)
    r2 = 1 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2)
    assert fit.slope == pytest.approx(slope, abs=1e-9)
    assert fit.intercept == pytest.approx(intercept, abs=1e-9)
    assert fit.r2 == pytest.approx(r2, abs=1e-9)
    assert (fit.n, fit.dropped) == (12, 0)


def test_fit_loglog_recovers_a_pure_power_law_exactly():
    lags = np.array([1, 2, 3, 5, 8, 13, 21, 34])
    fit = fit_loglog(lags, 4.2 * lags**0.37)
    assert fit.slope == pytest.approx(0.37, abs=1e-12)
    assert np.exp(fit.intercept) == pytest.approx(4.2, rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_loglog_drops_and_counts_non_positive_values():
    lags = np.arange(1, 8, dtype=float)
    values = 2.0 * lags**1.5
    values[[1, 4]] = [0.0, -3.0]
    values[6] = np.nan
    fit = fit_loglog(lags, values)
    assert (fit.n, fit.dropped) == (4, 3)
    assert fit.slope == pytest.approx(1.5, abs=1e-12)


def test_fit_loglog_bad_inputs():
    with pytest.raises(DiffusionError, match="at least 3"):
        fit_loglog([1, 2, 3, 4], [1.0, 0.0, -1.0, 2.0])
    with pytest.raises(DiffusionError, match="one value per lag"):
        fit_loglog([1, 2, 3], [1.0, 2.0])
    with pytest.raises(DiffusionError, match="positive"):
        fit_loglog([0, 1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(DiffusionError, match="lags are equal"):
        fit_loglog([2, 2, 2], [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------ exact cases


def test_linear_drift_gives_c_q_two_everywhere_with_a_zero_width_interval():
    steps = np.arange(0, 40, 2)
    result = diffusion(steps, drift(steps, lambda t: t), MEAN_BYTES, window=10, n_boot=50)
    assert len(result.per_t0) == steps.size - 10
    assert all(row.c_q == pytest.approx(2.0, abs=1e-9) for row in result.per_t0)
    assert all(row.r2_q == pytest.approx(1.0, abs=1e-9) for row in result.per_t0)
    assert result.c_q.value == pytest.approx(2.0, abs=1e-9)
    assert result.c_q.ci_low == pytest.approx(2.0, abs=1e-9)
    assert result.c_q.ci_high == pytest.approx(2.0, abs=1e-9)


def test_power_law_from_one_start_recovered_exactly():
    steps = np.array([0, 10, 11, 13, 17, 25, 41, 73, 137, 265, 521, 1033])
    t0, c = 10, 0.4
    loglik = drift(steps, lambda t: np.clip(t - t0, 0, None) ** (c / 2))
    result = diffusion(steps, loglik, MEAN_BYTES, t0=t0, n_boot=30)
    assert [row.t0 for row in result.per_t0] == [t0]
    assert result.c_q.value == pytest.approx(c, abs=1e-9)
    assert (result.c_q.ci_low, result.c_q.ci_high) == pytest.approx((c, c), abs=1e-9)
    np.testing.assert_allclose(result.lags[0], steps[2:] - t0)


def test_weight_power_law_gives_c_w_and_alpha_is_the_ratio():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.25, 60, 500, seed=4)[steps]
    weight_sq = 7.0 * np.abs(np.subtract.outer(steps, steps)).astype(float) ** 2
    result = diffusion(steps, loglik, MEAN_BYTES, weight_sq=weight_sq, n_boot=40)
    assert result.c_w.value == pytest.approx(2.0, abs=1e-9)
    assert (result.c_w.ci_low, result.c_w.ci_high) == pytest.approx((2.0, 2.0), abs=1e-9)
    assert result.alpha.value == pytest.approx(result.c_q.value / 2.0, rel=1e-12)
    assert result.alpha.ci_low == pytest.approx(result.c_q.ci_low / 2.0, rel=1e-9)
    assert result.alpha.ci_high == pytest.approx(result.c_q.ci_high / 2.0, rel=1e-9)
    for row in result.per_t0:
        assert row.c_w == pytest.approx(2.0, abs=1e-9)
        assert row.r2_w == pytest.approx(1.0, abs=1e-9)
        assert row.alpha == pytest.approx(row.c_q / row.c_w, rel=1e-12)


def test_alpha_interval_comes_from_paired_draws():
    """Per-start exponents that vary but equal each other on both sides: every paired draw of
    α is exactly 1, while c_q itself has a proper interval over the starts."""
    steps = np.arange(1, 31, dtype=float)

    def profile(t):
        return np.log(t) + 0.02 * t

    loglik = drift(steps, profile)
    weight_sq = np.subtract.outer(profile(steps), profile(steps)) ** 2
    result = diffusion(steps, loglik, MEAN_BYTES, weight_sq=weight_sq, window=5, n_boot=100)
    assert result.c_q.ci_high - result.c_q.ci_low > 0.05
    assert result.c_w.value == pytest.approx(result.c_q.value, rel=1e-9)
    assert (result.alpha.value, result.alpha.ci_low, result.alpha.ci_high) == pytest.approx(
        (1.0, 1.0, 1.0), abs=1e-9)


# ------------------------------------------------------------------------------ fBm


def test_fbm_has_the_right_increment_variance():
    hurst = 0.3
    paths = fbm_paths(hurst, 50, 8000, seed=2)
    assert paths.shape == (51, 8000)
    assert np.all(paths[0] == 0)
    for s, t in [(0, 1), (0, 10), (20, 30), (5, 50)]:
        assert np.var(paths[t] - paths[s]) == pytest.approx((t - s) ** (2 * hurst), rel=0.08)


@pytest.mark.parametrize("hurst", [0.1, 0.25, 0.5, 0.75])
def test_fbm_exponent_recovered(hurst):
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(hurst, 60, 2000, seed=11)[steps]
    result = diffusion(steps, loglik, MEAN_BYTES, n_boot=100, seed=1)
    assert result.c_q.value == pytest.approx(2 * hurst, abs=0.05)
    assert result.c_q.ci_low < result.c_q.value < result.c_q.ci_high
    assert result.c_q.ci_high - result.c_q.ci_low < 0.1
    assert min(row.r2_q for row in result.per_t0) > 0.8


def test_fbm_exponent_recovered_on_uneven_steps():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 100, 150, 200, 250, 300, 350, 400, 450, 500])
    loglik = fbm_paths(0.5, 500, 2000, seed=5)[steps]
    result = diffusion(steps, loglik, MEAN_BYTES, window=8, n_boot=50)
    assert result.c_q.value == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------ options, output


def test_t0_picks_one_row_of_the_full_fit():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.5, 60, 400, seed=3)[steps]
    full = diffusion(steps, loglik, MEAN_BYTES, n_boot=0)
    one = diffusion(steps, loglik, MEAN_BYTES, t0=12, n_boot=20)
    assert len(one.per_t0) == 1
    assert one.per_t0[0] == full.per_t0[4]
    assert one.c_q.value == pytest.approx(full.per_t0[4].c_q, abs=1e-12)
    assert one.c_q.ci_low is not None  # texts still resample
    weight_sq = np.abs(np.subtract.outer(steps, steps)).astype(float)
    one = diffusion(steps, loglik, MEAN_BYTES, weight_sq=weight_sq, t0=12, n_boot=20)
    assert one.c_w.value == pytest.approx(1.0, abs=1e-12)
    assert (one.c_w.ci_low, one.c_w.ci_high) == (None, None)  # one start: nothing to resample
    assert one.alpha.ci_low == pytest.approx(one.c_q.ci_low, rel=1e-9)


def test_without_weights_and_without_bootstrap():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.5, 60, 400, seed=3)[steps]
    result = diffusion(steps, loglik, MEAN_BYTES, n_boot=0)
    assert result.c_w == Estimate(None, None, None)
    assert result.alpha == Estimate(None, None, None)
    assert result.c_q.value is not None and result.c_q.ci_low is None
    assert all(row.c_w is None and row.alpha is None for row in result.per_t0)


def test_non_positive_distances_dropped_and_reported():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.5, 60, 400, seed=3)[steps]
    loglik[6] = loglik[5]  # a repeated checkpoint: D_q(t_5, t_6) = 0 exactly
    result = diffusion(steps, loglik, MEAN_BYTES, n_boot=20)
    assert [row.dropped_q for row in result.per_t0] == [0] * 5 + [1] + [0] * 5
    assert any("D_q: 1 non-positive" in note and "t0 = 15" in note for note in result.notes)
    assert result.per_t0[5].c_q is not None


def test_json_shape():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.5, 60, 400, seed=3)[steps]
    weight_sq = np.abs(np.subtract.outer(steps, steps)).astype(float)
    for weights in (weight_sq, None):
        out = json.loads(json.dumps(
            diffusion(steps, loglik, MEAN_BYTES, weight_sq=weights, n_boot=20).to_dict(),
            allow_nan=False))
        assert out["window"] == 10
        for name in ("c_q", "c_w", "alpha"):
            assert set(out[name]) == {"value", "ci_low", "ci_high"}
        assert len(out["per_t0"]) == 11
        assert set(out["per_t0"][0]) >= {"t0", "c_q", "r2_q", "c_w", "r2_w", "alpha"}
        assert out["per_t0"][0]["t0"] == 0 and isinstance(out["per_t0"][0]["t0"], int)
    assert out["c_w"] == {"value": None, "ci_low": None, "ci_high": None}
    assert out["alpha"]["value"] is None and out["per_t0"][0]["c_w"] is None


def test_same_seed_same_result():
    steps = np.arange(0, 61, 3)
    loglik = fbm_paths(0.5, 60, 400, seed=3)[steps]
    first = diffusion(steps, loglik, MEAN_BYTES, n_boot=30, seed=9).to_dict()
    assert diffusion(steps, loglik, MEAN_BYTES, n_boot=30, seed=9).to_dict() == first
    assert diffusion(steps, loglik, MEAN_BYTES, n_boot=30, seed=10).to_dict() != first


def test_bootstrap_is_fast():
    steps = np.arange(20)
    loglik = fbm_paths(0.5, 19, 2000, seed=1)
    weight_sq = np.abs(np.subtract.outer(steps, steps)).astype(float)
    diffusion(steps, loglik, MEAN_BYTES, weight_sq=weight_sq, n_boot=200)  # warm-up
    start = time.perf_counter()
    diffusion(steps, loglik, MEAN_BYTES, weight_sq=weight_sq, n_boot=200)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------ errors


@pytest.fixture
def trajectory():
    steps = np.arange(0, 36, 3)
    return steps, fbm_paths(0.5, 35, 50, seed=0)[steps]


def test_errors_are_atlas_errors():
    assert issubclass(DiffusionError, AtlasError)


def test_too_few_checkpoints(trajectory):
    steps, loglik = trajectory
    for k in (2, 3):
        with pytest.raises(DiffusionError, match=rf"at least 4 checkpoints.*; got {k}"):
            diffusion(steps[:k], loglik[:k], MEAN_BYTES, window=3)


def test_no_full_window_says_how_many_and_suggests_a_window(trajectory):
    steps, loglik = trajectory
    with pytest.raises(DiffusionError, match=r"12 checkpoints.*needs 16.*--window 11"):
        diffusion(steps, loglik, MEAN_BYTES, window=15)
    with pytest.raises(DiffusionError, match="window must be an integer of at least 3"):
        diffusion(steps, loglik, MEAN_BYTES, window=2)


def test_steps_must_increase(trajectory):
    steps, loglik = trajectory
    bad = steps.copy()
    bad[4] = bad[3]
    with pytest.raises(DiffusionError, match=r"strictly increasing: steps\[4\] = 9 follows"):
        diffusion(bad, loglik, MEAN_BYTES, window=5)


def test_shape_mismatches(trajectory):
    steps, loglik = trajectory
    with pytest.raises(DiffusionError, match="one row per checkpoint"):
        diffusion(steps, loglik[:-1], MEAN_BYTES, window=5)
    with pytest.raises(DiffusionError, match=r"weight_sq has shape \(11, 11\); it must be 12"):
        diffusion(steps, loglik, MEAN_BYTES, weight_sq=np.ones((11, 11)), window=5)


def test_bad_values_and_options(trajectory):
    steps, loglik = trajectory
    broken = loglik.copy()
    broken[2, 7] = np.nan
    with pytest.raises(DiffusionError, match="NaN or inf in the row of step 6"):
        diffusion(steps, broken, MEAN_BYTES, window=5)
    with pytest.raises(DiffusionError, match="mean_bytes"):
        diffusion(steps, loglik, 0.0, window=5)
    with pytest.raises(DiffusionError, match="ci must be"):
        diffusion(steps, loglik, MEAN_BYTES, window=5, ci=95)
    with pytest.raises(DiffusionError, match="n_boot"):
        diffusion(steps, loglik, MEAN_BYTES, window=5, n_boot=-1)


def test_t0_errors(trajectory):
    steps, loglik = trajectory
    with pytest.raises(DiffusionError, match=r"t0 = 4 is not a checkpoint step.*nearest: 3"):
        diffusion(steps, loglik, MEAN_BYTES, window=5, t0=4)
    with pytest.raises(DiffusionError, match=r"t0 = 24 has 3 later checkpoints.*--window 3"):
        diffusion(steps, loglik, MEAN_BYTES, window=5, t0=24)


def test_identical_checkpoints_or_useless_weights(trajectory):
    steps, loglik = trajectory
    with pytest.raises(DiffusionError, match="nearly\\) identical"):
        diffusion(steps, np.repeat(loglik[:1], steps.size, axis=0), MEAN_BYTES, window=5)
    with pytest.raises(DiffusionError, match="positive weight distances"):
        diffusion(steps, loglik, MEAN_BYTES, weight_sq=np.zeros((12, 12)), window=5)


def test_fbm_bad_hurst():
    with pytest.raises(DiffusionError, match="between 0 and 1"):
        fbm_paths(1.0, 10, 10)
