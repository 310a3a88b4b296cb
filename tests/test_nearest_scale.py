"""The sketch-backed nearest, the batched vector write and the schema-2 upgrade."""

import json

import duckdb
import numpy as np
import polars as pl
import pytest

import atlas
from atlas.errors import StoreError
from atlas.keys import ModelKey
from atlas.kl import kl_bpb, kl_se_bpb
from atlas.sketches import (
    BASIS_MIN,
    RESID_BOUND,
    RESID_DIM,
    RESID_FAILURE,
    SKETCH_DIM,
    residual_bound,
)
from atlas.store import VectorRecord
from atlas.textsets import TextSet

N = 200
# ‖c_a − c_b‖² of two whole vectors in SQL, the reference the bounds are checked against
SQ_DISTANCE = "len({a}) * list_aggregate(loglik_diff({a}, {b}, 0), 'var_pop')"
K = BASIS_MIN + 72


def synthetic(k: int, seed: int = 0, n: int = N) -> np.ndarray:
    """Low-rank structure plus per-model noise, with close pairs (fine-tune-like)."""
    rng = np.random.default_rng(seed)
    loglik = (rng.normal(-900, 150, n) + rng.normal(0, 30, (k, 1))
              + rng.normal(0, 1, (k, 8)) @ rng.normal(0, 4, (8, n))
              + rng.normal(0, 5, (k, n)) * rng.uniform(0.5, 1.5, (k, 1)))
    loglik[1::7] = loglik[0::7][:len(loglik[1::7])] + rng.normal(0, 1, (len(loglik[1::7]), n))
    return loglik.astype(np.float32)


def records(loglik: np.ndarray, prefix: str = "m") -> list[VectorRecord]:
    return [VectorRecord(ModelKey(prefix, str(i)), row, config_id=f"c{i}", provenance={})
            for i, row in enumerate(loglik)]


@pytest.fixture
def db(tmp_path):
    handle = atlas.open(tmp_path / "a.duckdb")
    handle.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(N)]), "eval")
    return handle


def textset_id(db) -> int:
    return db.store.textset("eval").textset_id


def brute_force(loglik: np.ndarray, query: int, k: int) -> list[str]:
    centred = loglik.astype(np.float64)
    centred -= centred.mean(axis=1, keepdims=True)
    d2 = ((centred - centred[query]) ** 2).sum(axis=1)
    order = [i for i in np.lexsort((np.array([f"m-{i}" for i in range(len(d2))]), d2))
             if i != query]
    return [f"m-{i}" for i in order[:k]]


def assert_exact_nearest(db, loglik: np.ndarray, query: int, k: int = 10) -> None:
    """nearest is numpy's brute-force top k, with numpy's KL and SE to 10⁻⁹."""
    found = db.nearest(f"m-{query}", k)
    assert found["key"].to_list() == brute_force(loglik, query, k)
    b = db.store.textset("eval").mean_bytes
    for key, kl, se in found.select("key", "kl", "se").iter_rows():
        other = loglik[int(key[2:])]
        assert kl == pytest.approx(kl_bpb(loglik[query], other, b), rel=1e-9)
        assert se == pytest.approx(kl_se_bpb(loglik[query], other, b), rel=1e-9)


def test_nearest_with_sketches_is_brute_force_with_exact_values(db):
    loglik = synthetic(K)
    assert db.store.write_vectors(records(loglik), textset_id=textset_id(db)) == [True] * K
    assert db.sql("SELECT count(sketch) AS n FROM vectors")["n"][0] == K
    for query in range(0, K, 23):
        assert_exact_nearest(db, loglik, query)


def test_values_are_exact_over_several_parts_the_last_padded(tmp_path):
    """5,000 texts: 19 parts of 256 and one of 136 (padded). KL and SE come from the parts'
    moments about the difference of the means, the padding cut off: numpy's values to 10⁻⁹;
    and every read of the parts is filtered by the vids it measures (joined on vid and part
    together, the last pass read every part: +76 ms at 10⁴ × 10⁴)."""
    n_texts = 5000
    db = atlas.open(tmp_path / "parts.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(n_texts)]), "eval")
    loglik = synthetic(BASIS_MIN + 20, seed=3, n=n_texts)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    for query in (0, 1, 50):
        assert_exact_nearest(db, loglik, query)
    db.close()
    scans = [n["intermediate_rows"] for top in profile(tmp_path / "parts.duckdb", "m-0", 10)
             ["operator"] for n in nodes(top)
             if "vector_parts" in str(n.get("extra_info", {}).get("Table"))]
    assert len(scans) == 3 and max(scans) < len(loglik) * 20  # none reads every part


def test_the_sketch_pass_reads_every_sketch_through_a_cross_product(db):
    """A join on textset_id with the query's row copied every vector's sketch, a third of the
    sketch pass's CPU at 10⁵ vectors: the pass is a cross product, other sets filtered out."""
    db.store.write_vectors(records(synthetic(K)), textset_id=textset_id(db))
    plan = json.loads(db.sql("EXPLAIN (FORMAT json) SELECT * FROM nearest('m-3', 5)")
                      ["explain_value"][0])

    def sketch_scan_parents(node: dict, parent: str | None) -> list[str | None]:
        info = node.get("extra_info", {})
        here = ([parent] if "vector_rows" in str(info.get("Table"))
                and "sketch" in info.get("Projections", []) else [])
        return here + [found for child in node.get("children", [])
                       for found in sketch_scan_parents(child, node["name"])]

    assert "CROSS_PRODUCT" in [p for node in plan for p in sketch_scan_parents(node, None)]


def test_sketch_is_a_lower_bound(db):
    loglik = synthetic(K)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    frame = db.sql("SELECT a.key AS a, b.key AS b, pow(array_distance(a.sketch, b.sketch), 2) "
                   "+ pow(a.sketch_resid - b.sketch_resid, 2) AS lower, "
                   f"{SQ_DISTANCE.format(a='a.loglik', b='b.loglik')} AS d2 "
                   "FROM vectors a JOIN vectors b ON a.key < b.key WHERE a.key LIKE 'm-1%'")
    assert (frame["lower"] <= frame["d2"] * (1 + 1e-5) + 1e-3).all()


def test_basis_is_fitted_once_enough_vectors_are_stored_one_by_one(db):
    loglik = synthetic(BASIS_MIN)
    for record in records(loglik)[:-1]:
        db.store.write_vectors([record], textset_id=textset_id(db))
    assert db.sql("SELECT count(sketch) AS n FROM vectors")["n"][0] == 0
    assert db.nearest("m-3", 5)["key"].to_list() == brute_force(loglik[:-1], 3, 5)
    db.store.write_vectors(records(loglik)[-1:], textset_id=textset_id(db))
    assert db.sql("SELECT count(sketch) AS n FROM vectors")["n"][0] == BASIS_MIN
    assert db.nearest("m-3", 5)["key"].to_list() == brute_force(loglik, 3, 5)


def test_a_refused_record_writes_nothing_of_its_batch(db):
    loglik = synthetic(BASIS_MIN + 10)
    db.store.write_vectors(records(loglik)[:5], textset_id=textset_id(db))
    before = db.sql("SELECT key, loglik FROM vectors ORDER BY key").rows()
    clash = records(loglik)
    clash[3].config_id = "another"  # m-3 stored with c3: a conflict without --force
    with pytest.raises(StoreError, match="another scoring config"):
        db.store.write_vectors(clash, textset_id=textset_id(db))
    assert db.sql("SELECT key, loglik FROM vectors ORDER BY key").rows() == before
    assert db.sql("SELECT count(*) AS n FROM models")["n"][0] == 5
    assert db.sql("SELECT count(*) AS n FROM vector_bases")["n"][0] == 0


def test_rewriting_a_batch_is_a_no_op(db):
    loglik = synthetic(BASIS_MIN + 10)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    before = db.sql("SELECT * FROM vectors ORDER BY key").rows()
    again = db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    assert again == [False] * len(loglik)
    assert db.sql("SELECT * FROM vectors ORDER BY key").rows() == before


def test_a_forced_rewrite_replaces_the_parts_of_its_vectors(db):
    loglik = synthetic(BASIS_MIN + 10)
    db.store.write_vectors(records(loglik)[:20], textset_id=textset_id(db))
    other = loglik[::-1].copy()  # other values under the same keys, some of them stored
    again = records(other)
    for record in again:
        record.config_id += "-b"
    written = db.store.write_vectors(again, textset_id=textset_id(db), force=True)
    assert written == [True] * len(loglik)
    parts = db.sql("SELECT count(*) AS n, count(DISTINCT vid) AS v FROM vector_parts").row(0)
    assert parts == (len(loglik) * -(-N // 256), len(loglik))
    keys, matrix, _ = db.store.matrix(None, "eval")
    assert (matrix == other[[int(key[2:]) for key in keys]]).all()
    assert db.nearest("m-3", 5)["key"].to_list() == brute_force(other, 3, 5)


def downgrade_to_2(path) -> duckdb.DuckDBPyConnection:
    """Turn a current file into what schema 2 wrote: one ``vectors`` table holding ℓ as a list,
    and a nearest of its own (a brute force over those lists)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE old_vectors AS SELECT * FROM vectors")
    con.execute("DROP VIEW vectors")
    con.execute("ALTER TABLE old_vectors RENAME TO vectors")
    con.execute("DROP TABLE vector_rows")
    con.execute("DROP TABLE vector_parts")
    con.execute("DROP MACRO TABLE nearest")
    con.execute("CREATE MACRO nearest(query_key, k, textset_name := NULL) AS TABLE "
                "SELECT v.key, 0.0 AS kl, 0.0 AS se, 'eval' AS textset FROM vectors v, "
                "(SELECT loglik AS l FROM vectors WHERE key = query_key) q "
                f"WHERE v.key <> query_key ORDER BY {SQ_DISTANCE.format(a='v.loglik', b='q.l')}, "
                "v.key LIMIT k")
    con.execute("UPDATE atlas_meta SET value = '2' WHERE name = 'schema_version'")
    con.execute("UPDATE atlas_meta SET value = 'of schema 2' WHERE name = 'macros_sha'")
    return con


def downgrade(path) -> None:
    """Turn a current file into what version 1 wrote: a DOUBLE centred copy, no sketches."""
    con = downgrade_to_2(path)
    con.execute("ALTER TABLE vectors ADD COLUMN loglik_centred DOUBLE[]")
    con.execute("UPDATE vectors SET loglik_centred = "
                "list_transform(loglik, lambda x: x::DOUBLE - loglik_mean)")
    con.execute("ALTER TABLE vectors DROP COLUMN sketch")
    con.execute("ALTER TABLE vectors DROP COLUMN sketch_resid")
    con.execute("DROP TABLE vector_bases")
    con.execute("DROP MACRO TABLE nearest")
    con.execute("CREATE MACRO nearest(query_key, k, textset_name := NULL) AS TABLE "
                "SELECT v.key, 0.0 AS kl, 0.0 AS se, 'eval' AS textset FROM vectors v "
                "WHERE v.key <> query_key ORDER BY list_distance(v.loglik_centred, "
                "(SELECT loglik_centred FROM vectors WHERE key = query_key)) LIMIT k")
    con.execute("UPDATE atlas_meta SET value = '1' WHERE name = 'schema_version'")
    con.close()


def test_older_file_read_only_keeps_its_nearest_and_is_upgraded_when_writable(db, tmp_path):
    loglik = synthetic(K)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    db.close()
    path = tmp_path / "a.duckdb"
    downgrade(path)
    old = atlas.open(path, read_only=True)  # the file's own nearest: no sketch columns
    assert old.nearest("m-5", 10)["key"].to_list() == brute_force(loglik, 5, 10)
    b = old.store.textset("eval").mean_bytes
    assert old.kl("m-1", "m-2").value == pytest.approx(kl_bpb(loglik[1], loglik[2], b), rel=1e-9)
    old.close()
    upgraded = atlas.open(path)
    columns = upgraded.sql("SELECT column_name FROM duckdb_columns() "
                           "WHERE table_name = 'vectors'")["column_name"].to_list()
    assert "loglik_centred" not in columns and "sketch" in columns
    assert upgraded.sql("SELECT count(sketch) AS n FROM vectors")["n"][0] == K
    found = upgraded.nearest("m-5", 10)
    assert found["key"].to_list() == brute_force(loglik, 5, 10)
    assert found["kl"][0] == pytest.approx(
        kl_bpb(loglik[5], loglik[int(found["key"][0][2:])], b), rel=1e-9)
    assert upgraded.sql("SELECT len(sketch) AS d FROM vectors LIMIT 1")["d"][0] == SKETCH_DIM


def test_schema_2_file_reads_as_it_was_and_moves_into_parts_when_writable(db, tmp_path):
    """ℓ as one list per vector (schema 2): read-only opens use the file's own tables and
    nearest; a writable open moves ℓ into vector_parts, every value and row kept."""
    loglik = synthetic(K, seed=3)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    before = db.sql("SELECT * FROM vectors ORDER BY key").rows()
    db.close()
    path = tmp_path / "a.duckdb"
    downgrade_to_2(path).close()
    with atlas.open(path, read_only=True) as old:  # this version's macros, over its table
        found = old.nearest("m-8", 10)
        assert found["key"].to_list() == brute_force(loglik, 8, 10)
        b = old.store.textset("eval").mean_bytes
        assert found["kl"][0] == pytest.approx(
            kl_bpb(loglik[8], loglik[int(found["key"][0][2:])], b), rel=1e-9)
        assert old.kl("m-1", "m-9").value == pytest.approx(kl_bpb(loglik[1], loglik[9], b),
                                                            rel=1e-9)
        assert old.store.matrix(["m-3"], "eval")[1][0] == pytest.approx(loglik[3])
    upgraded = atlas.open(path)
    assert upgraded.sql("SELECT * FROM vectors ORDER BY key").rows() == before
    assert upgraded.sql("SELECT table_type AS t FROM information_schema.tables "
                        "WHERE table_name = 'vectors'")["t"].to_list() == ["VIEW"]
    assert upgraded.sql("SELECT count(*) AS n FROM vector_parts")["n"][0] == K * -(-N // 256)
    found = upgraded.nearest("m-8", 10)
    assert found["key"].to_list() == brute_force(loglik, 8, 10)
    assert found["kl"][0] == pytest.approx(
        kl_bpb(loglik[8], loglik[int(found["key"][0][2:])], b), rel=1e-9)
    keys, matrix, _ = upgraded.store.matrix(None, "eval")
    assert keys == sorted(keys) and len(keys) == K
    assert (matrix == loglik[[int(key[2:]) for key in keys]]).all()
    keys, matrix, _ = upgraded.store.matrix(["m-3", "m-1", "m-3"], "eval")
    assert keys == ["m-3", "m-1", "m-3"] and (matrix == loglik[[3, 1, 3]]).all()


def short_atlas(tmp_path, loglik: np.ndarray) -> atlas.Atlas:
    """An atlas of ``loglik`` on a text set shorter than the sketch, through a Parquet import."""
    db = atlas.open(tmp_path / "short.duckdb")
    db.import_textset(TextSet([f"text {i} " * (i + 1) for i in range(loglik.shape[1])]),
                      "short")
    path = tmp_path / "v.parquet"
    pl.DataFrame({"key": [f"m-{i}m" for i in range(len(loglik))],
                  "loglik": loglik.tolist()}).write_parquet(path)
    db.import_vectors(path, "short")
    return db


def test_text_sets_shorter_than_the_sketch_are_sketched_whole(tmp_path):
    """With fewer texts than sketch dimensions the basis spans every direction: the sketch is
    padded with zeros, its residual is zero, and nearest is exact."""
    loglik = -np.random.default_rng(1).gamma(2.0, 20.0, (BASIS_MIN + 10, SKETCH_DIM // 4))
    db = short_atlas(tmp_path, loglik)
    resid = db.sql("SELECT max(sketch_resid) AS r, count(sketch) AS n FROM vectors")
    assert resid["n"][0] == len(loglik) and resid["r"][0] < 1e-6 * np.abs(loglik).max()
    centred = loglik - loglik.mean(axis=1, keepdims=True)
    expected = np.argsort(((centred[1:] - centred[0]) ** 2).sum(axis=1))[:5] + 1
    assert db.nearest("m-0m", k=5)["key"].to_list() == [f"m-{i}m" for i in expected]


def test_the_rounding_slack_keeps_the_sketch_bound_below_every_distance(tmp_path):
    """A whole sketch (no residual) of close pairs: the float32 bound exceeds some true squared
    distances (by up to ~10⁻² where they are ~10⁻⁶), less sketch_slack it never does."""
    rng = np.random.default_rng(1)
    loglik = -rng.gamma(2.0, 20.0, (BASIS_MIN + 10, SKETCH_DIM // 4))
    loglik[1::2] = loglik[0::2] + rng.normal(0, 1e-3, loglik[0::2].shape)
    db = short_atlas(tmp_path, loglik)
    gaps = db.sql(f"""
        WITH v AS (SELECT key, sketch AS s, sketch_resid AS r, loglik AS l,
                          sqrt(array_inner_product(sketch::DOUBLE[64], sketch::DOUBLE[64])) AS norm
                   FROM vectors),
        pairs AS (SELECT array_distance(a.s, b.s)::DOUBLE AS dist, dist * dist AS near,
                         near + (a.r - b.r) * (a.r - b.r) AS lower,
                         sketch_slack(a.norm * a.norm + a.r * a.r, dist, a.norm, b.r, len(a.l))
                             AS slack,
                         {SQ_DISTANCE.format(a='a.l', b='b.l')} AS d2
                  FROM v a JOIN v b ON a.key <> b.key)
        SELECT max(lower - d2) AS over, max(lower - slack - d2) AS left FROM pairs""")
    assert gaps["over"][0] > 0 and gaps["left"][0] <= 0


@pytest.mark.slow
def test_nearest_among_ten_thousand_models_is_the_brute_force_top_ten(tmp_path):
    """10⁴ models × 300 texts (two parts each, the second padded), written in batches as an
    import does; nearest from a bare DuckDB client equals numpy's brute force (~1 min)."""
    n_texts, k = 300, 10_000
    db = atlas.open(tmp_path / "big.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(n_texts)]), "eval")
    loglik = synthetic(k, seed=5, n=n_texts)
    batch = records(loglik)
    for start in range(0, k, 2048):
        db.store.write_vectors(batch[start:start + 2048], textset_id=textset_id(db))
    db.close()
    con = duckdb.connect(str(tmp_path / "big.duckdb"), read_only=True)
    for query in range(0, k, 997):
        found = con.execute("SELECT key FROM nearest(?, 10)", [f"m-{query}"]).fetchall()
        assert [key for (key,) in found] == brute_force(loglik, query, 10)


def residual_decoys(seed: int = 2) -> np.ndarray:
    """An atlas where the sketch bound is loose: 150 fillers spread widely along 64 directions
    (the sketch basis), the query, 100 decoys at its sketch coordinates whose residuals have the
    query's length but point elsewhere (lower bound ≈ 0, distance ≈ 2r²), and one true neighbour
    off the query in sketch space (distance r²) with the query's residual. Both candidate lists
    fill up with decoys."""
    rng = np.random.default_rng(seed)
    sketched, rest = split_texts(rng, N)
    r = 10.0
    query_resid = of_length(rng, 1, rest.shape[1], r)
    a = np.vstack([rng.normal(0, 100, (150, SKETCH_DIM)), np.zeros((1, SKETCH_DIM)),
                   rng.normal(0, 1e-3, (100, SKETCH_DIM)), of_length(rng, 1, SKETCH_DIM, r)])
    b = np.vstack([of_length(rng, 150, rest.shape[1], r), query_resid,
                   of_length(rng, 100, rest.shape[1], r), query_resid])
    return planted(sketched, rest, a, b)


def split_texts(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal directions over n texts, all orthogonal to the constant (which centring
    removes): the first SKETCH_DIM, along which planted fillers spread so that the sketch basis
    finds them, and the rest, where the residuals lie."""
    directions, _ = np.linalg.qr(np.hstack([np.ones((n, 1)), rng.normal(size=(n, n - 1))]))
    return directions[:, 1:1 + SKETCH_DIM], directions[:, 1 + SKETCH_DIM:]


def of_length(rng: np.random.Generator, count: int, dim: int, length: float) -> np.ndarray:
    """``count`` random directions in ``dim`` dimensions, each of the given length."""
    x = rng.normal(size=(count, dim))
    return x * (length / np.linalg.norm(x, axis=1, keepdims=True))


def planted(sketched: np.ndarray, rest: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ℓ of vectors with coordinates ``a`` on the sketched directions and ``b`` on the rest."""
    return (-900.0 + a @ sketched.T + b @ rest.T).astype(np.float32)


def profile(path, key: str, k: int) -> dict:
    """The JSON profile of nearest_raw(key, k) from a bare client."""
    con = duckdb.connect(str(path), read_only=True)
    plan = json.loads(con.execute("EXPLAIN (ANALYZE, FORMAT json) SELECT * FROM "
                                  f"nearest_raw('{key}', {k}, NULL)").fetchall()[0][1])
    con.close()
    return plan


def nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("children", []) for n in nodes(child)]


def vectors_read(path, key: str, k: int) -> dict[str, int]:
    """How many vectors nearest_raw measured in its first pass (chosen) and for the certificate
    (missed), from the profile of a bare client's query."""
    found = {node["extra_info"]["CTE Name"]: node["children"][0]["intermediate_rows"]
             for top in profile(path, key, k)["operator"] for node in nodes(top)
             if node.get("extra_info", {}).get("CTE Name") in ("chosen", "missed")}
    assert set(found) == {"chosen", "missed"}
    return found


def test_nearest_is_brute_force_where_the_sketch_orderings_miss_the_nearest(db, tmp_path):
    """The true neighbour, ranked after 100 decoys by its sketch distance and by its guess, is
    measured (its bound is under the threshold the decoys' guesses set), with exact values."""
    loglik = residual_decoys()
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    query, true = 150, len(loglik) - 1
    assert brute_force(loglik, query, 1) == [f"m-{true}"]
    assert_exact_nearest(db, loglik, query)


def anticorrelated(seed: int = 3) -> np.ndarray:
    """An atlas where the threshold falls short of the top k: 150 fillers spread along the
    sketch's directions, the query (residual e), 12 vectors at its sketch coordinates with the
    residual −e (guess 2r², distance 4r²) and 12 hidden ones off it in sketch space (3r²) with
    its residual (guess 5r², bound and distance 3r²): the threshold is the 10th guess, 2r²
    (+1 %), and the 10 nearest are hidden ones that only the certificate measures."""
    rng = np.random.default_rng(seed)
    sketched, rest = split_texts(rng, N)
    r = 10.0
    e = of_length(rng, 1, rest.shape[1], r)
    offsets = of_length(rng, 12, SKETCH_DIM, np.sqrt(3.0) * r)
    a = np.vstack([rng.normal(0, 100, (150, SKETCH_DIM)), np.zeros((1, SKETCH_DIM)),
                   rng.normal(0, 1e-3, (12, SKETCH_DIM)), offsets])
    b = np.vstack([rng.normal(0, r / np.sqrt(rest.shape[1]), (150, rest.shape[1])), e,
                   np.tile(-e, (12, 1)), np.tile(e, (12, 1))])
    return planted(sketched, rest, a, b)


def test_the_certificate_measures_what_the_threshold_left_out(db, tmp_path):
    loglik = anticorrelated()
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    assert set(brute_force(loglik, 150, 10)) <= {f"m-{i}" for i in range(163, 175)}
    assert_exact_nearest(db, loglik, 150)
    db.close()
    read = vectors_read(tmp_path / "a.duckdb", "m-150", 10)
    assert read["missed"] >= 10 and read["chosen"] < 30


def test_a_tight_bound_measures_no_vector_beyond_the_threshold(db, tmp_path):
    """Low-rank vectors (what the sketch keeps) with small noise: the bound is tight, few
    vectors are read, and the certificate adds none."""
    rng = np.random.default_rng(4)
    loglik = (rng.normal(-900, 150, N) + rng.normal(0, 30, (K, 1))
              + rng.normal(0, 1, (K, 16)) @ rng.normal(0, 4, (16, N))
              + rng.normal(0, 0.01, (K, N))).astype(np.float32)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    for query in (0, 77):
        assert db.nearest(f"m-{query}", 10)["key"].to_list() == brute_force(loglik, query, 10)
    db.close()
    read = [vectors_read(tmp_path / "a.duckdb", f"m-{q}", 10) for q in (0, 77)]
    assert [r["missed"] for r in read] == [0, 0] and max(r["chosen"] for r in read) < 40


def test_near_ties_are_ranked_exactly(db):
    """Twenty vectors whose squared distances to the query differ by ~10⁻⁸ of their value: the
    top 5 and its order are the brute-force ones (summed in float32, rounding ~10⁻⁷, they came
    out in another order)."""
    rng = np.random.default_rng(9)
    loglik = synthetic(K)
    query = loglik[0]
    noise = rng.normal(0, 0.5, N).astype(np.float32)
    near = np.tile(query + noise, (20, 1))
    for row, text in enumerate(np.argsort(np.abs(noise))[:20]):  # one ulp where d is smallest
        near[row, text] = np.nextafter(near[row, text], np.float32(np.inf if row % 2 else -np.inf))
    loglik = np.vstack([loglik, near]).astype(np.float32)
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    expected = brute_force(loglik, 0, 5)
    assert set(expected) <= {f"m-{K + i}" for i in range(20)}
    assert db.nearest("m-0", 5)["key"].to_list() == expected


LONG = 600  # texts: more than SKETCH_DIM + RESID_DIM, so vectors get residual sketches


def long_atlas(tmp_path, loglik: np.ndarray) -> atlas.Atlas:
    db = atlas.open(tmp_path / "long.duckdb")
    db.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(LONG)]), "eval")
    db.store.write_vectors(records(loglik), textset_id=textset_id(db))
    return db


def test_residual_bound_solves_the_chernoff_bound():
    epsilon = 1 / RESID_BOUND - 1
    assert ((1 + epsilon) * np.exp(-epsilon)) ** (RESID_DIM / 2) == pytest.approx(
        RESID_FAILURE, rel=1e-6)
    assert residual_bound(64, 1e-12) < residual_bound(256, 1e-12) < residual_bound(256, 1e-9)


def test_residual_sketches_project_the_residual_and_raise_the_bound_below_every_distance(
        tmp_path):
    """g = R(x − Bᵀs) with R's signs ±1/16 as stored; the raised bound ‖s_a − s_b‖² +
    max((r_a − r_b)², λ‖g_a − g_b‖²) stays under every true squared distance, and where the
    sketch bound counts little of the residuals' distance, it counts about λ of it."""
    loglik = synthetic(K, seed=6, n=LONG)
    db = long_atlas(tmp_path, loglik)
    base = db.sql("SELECT mean, basis, resid_projection FROM vector_bases").row(0)
    mean, basis = np.array(base[0]), np.array(base[1]).reshape(SKETCH_DIM, LONG)
    projection = np.array(base[2]).reshape(RESID_DIM, LONG)
    assert set(np.unique(projection)) == {-1 / 16, 1 / 16}
    rows = db.sql("SELECT key, sketch, sketch_resid, resid_sketch FROM vector_rows ORDER BY vid")
    order = [int(key[2:]) for key in rows["key"]]
    wide = loglik[order].astype(np.float64)
    x = wide - wide.mean(axis=1, keepdims=True) - mean
    g = np.array(rows["resid_sketch"].to_list())
    assert g == pytest.approx((x - (x @ basis.T) @ basis) @ projection.T, rel=1e-4, abs=1e-3)
    s, r = np.array(rows["sketch"].to_list()), rows["sketch_resid"].to_numpy()
    d2 = ((x[:, None] - x[None]) ** 2).sum(axis=2)
    near = ((s[:, None] - s[None]) ** 2).sum(axis=2)
    plain = near + (r[:, None] - r[None]) ** 2
    raised = near + np.maximum((r[:, None] - r[None]) ** 2,
                               RESID_BOUND * ((g[:, None] - g[None]) ** 2).sum(axis=2))
    assert (raised <= d2 * (1 + 1e-6)).all()
    pairs = ~np.eye(len(x), dtype=bool)
    residual = (d2 - near)[pairs]  # ‖e_a − e_b‖², what each bound bounds beyond the sketch
    assert np.median((plain - near)[pairs] / residual) < 0.1
    assert np.median((raised - near)[pairs] / residual) > 0.8 * RESID_BOUND


def spread_decoys(seed: int = 8) -> np.ndarray:
    """150 fillers along the sketch's directions, the query, its 10 nearest at its sketch
    coordinates with unrelated residuals (distance ≈ 2r²) and 100 decoys off it in sketch space
    (1.5r²) with unrelated residuals too (distance ≈ 3.5r²): the decoys' sketch bound, ≈ 1.5r²,
    is under the threshold (≈ 2r²), their raised bound (≈ 1.5r² + 2λr²) over it."""
    rng = np.random.default_rng(seed)
    sketched, rest = split_texts(rng, LONG)
    r = 10.0
    resid = of_length(rng, 261, rest.shape[1], r)
    offsets = of_length(rng, 100, SKETCH_DIM, np.sqrt(1.5) * r)
    a = np.vstack([rng.normal(0, 100, (150, SKETCH_DIM)), np.zeros((1, SKETCH_DIM)),
                   rng.normal(0, 1e-3, (10, SKETCH_DIM)), offsets])
    return planted(sketched, rest, a, resid)


def test_residual_sketches_rule_out_what_the_sketch_bound_cannot(tmp_path):
    loglik = spread_decoys()
    db = long_atlas(tmp_path, loglik)
    assert set(brute_force(loglik, 150, 10)) == {f"m-{i}" for i in range(151, 161)}
    assert_exact_nearest(db, loglik, 150)
    db.close()
    path = tmp_path / "long.duckdb"
    read = vectors_read(path, "m-150", 10)
    con = duckdb.connect(str(path))
    con.execute("UPDATE vector_rows SET resid_sketch = NULL")
    con.close()
    unraised = vectors_read(path, "m-150", 10)
    assert read["missed"] == unraised["missed"] == 0
    assert read["chosen"] < 30 and unraised["chosen"] > 100


def test_schema_3_file_reads_without_residual_sketches_and_gets_them_when_writable(tmp_path):
    loglik = synthetic(K, seed=7, n=LONG)
    long_atlas(tmp_path, loglik).close()
    path = tmp_path / "long.duckdb"
    con = duckdb.connect(str(path))
    con.execute("ALTER TABLE vector_rows DROP COLUMN resid_sketch")
    con.execute("ALTER TABLE vector_bases DROP COLUMN resid_projection")
    con.execute("UPDATE atlas_meta SET value = '3' WHERE name = 'schema_version'")
    con.execute("UPDATE atlas_meta SET value = 'of schema 3' WHERE name = 'macros_sha'")
    con.close()
    with atlas.open(path, read_only=True) as old:
        assert_exact_nearest(old, loglik, 4)
    upgraded = atlas.open(path)
    assert upgraded.sql("SELECT count(resid_sketch) AS n FROM vector_rows")["n"][0] == K
    assert_exact_nearest(upgraded, loglik, 4)
    upgraded.close()
    assert vectors_read(path, "m-4", 10)["missed"] == 0
