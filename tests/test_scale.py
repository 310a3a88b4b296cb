"""The KL scale across settings, on hand-built atlases whose KLs are known in closed form.

Every vector is ℓ_m = base + c_m · u with u of zero mean and unit population variance, so
KL(a, b) = (c_a − c_b)² / (2 B̄ ln 2) and SE(a, b) = (c_a − c_b)² √((mean u⁴ − 1)/N) / (2 B̄ ln 2).
"""

from __future__ import annotations

import math
import time
import tracemalloc
from itertools import pairwise

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import atlas
from atlas.analysis import protocol, scale
from atlas.cli import main
from atlas.keys import size_value
from atlas.kl import bpb_scale, kl_bpb, kl_se_bpb

PYTHIA_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)]
# key → (coordinate c, parent); the keys cover every built-in setting once or more
MODELS: dict[str, tuple[float, str | None]] = {
    **{f"pythia-70m@step{s}": (math.log1p(s), None) for s in PYTHIA_STEPS},
    "pythia-70m/s1@step1000": (7.5, None),
    "pythia-70m/s2@step1000": (8.0, None),
    "pythia-160m@step1000": (9.0, None),
    "pythia-160m+bnb-int8@step1000": (9.1, None),
    "pythia-160m+bnb-nf4@step1000": (9.4, None),
    "llama-7b": (20.0, None),
    "llama-7b#0": (10.0, None),
    "llama-7b#1": (12.0, None),
    "llama-7b#2": (17.0, None),
    "llama-chat-7b": (21.0, "llama-7b"),
}
P = "pythia-70m@step"
EXPECTED = {
    "consecutive-early": {(f"{P}{a}", f"{P}{b}") for a, b in pairwise(PYTHIA_STEPS[:9])},
    "consecutive-mid": {(f"{P}{a}", f"{P}{a + 100}") for a in range(100, 600, 100)},
    "consecutive-late": {(f"{P}{a}", f"{P}{a + 100}") for a in range(600, 1000, 100)},
    "seeds": {(f"{P}1000", "pythia-70m/s1@step1000"), (f"{P}1000", "pythia-70m/s2@step1000"),
              ("pythia-70m/s1@step1000", "pythia-70m/s2@step1000")},
    "sizes": {(f"{P}1000", "pythia-160m@step1000")},
    "seeds-all-steps": {(f"{P}1000", "pythia-70m/s1@step1000"),
                        (f"{P}1000", "pythia-70m/s2@step1000"),
                        ("pythia-70m/s1@step1000", "pythia-70m/s2@step1000")},
    "quantization:bnb-int8": {("pythia-160m@step1000", "pythia-160m+bnb-int8@step1000")},
    "quantization:bnb-nf4": {("pythia-160m@step1000", "pythia-160m+bnb-nf4@step1000")},
    "fine-tune": {("llama-7b", "llama-chat-7b")},
    "layers-adjacent": {("llama-7b#0", "llama-7b#1"), ("llama-7b#1", "llama-7b#2")},
}
POOL = [f"{P}1000", "pythia-70m/s1@step1000", "pythia-70m/s2@step1000", "pythia-160m@step1000",
        "llama-7b", "llama-chat-7b"]
FAMILY = {k: k.split("-7b")[0] if "7b" in k else "pythia" for k in POOL}
POOL_PAIRS = {tuple(sorted((a, b))) for a in POOL for b in POOL if a < b}
EXPECTED["random-within-family"] = {p for p in POOL_PAIRS if FAMILY[p[0]] == FAMILY[p[1]]}
EXPECTED["random-across-families"] = {p for p in POOL_PAIRS if FAMILY[p[0]] != FAMILY[p[1]]}


def _unit(n: int) -> np.ndarray:
    x = np.cos(np.arange(n) * 1.7) + 0.3 * np.arange(n) / n
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def world(tmp_path_factory, textset):
    """An atlas holding MODELS on the 'eval' text set, and the unit vector u."""
    root = tmp_path_factory.mktemp("scale")
    db = atlas.open(root / "atlas.duckdb")
    db.import_textset(textset, "eval")
    n = len(textset)
    u, base = _unit(n), -np.linspace(1, 4, n)  # small: the atlas stores float32
    pl.DataFrame({
        "key": list(MODELS), "parent": [p for _, p in MODELS.values()],
        "loglik": [(base + c * u).tolist() for c, _ in MODELS.values()],
    }).write_parquet(root / "v.parquet")
    db.import_vectors(root / "v.parquet", "eval")
    yield db, u
    db.close()


def _as_sets(frame: pl.DataFrame) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for name, a, b in frame.select("setting", "key_a", "key_b").iter_rows():
        found.setdefault(name, set()).add((a, b))
    return found


def _orderless(sets):
    return {name: {tuple(sorted(p)) for p in pairs} for name, pairs in sets.items()}


def test_settings_derive_exact_pair_sets(world):
    db, _ = world
    found = _as_sets(scale.pairs(db.models()))
    oriented = {k: v for k, v in EXPECTED.items() if not k.startswith("random")}
    assert {k: found.get(k) for k in oriented} == oriented  # key_a is the "from" model
    assert _orderless(found) == _orderless(EXPECTED)
    assert set(found) == set(EXPECTED)


def test_pairs_follow_registry_order():
    frame = scale.pairs(scale.models_from_keys(list(MODELS), {"llama-chat-7b": "llama-7b"}))
    order = [n.split(":")[0] for n in frame["setting"].unique(maintain_order=True).to_list()]
    registered = [n for n in scale.SETTINGS if n in order]
    assert list(dict.fromkeys(order)) == registered


def test_kls_and_ses_are_the_closed_form(world):
    db, u = world
    result = db.scale_pairs()
    factor = bpb_scale(db.store.textset("eval").mean_bytes)
    kurtosis = math.sqrt((np.mean(u**4) - 1.0) / u.size)
    for _, a, b, kl, se in result.iter_rows():
        delta2 = (MODELS[a][0] - MODELS[b][0]) ** 2
        assert kl == pytest.approx(delta2 * factor, rel=1e-4, abs=1e-12)
        assert se == pytest.approx(delta2 * kurtosis * factor, rel=1e-3, abs=1e-12)


def test_statistics_match_numpy(world):
    db, _ = world
    scaled = db.scale_pairs()
    summary = db.scale()
    assert summary.columns == ["setting", "count", "median", "mean", "sd", "q1", "q3"]
    assert summary["setting"].to_list() == scaled["setting"].unique(maintain_order=True).to_list()
    for row in summary.iter_rows(named=True):
        kl = scaled.filter(pl.col("setting") == row["setting"])["kl"].to_numpy()
        assert row["count"] == kl.size
        assert row["median"] == pytest.approx(np.median(kl))
        assert row["mean"] == pytest.approx(np.mean(kl))
        assert row["q1"] == pytest.approx(np.percentile(kl, 25))
        assert row["q3"] == pytest.approx(np.percentile(kl, 75))
        if kl.size > 1:
            assert row["sd"] == pytest.approx(np.std(kl, ddof=1))
        else:
            assert row["sd"] is None


def test_scale_measures_its_pairs_without_a_models_squared_matrix(db, textset):
    """1,200 variants: the settings' pairs alone are measured, each equal to ``kl_bpb`` of its
    two stored vectors, and no K × K float64 array (11.5 MB) is ever allocated."""
    keys = [f"fam{f}-{size}m/s{seed}@step{step}" for f in range(3) for size in (70, 160)
            for seed in range(1, 6) for step in range(0, 4000, 100)]
    rng = np.random.default_rng(5)
    loglik = rng.normal(-50, 5, len(textset)) + rng.normal(0, 1, (len(keys), len(textset)))
    path = db.path.parent / "many.parquet"
    pl.DataFrame({"key": keys, "loglik": loglik.tolist()}).write_parquet(path)
    db.import_vectors(path, "eval")
    tracemalloc.start()
    try:
        result = db.scale_pairs()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(keys) ** 2 * 8 / 2  # before: 84 MB, kl_matrix and its temporaries
    assert set(result["key_a"]) | set(result["key_b"]) == set(keys)
    _, stored, mean_bytes = db.store.matrix(keys, "eval")
    row = {key: i for i, key in enumerate(keys)}
    for a, b, kl, se in result.select("key_a", "key_b", "kl", "se").sample(50, seed=1).rows():
        assert kl == pytest.approx(kl_bpb(stored[row[a]], stored[row[b]], mean_bytes), rel=1e-12)
        assert se == pytest.approx(kl_se_bpb(stored[row[a]], stored[row[b]], mean_bytes), rel=1e-12)


def _hub(families: int) -> pl.DataFrame:
    """Per family 2 sizes × 3 seeds × 10 checkpoints, a quantized and two layer variants of
    each final model and two fine-tunes of it (one named by a shorthand)."""
    keys, parents = [], {}
    for family in range(families):
        for size in ("70m", "1b"):
            run = f"f{family}-{size}"
            keys += [f"{run}{seed}@step{step}" for seed in ("", "/s1", "/s2")
                     for step in (0, 1, 8, *range(1000, 8000, 1000))]
            keys += [f"{run}+int8@step7000", f"{run}#0@step7000", f"{run}#1@step7000"]
            parents |= {f"f{family}-chat-{size}": f"{run}@step7000",
                        f"f{family}-x-{size}": f"{run}+int8"}
    return scale.models_from_keys(keys + list(parents), parents)


def _fastest(run, repeats: int = 3) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def test_fine_tune_pairs_grow_linearly_with_the_models():
    """10× the variants (and fine-tunes) take about 10× the time, not 10²× (a set of every
    key was built once per fine-tune: 96× measured before)."""
    small, large = _hub(20), _hub(200)
    assert large.height == 10 * small.height == 14_000
    ratio = (_fastest(lambda: scale.pairs(large, ["fine-tune"]))
             / _fastest(lambda: scale.pairs(small, ["fine-tune"])))
    assert ratio < 40


def test_pair_selection_makes_no_pass_per_trajectory(monkeypatch):
    """Final variants, consecutive checkpoints and P1's intervals, seeds and sizes come from
    whole-frame expressions: a DataFrame per trajectory costs a millisecond or so each,
    minutes at 10⁵ variants."""
    models = _hub(5)
    expected = scale.pairs(models), protocol.kishino2026_pairs(models)
    assert set(expected[1]["setting"]) >= {"early", "later", "seeds", "sizes"}
    monkeypatch.setattr(pl.DataFrame, "partition_by", lambda *_, **__: pytest.fail("per group"))
    assert scale.pairs(models).equals(expected[0])
    assert protocol.kishino2026_pairs(models).equals(expected[1])


@pytest.mark.parametrize(("steps", "late", "late_half"), [
    ([0, 1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)], 8, 13),  # tail from 100; half from 600
    ([0, 1, 2, 4, 8, 16, 32, 64, *range(100, 401, 100), *range(600, 1001, 100)], 8, 12),  # no 500
    ([0, *[2**k for k in range(10)], *range(1000, 143001, 1000)], 11, 82),  # Pythia: 72k→73k
    ([1, 2, 4, 8, 16], 2, 4),  # log-spaced only: median split (pairs ending ≤ 4 are early)
    (list(range(0, 101, 10)), 5, 8),  # evenly spaced only: median split too
    ([5, 7], 0, 1),
    ([5], 0, 0),
])
def test_early_late_split(steps, late, late_half):
    assert scale.split_schedule(steps) == (late, late_half)


def test_a_registered_setting_appears(world, monkeypatch):
    db, _ = world
    monkeypatch.setattr(scale, "SETTINGS", dict(scale.SETTINGS))

    @scale.setting("first-vs-last", "the first and last checkpoint of a run")
    def first_vs_last(models):
        run = models.filter(pl.col("size") == "70m", pl.col("seed").is_null()).sort("step")
        return pl.DataFrame({"key_a": run["key"][:1], "key_b": run["key"][-1:]})

    summary = db.scale()
    assert summary["setting"][-1] == "first-vs-last"
    expected = (MODELS[f"{P}1000"][0] - MODELS[f"{P}0"][0]) ** 2
    factor = bpb_scale(db.store.textset("eval").mean_bytes)
    assert summary["median"][-1] == pytest.approx(expected * factor, rel=1e-4)
    assert "first-vs-last" in scale.describe_settings()["setting"].to_list()
    only = db.scale(settings=["first-vs-last", "seeds"])
    assert only["setting"].to_list() == ["first-vs-last", "seeds"]


def test_unknown_setting_is_named(world):
    db, _ = world
    with pytest.raises(scale.ScaleError, match="unknown setting 'nope'; known: consecutive-early"):
        db.scale(settings=["nope"])


def test_where_restricts_models(world):
    db, _ = world
    llama = set(db.scale(where="family LIKE 'llama%'")["setting"])
    assert llama == {"fine-tune", "layers-adjacent", "random-across-families"}
    outputs = _as_sets(db.scale_pairs(where="WHERE layer IS NULL AND quant IS NULL"))
    assert "layers-adjacent" not in outputs
    assert not any(name.startswith("quantization") for name in outputs)
    assert outputs["seeds"] == EXPECTED["seeds"]


@pytest.mark.parametrize(("where", "message"), [
    ("family = ", "syntax error"),
    ("colour = 'red'", 'column "colour"'),
    ("family = 'pythia'; DROP TABLE models", "syntax error"),
    ("TRUE); DROP TABLE models; SELECT (1", "one condition over model_variants"),
    ("step = 'abc'", "Could not convert string 'abc'"),
])
def test_bad_where_is_explained(world, where, message):
    db, _ = world
    with pytest.raises(scale.ScaleError, match="bad where clause") as info:
        db.scale(where=where)
    assert message in str(info.value)
    assert db.models().height == len(MODELS)


def test_empty_atlas_and_empty_selections(db, world):
    with pytest.raises(scale.ScaleError, match="holds no log-likelihood vectors yet"):
        db.scale()
    full, _ = world
    with pytest.raises(scale.ScaleError, match="no model variant on text set 'eval' matching"):
        full.scale(where="family = 'gpt2'")
    with pytest.raises(scale.ScaleError, match="form no pair in any setting"):
        full.scale(where="key = 'llama-7b'")


def test_random_pairs_are_capped_reproducible_and_valid(monkeypatch):
    monkeypatch.setattr(scale, "RANDOM_PAIRS", 25)
    keys = [f"fam{f}-{s}m" for f in range(4) for s in range(12)]
    models = scale.models_from_keys(keys)
    for limit in (scale.ENUMERATE_LIMIT, 0):  # enumerated, then sampled by rejection
        monkeypatch.setattr(scale, "ENUMERATE_LIMIT", limit)
        within = scale.random_pairs(models, same_family=True)
        across = scale.random_pairs(models.sample(fraction=1.0, shuffle=True, seed=3), False)
        assert within.height == across.height == 25
        assert within.equals(scale.random_pairs(models, same_family=True))
        assert across.equals(scale.random_pairs(models, same_family=False))  # row order moot
        for frame, same in ((within, True), (across, False)):
            rows = frame.iter_rows()
            assert all((a.split("-")[0] == b.split("-")[0]) == same and a < b for a, b in rows)
            assert frame.unique().height == frame.height


def test_final_variants_and_parents_by_shorthand():
    models = scale.models_from_keys(
        ["m-1b@main", "m-1b@v2", "m-2b", "m-2b@step10", "m-3b@main", "ft-1b", "ft-3b"],
        {"ft-1b": "m-1b", "ft-3b": "m-3b"})
    finals = scale.final_variants(models)["key"].to_list()
    assert finals == ["m-2b@step10", "m-3b@main", "ft-1b", "ft-3b"]  # m-1b: two labels, no step
    found = _as_sets(scale.pairs(models, ["fine-tune", "sizes"]))
    assert found == {"fine-tune": {("m-3b@main", "ft-3b")},  # m-1b is ambiguous: left out
                     "sizes": {("m-2b@step10", "m-3b@main"), ("ft-1b", "ft-3b")}}


@pytest.mark.parametrize(("size", "value"), [
    ("70m", 7e7), ("1.4b", 1.4e9), ("135M", 1.35e8), ("7b", 7e9), ("na", None), ("8x7b", None)])
def test_size_value(size, value):
    assert size_value(size) == (pytest.approx(value) if value else None)


def test_seeds_compare_final_models_and_all_steps_separately():
    keys = [f"m-s/s{seed}@step{step}" for seed in (1, 2) for step in (0, 10, 20)]
    keys += [f"m-s/s{seed}#0@step20" for seed in (1, 2)]  # lens layers: not "seeds"
    keys += [f"m-s/s{seed}+int8@step20" for seed in (1, 2)]  # quantized copies: neither
    found = _as_sets(scale.pairs(scale.models_from_keys(keys),
                                 settings=["seeds", "seeds-all-steps"]))
    assert found["seeds"] == {("m-s/s1@step20", "m-s/s2@step20")}
    assert found["seeds-all-steps"] == {(f"m-s/s1@step{s}", f"m-s/s2@step{s}")
                                        for s in (0, 10, 20)}


def test_quantization_pairs_a_chained_label_with_its_source_and_same_provenance_only():
    keys = ["smol-135m+gguf-q4_1", "smol-135m+gguf-q4_1.int8", "smol-135m+gguf-q4_1.int4-g32",
            "smol-135m", "smol-135m+int8", "smol-135m+bnb-nf4"]
    models = scale.models_from_keys(keys).with_columns(
        dtype=pl.Series(["float32", "float32", "float32", "bfloat16", "float32", "bfloat16"]),
        tokenizer_fingerprint=pl.Series(["t1", "t1", "t2", "t0", "t0", "t0"]))
    found = scale.pairs(models, ["quantization"])
    assert set(found.select("key_a", "key_b").iter_rows()) == {
        ("smol-135m+gguf-q4_1", "smol-135m+gguf-q4_1.int8"),  # not smol-135m: never its source
        ("smol-135m", "smol-135m+bnb-nf4"),  # same dtype (int8 was scored in float32)
    }  # int4-g32's tokenizer differs from its source's: refused


FLOORED = {f"{P}1000": MODELS[f"{P}1000"][0], "pythia-70m/s1@step1000": 7.5,
           "pythia-70m/s2@step1000": 8.0, "pythia-160m@step1000": 9.0}
S1, S2 = "pythia-70m/s1@step1000", "pythia-70m/s2@step1000"


def _calibration(key_a: str, key_b: str, ratio: float, created_at: str) -> dict:
    mc = {f"{d}_{m}": 0.1 for d in ("mc_ab", "mc_ba") for m in ("nats", "se", "bpb", "se_bpb")}
    return {"key_a": key_a, "key_b": key_b, "method": "rao-blackwell", "samples": 8,
            "length": 8, "seed": 0, **mc, "estimator_bpb": 0.1, "textset": "eval",
            "ratio": ratio, "device": "cpu", "dtype": "float32", "versions": "{}",
            "created_at": created_at}


def test_scale_flags_pairs_within_three_floors_and_shows_calibrations(db, tmp_path, textset):
    """The floor of either vector (for the dtype it was scored in) flags a pair by nearest's
    rule; the latest calibration of a pair, stored in either order, stands beside it."""
    u, base = _unit(len(textset)), -np.linspace(1, 4, len(textset))
    pl.DataFrame({"key": list(FLOORED), "loglik": [(base + c * u).tolist()
                                                   for c in FLOORED.values()],
                  "provenance": ['{"dtype": "float32"}'] * len(FLOORED)}
                 ).write_parquet(tmp_path / "v.parquet")
    db.import_vectors(tmp_path / "v.parquet", "eval")
    factor = bpb_scale(db.store.textset("eval").mean_bytes)  # KL(s1, s2) = 0.25 factor
    floor = {"dtype": "float32", "textset": "eval", "se": 0.0, "batch_kl_bpb": 0.0,
             "device": "cpu", "batch_size": 8, "versions": "{}"}
    db.store.set_floor({"key": S2, "kl_bpb": 0.3 * factor, **floor})
    db.store.set_floor({"key": S1, **floor, "dtype": "bfloat16", "kl_bpb": 1e9})  # not scored so
    db.store.add_calibration(_calibration(S1, S2, 9.0, "2026-01-01 00:00:00"))
    db.store.add_calibration(_calibration(S2, S1, 1.7, "2026-01-02 00:00:00"))
    pairs = db.scale_pairs()
    for row in pairs.iter_rows(named=True):
        if S2 in (row["key_a"], row["key_b"]):
            assert row["floor"] == pytest.approx(0.3 * factor)
            assert row["within_floor"] == (row["kl"] < 0.9 * factor)
        else:
            assert row["floor"] is None and row["within_floor"] is None
        calibrated = {row["key_a"], row["key_b"]} == {S1, S2}
        assert row["est_over_mc"] == (1.7 if calibrated else None)
    flagged = pairs.filter(pl.col("within_floor"))
    assert flagged.height > 0 and all({a, b} == {S1, S2} for a, b in flagged.select(
        "key_a", "key_b").iter_rows())  # 0.25 < 3 × 0.3; every other pair is ≥ 1 × factor
    summary = db.scale().filter(pl.col("setting") == "seeds").row(0, named=True)
    assert (summary["within_floor"], summary["calibrated"], summary["est_over_mc"]) == (1, 1, 1.7)
    assert db.nearest(S1, 1)["within_floor"].to_list() == [True]  # the one rule
    db.close()
    out = CliRunner().invoke(main, ["--db", str(db.path), "scale", "--format", "csv"])
    assert out.exit_code == 0 and "within_floor,calibrated,est_over_mc" in out.output
