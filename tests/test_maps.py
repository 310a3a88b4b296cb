"""Maps of models: PCA, t-SNE (and, slow, UMAP) of q̃ on hand-built atlases, stored and read back."""

from __future__ import annotations

import json
import math
import time

import duckdb
import numpy as np
import polars as pl
import pytest

import atlas
from atlas.analysis import maps
from atlas.errors import AtlasError

KEYS = ["pythia-70m@step0", "pythia-70m@step100", "pythia-70m@step1000",
        "pythia-70m/s1@step1000", "pythia-160m@step1000", "pythia-410m@step1000",
        "llama-7b", "llama-chat-7b", "llama-13b"]
PYTHIA = "family = 'pythia'"


def _vectors(n_models: int, n_texts: int, seed: int = 0) -> np.ndarray:
    """Log-likelihoods with a few strong directions (a PCA worth the name), float32-exact."""
    rng = np.random.default_rng(seed)
    base = -np.linspace(20, 200, n_texts)
    directions = rng.normal(size=(3, n_texts))
    weights = rng.normal(size=(n_models, 3)) * np.array([6.0, 3.0, 1.0])
    noise = 0.2 * rng.normal(size=(n_models, n_texts))
    return (base + weights @ directions + noise).astype(np.float32).astype(np.float64)


def _build(path, textset, keys: list[str], seed: int = 0):
    db = atlas.open(path / "atlas.duckdb")
    db.import_textset(textset, "eval")
    loglik = _vectors(len(keys), len(textset), seed)
    pl.DataFrame({"key": keys, "loglik": loglik.tolist()}).write_parquet(path / "v.parquet")
    db.import_vectors(path / "v.parquet", "eval")
    return db, loglik


@pytest.fixture(scope="module")
def world(tmp_path_factory, textset):
    db, loglik = _build(tmp_path_factory.mktemp("maps"), textset, KEYS)
    yield db, loglik
    db.close()


def _q_tilde(loglik: np.ndarray, mean_bytes: float) -> np.ndarray:
    """q̃ from first principles (method.md §3), not through atlas.kl."""
    q = loglik - loglik.mean(axis=1, keepdims=True)
    q = q - q.mean(axis=0, keepdims=True)
    return q / math.sqrt(2 * loglik.shape[1] * mean_bytes * math.log(2))


def test_pca_is_the_svd_of_q_tilde_up_to_sign(world):
    db, loglik = world
    result = db.fit_map("pca", name="pca-test")
    order = np.argsort(KEYS)
    assert result.keys == sorted(KEYS)
    q = _q_tilde(loglik[order], db.store.textset("eval").mean_bytes)
    u, s, _ = np.linalg.svd(q, full_matrices=False)
    expected = u[:, :2] * s[:2]
    for axis in range(2):
        sign = np.sign(expected[:, axis] @ result.coords[:, axis])
        np.testing.assert_allclose(result.coords[:, axis], sign * expected[:, axis],
                                   rtol=1e-9, atol=1e-12)
    ratio = result.stats["explained_variance_ratio"]
    np.testing.assert_allclose(ratio, s[:2] ** 2 / np.sum(s**2), rtol=1e-9)
    assert ratio[0] > 0.5  # the planted leading direction dominates
    # Distances in q̃ are KLs: the map's full-dimensional source agrees with the atlas's KLs.
    matrix = db.kl_matrix(result.keys, textset="eval", with_se=False)
    sq = np.sum((q[:, None, :] - q[None, :, :]) ** 2, axis=-1)
    np.testing.assert_allclose(sq, matrix.kl, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 40), (40, 12)])  # Gram route (K ≤ N) and plain SVD
def test_pca_routes_agree_with_svd_and_fix_signs(shape):
    q = np.random.default_rng(3).normal(size=shape)
    q -= q.mean(axis=0)
    coords, ratio = maps.pca_coordinates(q)
    u, s, vt = np.linalg.svd(q, full_matrices=False)
    for axis in range(2):
        loading_sign = np.sign(vt[axis, np.argmax(np.abs(vt[axis]))])
        np.testing.assert_allclose(coords[:, axis], loading_sign * u[:, axis] * s[axis],
                                   rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ratio, s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
    # the sign follows the loadings, not the solver: negating q̃ negates the loadings and the map
    np.testing.assert_allclose(maps.pca_coordinates(-q)[0], -coords, rtol=1e-12, atol=1e-12)


def test_tsne_runs_with_the_reference_parameters_and_is_deterministic(world):
    db, _ = world
    first = db.fit_map("tsne", name="tsne-a")
    again = db.fit_map("tsne", name="tsne-b")
    np.testing.assert_array_equal(first.coords, again.coords)
    assert np.isfinite(first.coords).all() and first.coords.shape == (len(KEYS), 2)
    stored = db.maps().filter(pl.col("name") == "tsne-a").row(0, named=True)
    params = json.loads(stored["params"])
    assert params["init"] == "pca" and params["random_state"] == 42
    assert params["perplexity"] == len(KEYS) - 2  # 30 lowered below n_models − 1, with a note
    assert params["n_components"] == 2 and "sklearn_version" in params
    assert "perplexity 30 lowered to 7" in stored["notes"]
    assert json.loads(stored["stats"])["kl_divergence"] >= 0
    # With init="pca" nothing in scikit-learn's t-SNE is random: the seed does not matter.
    np.testing.assert_array_equal(db.fit_map("tsne", seed=7, save=False).coords,
                                  first.coords)


def test_tsne_keeps_perplexity_30_when_there_are_enough_models():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(40, 12))
    coords, params, notes, _ = maps.fit_coordinates(q, "tsne")
    assert params["perplexity"] == 30 and params["init"] == "pca" and notes == []
    assert coords.shape == (40, 2)


def test_stored_map_round_trips_through_python_and_plain_sql(tmp_path, textset):
    db, _ = _build(tmp_path, textset, KEYS)
    result = db.fit_map("pca")
    assert result.name == "pca-eval"  # the default name: method-textset
    loaded = db.map_points("pca-eval")
    assert loaded.columns == ["key", "family", "size", "seed", "step", "x", "y"]
    assert loaded["key"].to_list() == result.keys
    np.testing.assert_array_equal(loaded.select("x", "y").to_numpy(), result.coords)
    row = loaded.filter(pl.col("key") == "pythia-70m/s1@step1000").row(0, named=True)
    assert (row["family"], row["size"], row["seed"], row["step"]) == ("pythia", "70m", 1, 1000)
    listed = db.maps().row(0, named=True)
    assert (listed["name"], listed["method"], listed["textset"], listed["n_models"],
            listed["model_where"]) == ("pca-eval", "pca", "eval", len(KEYS), None)
    assert listed["keys_hash"] == maps.keys_hash(KEYS) == result.keys_hash
    db.close()
    con = duckdb.connect(str(tmp_path / "atlas.duckdb"), read_only=True)  # no atlas code
    try:
        rows = con.execute("SELECT key, x, y FROM map_points('pca-eval')").fetchall()
        assert [r[0] for r in rows] == result.keys
        np.testing.assert_array_equal(np.array([r[1:] for r in rows]), result.coords)
        with pytest.raises(duckdb.Error, match="no map named 'nope'; stored maps: pca-eval"):
            con.execute("SELECT * FROM map_points('nope')").fetchall()
    finally:
        con.close()
    with pytest.raises(maps.MapError, match="no map named 'nope'; stored maps: pca-eval"):
        db.map_points("nope")
    db.close()


def test_replacing_a_map_replaces_its_points(world):
    db, _ = world
    db.fit_map("pca", name="replaced")
    smaller = db.fit_map("pca", where=PYTHIA, name="replaced")
    assert smaller.n_models == 6
    stored = db.sql("SELECT count(*) AS n FROM maps WHERE name = 'replaced'")["n"][0]
    points = db.sql("SELECT key FROM map_coordinates WHERE map_name = 'replaced' ORDER BY key")
    assert stored == 1 and points["key"].to_list() == smaller.keys
    row = db.maps().filter(pl.col("name") == "replaced").row(0, named=True)
    assert row["n_models"] == 6 and row["model_where"] == PYTHIA
    assert db.drop_map("replaced") and not db.drop_map("replaced")
    assert db.sql("SELECT count(*) AS n FROM map_coordinates WHERE map_name = 'replaced'"
                  )["n"][0] == 0


def test_where_selects_the_models_and_the_double_centring(world):
    db, loglik = world
    before = db.maps().height
    result = db.fit_map("pca", where=f"WHERE {PYTHIA} AND step = 1000", save=False)
    expected = sorted(k for k in KEYS if k.startswith("pythia") and k.endswith("@step1000"))
    assert result.keys == expected and result.where == f"{PYTHIA} AND step = 1000"
    rows = [KEYS.index(k) for k in expected]  # centred over the selected models only
    q = _q_tilde(loglik[rows], db.store.textset("eval").mean_bytes)
    u, s, _ = np.linalg.svd(q, full_matrices=False)
    np.testing.assert_allclose(np.abs(result.coords), np.abs(u[:, :2] * s[:2]), rtol=1e-9,
                               atol=1e-12)
    assert db.maps().height == before  # save=False stores nothing


@pytest.mark.parametrize(("where", "count"), [("family = 'llama' AND size = '7b'", 1),
                                              ("family = 'gpt2'", 0)])
def test_fewer_than_three_models_is_explained(world, where, count):
    db, _ = world
    with pytest.raises(maps.MapError, match=rf"at least 3 models; {count} model variant"):
        db.fit_map("tsne", where=where)


def test_bad_requests_are_explained(world):
    db, _ = world
    with pytest.raises(maps.MapError, match="unknown map method 'mds'; choose one of pca, tsne"):
        db.fit_map("mds")
    with pytest.raises(maps.MapError, match="maps are 2-D"):
        db.fit_map("tsne", n_components=3)
    with pytest.raises(maps.MapError, match="bad tsne parameter"):
        db.fit_map("tsne", perplexityy=5)
    with pytest.raises(maps.MapError, match="pca takes no parameters"):
        db.fit_map("pca", perplexity=5)
    with pytest.raises(AtlasError, match="bad where clause"):
        db.fit_map("pca", where="nonsense_column = 1")


@pytest.mark.slow
def test_umap_is_deterministic_and_reports_its_compile_cost(world):
    db, _ = world
    started = time.perf_counter()
    first = db.fit_map("umap", name="umap-a")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = db.fit_map("umap", name="umap-b")
    warm = time.perf_counter() - started
    print(f"\numap on {len(KEYS)} models: first fit {cold:.1f} s (numba JIT), warm {warm:.2f} s")
    np.testing.assert_array_equal(first.coords, again.coords)
    params = json.loads(db.maps().filter(pl.col("name") == "umap-a")["params"][0])
    assert params["random_state"] == 42 and params["n_neighbors"] == len(KEYS) - 1
    assert params["min_dist"] == 0.1 and "umap_version" in params
    three = db.fit_map("umap", where="family LIKE 'llama%'", save=False)
    assert three.coords.shape == (3, 2) and any("'pca'" in n for n in three.notes)
