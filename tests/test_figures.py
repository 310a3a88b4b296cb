"""Figures from synthetic analysis results: each writes a readable PNG, edge cases included."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from atlas.analysis import figures
from atlas.analysis.diffusion import DiffusionResult, Estimate, diffusion, fbm_paths
from atlas.errors import AtlasError

STEPS = [0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200, 250, 300, 350, 400]
MEDIANS = {"consecutive-early": (0.45, 36), "consecutive-mid": (0.09, 27),
           "consecutive-late": (0.065, 27), "seeds": (0.24, 9), "seeds-all-steps": (0.3, 120),
           "sizes": (1.07, 9), "fine-tune": (0.12, 2), "random-within-family": (0.78, 36),
           "random-across-families": (1.5, 18)}


def _png(path: Path, min_width: int = 500, min_height: int = 300) -> np.ndarray:
    """Read a written figure back and check it is a sensible, non-blank image."""
    assert path.exists() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert min_width <= width <= 3_000 and min_height <= height <= 3_000, (width, height)
    assert float(np.std(image[..., :3])) > 0.02  # something is drawn
    return image


# synthetic inputs shaped like the demo's --------------------------------------------------------
def _pairs(settings=MEDIANS) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for name, (median, count) in settings.items():
        for kl in median * np.exp(rng.normal(0, 0.4, count)):
            rows.append({"setting": name, "key_a": "a", "key_b": "b", "kl": float(kl),
                         "se": 0.03 * float(kl)})
    return pl.DataFrame(rows)


def _consecutive(runs=("minipythia-s/s1", "minipythia-m/s1", "minipythia-l/s1")
                 ) -> pl.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for scale, run in enumerate(runs):
        for a, b in itertools.pairwise(STEPS):
            kl = (b - a) ** 0.6 / (1 + b / 10) ** 0.9 / (1 + scale) * np.exp(rng.normal(0, 0.1))
            rows.append({"run": run, "step": a, "next_step": b, "key": f"{run}@step{a}",
                         "next_key": f"{run}@step{b}", "kl": kl, "se": 0.04 * kl,
                         "weight_sq": None})
    return pl.DataFrame(rows)


def _map_points() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for i, size in enumerate("sml"):
        for seed in (1, 2, 3):
            angle = rng.uniform(0, 2 * np.pi)
            end = (3 + i) * np.array([np.cos(angle), np.sin(angle)])
            for step in STEPS:
                x, y = np.log1p(step) / np.log1p(400) * end + rng.normal(0, 0.1, 2)
                rows.append({"key": f"minipythia-{size}/s{seed}@step{step}",
                             "family": "minipythia", "size": size, "seed": seed, "step": step,
                             "x": x, "y": y})
    for family, (x, y) in (("minipythia-bible", (5.0, 2.0)), ("minipythia-maths", (4.0, -2.0))):
        rows.append({"key": f"{family}-m/s1@step40", "family": family, "size": "m", "seed": 1,
                     "step": 40, "x": x, "y": y})
    rows.append({"key": "smollm2-135m", "family": "smollm2", "size": "135m", "seed": None,
                 "step": None, "x": -3.0, "y": 3.0})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted() -> DiffusionResult:
    """A diffusion fit of a synthetic trajectory: c_q ≈ 0.3 (fBm, H = 0.15), c_w ≈ 1."""
    steps = np.array(STEPS)
    loglik = fbm_paths(0.15, 400, 200, seed=0)[steps] * 0.4 - 100.0
    walk = np.cumsum(np.random.default_rng(4).normal(size=(401, 20)), axis=0)[steps]
    weight_sq = ((walk[:, None, :] - walk[None, :, :]) ** 2).sum(axis=-1)
    return diffusion(steps, loglik, 600.0, weight_sq=weight_sq, window=6, n_boot=50)


# the KL scale -----------------------------------------------------------------------------------
def test_scale_figure(tmp_path):
    path = figures.plot_scale(_pairs(), tmp_path / "scale.png")
    assert path == tmp_path / "scale.png"
    image = _png(path, min_height=600)
    assert image.shape[0] < image.shape[1] * 1.2  # one row per setting, not a tower


def test_scale_figure_edge_cases(tmp_path):
    one = figures.plot_scale(_pairs({"seeds": (0.24, 1)}), tmp_path / "one.png", title="Seeds")
    _png(one, min_height=150)
    zeros = _pairs({"seeds": (0.24, 5), "sizes": (1.0, 3)}).with_columns(
        kl=pl.when(pl.col("setting") == "seeds").then(0.0).otherwise(pl.col("kl")))
    _png(figures.plot_scale(zeros, tmp_path / "zeros.png"), min_height=150)
    all_zero = pl.DataFrame({"setting": ["quantization:bnb-int8", "quantization:bnb-nf4"],
                             "kl": [0.0, 0.0]})  # variants of one setting; nothing positive
    nested = tmp_path / "a" / "b" / "quant.png"  # folders are made
    _png(figures.plot_scale(all_zero, nested), min_height=150)


def test_scale_figure_refuses_empty_input(tmp_path):
    with pytest.raises(AtlasError, match="empty"):
        figures.plot_scale(_pairs().clear(), tmp_path / "x.png")
    with pytest.raises(AtlasError, match="kl"):
        figures.plot_scale(pl.DataFrame({"setting": ["a"]}), tmp_path / "x.png")
    with pytest.raises(AtlasError, match="finite"):
        figures.plot_scale(pl.DataFrame({"setting": ["a"], "kl": [float("nan")]}),
                           tmp_path / "x.png")
    with pytest.raises(figures.FigureError, match="DataFrame"):
        figures.plot_scale([("a", 0.1)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# consecutive checkpoints ------------------------------------------------------------------------
def test_trajectory_figure(tmp_path):
    frame = _consecutive()
    _png(figures.plot_trajectory(frame, tmp_path / "runs.png", "minipythia, seed 1"))
    single = frame.filter(pl.col("run") == "minipythia-l/s1").drop("run")
    _png(figures.plot_trajectory(single, tmp_path / "one.png", "minipythia-l/s1"))


def test_trajectory_figure_edge_cases(tmp_path):
    frame = _consecutive(runs=("r",)).drop("run")
    # no SE; KL ≤ 0 and NaN cannot go on a log axis: left out and counted, the rest drawn
    odd = frame.drop("se").with_columns(kl=pl.when(pl.col("step") == 4).then(0.0)
                             .when(pl.col("step") == 8).then(float("nan"))
                             .otherwise(pl.col("kl")))
    _png(figures.plot_trajectory(odd, tmp_path / "odd.png", "some pairs ≤ 0"))
    _png(figures.plot_trajectory(frame.head(1), tmp_path / "pair.png", "one pair"))
    svg = figures.plot_trajectory(frame, tmp_path / "run.svg", "svg")
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_trajectory_figure_refuses_empty_input(tmp_path):
    with pytest.raises(AtlasError, match="empty"):
        figures.plot_trajectory(_consecutive().clear(), tmp_path / "x.png", "t")
    with pytest.raises(AtlasError, match="next_step"):
        figures.plot_trajectory(pl.DataFrame({"step": [1], "kl": [0.1]}), tmp_path / "x.png",
                                "t")
    zero = _consecutive(runs=("r",)).with_columns(kl=pl.lit(0.0))
    with pytest.raises(AtlasError, match="positive"):
        figures.plot_trajectory(zero, tmp_path / "x.png", "t")


# diffusion --------------------------------------------------------------------------------------
def test_diffusion_figure(tmp_path, fitted):
    assert fitted.d_w is not None and 0.1 < fitted.c_q.value < 0.6
    image = _png(figures.plot_diffusion(fitted, tmp_path / "d.png", "synthetic"))
    assert image.shape[1] > 1.6 * image.shape[0]  # two panels side by side


def test_diffusion_figure_edge_cases(tmp_path, fitted):
    steps = np.array(STEPS)
    loglik = fbm_paths(0.4, 400, 100, seed=1)[steps]
    no_weights = diffusion(steps, loglik, 500.0, window=5, n_boot=20)
    image = _png(figures.plot_diffusion(no_weights, tmp_path / "q.png", "no weights"))
    assert image.shape[1] < 1.6 * image.shape[0]  # one panel
    one_start = diffusion(steps, loglik, 500.0, window=5, t0=50, n_boot=0)
    assert one_start.c_q.ci_low is None
    _png(figures.plot_diffusion(one_start, tmp_path / "t0.png", "one start, no bootstrap"))
    # a result assembled by hand with no intervals and no α
    bare = DiffusionResult(window=3, c_q=Estimate(0.5), c_w=Estimate(None),
                           alpha=Estimate(None), per_t0=[], n_texts=10, n_boot=0, ci_level=0.95,
                           seed=0, lags=np.array([[1.0, 2.0, 4.0]]),
                           d_q=np.array([[0.01, 0.014, 0.02]]),
                           d_w=np.zeros((1, 3)))
    _png(figures.plot_diffusion(bare, tmp_path / "bare.png", "by hand"))


def test_diffusion_figure_refuses_empty_input(tmp_path, fitted):
    empty = DiffusionResult(window=3, c_q=Estimate(None), c_w=Estimate(None),
                            alpha=Estimate(None), per_t0=[], n_texts=0, n_boot=0,
                            ci_level=0.95, seed=0)
    with pytest.raises(AtlasError, match="no distances"):
        figures.plot_diffusion(empty, tmp_path / "x.png", "t")
    with pytest.raises(AtlasError, match="DiffusionResult"):
        figures.plot_diffusion(fitted.to_dict(), tmp_path / "x.png", "t")


# maps -------------------------------------------------------------------------------------------
def test_map_figure(tmp_path):
    _png(figures.plot_map(_map_points(), tmp_path / "map.png", "t-SNE"), min_height=400)


def test_map_figure_edge_cases(tmp_path):
    points = _map_points()
    one_family = points.filter(pl.col("family") == "minipythia")
    _png(figures.plot_map(one_family, tmp_path / "one.png", "one family"), min_height=300)
    # no runs: no steps or seeds (e.g. a map of released models)
    released = points.filter(pl.col("step") == 400).with_columns(
        pl.lit(None, dtype=pl.Int64).alias("step"), pl.lit(None, dtype=pl.Int64).alias("seed"))
    _png(figures.plot_map(released, tmp_path / "released.png", "PCA"), min_height=300)
    single = points.select("key", "family", "x", "y").head(1)  # optional columns absent
    _png(figures.plot_map(single, tmp_path / "single.png", "one model"), min_height=200)


def test_map_figure_refuses_empty_input(tmp_path):
    with pytest.raises(AtlasError, match="empty"):
        figures.plot_map(_map_points().clear(), tmp_path / "x.png", "t")
    with pytest.raises(AtlasError, match="x, y"):
        figures.plot_map(pl.DataFrame({"key": ["a"], "family": ["f"]}), tmp_path / "x.png", "t")
    nan = _map_points().head(2).with_columns(x=pl.lit(float("nan")))
    with pytest.raises(AtlasError, match="finite"):
        figures.plot_map(nan, tmp_path / "x.png", "t")
