"""Bad input to ``atlas kl-pairs``: refused with what, where and how to fix it, the atlas
unchanged and no pairs file or temporary file left (tests/badinput.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from badinput import refused

import atlas
from atlas.textsets import TextSet

KEYS = ["toy-s@step0", "toy-s@step1", "odd-s"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-pairs")
    path = root / "atlas.duckdb"
    with atlas.open(path) as handle:
        handle.import_textset(TextSet([f"text {i} " * (1 + i % 4) for i in range(30)]), "eval")
        rows = np.random.default_rng(0).normal(-50, 5, (len(KEYS), 30)).tolist()
        pl.DataFrame({"key": KEYS, "loglik": rows}).write_parquet(root / "v.parquet")
        handle.import_vectors(root / "v.parquet", "eval")
    return path


@pytest.mark.parametrize(("name", "what", "where", "fix"), [
    ("missing/pairs.parquet", "missing does not exist", "(-o)", "folder you can write to"),
    ("file.txt/pairs.parquet", "file.txt is not a folder", "(-o)", "folder you can write to"),
    ("folder", "is a directory", "'-o'", "--help"),
])
def test_an_output_it_cannot_write_is_refused(db, tmp_path, name, what, where, fix):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    refused(db, ["kl-pairs", "-o", str(tmp_path / name)], what=what, where=where, fix=fix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]


@pytest.mark.parametrize(("args", "what", "where", "fix"), [
    (["--where", "family = 'odd'"], "no pairs to write", "1 model(s)", "choose at least two"),
    (["--where", "nosuch = 1"], "bad where clause", "nosuch = 1", "candidate bindings"),
    (["--view", "nope"], "no view 'nope'", "atlas.duckdb", "atlas view create"),
    (["--block", "0"], "invalid value", "--block", "--help"),
    (["--textset", "other"], "no text set named 'other'", "have: eval", "textset import"),
])
def test_a_bad_choice_is_refused_and_writes_nothing(db, tmp_path, args, what, where, fix):
    out = tmp_path / "pairs.parquet"
    refused(db, ["kl-pairs", "-o", str(out), *args], what=what, where=where, fix=fix)
    assert list(tmp_path.iterdir()) == []
