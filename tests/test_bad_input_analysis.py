"""Bad input to the analysis commands (trajectory, diffusion, plot): refused with what, where and
how to fix it, the atlas unchanged (tests/badinput.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from badinput import refused

import atlas
from atlas.textsets import TextSet

N = 40
BOTH = [f"toy-s/s1@step{s}" for s in (0, 1, 2, 4)]  # every checkpoint on eval and extra
PART = [f"two-s/s0@step{s}" for s in (0, 1, 2, 4)]  # every one on eval, the first two on extra


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-analysis")
    path = root / "atlas.duckdb"
    rng = np.random.default_rng(0)
    with atlas.open(path) as handle:
        for name, keys in (("eval", BOTH + PART), ("extra", BOTH + PART[:2])):
            handle.import_textset(TextSet([f"{name} {i} " * (1 + i % 4) for i in range(N)]),
                                  name)
            vectors = root / f"{name}.parquet"
            pl.DataFrame({"key": keys, "loglik": rng.normal(-50, 5, (len(keys), N)).tolist()}
                         ).write_parquet(vectors)
            handle.import_vectors(vectors, name)
    return path


@pytest.mark.parametrize("command", [["trajectory"], ["diffusion", "--window", "3"],
                                     ["plot", "trajectory"]])
def test_a_run_on_several_text_sets_needs_one_named(db, tmp_path, command):
    output = ["-o", str(tmp_path / "x.png")] if command[0] == "plot" else []
    refused(db, [*command, "toy", "--size", "s", "--seed", "1", *output],
            what="name a text set", where="every checkpoint of toy-s/s1", fix="--textset")


@pytest.mark.parametrize("command", [["trajectory"], ["diffusion", "--window", "3"]])
def test_a_text_set_some_checkpoints_lack_is_refused(db, command):
    refused(db, [*command, "two", "--size", "s", "--seed", "0", "--textset", "extra"],
            what="not all on text set 'extra'", where="checkpoints of two-s/s0",
            fix="name one they share: eval")


# atlas report ----------------------------------------------------------------------------------
def _no_report_in(folder) -> None:
    """Nothing in ``folder`` but the file the test put there: no report, no temporary file."""
    assert not [p.name for p in folder.iterdir() if p.name != "file.txt"], "a report was left"


@pytest.mark.parametrize(("name", "what"), [
    ("x.txt", "suffix .txt is neither .html nor .md"),
    ("report", "suffix (none) is neither .html nor .md"),
    ("missing/x.html", "missing does not exist"),
    ("file.txt/x.md", "file.txt is not a folder"),
])
def test_a_report_path_it_cannot_write_is_refused_before_the_atlas_is_read(db, tmp_path, name,
                                                                          what):
    (tmp_path / "file.txt").write_text("not a folder")
    out = tmp_path / name
    refused(db, ["report", "-o", str(out), "--textset", "eval"], what=what,
            where=f"{out} (-o)", fix="report.html" if "suffix" in what else "choose a folder")
    _no_report_in(tmp_path)


def test_a_report_that_fails_to_write_says_where(db):
    refused(db, ["report", "-o", "/proc/x.html", "--textset", "eval", "--boot", "0"],
            what="no such file", where="/proc/x.html (-o)", fix="choose a folder")


@pytest.mark.parametrize(("option", "what", "where", "fix"), [
    (["--protocol", "p2"], "invalid value", "'--protocol'", "'kishino2026'"),
    (["--view", "nope"], "no view 'nope'", "atlas.duckdb", "atlas view create"),
])
def test_a_report_of_an_unknown_protocol_or_view_is_refused(db, tmp_path, option, what, where,
                                                            fix):
    refused(db, ["report", "-o", str(tmp_path / "x.html"), "--textset", "eval", *option],
            what=what, where=where, fix=fix)
    assert not list(tmp_path.iterdir())
