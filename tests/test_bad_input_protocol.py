"""Bad input to views and the papers' protocol: refused with what, where and how to fix it, the
atlas unchanged (tests/badinput.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from badinput import refused

import atlas
from atlas.textsets import TextSet

N = 30
KEYS = [f"toy-s@step{s}" for s in (1_000, 2_000, 3_000, 4_000)] + [
    f"toy-s/s{seed}@step4000" for seed in (1, 2)]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-protocol")
    path = root / "atlas.duckdb"
    rng = np.random.default_rng(0)
    with atlas.open(path) as handle:
        for name in ("eval", "extra"):
            handle.import_textset(TextSet([f"{name} {i} " * (1 + i % 4) for i in range(N)]),
                                  name)
            pl.DataFrame({"key": KEYS, "loglik": rng.normal(-50, 5, (len(KEYS), N)).tolist()}
                         ).write_parquet(root / f"{name}.parquet")
            handle.import_vectors(root / f"{name}.parquet", name)
        handle.create_view("v", textset="eval")
    return path


def test_an_unknown_view_is_named_with_the_stored_ones(db):
    refused(db, ["kl", KEYS[0], KEYS[1], "--view", "nope"], what="no view 'nope'",
            where="views: v", fix="atlas view create")


def test_nearest_through_an_unknown_view_is_named_with_the_stored_ones(db):
    refused(db, ["nearest", KEYS[0], "--view", "nope"], what="no view 'nope'",
            where="views: v", fix="atlas view create")


def test_nearest_through_a_view_of_another_text_set_is_refused(db):
    refused(db, ["nearest", KEYS[0], "--textset", "extra", "--view", "v"],
            what="fitted on text set 'eval', not 'extra'", where="view 'v'",
            fix="fit a view on 'extra'")


def test_a_view_of_another_text_set_is_refused(db):
    refused(db, ["scale", "--textset", "extra", "--view", "v"], what="text set 'eval'",
            where="view 'v'", fix="fit a view on 'extra'")


def test_sql_through_an_unknown_view_is_named_with_the_stored_ones(db):
    refused(db, ["sql", f"SELECT kl('{KEYS[0]}', '{KEYS[1]}', view := 'nope')"],
            what="no view 'nope'", where="views: v", fix="atlas view create")


def test_sql_through_a_view_of_another_text_set_is_refused(db):
    refused(db, ["sql", f"SELECT * FROM nearest('{KEYS[0]}', 2, 'extra', view := 'v')"],
            what="fitted on text set 'eval', not 'extra'", where="view 'v'",
            fix="fit a view on 'extra'")


def test_a_view_name_taken_needs_replace(db):
    refused(db, ["view", "create", "v", "--textset", "eval"], what="a view named 'v' exists",
            where="'v'", fix="--replace")


@pytest.mark.parametrize(("option", "value", "what"), [("--q", "1.5", "a quantile"),
                                                        ("--fraction", "1", "share of texts")])
def test_out_of_range_view_parameters_are_refused(db, option, value, what):
    refused(db, ["view", "create", "w", "--textset", "eval", option, value], what=what,
            where=option, fix="(P1: 0.0")


def test_drop_texts_without_a_run_after_warm_up_is_refused(db):
    refused(db, ["view", "create", "w", "--textset", "eval", "--warmup", "5000"],
            what="drop-texts needs a run", where="--warmup", fix="lower --warmup")


def test_p1s_view_that_cannot_be_fitted_says_how_to_give_one(db):
    refused(db, ["scale", "--protocol", "kishino2026", "--textset", "eval", "--where",
                 "seed IS NOT NULL"],
            what="view of its pretraining settings cannot be fitted",
            where="text set 'eval'", fix="atlas view create NAME --warmup S")
