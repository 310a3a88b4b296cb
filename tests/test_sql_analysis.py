"""sql/analysis.sql: trajectory, diffusion_points and diffusion_fit against the Python fits.

One atlas built through the real API (text sets, Parquet import of vectors, stored weight
sketches) holds several runs:

- ``toy-s/s1``: 14 checkpoints with weight sketches; the vectors of steps 2 and 4 are identical
  (a zero D_q that every fit must drop), plus a quantized and a lens-layer variant with a step,
  which are not part of the run;
- ``toy-s`` (seed unset): 6 checkpoints without sketches;
- ``two-s/s0``: vectors on two text sets; ``mixed-s/s0``: sketches of two different dims.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import atlas
from atlas.analysis.diffusion import diffusion, fit_loglog
from atlas.errors import AtlasError
from atlas.keys import ModelKey, run_label
from atlas.kl import kl_bpb, kl_se_bpb
from atlas.textsets import TextSet
from atlas.weights import WeightSketch, sketch_distance, sketch_distance_matrix

N = 120
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 200, 300, 400, 500, 600]
RUN = [f"toy-s/s1@step{s}" for s in STEPS]
NO_SEED = [f"toy-s@step{s}" for s in (0, 10, 20, 40, 80, 160)]
DIM = 64


def sketch(values: np.ndarray) -> WeightSketch:
    return WeightSketch(sketch=values, sq_norm=float(values @ values), n_params=1000,
                        dim=values.size, seed=0, layout_hash="toy-layout")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    db = atlas.open(root / "atlas.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(N)]), "eval")
    db.import_textset(TextSet([f"extra {i} " * (1 + i % 5) for i in range(N)]), "extra")
    rng = np.random.default_rng(5)
    base = rng.normal(-300, 40, size=N)

    def walk(steps):  # growing, noisy increments: no exact power law anywhere
        scale = np.sqrt(np.diff(steps, prepend=-1))[:, None]
        jumps = rng.normal(0, 1, size=(len(steps), N)) * scale
        return base + np.cumsum(jumps, axis=0)

    run = walk(STEPS)
    run[STEPS.index(4)] = run[STEPS.index(2)]  # D_q(2, 4) = 0 exactly
    vectors = dict(zip(RUN, run, strict=True))
    vectors |= {"toy-s/s1+int8@step4": run[3] + 1.0, "toy-s/s1#2@step4": run[3] - 1.0}
    vectors |= dict(zip(NO_SEED, walk([0, 10, 20, 40, 80, 160]), strict=True))
    vectors |= {f"two-s/s0@step{s}": base + s for s in (0, 1, 2, 3)}
    vectors |= {f"mixed-s/s0@step{s}": base + rng.normal(0, 1, N) for s in (0, 1, 2, 3)}
    extra = {f"two-s/s0@step{s}": base - s for s in (0, 1)}
    for name, group in (("eval", vectors), ("extra", extra)):
        path = root / f"{name}.parquet"
        pl.DataFrame({"key": list(group), "loglik": [v.tolist() for v in group.values()]},
                     schema={"key": pl.String, "loglik": pl.List(pl.Float32)}
                     ).write_parquet(path)
        db.import_vectors(path, name)

    weights = np.cumsum(rng.normal(0, 1, size=(len(STEPS), DIM))
                        * np.sqrt(np.diff(STEPS, prepend=-1))[:, None], axis=0)
    for key, values in zip(RUN, weights, strict=True):
        db.store.write_sketch(key, sketch(values))
    for s in (0, 1, 2, 3):
        db.store.write_sketch(f"mixed-s/s0@step{s}", sketch(rng.normal(0, 1, DIM if s else 32)))
    yield db
    db.close()


def mean_bytes(db) -> float:
    return db.store.textset("eval").mean_bytes


def python_fit(db, keys, window, with_weights=True, min_t0=None):
    """atlas.analysis.diffusion on the stored vectors and sketches (no bootstrap), from every
    start as SQL's default (or those at step ≥ ``min_t0``)."""
    _, loglik, b = db.store.matrix(keys, "eval")
    steps = [int(k.rsplit("@step", 1)[1]) for k in keys]
    weight_sq = (sketch_distance_matrix(list(db.store.sketches(keys).values()))
                 if with_weights else None)
    return diffusion(steps, loglik, b, weight_sq=weight_sq, window=window, n_boot=0,
                     min_t0=steps[0] if min_t0 is None else min_t0)


def fit_rows(db, query, params):
    return {row["t0"]: row for row in db.sql(query, params).iter_rows(named=True)}


def test_trajectory_is_consecutive_kl_with_se(world):
    frame = world.sql("SELECT * FROM trajectory('toy', 's', 1)")
    assert frame.columns == ["key", "step", "next_key", "next_step", "kl", "se"]
    assert frame["key"].to_list() == RUN  # step order; +int8 and #2 are not the run
    assert frame["step"].to_list() == STEPS
    assert frame["next_key"].to_list() == [*RUN[1:], None]
    assert frame["next_step"].to_list() == [*STEPS[1:], None]
    last = frame.row(-1, named=True)
    assert last["kl"] is None and last["se"] is None
    _, loglik, _ = world.store.matrix(RUN, "eval")
    b = mean_bytes(world)
    for i, (key, _, next_key, _, kl, se) in enumerate(frame.head(len(RUN) - 1).iter_rows()):
        assert kl == pytest.approx(kl_bpb(loglik[i], loglik[i + 1], b), rel=1e-9, abs=1e-15)
        assert se == pytest.approx(kl_se_bpb(loglik[i], loglik[i + 1], b), rel=1e-9, abs=1e-15)
        sql = world.sql("SELECT kl(?, ?) AS kl, kl_se(?, ?) AS se",
                        [key, next_key, key, next_key]).row(0)
        assert (kl, se) == pytest.approx(sql, rel=1e-9, abs=1e-15)
    assert frame.filter(pl.col("step") == 2)["kl"].item() == 0.0


def test_null_seed_selects_the_run_without_a_seed(world):
    frame = world.sql("SELECT key FROM trajectory('toy', 's', NULL)")
    assert frame["key"].to_list() == NO_SEED


def test_points_are_kl_and_sketch_distances(world):
    points = world.sql("SELECT * FROM diffusion_points('toy', 's', 1, NULL, lags := 4)")
    assert points.columns == ["t0", "step", "lag", "d_q", "d_w"]
    _, loglik, _ = world.store.matrix(RUN, "eval")
    sketches = world.store.sketches(RUN)
    b = mean_bytes(world)
    expected = [(STEPS[i], STEPS[j]) for i in range(len(STEPS) - 4) for j in range(i + 1, i + 5)]
    assert list(zip(points["t0"], points["step"], strict=True)) == expected
    for t0, step, lag, d_q, d_w in points.iter_rows():
        i, j = STEPS.index(t0), STEPS.index(step)
        assert lag == step - t0
        assert d_q == pytest.approx(kl_bpb(loglik[i], loglik[j], b), rel=1e-9, abs=1e-15)
        assert d_w == pytest.approx(sketch_distance(sketches[RUN[i]], sketches[RUN[j]]),
                                    rel=1e-12)
    t0, step = expected[5]
    same = world.sql("SELECT weight_sq_distance(?, ?)", [f"toy-s/s1@step{t0}",
                                                         f"toy-s/s1@step{step}"]).item()
    assert points.row(5)[4] == pytest.approx(same, rel=1e-12)


@pytest.mark.parametrize("window", [10, 4])
def test_fit_equals_the_python_fit_in_both_spaces(world, window):
    sql = fit_rows(world, "SELECT * FROM diffusion_fit('toy', 's', 1, NULL, ?)", [window])
    reference = python_fit(world, RUN, window)
    assert list(sql) == [row.t0 for row in reference.per_t0]
    for row in reference.per_t0:
        got = sql[row.t0]
        for name in ("c_q", "r2_q", "c_w", "r2_w", "alpha"):
            assert got[name] == pytest.approx(getattr(row, name), abs=1e-9), (row.t0, name)
        assert got["n_q"] == window - row.dropped_q
        assert got["n_w"] == window - row.dropped_w
    assert sql[2]["n_q"] == window - 1  # the zero D_q(2, 4) is dropped, not logged

    points = world.sql("SELECT * FROM diffusion_points('toy', 's', 1, NULL, ?)", [window])
    for t0, got in sql.items():
        mine = points.filter(pl.col("t0") == t0)
        for space in ("q", "w"):
            fit = fit_loglog(mine["lag"].to_numpy(), mine[f"d_{space}"].to_numpy())
            assert got[f"c_{space}"] == pytest.approx(fit.slope, abs=1e-9)
            assert got[f"r2_{space}"] == pytest.approx(fit.r2, abs=1e-9)
            assert got[f"n_{space}"] == fit.n


def test_without_sketches_d_w_is_null_and_c_q_still_fits(world):
    points = world.sql("SELECT * FROM diffusion_points('toy', 's', NULL, NULL, lags := 3)")
    assert points.height == 3 * 3 and points["d_w"].null_count() == points.height
    fits = fit_rows(world, "SELECT * FROM diffusion_fit('toy', 's', NULL, NULL, 3)", [])
    reference = python_fit(world, NO_SEED, 3, with_weights=False)
    assert list(fits) == [row.t0 for row in reference.per_t0] == [0, 10, 20]
    for row in reference.per_t0:
        got = fits[row.t0]
        assert got["c_q"] == pytest.approx(row.c_q, abs=1e-9)
        assert got["r2_q"] == pytest.approx(row.r2_q, abs=1e-9)
        assert (got["c_w"], got["r2_w"], got["n_w"], got["alpha"]) == (None, None, 0, None)


def test_t0_selects_one_start(world):
    points = world.sql("SELECT * FROM diffusion_points('toy', 's', 1, 8, lags := 3)")
    assert points["t0"].to_list() == [8, 8, 8]
    assert points["step"].to_list() == [16, 32, 64]
    assert points["lag"].to_list() == [8, 24, 56]
    one = world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, 8, lags := 3)")
    every = world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, NULL, lags := 3)")
    assert one.rows() == every.filter(pl.col("t0") == 8).rows()
    # a step that is not a checkpoint, or a start without `lags` later checkpoints: no rows
    assert world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, 3, lags := 3)").is_empty()
    assert world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, 400, lags := 3)").is_empty()
    assert world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, 300, lags := 3)").height == 1


def test_window_longer_than_the_run_gives_no_rows(world):
    k = len(STEPS)
    default = world.sql("SELECT t0 FROM diffusion_fit('toy', 's', 1, NULL)")
    assert default["t0"].to_list() == STEPS[: k - 10]  # lags defaults to 10
    assert world.sql("SELECT t0 FROM diffusion_fit('toy', 's', 1, NULL, ?)",
                     [k - 1])["t0"].to_list() == [0]
    for query in ("diffusion_points('toy', 's', 1, NULL, lags := ?)",
                  "diffusion_fit('toy', 's', 1, NULL, lags := ?)",
                  "diffusion_fit('toy', 's', 1, 0, lags := ?)"):
        assert world.sql(f"SELECT * FROM {query}", [k]).is_empty()


def test_fewer_than_three_points_give_no_slope(world):
    fits = world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, NULL, lags := 2)")
    assert fits.height == len(STEPS) - 2
    assert fits["c_q"].null_count() == fits["c_w"].null_count() == fits.height
    assert set(fits["n_q"]) == {1, 2} and set(fits["n_w"]) == {2}


def test_unknown_runs_are_errors_that_list_the_runs(world):
    runs = "mixed-s/s0, toy-s, toy-s/s1, two-s/s0"
    with pytest.raises(AtlasError, match=f"no checkpoints of nope-s/s1 in the atlas.*{runs}$"):
        world.sql("SELECT * FROM trajectory('nope', 's', 1)")
    with pytest.raises(AtlasError, match="no checkpoints of toy-s/s7 in the atlas"):
        world.sql("SELECT * FROM diffusion_fit('toy', 's', 7, NULL)")
    with pytest.raises(AtlasError, match="no checkpoints of toy-s/s1 on text set 'missing'"):
        world.sql("SELECT * FROM diffusion_points('toy', 's', 1, NULL, "
                  "textset_name := 'missing')")


def test_run_labels_are_one_rule_in_python_and_sql(world):
    """run_label has two runtimes (atlas.keys for what Python labels itself, the SQL macro for
    query results such as training_runs): they agree, and on what keys start with."""
    cases = [("toy", "s", 1), ("toy", "s", None), ("toy", "s", 0), ("llama-2", "7b", None),
             ("a.b_c-d", "1.4b", 12345678901), ("pythia", "70m", 42), ("x", "S_1.5", 7)]
    sql = [world.sql("SELECT run_label(?, ?, ?) AS label", [*case])["label"].item()
           for case in cases]
    assert sql == [run_label(*case) for case in cases]
    assert [str(ModelKey(*case, checkpoint="step1")) for case in cases] == [
        f"{label}@step1" for label in sql]
    runs = world.runs()
    assert runs and [r.label for r in runs] == [run_label(r.family, r.size, r.seed) for r in runs]


def test_a_run_on_two_text_sets_needs_a_name(world):
    with pytest.raises(AtlasError, match=r"two-s/s0 are on 2 text sets \(eval, extra\)"):
        world.sql("SELECT * FROM trajectory('two', 's', 0)")
    on_extra = world.sql("SELECT * FROM trajectory('two', 's', 0, textset_name := 'extra')")
    assert on_extra["key"].to_list() == ["two-s/s0@step0", "two-s/s0@step1"]
    assert on_extra["kl"][0] == pytest.approx(world.kl("two-s/s0@step0", "two-s/s0@step1",
                                                       textset="extra").value, rel=1e-9)
    on_eval = world.sql("SELECT * FROM diffusion_points('two', 's', 0, 0, 3, 'eval')")
    assert on_eval["step"].to_list() == [1, 2, 3]


def test_incomparable_sketches_are_an_error(world):
    with pytest.raises(AtlasError, match=r"sketches of mixed-s/s0@step0 and mixed-s/s0@step1 "
                                         r"are not comparable.*dim 32.*dim 64"):
        world.sql("SELECT * FROM diffusion_points('mixed', 's', 0, NULL, lags := 3)")


BARE_CLIENT = """
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
run = "'toy', 's', 1"
out = {
    "trajectory": con.execute(f"SELECT key, kl FROM trajectory({run})").fetchall(),
    "points": con.execute(f"SELECT * FROM diffusion_points({run}, NULL, lags := 4)").fetchall(),
    "fit": con.execute(f"SELECT * FROM diffusion_fit({run}, NULL)").fetchall(),
    "atlas_imported": "atlas" in sys.modules,
}
print(json.dumps(out))
"""


def test_macros_persist_for_a_bare_duckdb_client(world):
    expected = {
        "trajectory": world.sql("SELECT key, kl FROM trajectory('toy', 's', 1)").rows(),
        "points": world.sql("SELECT * FROM diffusion_points('toy', 's', 1, NULL, 4)").rows(),
        "fit": world.sql("SELECT * FROM diffusion_fit('toy', 's', 1, NULL)").rows(),
    }
    world.close()  # one writer or many readers: let the other process in
    result = subprocess.run([sys.executable, "-c", BARE_CLIENT, str(world.path)],
                            capture_output=True, text=True, check=True, cwd="/")
    out = json.loads(result.stdout)
    assert not out.pop("atlas_imported")
    assert out == {name: [list(row) for row in rows] for name, rows in expected.items()}


def test_min_t0_keeps_the_same_starts_in_sql_and_python(world):
    sql = fit_rows(world, "SELECT * FROM diffusion_fit('toy', 's', 1, NULL, 4, min_t0 := 16)",
                   [])
    reference = python_fit(world, RUN, 4, min_t0=16)
    assert list(sql) == [row.t0 for row in reference.per_t0] == [16, 32, 64, 128, 200]
