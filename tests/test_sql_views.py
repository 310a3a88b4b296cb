"""Views in SQL (sql/views.sql): kl, kl_se and nearest with ``view := NAME`` equal the Python
path (Atlas.kl / Atlas.nearest with ``view=``), from a bare DuckDB client too."""

import json
import subprocess
import sys

import duckdb
import numpy as np
import polars as pl
import pytest

import atlas
from atlas.analysis import views
from atlas.errors import AtlasError
from atlas.store import LOGLIK_PART
from atlas.textsets import TextSet

N = 200
KEYS = [f"toy-s@step{s}" for s in (1_000, 2_000, 3_000, 4_000)] + [
    "toy-s/s1@step4000", "toy-m@step4000", "toy-m+int8@step4000"]
VIEWS = {"p1": ["clip", "drop-texts"], "clip": ["clip"], "drop": ["drop-texts"]}


def viewed_atlas(root, n: int) -> atlas.Atlas:
    """Vectors of n texts with heavy low tails (so the clip bites) and a few unstable texts (so
    drop-texts does), on two text sets; the three kinds of view fitted on 'eval'."""
    rng = np.random.default_rng(5)
    base = rng.normal(-300, 60, n) - rng.exponential(200, n) * (rng.random(n) < 0.1)
    loglik = base + rng.normal(0, 4, (len(KEYS), n)) * np.linspace(1, 3, len(KEYS))[:, None]
    loglik += rng.normal(0, 20, (len(KEYS), 1))  # each model its own mean: KL ignores it
    unstable = rng.choice(n, 6, replace=False)  # texts that move along the run
    loglik[:4, unstable] += rng.normal(0, 80, (4, 6))
    handle = atlas.open(root / "atlas.duckdb")
    for name, keys in (("eval", KEYS), ("extra", KEYS[:2] + KEYS[-1:])):
        handle.import_textset(TextSet([f"{name} text {i} " * (1 + i % 9) for i in range(n)]), name)
        rows = [loglik[KEYS.index(k)].tolist() for k in keys]
        pl.DataFrame({"key": keys, "loglik": rows}).write_parquet(root / f"{name}.parquet")
        handle.import_vectors(root / f"{name}.parquet", name)
    handle.import_textset(TextSet([f"only {i}" for i in range(n)]), "lonely")
    pl.DataFrame({"key": ["toy-x"], "loglik": [loglik[0].tolist()]}).write_parquet(
        root / "lonely.parquet")
    handle.import_vectors(root / "lonely.parquet", "lonely")
    for name, kinds in VIEWS.items():
        handle.create_view(name, kinds, textset="eval", warmup=1_000, fraction=0.05)
    return handle


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    handle = viewed_atlas(tmp_path_factory.mktemp("sql-views"), N)
    yield handle
    handle.close()


def test_the_views_change_the_vectors(db):
    assert db.view("p1").params["clip"]["fraction_clipped"] > 0
    assert len(db.view("drop").params["drop-texts"]["dropped"]) == 10
    raw = db.kl(KEYS[0], KEYS[1], "eval").value
    assert all(abs(db.kl(KEYS[0], KEYS[1], view=v).value - raw) > 1e-4 * raw for v in VIEWS)


@pytest.mark.parametrize("view", list(VIEWS))
def test_kl_and_kl_se_through_a_view_equal_the_python_path(db, view):
    for a, b in [(a, b) for a in (KEYS[0], KEYS[5]) for b in KEYS]:  # itself included
        row = db.sql("SELECT kl(?, ?, view := ?) AS kl, kl_se(?, ?, view := ?) AS se",
                     [a, b, view] * 2).row(0)
        expected = db.kl(a, b, view=view)
        assert row == pytest.approx((expected.value, expected.se), rel=1e-9, abs=1e-15)


def test_kl_through_a_view_takes_its_text_set_by_name(db):
    """The pair shares two text sets (raw kl needs one named); through a view it is the
    view's, named or not."""
    a, b = KEYS[0], KEYS[-1]
    with pytest.raises(AtlasError, match="share 2 text sets"):
        db.sql("SELECT kl(?, ?)", [a, b])
    named = db.sql("SELECT kl(?, ?, 'eval', view := 'p1') AS kl", [a, b])["kl"][0]
    assert named == pytest.approx(db.kl(a, b, view="p1").value, rel=1e-12)


@pytest.mark.parametrize("view", list(VIEWS))
def test_nearest_through_a_view_equals_the_python_path(db, view):
    for key in (KEYS[0], KEYS[5]):
        assert_nearest_is_numpys(db, key, 4, view)


def assert_nearest_is_numpys(handle: atlas.Atlas, key: str, k: int, view: str) -> None:
    """SQL's nearest through the stored view equals numpy's (the View object's path)."""
    found = handle.sql("SELECT * FROM nearest(?, ?, view := ?)", [key, k, view])
    expected = handle.nearest(key, k, view=handle.view(view))
    assert found["key"].to_list() == expected["key"].to_list()
    assert found["textset"].to_list() == ["eval"] * k
    for column in ("kl", "se"):
        assert found[column].to_list() == pytest.approx(expected[column].to_list(),
                                                        rel=1e-9, abs=1e-15)


def test_nearest_through_a_view_over_several_parts_equals_the_python_path(tmp_path):
    """700 texts are three parts of each vector, the last one padded: clipped and dropped texts
    in every part, the kept ones summed a part at a time, come to the Python path's KLs. k = 2
    measures 4 of the 6 others exactly: the ranking by the parts' sums decides which."""
    handle = viewed_atlas(tmp_path, 700)
    dropped = handle.view("drop").params["drop-texts"]["dropped"]
    assert {i // LOGLIK_PART for i in dropped} == {0, 1, 2}
    for view in VIEWS:
        for key in (KEYS[0], KEYS[5]):
            assert_nearest_is_numpys(handle, key, 2, view)
    handle.close()


def test_raw_nearest_is_unchanged_by_the_view_parameter(db):
    plain = db.sql("SELECT * FROM nearest(?, 3, 'eval')", [KEYS[0]])
    assert plain.equals(db.sql("SELECT * FROM nearest(?, 3, 'eval', view := NULL)", [KEYS[0]]))
    assert plain["key"].to_list() == db.nearest(KEYS[0], 3, "eval")["key"].to_list()


@pytest.mark.parametrize("view", list(VIEWS))
def test_apply_view_gives_the_viewed_vector_and_its_mean_bytes(db, view):
    row = db.sql("SELECT apply_view(loglik, ?) AS v FROM loglik_vectors "
                 "WHERE key = ? AND textset = 'eval'", [view, KEYS[2]])["v"][0]
    _, matrix, _ = db.store.matrix([KEYS[2]], "eval")
    n_bytes = db.sql("SELECT n_bytes FROM texts JOIN textsets USING (textset_id) "
                     "WHERE name = 'eval' ORDER BY idx")["n_bytes"].to_numpy()
    viewed, mean_bytes = views.apply(db.view(view), matrix, n_bytes)
    assert np.array_equal(np.asarray(row["loglik"]), viewed[0])
    assert row["mean_bytes"] == pytest.approx(mean_bytes, rel=1e-12)


@pytest.mark.parametrize(("query", "params", "message"), [
    ("SELECT kl(?, ?, view := 'nope')", KEYS[:2], r"no view 'nope' in this atlas \(views: "
                                                  r"clip, drop, p1\); make one with `atlas view"),
    ("SELECT * FROM nearest(?, 2, view := 'nope')", KEYS[:1], "no view 'nope'"),
    ("SELECT kl_se(?, ?, 'extra', view := 'p1')", KEYS[:2],
     "view 'p1' is fitted on text set 'eval', not 'extra'; .* fit a view on 'extra'"),
    ("SELECT * FROM nearest(?, 2, 'extra', view := 'p1')", KEYS[:1], "not 'extra'"),
    ("SELECT kl(?, 'toy-x', view := 'p1')", KEYS[:1],
     "toy-x has no vector on text set 'eval', the text set of view 'p1'; score it"),
    ("SELECT * FROM nearest('toy-x', 2, view := 'p1')", [], "toy-x has no vector on text set"),
    ("SELECT apply_view([1.0, 2.0], 'p1')", [], "a vector of 2 values through a view of a text "
                                                f"set of {N} texts"),
])
def test_bad_views_are_clear_errors(db, query, params, message):
    with pytest.raises(AtlasError, match=message):
        db.sql(query, params)


def test_a_view_kind_this_version_cannot_apply_is_named(db):
    with db.store.transaction() as con:
        con.execute("INSERT INTO views VALUES ('future', 'clip+smooth', '{}', 'eval', 'h', "
                    "current_timestamp)")
    try:
        with pytest.raises(AtlasError, match=r"kind 'clip\+smooth'.*upgrade atlas"):
            db.sql("SELECT kl(?, ?, view := 'future')", KEYS[:2])
    finally:
        with db.store.transaction() as con:
            con.execute("DELETE FROM views WHERE name = 'future'")


BARE_CLIENT = """
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
a, b = sys.argv[2], sys.argv[3]
out = {
    "kl": con.execute("SELECT kl(?, ?, view := 'p1'), kl_se(?, ?, view := 'p1')",
                      [a, b, a, b]).fetchall()[0],
    "nearest": con.execute("SELECT key, kl FROM nearest(?, 3, view := 'p1')", [a]).fetchall(),
    "atlas_imported": "atlas" in sys.modules,
}
print(json.dumps(out))
"""


def test_views_work_from_a_bare_duckdb_client(db):
    a, b = KEYS[0], KEYS[3]
    expected, near = db.kl(a, b, view="p1"), db.nearest(a, 3, view="p1")
    db.close()  # one writer or many readers: let the other process in
    result = subprocess.run([sys.executable, "-c", BARE_CLIENT, str(db.path), a, b],
                            capture_output=True, text=True, check=True, cwd="/")
    out = json.loads(result.stdout)
    assert not out["atlas_imported"]
    assert out["kl"] == pytest.approx([expected.value, expected.se], rel=1e-9)
    assert [k for k, _ in out["nearest"]] == near["key"].to_list()
    assert [d for _, d in out["nearest"]] == pytest.approx(near["kl"].to_list(), rel=1e-9)


def _older(path, *statements: str) -> bytes:
    """The atlas as an older version left it: ``statements`` run on it, an older macros hash."""
    con = duckdb.connect(str(path))
    for statement in statements:
        con.execute(statement)
    con.execute("UPDATE atlas_meta SET value = 'older' WHERE name = 'macros_sha'")
    con.close()
    return path.read_bytes()


def test_read_only_overlay_gives_an_older_atlas_the_view_parameter(tmp_path, db):
    """An older file with views but older macros gets this version's view-aware ones."""
    path = tmp_path / "old.duckdb"
    db.close()  # its WAL checkpointed into the file copied
    path.write_bytes(db.path.read_bytes())
    before = _older(path, "DROP MACRO nearest", "DROP MACRO kl",
                    "CREATE MACRO kl(a, b, textset_name := NULL) AS -1.0")
    with atlas.open(path, read_only=True) as old:
        value = old.sql("SELECT kl(?, ?, view := 'p1') AS kl", KEYS[:2])["kl"][0]
        near = old.sql("SELECT key FROM nearest(?, 2, view := 'p1')", KEYS[:1])["key"]
    assert value == pytest.approx(db.kl(KEYS[0], KEYS[1], view="p1").value, rel=1e-12)
    assert near.to_list() == db.nearest(KEYS[0], 2, view="p1")["key"].to_list()
    assert path.read_bytes() == before


def test_read_only_overlay_of_an_atlas_older_than_views(tmp_path, db):
    """A file without the views table still gets this version's kl and nearest (over an empty
    temporary views table), and a view named there is unknown; the file is not written."""
    path = tmp_path / "older.duckdb"
    db.close()
    path.write_bytes(db.path.read_bytes())
    before = _older(path, "DROP TABLE views",
                    "CREATE OR REPLACE MACRO kl(a, b, textset_name := NULL) AS -1.0")
    with atlas.open(path, read_only=True) as old:
        assert old.sql("SELECT kl(?, ?, 'eval') AS kl", KEYS[:2])["kl"][0] == pytest.approx(
            db.kl(KEYS[0], KEYS[1], "eval").value, rel=1e-12)
        assert old.sql("SELECT key FROM nearest(?, 2, 'eval')", KEYS[:1]).height == 2
        with pytest.raises(AtlasError, match=r"no view 'p1' in this atlas \(views: none\)"):
            old.sql("SELECT kl(?, ?, view := 'p1')", KEYS[:2])
    assert path.read_bytes() == before
