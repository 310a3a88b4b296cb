"""Bad input to `atlas calibrate` and `atlas plot calibration`: refused with what, where and how
to fix it, the atlas unchanged (tests/badinput.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from badinput import refused

import atlas
from atlas.textsets import TextSet

N = 20
KEYS = ["toy-s/s1", "toy-s/s2", "toy-s/s1#0"]  # imported: no source to load


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-calibration")
    path = root / "atlas.duckdb"
    rng = np.random.default_rng(0)
    with atlas.open(path) as handle:
        handle.import_textset(TextSet([f"text {i} " * (1 + i % 3) for i in range(N)]), "eval")
        vectors = root / "eval.parquet"
        pl.DataFrame({"key": KEYS, "loglik": rng.normal(-50, 5, (len(KEYS), N)).tolist()}
                     ).write_parquet(vectors)
        handle.import_vectors(vectors, "eval")
    return path


def test_a_variant_without_a_source_cannot_be_sampled(db):
    refused(db, ["calibrate", "toy-s/s1", "toy-s/s2", "--device", "cpu"],
            what="no recorded source", where="toy-s/s1", fix="ingested from a loadable model")


def test_a_lens_layer_cannot_be_sampled(db):
    refused(db, ["calibrate", "toy-s/s1#0", "toy-s/s2", "--device", "cpu"],
            what="logit-lens layer", where="toy-s/s1#0", fix="keys without #LAYER")


def test_unknown_key_and_prompt_set(db):
    refused(db, ["calibrate", "toy-s/s1", "nope-s"], what="unknown model key", where="nope-s",
            fix="SELECT key FROM model_variants")
    refused(db, ["calibrate", "toy-s/s1", "toy-s/s2", "--prompts", "pile"],
            what="no text set named 'pile'", where="atlas.duckdb", fix="have: eval")


@pytest.mark.parametrize(("args", "what", "where", "fix"), [
    (["toy-s/s1"], "give two keys", "KEY_A KEY_B", "one with --floor"),
    (["--floor", "toy-s/s1", "toy-s/s2"], "measures one model", "--floor", "drop toy-s/s2"),
    (["--floor", "toy-s/s1", "--samples", "8"], "scores the text set", "--floor",
     "drop --samples"),
    (["--floor", "toy-s/s1", "--dtype", "float32"], "compares float32 with a lower",
     "--dtype float32", "bfloat16 or float16"),
    (["toy-s/s1", "toy-s/s2", "--samples", "1"], "1 is not in the range", "--samples", "x>=2"),
])
def test_bad_options(db, args, what, where, fix):
    refused(db, ["calibrate", *args], what=what, where=where, fix=fix)


def test_plot_without_calibrations(db, tmp_path):
    refused(db, ["plot", "calibration", "-o", str(tmp_path / "c.png")],
            what="no calibration stored", where="atlas.duckdb", fix="atlas calibrate KEY_A KEY_B")
