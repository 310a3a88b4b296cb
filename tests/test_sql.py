"""The SQL surface against a numpy reference, and from a bare DuckDB client."""

import json
import re
import subprocess
import sys

import duckdb
import numpy as np
import polars as pl
import pytest

import atlas
from atlas.errors import AtlasError, UnknownKeyError
from atlas.kl import kl_bpb, kl_se_bpb
from atlas.textsets import TextSet

N = 300
KEYS = ["fam-s/s0@step0", "fam-s/s0@step10", "fam-s/s1@step10", "fam-m/s0@step10",
        "other-x+int8"]


@pytest.fixture
def vectors():
    rng = np.random.default_rng(11)
    base = rng.normal(-800, 150, size=N)
    return {key: (base + rng.normal(0, 3 + i, size=N) - 20 * i).astype(np.float32)
            for i, key in enumerate(KEYS)}


@pytest.fixture
def synthetic(tmp_path, vectors):
    """An atlas whose vectors came in through the Parquet import path."""
    handle = atlas.open(tmp_path / "s.duckdb")
    texts = [f"text number {i} " * (1 + i % 7) for i in range(N)]
    handle.import_textset(TextSet(texts), "eval")
    path = tmp_path / "v.parquet"
    pl.DataFrame({"key": list(vectors), "loglik": [v.tolist() for v in vectors.values()]},
                 schema={"key": pl.String, "loglik": pl.List(pl.Float32)}).write_parquet(path)
    handle.import_vectors(path, "eval")
    return handle


def mean_bytes(handle):
    return handle.sql("SELECT mean_bytes FROM textsets WHERE name = 'eval'")["mean_bytes"][0]


def test_kl_and_se_macros_match_numpy(synthetic, vectors):
    b = mean_bytes(synthetic)
    for a_key in KEYS:
        for b_key in KEYS:
            row = synthetic.sql("SELECT kl(?, ?) AS kl, kl_se(?, ?) AS se",
                                [a_key, b_key, a_key, b_key]).row(0)
            a64, b64 = vectors[a_key].astype(np.float64), vectors[b_key].astype(np.float64)
            assert row[0] == pytest.approx(kl_bpb(a64, b64, b), rel=1e-9, abs=1e-12)
            assert row[1] == pytest.approx(kl_se_bpb(a64, b64, b), rel=1e-9, abs=1e-12)


def test_raw_vector_macros_match_numpy(synthetic, vectors):
    b = mean_bytes(synthetic)
    frame = synthetic.sql(
        "SELECT a.key AS ka, c.key AS kb, kl_bpb(a.loglik, c.loglik, a.mean_bytes) AS kl, "
        "kl_se_bpb(a.loglik, c.loglik, a.mean_bytes) AS se "
        "FROM loglik_vectors a, loglik_vectors c")
    for ka, kb, kl, se in frame.iter_rows():
        a64, b64 = vectors[ka].astype(np.float64), vectors[kb].astype(np.float64)
        assert kl == pytest.approx(kl_bpb(a64, b64, b), rel=1e-9, abs=1e-12)
        assert se == pytest.approx(kl_se_bpb(a64, b64, b), rel=1e-9, abs=1e-12)


def test_nearest_is_sorted_numpy_order(synthetic, vectors):
    b = mean_bytes(synthetic)
    query = KEYS[1]
    expected = sorted((kl_bpb(vectors[query], vectors[k], b), k) for k in KEYS if k != query)
    frame = synthetic.nearest(query, k=3)
    assert frame.columns == ["key", "kl", "se", "textset"]
    assert frame["key"].to_list() == [k for _, k in expected[:3]]
    assert np.allclose(frame["kl"].to_numpy(), [v for v, _ in expected[:3]], rtol=1e-9)
    assert synthetic.sql("SELECT * FROM nearest(?, 10)", [query]).height == len(KEYS) - 1


def test_matrix_matches_sql(synthetic):
    matrix = synthetic.kl_matrix()
    for i, a_key in enumerate(matrix.keys):
        for j, b_key in enumerate(matrix.keys):
            assert matrix.kl[i, j] == pytest.approx(synthetic.kl(a_key, b_key).value, rel=1e-9,
                                                    abs=1e-12)


def test_shorthands_resolve_when_unambiguous(synthetic):
    assert synthetic.resolve("fam-m") == "fam-m/s0@step10"
    assert synthetic.resolve("fam-s@step0") == "fam-s/s0@step0"
    assert synthetic.resolve("other-x") == "other-x+int8"
    with pytest.raises(UnknownKeyError, match=r"ambiguous.*fam-s/s0@step10, fam-s/s1@step10"):
        synthetic.resolve("fam-s@step10")
    with pytest.raises(UnknownKeyError, match="unknown model key 'nope-1b'"):
        synthetic.kl("nope-1b", KEYS[0])
    with pytest.raises(UnknownKeyError, match="unknown model key"):
        synthetic.nearest("nope-1b")


def test_kl_resolves_its_keys_once(synthetic, monkeypatch):
    """Atlas.kl resolves both keys, then reads their vectors by canonical key: resolving them
    again in SQL was ~40% of a kl's CPU at 10⁶ variants (six of them in a model's detail)."""
    issued = []
    sql = synthetic.sql
    monkeypatch.setattr(synthetic, "sql", lambda query, params=None: (
        issued.append((query, params)), sql(query, params))[1])
    synthetic.kl("fam-s@step0", KEYS[1])
    reads = [(query, params) for query, params in issued if "vectors(" in query]
    assert len(reads) == 1
    plan = sql("EXPLAIN " + reads[0][0], reads[0][1])["explain_value"].str.join("").item()
    assert "vector_rows" in plan and "models" not in plan


def test_nearest_without_a_view_binds_nothing_of_the_view_path(synthetic):
    """Binding the view's branch was half of nearest's planning time: a call without a view
    works even with the view path gone."""
    expected = synthetic.nearest(KEYS[0], 3)
    synthetic.close()
    con = duckdb.connect(str(synthetic.path))
    con.execute("DROP MACRO TABLE nearest_viewed")
    found = con.execute("SELECT key, kl, se, textset FROM nearest(?, 3)", [KEYS[0]]).fetchall()
    con.close()
    assert found == expected.select("key", "kl", "se", "textset").rows()


def test_nearest_per_row_of_a_table_is_nearest_raw(synthetic):
    """nearest's arguments must be constants; nearest_raw takes a column (a lateral join)."""
    lateral = synthetic.sql("SELECT m.key AS q, n.key FROM (SELECT key FROM models) m, "
                            "nearest_raw(m.key, 2, NULL) n ORDER BY q, n.kl, n.key")
    expected = [(q, key) for q in sorted(KEYS) for key in synthetic.nearest(q, 2)["key"]]
    assert lateral.rows() == expected
    with pytest.raises(AtlasError, match=re.escape("per row of a table, call nearest_raw(t.key")):
        synthetic.sql("SELECT * FROM (SELECT key FROM models) m, nearest(m.key, 2) n")


def test_nearest_takes_any_text_as_a_literal(synthetic):
    """nearest builds the query it runs as text: quotes in its arguments stay values."""
    odd = "x'); DROP TABLE models; --"
    with pytest.raises(UnknownKeyError, match=re.escape(f"unknown model key '{odd}'")):
        synthetic.nearest(odd)
    assert synthetic.sql("SELECT * FROM nearest(?, 2, ?)", [KEYS[0], "it's"]).is_empty()
    assert synthetic.sql("SELECT count(*) AS n FROM models")["n"][0] == len(KEYS)


def test_vectors_of_different_text_sets_are_never_compared(synthetic, tmp_path):
    synthetic.import_textset(TextSet([f"another text {i}" for i in range(N)]), "other")
    path = tmp_path / "o.parquet"
    pl.DataFrame({"key": ["lonely-1b"], "loglik": [[-1.0] * N]}).write_parquet(path)
    synthetic.import_vectors(path, "other")
    with pytest.raises(AtlasError, match="no text set holds vectors of both"):
        synthetic.kl("lonely-1b", KEYS[0])
    assert synthetic.nearest("lonely-1b").height == 0
    assert "lonely-1b" not in synthetic.nearest(KEYS[0], k=10)["key"].to_list()


def test_two_shared_text_sets_need_a_name(synthetic, vectors, tmp_path):
    synthetic.import_textset(TextSet([f"another text {i}" for i in range(N)]), "other")
    path = tmp_path / "o.parquet"
    pl.DataFrame({"key": KEYS[:2], "loglik": [vectors[k].tolist() for k in KEYS[:2]]}
                 ).write_parquet(path)
    synthetic.import_vectors(path, "other")
    with pytest.raises(AtlasError, match="share 2 text sets"):
        synthetic.kl(KEYS[0], KEYS[1])
    assert synthetic.kl(KEYS[0], KEYS[1], textset="other").textset == "other"
    found = synthetic.sql("SELECT key, textset FROM nearest(?, 5)", [KEYS[0]])
    assert sorted(found.rows()) == sorted([(KEYS[1], "other")]
                                          + [(key, "eval") for key in KEYS[1:]])


BARE_CLIENT = """
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
out = {
    "kl": con.execute("SELECT kl(?, ?)", [sys.argv[2], sys.argv[3]]).fetchall()[0][0],
    "nearest": con.execute("SELECT key FROM nearest(?, 2)", [sys.argv[2]]).fetchall(),
    "n_vectors": con.execute("SELECT count(*) FROM loglik_vectors").fetchall()[0][0],
    "columns": [d[0] for d in con.execute("SELECT * FROM model_variants").description],
    "atlas_imported": "atlas" in sys.modules,
}
print(json.dumps(out))
"""


def test_macros_work_from_a_bare_duckdb_client(synthetic):
    synthetic.close()  # one writer or many readers: let the other process in
    result = subprocess.run(
        [sys.executable, "-c", BARE_CLIENT, str(synthetic.path), KEYS[0], KEYS[1]],
        capture_output=True, text=True, check=True, cwd="/")
    out = json.loads(result.stdout)
    assert not out["atlas_imported"]
    assert out["kl"] == pytest.approx(synthetic.kl(KEYS[0], KEYS[1]).value, rel=1e-12)
    assert [row[0] for row in out["nearest"]] == synthetic.nearest(KEYS[0], 2)["key"].to_list()
    assert out["n_vectors"] == len(KEYS)
    assert out["columns"] == ["key", "family", "size", "n_params", "seed", "quant", "layer",
                              "checkpoint", "step", "parent", "source"]


def test_readme_parent_query_survives_parents_an_older_atlas_left(synthetic, vectors):
    """Parents are checked when written; an older atlas may hold a shorthand parent (resolved
    in model_variants), a dangling or an ambiguous one (NULL there, kept in models.parent)."""
    recorded = {"fam-s/s0@step10": "fam-s/s0@step0", "fam-s/s1@step10": "fam-m",
                "fam-m/s0@step10": "nosuch-1m", "other-x+int8": "fam-s@step10"}
    with synthetic.store.transaction() as con:
        for key, parent in recorded.items():  # as an older version wrote them, unchecked
            con.execute("UPDATE models SET parent = ? WHERE key = ?", [parent, key])
    rows = synthetic.sql("SELECT key, parent, kl(key, parent) AS kl FROM model_variants "
                         "WHERE parent IS NOT NULL ORDER BY key")
    assert rows["key"].to_list() == ["fam-s/s0@step10", "fam-s/s1@step10"]
    assert rows["parent"].to_list() == ["fam-s/s0@step0", "fam-m/s0@step10"]
    assert rows["kl"].to_list() == pytest.approx(
        [synthetic.kl("fam-s/s0@step10", "fam-s/s0@step0").value,
         synthetic.kl("fam-s/s1@step10", "fam-m/s0@step10").value], rel=1e-12)
    assert synthetic.sql("SELECT parent FROM models WHERE key = 'fam-m/s0@step10'"
                         )["parent"][0] == "nosuch-1m"  # nothing rewritten
