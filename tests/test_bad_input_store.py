"""Bad input to the store and its SQL surface: each is refused with one line that says what was
wrong, where, and how to fix it, and the atlas is left byte-for-byte as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import refused

import atlas


@pytest.fixture
def db(tmp_path, textset) -> Path:
    """An atlas with two variants on text set 'eval'; closed, so the CLI can open it."""
    path = tmp_path / "atlas.duckdb"
    vectors = tmp_path / "v.parquet"
    rng = np.random.default_rng(3)
    pl.DataFrame({"key": ["fam-s", "fam-m"],
                  "loglik": rng.normal(-100, 10, size=(2, len(textset))).tolist()}
                 ).write_parquet(vectors)
    with atlas.open(path) as handle:
        handle.import_textset(textset, "eval")
        handle.import_vectors(vectors, "eval")
    return path


def test_kl_on_an_unknown_text_set(db):
    refused(db, ["kl", "fam-s", "fam-m", "--textset", "nosuch"],
            what="no text set named 'nosuch'", where=str(db), fix="have: eval")


def test_nearest_on_an_unknown_text_set(db):
    refused(db, ["nearest", "fam-s", "--textset", "nosuch"],
            what="no text set named 'nosuch'", where=str(db), fix="have: eval")


# nearest_raw's LIMITs stay plain constants for lateral joins: its -1 meets DuckDB's own LIMIT
# check first ("LIMIT/OFFSET cannot be negative"), so that one pair is not here.
@pytest.mark.parametrize(("call", "k"), [
    *[("nearest('fam-s', {})", k) for k in ("-1", "NULL", "2.5")],
    *[("nearest_raw('fam-s', {}, NULL)", k) for k in ("NULL", "2.5")]])
def test_sql_nearest_with_a_k_that_is_no_count(db, call, k):
    """Unchecked, NULL returned up to 32 rows, -1 failed in DuckDB's words about LIMIT and 2.5
    gave 3."""
    refused(db, ["sql", f"SELECT * FROM {call.format(k)}"], what="nearest needs k",
            where=f"got {k}", fix="a whole number ≥ 0")


def test_sql_kl_on_an_unknown_text_set(db):
    refused(db, ["sql", "SELECT kl('fam-s', 'fam-m', 'nosuch')"],
            what="no text set named 'nosuch'", where="for fam-s and fam-m",
            fix="stored text sets: eval")


def test_bad_sql(db):
    refused(db, ["sql", "SELEC key FROM models"],
            what="syntax error", where='"SELEC"', fix="LINE 1")


def test_unknown_table(db):
    refused(db, ["sql", "SELECT * FROM modles"],
            what="does not exist", where="modles", fix='Did you mean "models"')


def test_two_statements_where_one_is_shown(db):
    refused(db, ["sql", "SELECT 1; SELECT 2"],
            what="2 statements", where="atlas sql", fix="one at a time")


def test_a_write_without_write(db):
    refused(db, ["sql", "DELETE FROM models"],
            what="read-only", where=str(db), fix="atlas sql --write")


def test_copy_to_another_file(db):
    victim = db.with_name("victim.txt")
    victim.write_text("precious")
    refused(db, ["sql", f"COPY (SELECT 1) TO '{victim}' (FORMAT csv)"],
            what="disabled", where=str(victim), fix="--format csv > FILE")
    assert victim.read_text() == "precious"


def test_attach_another_atlas(db, tmp_path):
    other = tmp_path / "other.duckdb"
    other.write_bytes(db.read_bytes())
    refused(db, ["sql", f"ATTACH '{other}' AS o (READ_WRITE)"],
            what="read-only session reads only the atlas", where=str(other),
            fix="atlas sql --write")
    assert other.read_bytes() == db.read_bytes()


def test_install_an_extension(db):
    refused(db, ["sql", "INSTALL httpfs"],
            what="disabled by configuration", where=str(db), fix="atlas sql --write")


def test_db_is_not_an_atlas(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database")
    refused(path, ["models"], what="not an atlas", where=str(path), fix="point --db at")
    refused(path, ["init"], what="not an atlas", where=str(path), fix="new path")


def test_db_is_a_folder(tmp_path):
    refused(tmp_path, ["models"], what="is a folder", where=str(tmp_path),
            fix=str(tmp_path / "atlas.duckdb"))


def test_db_in_a_missing_folder(tmp_path):
    path = tmp_path / "nowhere" / "atlas.duckdb"
    refused(path, ["init"], what="does not exist", where=str(path.parent),
            fix="create the folder")


def test_textset_import_into_a_truncated_atlas(db, tmp_path):
    texts = tmp_path / "t.json"
    texts.write_text('["one text", "another text"]')
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    refused(db, ["textset", "import", str(texts), "--name", "more"],
            what="is damaged (truncated", where=str(db), fix="restore it from a backup")
    refused(db, ["nearest", "fam-s"], what="is damaged", where=str(db), fix="re-create it")
