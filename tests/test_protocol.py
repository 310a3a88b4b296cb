"""P1's protocol (atlas.analysis.protocol) and views (atlas.analysis.views) on a synthetic atlas
with Pythia's exact schedule: every pair checked one by one, every KL against numpy."""

import json
import math

import numpy as np
import polars as pl
import protocol_world
import pytest
from click.testing import CliRunner
from protocol_world import N_TEXTS, SEED_STEPS, SIZES, TYPES, schedule

from atlas.analysis import protocol
from atlas.analysis.scale import ScaleError
from atlas.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The atlas, its float32 vectors by key, the texts' byte lengths, and its folder."""
    root = tmp_path_factory.mktemp("protocol")
    db, vectors, n_bytes = protocol_world.build(root)
    yield db, vectors, n_bytes, root
    db.close()


@pytest.fixture(scope="module")
def found(world):
    db = world[0]
    return db.scale_pairs(protocol="kishino2026")


def _pairs(found: pl.DataFrame, name: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in found.filter(pl.col("setting") == name)
            .select("key_a", "key_b").iter_rows()]


def _interval(size: str, end: int) -> tuple[str, str]:
    return f"pythia-{size}@step{end - 1000}", f"pythia-{size}@step{end}"


def test_early_and_later_are_p1s_250_intervals_each(found):
    early = {_interval(size, end) for size in SIZES for end in range(3_000, 52_001, 1_000)}
    later = {_interval(size, end) for size in SIZES if size != "1b"
             for end in range(94_000, 143_001, 1_000)}
    later |= {_interval("1b", end) for end in [*range(92_000, 116_000, 1_000),
                                               *range(118_000, 143_001, 1_000)]}
    assert len(early) == len(later) == 250
    assert set(_pairs(found, "early")) == early and len(_pairs(found, "early")) == 250
    assert set(_pairs(found, "later")) == later and len(_pairs(found, "later")) == 250


def test_seeds_sizes_quant_fine_tune_and_baselines(found):
    seeds = [1, 2, 5, 6, 7, 8, 9]  # 3 and 4 excluded; the unseeded run is not a seed
    assert set(_pairs(found, "seeds")) == {
        (f"pythia-410m/s{a}@step143000", f"pythia-410m/s{b}@step143000")
        for i, a in enumerate(seeds) for b in seeds[i + 1:]}
    assert len(_pairs(found, "seeds")) == 21
    assert _pairs(found, "sizes") == [("pythia-410m@step143000", f"pythia-{s}@step143000")
                                      for s in ("1.4b", "1b", "2.8b", "6.9b")]
    assert _pairs(found, "quant-8bit") == [("pythia-410m@step143000",
                                            "pythia-410m+bnb-int8@step143000")]
    assert _pairs(found, "quant-4bit") == [("pythia-410m@step143000",
                                            "pythia-410m+bnb-nf4@step143000")]
    # merged-7b has two base models: dropped from fine-tune and from the pool
    assert _pairs(found, "fine-tune") == [("llama-7b", "alpaca-7b"), ("llama-7b", "vicuna-7b"),
                                          ("mistral-7b", "zephyr-7b")]
    pool = sorted(TYPES)
    assert set(_pairs(found, "random")) == {(a, b) for a in pool for b in pool if a < b}
    assert set(_pairs(found, "intra-type")) == {(a, b) for a in pool for b in pool
                                                if a < b and TYPES[a] == TYPES[b]}
    assert _pairs(found, "layers") == [("pythia-410m#0", "pythia-410m#1"),
                                       ("pythia-410m#1", "pythia-410m#2")]
    assert found["setting"].unique(maintain_order=True).to_list() == list(protocol.SETTINGS)


def _p1_view(vectors: dict[str, np.ndarray]) -> tuple[float, list[int]]:
    """P1's clip threshold and dropped texts, re-implemented from method.md §8."""
    runs = {size: [f"pythia-{size}@step{s}" for s in schedule(size)] for size in SIZES}
    runs |= {f"s{seed}": [f"pythia-410m/s{seed}@step{s}" for s in SEED_STEPS]
             for seed in (1, 2, 5, 6, 7, 8, 9)}
    every = np.stack([vectors[k] for run in runs.values() for k in run])
    threshold = float(np.quantile(every, 0.02))
    score = np.zeros(N_TEXTS)
    for run in runs.values():
        kept = [np.maximum(vectors[k], threshold) for k in run
                if int(k.rsplit("step", 1)[1]) >= 2_000]
        score = np.maximum(score, np.abs(np.diff(np.stack(kept), axis=0)).max(axis=0))
    return threshold, sorted(np.argsort(-score, kind="stable")[:6].tolist())


def _kl(a: np.ndarray, b: np.ndarray, mean_bytes: float) -> float:
    return float(np.var(a - b) / (2 * mean_bytes * math.log(2)))


def test_kls_use_p1s_view_for_pretraining_and_raw_otherwise(world, found):
    _, vectors, n_bytes, _ = world
    threshold, dropped = _p1_view(vectors)
    assert set(dropped) <= set(range(10))
    keep = np.setdiff1d(np.arange(N_TEXTS), dropped)
    viewed = {k: np.maximum(v, threshold)[keep] for k, v in vectors.items()}
    for _, a, b, kl, _ in found.filter(pl.col("setting").is_in(["early", "seeds"])
                                             ).head(30).iter_rows():
        assert kl == pytest.approx(_kl(viewed[a], viewed[b], n_bytes[keep].mean()), rel=1e-6)
    for _, a, b, kl, _ in found.filter(~pl.col("setting").is_in(
            protocol.PRETRAINING)).iter_rows():
        assert kl == pytest.approx(_kl(vectors[a], vectors[b], n_bytes.mean()), rel=1e-6)


def test_stored_view_keeps_its_threshold_for_later_models(world):
    db, vectors, n_bytes, _ = world
    fitted = db.create_view("p1", where="family = 'pythia' AND seed IS NULL AND quant IS NULL "
                            "AND layer IS NULL", replace=True)
    chosen = [k for k in vectors if k.startswith("pythia-") and "/" not in k and "+" not in k
              and "#" not in k]
    assert fitted.params["clip"]["threshold"] == pytest.approx(
        float(np.quantile(np.stack([vectors[k] for k in chosen]), 0.02)), rel=1e-12)
    assert db.view("p1").params == json.loads(json.dumps(fitted.params))
    keep = np.setdiff1d(np.arange(N_TEXTS), fitted.params["drop-texts"]["dropped"])
    threshold = fitted.params["clip"]["threshold"]
    matrix = db.kl_matrix(["llama-7b", "vicuna-7b"], view="p1")  # not in the fitted set
    a, b = (np.maximum(vectors[k], threshold)[keep] for k in ("llama-7b", "vicuna-7b"))
    assert matrix.kl[0, 1] == pytest.approx(_kl(a, b, n_bytes[keep].mean()), rel=1e-6)
    clip_only = db.create_view("clip", kinds=["clip"], replace=True)
    assert clip_only.kind == "clip" and db.views()["name"].to_list() == ["clip", "p1"]


def test_quantized_model_against_a_base_of_another_dtype_is_refused():
    models = protocol.scale.models_from_keys(["m-1b", "m-1b+bnb-int8"])
    provenance = pl.DataFrame({"key": ["m-1b", "m-1b+bnb-int8"], "dtype": ["float32", "float16"],
                               "tokenizer_fingerprint": ["x", "x"]})
    with pytest.raises(ScaleError, match=r"differ in dtype \(float16 vs float32\)"):
        protocol.kishino2026_pairs(models, context=protocol.Context(provenance=provenance))


def test_cli_prints_every_pair(world):
    db, _, _, root = world
    db.close()
    result = CliRunner().invoke(main, ["--db", str(root / "atlas.duckdb"), "scale", "--protocol",
                                       "kishino2026", "--pairs", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "setting,key_a,key_b,kl,se"
    assert sum(line.startswith("early,") for line in lines) == 250
    shown = CliRunner().invoke(main, ["--db", str(root / "atlas.duckdb"), "view", "show", "p1"])
    assert shown.exit_code == 0 and '"dropped"' in shown.output


def test_kl_nearest_and_trajectory_through_a_view(world):
    db, vectors, n_bytes, _ = world
    fitted = db.create_view("p1-all", replace=True)
    threshold, keep = fitted.params["clip"]["threshold"], np.setdiff1d(
        np.arange(N_TEXTS), fitted.params["drop-texts"]["dropped"])
    viewed = {k: np.maximum(v, threshold)[keep] for k, v in vectors.items()}
    mean_bytes = n_bytes[keep].mean()
    a, b = "pythia-1b@step1000", "pythia-1b@step2000"
    assert db.kl(a, b, view="p1-all").value == pytest.approx(
        _kl(viewed[a], viewed[b], mean_bytes), rel=1e-6)
    near = db.nearest(a, k=3, view="p1-all")
    expected = sorted((_kl(viewed[a], v, mean_bytes), k) for k, v in viewed.items() if k != a)
    assert near["key"].to_list() == [k for _, k in expected[:3]]
    assert near["kl"].to_list() == pytest.approx([d for d, _ in expected[:3]], rel=1e-6)
    path = db.trajectory(db.run("pythia", "1b"), view="p1-all").value
    assert path["kl"][-1] == pytest.approx(_kl(viewed["pythia-1b@step142000"],
                                               viewed["pythia-1b@step143000"], mean_bytes),
                                           rel=1e-6)


def test_diffusion_starts_are_p1s_by_default(world):
    db = world[0]
    fit = db.diffusion(db.run("pythia", "410m"), n_boot=20).value
    assert [row.t0 for row in fit.per_t0] == list(range(1_000, 133_001, 1_000))
    assert fit.window == 10 and fit.min_t0 == 1_000 and fit.to_dict()["min_t0"] == 1_000
    later = db.diffusion(db.run("pythia", "1b"), n_boot=0, min_t0=100_000).value
    assert [row.t0 for row in later.per_t0] == [*range(100_000, 116_000, 1_000),
                                                *range(117_000, 133_001, 1_000)]


def test_starts_are_resampled_in_blocks_of_a_window():
    from atlas.analysis.diffusion import _block_picks

    picks = _block_picks(np.random.default_rng(0), 25, 10, 50)
    assert picks.shape == (50, 25)
    for row in picks:
        for block in (row[:10], row[10:20], row[20:]):
            assert np.array_equal(np.diff(block), np.ones(block.size - 1))


def test_a_schedule_whose_tail_has_no_full_window_starts_earlier_with_a_note():
    from atlas.analysis.diffusion import DiffusionError, diffusion

    steps = [0, 1, 2, 4, 8, 40, 80, 120, 160, 200]  # the quick demo's: a 5-checkpoint tail
    loglik = np.random.default_rng(0).normal(0, 1, (len(steps), 50)).cumsum(axis=0)
    fit = diffusion(steps, loglik, 10.0, window=5, n_boot=0)
    assert [row.t0 for row in fit.per_t0] == [0, 1, 2, 4, 8]
    assert "no full window" in fit.notes[0] and "--min-t0" in fit.notes[0]
    with pytest.raises(DiffusionError, match="smaller --min-t0"):
        diffusion(steps, loglik, 10.0, window=5, n_boot=0, min_t0=40)


def test_a_map_through_a_view_is_the_map_of_the_viewed_vectors(world):
    from atlas.analysis import maps

    db, vectors, n_bytes, _ = world
    fitted = db.create_view("clip-only", kinds=["clip"], replace=True)
    keys = [f"pythia-1b@step{s}" for s in range(140_000, 143_001, 1_000)]
    where = "key IN (" + ", ".join(f"'{k}'" for k in keys) + ")"
    viewed = db.fit_map("pca", where=where, save=False, view="clip-only")
    clipped = np.stack([np.maximum(vectors[k], fitted.params["clip"]["threshold"])
                        for k in viewed.keys])
    expected = maps.fit_map(viewed.keys, clipped, n_bytes.mean(), method="pca",
                             textset="eval", where=where)
    assert np.allclose(viewed.coords, expected.coords, rtol=1e-6, atol=1e-9)
    assert "through view clip-only" in viewed.notes
    assert not np.allclose(db.fit_map("pca", where=where, save=False).coords, viewed.coords)
