"""Monte-Carlo KL (atlas.calibration) on tiny config-built models: exactness and agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atlas.calibration import CalibrationError, estimate, monte_carlo, start_ids
from atlas.loading import load_model
from atlas.specs import ModelSpec


def _load(path) -> object:
    return load_model(ModelSpec(str(path), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def pair(seed_dirs):
    return _load(seed_dirs[1]), _load(seed_dirs[2])


def test_kl_of_a_model_with_itself_is_exactly_zero(seed_dirs):
    a, again = _load(seed_dirs[1]), _load(seed_dirs[1])
    for x, y in ((a, again), (again, a)):
        found = monte_carlo(x, y, samples=4, length=12, seed=3)
        assert found.method == "rao-blackwell"
        assert np.all(found.kl == 0.0) and np.all(found.log_ratio == 0.0)
        assert found.estimate().bits_per_byte == 0.0


def test_rao_blackwell_agrees_with_the_plain_estimator_on_independent_samples(pair):
    a, b = pair
    rb = monte_carlo(a, b, samples=32, length=24, seed=0).estimate()
    plain = monte_carlo(a, b, samples=32, length=24, seed=1).estimate(plain=True)
    assert rb.nats_per_token > 0 and rb.se < plain.se  # Rao-Blackwellisation lowers the variance
    assert abs(rb.nats_per_token - plain.nats_per_token) < 4 * math.hypot(rb.se, plain.se)


def test_samples_are_reproducible_from_the_seed_and_both_directions_differ(pair):
    a, b = pair
    first = monte_carlo(a, b, samples=4, length=8, seed=5, batch_size=3)
    again = monte_carlo(a, b, samples=4, length=8, seed=5, batch_size=3)
    back = monte_carlo(b, a, samples=4, length=8, seed=5, batch_size=3)
    assert np.array_equal(first.kl, again.kl) and np.array_equal(first.n_bytes, again.n_bytes)
    assert not np.array_equal(first.kl, back.kl)
    assert len(first.kl) == 4 and np.all(first.kl > 0)


def test_unit_conversions():
    kl = np.array([2.0, 4.0, 6.0])  # nats per sample of 10 tokens
    n_bytes = np.array([10.0, 20.0, 30.0])
    found = estimate(kl, n_bytes, length=10)
    assert found.nats_per_token == pytest.approx(0.4)
    assert found.se == pytest.approx(np.std(kl, ddof=1) / math.sqrt(3) / 10)
    assert found.bits_per_byte == pytest.approx(12 / 60 / math.log(2))
    assert found.se_bits_per_byte == pytest.approx(0.0, abs=1e-12)  # KL ∝ bytes: no spread


def test_prompts_start_every_sample_without_padding(pair):
    a, _ = pair
    starts = start_ids(a.tokenizer, 5, ["def f(x):\n    return x + 1\n", "import os"])
    assert starts.shape[0] == 5 and torch_equal(starts[0], starts[2])
    with pytest.raises(CalibrationError, match="at least 2 samples"):
        monte_carlo(a, a, samples=1, length=4)


def torch_equal(x, y) -> bool:
    return bool((x == y).all())
