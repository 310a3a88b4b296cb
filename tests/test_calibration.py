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
    continued = monte_carlo(a, a, samples=2, length=3, prompts=["import os\nimport sys"])
    assert np.all(continued.kl == 0.0) and np.all(continued.n_bytes > 0)
    with pytest.raises(CalibrationError, match="at least 2 samples"):
        monte_carlo(a, a, samples=1, length=4)


def torch_equal(x, y) -> bool:
    return bool((x == y).all())


@pytest.fixture
def calibrated_db(db, seed_dirs):
    """Seeds 1 and 2 ingested as minipy-t/s1 and /s2, and seed 1 again as an int8 copy."""
    for seed in (1, 2):
        db.ingest(str(seed_dirs[seed]), family="minipy", size="t", seed=seed, textset="eval",
                  device="cpu", dtype="float32", progress=False, sketch_dim=0)
    db.close()
    return db


def _cli(db, *args: str) -> str:
    from click.testing import CliRunner

    from atlas.cli import main

    db.close()
    result = CliRunner().invoke(main, ["--db", str(db.path), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_calibrate_command_measures_both_directions_and_stores_them(calibrated_db):
    import json

    out = json.loads(_cli(calibrated_db, "calibrate", "minipy-t/s1", "minipy-t/s2",
                          "--samples", "4", "--length", "6", "--device", "cpu",
                          "--format", "json"))
    assert (out["key_a"], out["key_b"], out["samples"], out["length"]) == (
        "minipy-t/s1", "minipy-t/s2", 4, 6)
    assert out["mc_ab"]["bits_per_byte"] > 0 and out["mc_ba"]["bits_per_byte"] > 0
    assert out["mc_ab"] != out["mc_ba"] and out["method"] == "rao-blackwell"
    assert out["estimator"]["textset"] == "eval"
    mean = (out["mc_ab"]["bits_per_byte"] + out["mc_ba"]["bits_per_byte"]) / 2
    assert out["ratio"] == pytest.approx(out["estimator"]["bits_per_byte"] / mean)
    stored = calibrated_db.sql("SELECT key_a, mc_ab_bpb, ratio, seed, dtype, versions "
                               "FROM calibrations").row(0, named=True)
    assert stored["mc_ab_bpb"] == out["mc_ab"]["bits_per_byte"]
    assert stored["dtype"] == "float32" and "torch" in stored["versions"]
    assert "Monte Carlo KL(a‖b)" in _cli(calibrated_db, "calibrate", "minipy-t/s1",
                                         "minipy-t/s2", "--samples", "2", "--length", "3")
    figure = calibrated_db.path.with_name("calibration.png")
    assert "estimator ≈" in _cli(calibrated_db, "plot", "calibration", "-o", str(figure))
    assert figure.stat().st_size > 1000


def test_floor_is_stored_and_flags_nearest(calibrated_db):
    import json

    out = json.loads(_cli(calibrated_db, "calibrate", "--floor", "minipy-t/s1", "--device",
                          "cpu", "--format", "json"))
    assert out["dtype"] == "bfloat16" and out["kl_bpb"] > 0 and out["batch_kl_bpb"] < out["kl_bpb"]
    floors = calibrated_db.sql("SELECT key, dtype, kl_bpb FROM precision_floors")
    assert floors.rows() == [("minipy-t/s1", "bfloat16", out["kl_bpb"])]
    # the vectors were scored in float32: no bf16 floor applies to them, nothing is flagged
    assert "floor" not in calibrated_db.nearest("minipy-t/s1").columns
    calibrated_db.sql("UPDATE precision_floors SET dtype = 'float32', kl_bpb = 1e9")
    near = calibrated_db.nearest("minipy-t/s1")
    assert near["floor"].to_list() == [1e9] and near["within_floor"].to_list() == [True]


def test_loglog_fit_recovers_a_power_law():
    import polars as pl

    from atlas.analysis.calibration import CalibrationFitError, fit_loglog

    mc = np.array([0.01, 0.1, 1.0, 3.0])
    frame = pl.DataFrame({"mc_ab_bpb": mc * 0.9, "mc_ba_bpb": mc * 1.1,
                          "estimator_bpb": 4.0 * mc**0.8})
    fit = fit_loglog(frame)
    assert (fit.slope, math.exp(fit.intercept), fit.r2, fit.n) == pytest.approx((0.8, 4.0, 1, 4))
    assert fit.predict(np.array([1.0])) == pytest.approx([4.0])
    with pytest.raises(CalibrationFitError, match="two or more pairs"):
        fit_loglog(frame.head(1))


def test_models_that_tokenize_differently_get_the_sequence_level_kl(tmp_path, pair,
                                                                    bos_tokenizer):
    from atlas import tiny
    from atlas.scoring import Scorer

    a, _ = pair
    other = _load(tiny.save(tiny.build_model(tiny.tiny_config("gpt2", bos_tokenizer), seed=4),
                            bos_tokenizer, tmp_path / "bos"))
    scored = []

    def score_b(texts):
        scored.extend(texts)
        return Scorer(other).score(texts, progress=False).loglik

    found = monte_carlo(a, other, samples=3, length=10, seed=0, score_b=score_b)
    assert found.method == "sequence" and np.array_equal(found.kl, found.log_ratio)
    assert len(scored) == 3 and np.all(np.isfinite(found.kl))
    assert found.n_bytes.tolist() == [len(t.encode("utf-8")) for t in scored]
    with pytest.raises(CalibrationError, match="leave out --prompts"):
        monte_carlo(a, other, samples=3, length=4, score_b=score_b, prompts=["import os"])


def _full_logprob(loaded, texts: list[str]) -> np.ndarray:
    """log p(text | start token): a plain forward pass over [start] + the text's tokens."""
    import torch

    from atlas.calibration import start_token

    sums = []
    for text in texts:
        ids = torch.tensor([[start_token(loaded.tokenizer),
                             *loaded.tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.inference_mode():
            logp = loaded.model(input_ids=ids).logits.float().log_softmax(-1)
        sums.append(float(logp[0, :-1].gather(-1, ids[0, 1:, None]).sum()))
    return np.array(sums)


def test_sequence_level_kl_scores_every_token_when_a_tokenizer_adds_no_bos(tmp_path, pair,
                                                                         bos_tokenizer):
    """b's first text token is predicted (after the sampler's start token) whether or not b's
    tokenizer adds a BOS: both directions equal the plain log p_a(x) − log p_b(x)."""
    from atlas import tiny
    from atlas.calibration import measure
    from atlas.scoring import special_token_policy

    no_bos, _ = pair
    with_bos = _load(tiny.save(tiny.build_model(tiny.tiny_config("gpt2", bos_tokenizer), seed=4),
                               bos_tokenizer, tmp_path / "bos"))
    assert special_token_policy(no_bos.tokenizer) == "none"
    ab, ba = measure(with_bos, no_bos, samples=4, length=10, seed=0, progress=False)
    for found, a, b, seed in ((ab, with_bos, no_bos, 0), (ba, no_bos, with_bos, 1)):
        expected = monte_carlo(a, b, samples=4, length=10, seed=seed,
                               score_b=lambda texts, b=b: _full_logprob(b, texts))
        assert found.method == "sequence"
        np.testing.assert_allclose(found.kl, expected.kl, rtol=1e-4, atol=1e-3)


def test_variant_spec_reapplies_the_recorded_quantization(seed_dirs):
    from atlas.calibration import Variant, variant_spec

    source = str(seed_dirs[1])
    int8 = {"method": "torchao", "bits": 8, "group_size": None, "qtype": None,
            "source_quant": None}
    assert variant_spec(Variant("m-s", source, None, None, None), "cpu", "auto").quantize is None
    spec = variant_spec(Variant("m-s+int8", source, None, None, int8), "cpu", "float32")
    assert (spec.quantize.label, spec.source, spec.dtype) == ("int8", source, "float32")


@pytest.mark.parametrize("label", [(8, None), (4, 16)])
def test_torchao_weights_dequantized_once_give_the_same_logits(seed_dirs, label):
    import torch
    from torchao.quantization import IntxUnpackedToInt8Tensor

    from atlas.calibration import dequantize_once
    from atlas.quantize import quantized_copy
    from atlas.specs import QuantSpec

    bits, group = label
    exact = _load(seed_dirs[1])
    quantized = quantized_copy(exact, QuantSpec("torchao", bits, group, None, None))
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.inference_mode():
        expected = quantized.model(input_ids=ids).logits
        assert dequantize_once(quantized.model) > 0
        found = quantized.model(input_ids=ids).logits
        assert not torch.equal(found, exact.model(input_ids=ids).logits)  # still quantized
    assert not any(isinstance(p, IntxUnpackedToInt8Tensor)
                   for p in quantized.model.parameters())
    assert torch.equal(found, expected)


def test_a_float_gguf_loads_from_the_cached_float_checkpoint(seed_dirs, tmp_path, monkeypatch):
    """transformers dequantizes a GGUF on every load: calibrate reads the float checkpoint
    ``dequantized_gguf`` caches instead (stood in for by a saved tiny model here)."""
    from dataclasses import replace

    from atlas import quantize
    from atlas.calibration import load_variant

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    asked = []
    monkeypatch.setattr(quantize, "dequantized_gguf", lambda spec: asked.append(spec) or replace(
        spec, source=str(seed_dirs[1])))
    loaded = load_variant(ModelSpec(str(gguf), device="cpu", dtype="float32"), [])
    assert [spec.source for spec in asked] == [str(gguf)]
    assert loaded.model.config.vocab_size > 0
