"""`atlas demo --quick` end to end: a real CLI process, real training, the science it must show."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from atlas.api import Atlas
from atlas.cli import main
from atlas.demo import QUICK, QUICK_TEXTS, map_name, textset_name

ATLAS = Path(sys.executable).parent / "atlas"


def _demo(db: Path, cache: Path) -> tuple[str, float]:
    env = {**os.environ, "ATLAS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run([str(ATLAS), "--db", str(db), "demo", "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, time.perf_counter() - started


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    db, cache = root / "demo.duckdb", root / "cache"
    first, first_seconds = _demo(db, cache)
    return {"db": db, "cache": cache, "first": first, "seconds": first_seconds}


@pytest.fixture(scope="module")
def medians(demo) -> dict[str, float]:
    with Atlas(demo["db"], read_only=True) as atlas:
        table = atlas.scale()
    return dict(zip(table["setting"], table["median"], strict=True))


def test_every_checkpoint_and_finetune_is_ingested_with_its_sketch(demo):
    n_checkpoints = sum(len(QUICK.schedule_of(size.name, seed))
                        for size in QUICK.sizes for seed in QUICK.seeds)
    n_finetunes = len(QUICK.finetunes)
    with Atlas(demo["db"], read_only=True) as atlas:
        models = atlas.models()
        sketched = atlas.sql("SELECT count(*) AS n FROM weight_sketches")["n"][0]
        mapped = atlas.sql(f"SELECT count(*) AS n FROM map_points('{map_name(QUICK_TEXTS)}')")
        assert atlas.textsets()["n_texts"].to_list() == [QUICK_TEXTS]
    n_layers = sum(size.layers + 1 for size in QUICK.sizes)  # lens: one final model per size
    assert models.height == n_checkpoints + n_finetunes + n_layers
    assert sketched == n_checkpoints + n_finetunes  # layer variants share their model's weights
    assert mapped["n"][0] == models.height
    lensed = models.filter(pl.col("layer").is_not_null())
    assert set(lensed["seed"]) == {QUICK.seeds[0]} and set(lensed["step"]) == {QUICK.schedule()[-1]}
    assert len(QUICK.schedule()) >= 10 and QUICK.schedule()[:4] == [0, 1, 2, 4]
    finetunes = models.filter(pl.col("parent").is_not_null())
    final = QUICK.schedule()[-1]
    assert sorted(finetunes["parent"].to_list()) == [f"{QUICK.family}-m/s1@step{final}"] * 2


def test_summary_shows_scale_and_diffusion(demo):
    out = demo["first"]
    assert f"the KL scale on '{textset_name(QUICK_TEXTS)}'" in out
    for setting in ("consecutive-late", "seeds", "sizes", "fine-tune", "random-within-family",
                    "layers-adjacent"):
        assert setting in out
    assert "c_q = " in out and "c_w = " in out and "alpha = " in out


def test_diffusion_line_fits_after_warm_up_with_intervals(demo):
    """The printed fit starts at the evenly spaced tail (no fallback to step 0, no note) and its
    block bootstrap has several windows of starts, so no interval collapses to a point."""
    line = next(line for line in demo["first"].splitlines() if line.startswith("diffusion of"))
    dense = QUICK.schedule(dense=True)
    assert f"minipythia-l/s1 (window 5, {len(dense) - dense.index(10) - 5} starts from step 10)" \
        in line
    assert "note:" not in demo["first"]
    printed = {name: tuple(map(float, numbers)) for name, *numbers in re.findall(
        r"(c_q|c_w|alpha) = (-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", line)}
    assert set(printed) == {"c_q", "c_w", "alpha"}
    with Atlas(demo["db"], read_only=True) as atlas:
        fit = atlas.diffusion(atlas.run("minipythia", "l", 1), 5).value.to_dict()
    for name, (value, low, high) in printed.items():
        assert low < high and low <= value <= high, (name, printed[name])
        assert (value, low, high) == pytest.approx(
            (fit[name]["value"], fit[name]["ci_low"], fit[name]["ci_high"]), abs=0.006)


def test_orderings_of_the_papers_hold(medians):
    assert medians["consecutive-late"] < medians["seeds"] < medians["sizes"]
    assert medians["fine-tune"] < medians["random-within-family"]


def test_training_loss_falls(demo):
    table = demo["first"].split("training loss")[1].split("the KL scale")[0]
    rows = [line.split("│")[1:4] for line in table.splitlines() if "@step" in line]
    assert len(rows) == len(QUICK.sizes) * len(QUICK.seeds) + len(QUICK.finetunes)
    assert all(float(last) < float(first) for _, first, last in rows)


@pytest.mark.slow  # a second demo run (~35 s on 2 busy cores): the default run stays < 10 min
def test_rerun_reuses_weights_and_vectors(demo):
    second, seconds = _demo(demo["db"], demo["cache"])
    assert "0 vectors stored" in second
    assert "training (cached)" in second
    assert seconds < demo["seconds"] / 2


def _cli(db: Path, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, ["--db", str(db), *args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_analysis_commands_on_the_demo_atlas(demo):
    db, run = demo["db"], ["minipythia", "--size", "l", "--seed", "1"]
    scale_rows = json.loads(_cli(db, "scale", "--format", "json"))
    assert {r["setting"] for r in scale_rows} >= {"consecutive-late", "seeds", "sizes"}
    filtered = json.loads(_cli(db, "scale", "--where", "size = 'l'", "--format", "json"))
    assert "sizes" not in {r["setting"] for r in filtered}
    steps = json.loads(_cli(db, "trajectory", *run, "--format", "json"))
    assert [r["step"] for r in steps] == QUICK.schedule(dense=True)[:-1]
    assert all(r["kl"] > 0 and r["weight_sq"] > 0 for r in steps)
    fitted = json.loads(_cli(db, "diffusion", *run, "--window", "5", "--format", "json"))
    dense = QUICK.schedule(dense=True)
    assert fitted["window"] == 5 and fitted["min_t0"] == 10 and not fitted["notes"]
    assert [r["t0"] for r in fitted["per_t0"]] == dense[dense.index(10):-5]
    for name in ("c_q", "c_w", "alpha"):
        estimate = fitted[name]
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
    assert "alpha =" in _cli(db, "diffusion", *run, "--window", "5", "--boot", "20")
    with Atlas(db, read_only=True) as atlas:
        stored = atlas.sql("SELECT lags, n_boot, c_q, result FROM diffusion_fits ORDER BY n_boot")
    assert stored["lags"].to_list() == [5, 5] and stored["n_boot"].to_list() == [20, 200]
    assert stored["c_q"][1] == pytest.approx(fitted["c_q"]["value"])


def test_analysis_commands_explain_bad_input(demo):
    db = demo["db"]
    assert "no checkpoints of nope-l" in _cli(db, "trajectory", "nope", "--size", "l", ok=False)
    out = _cli(db, "diffusion", "minipythia", "--size", "l", "--seed", "1", "--window", "50",
               ok=False)
    assert "--window" in out
    assert "bad where clause" in _cli(db, "scale", "--where", "size = ", ok=False)


def test_map_and_plot_commands_on_the_demo_atlas(demo, tmp_path):
    db = demo["db"]
    _cli(db, "map", "--method", "pca", "--name", "demo-pca")
    with Atlas(db, read_only=True) as atlas:
        points = atlas.sql("SELECT * FROM map_points('demo-pca')")
        assert points.height == atlas.models().height
    run = ["minipythia", "--size", "l", "--seed", "1"]
    for args in (["scale"], ["trajectory", *run], ["diffusion", *run, "--window", "5"],
                 ["map", "demo-pca"]):
        path = tmp_path / f"{args[0]}.png"
        assert f"wrote {path}" in _cli(db, "plot", *args, "-o", str(path))
        assert path.stat().st_size > 10_000
