"""Bad input to `atlas bulk plan/run/merge`: one `error:` line naming what, where and the fix,
and the atlas (with its shard folder) untouched — never a traceback."""

from __future__ import annotations

import textwrap

import pytest
from badinput import refused

HEAD = '[defaults]\ntextset = "eval"\n\n[[family]]\nname = "f"\n'  # the family is at line 4


@pytest.fixture
def path(db):
    db.close()
    return db.path


def manifest(tmp_path, text: str, name: str = "bad.toml"):
    target = tmp_path / name
    target.write_text(textwrap.dedent(text))
    return str(target)


CASES = {  # id: (manifest text, command, what, where, fix)
    "unknown placeholder in parent": (
        HEAD + 'source = "org/f-{size}"\nsizes = ["s"]\nparent = "f-{nosuchplaceholder}"\n',
        "plan", "uses {nosuchplaceholder}", "bad.toml line 8", "placeholders here are"),
    "format spec on a string": (
        HEAD + 'source = "org/f-{size:d}"\nsizes = ["s"]\n',
        "plan", "does not format", "bad.toml line 6", "plain placeholders"),
    "schedule of 100 million steps": (
        HEAD + 'source = "org/f"\nrevision = "step{step}"\nsizes = ["s"]\n'
        "steps = {every = 1, stop = 100000000}\n",
        "plan", "100,000,001 steps", "bad.toml line 9", "--max-loads"),
    "entries that are not tables": (
        "family = [1]\n", "run", "family entry #1 is 1", "bad.toml line 1", "[[family]] table"),
    "a misspelt field": (
        HEAD + 'source = "org/f-{size}"\nsizes = ["s"]\nsezes = ["m"]\n',
        "run", "unknown field 'sezes'", "bad.toml line 8", "did you mean 'sizes'"),
    "seeds of the wrong type": (
        HEAD + 'source = "org/f-{size}-{seed}"\nsizes = ["s"]\nseeds = "1"\n',
        "plan", "'seeds' must be", "bad.toml line 8", "list of non-negative integers"),
    "an unknown text set": (
        '[[model]]\nkey = "f-s"\nsource = "org/f"\ntextset = "nosuch"\n',
        "plan", "no text set named 'nosuch'", "bad.toml line 1", "atlas textset import"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_manifest(case, path, tmp_path):
    text, command, what, where, fix = CASES[case]
    quiet = ["--no-progress"] if command == "run" else []
    refused(path, ["bulk", command, manifest(tmp_path, text), *quiet], what=what, where=where,
            fix=fix)


def test_manifest_not_utf8(path, tmp_path):
    target = tmp_path / "latin.toml"
    target.write_bytes(b'[defaults]\ntextset = "caf\xe9"\n')
    refused(path, ["bulk", "plan", str(target)], what="not UTF-8", where="latin.toml line 2",
            fix="save the manifest as UTF-8")


def test_too_many_model_loads(path, tmp_path):
    text = HEAD + 'source = "org/f-{size}"\nrevision = "step{step}"\nsizes = ["s", "m"]\n' \
        "steps = {every = 1, stop = 19}\n"
    refused(path, ["bulk", "run", manifest(tmp_path, text), "--max-loads", "30"],
            what="40 model loads", where="bad.toml", fix="raise the limit with `--max-loads N`")


def test_missing_manifest(path, tmp_path):
    refused(path, ["bulk", "plan", str(tmp_path / "nosuch.toml")],
            what="cannot read the manifest", where="nosuch.toml", fix="check the path")


@pytest.mark.parametrize("command", ["merge", "run"])
def test_no_atlas_is_not_created(command, tmp_path):
    absent = tmp_path / "absent.duckdb"
    args = ["bulk", command] + ([manifest(tmp_path, HEAD)] if command == "run" else [])
    refused(absent, args, what="no atlas here", where="absent.duckdb", fix="atlas init")
    assert list(tmp_path.glob("absent*")) == []
