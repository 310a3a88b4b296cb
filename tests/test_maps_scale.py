"""Maps above maps.DIRECT_MAX models (lowered here): no K × K matrix, and the same map."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from atlas.analysis import maps
from atlas.kl import scaled_coordinates


def _q(n_models: int, n_texts: int, seed: int = 0) -> np.ndarray:
    """q̃ of low-rank vectors with noise and a duplicated model (distance 0 to another)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(6, n_texts)) * np.array([8, 5, 3, 2, 1, 1])[:, None]
    loglik = -100 + rng.normal(size=(n_models, 6)) @ directions
    loglik += rng.normal(size=(n_models, n_texts))
    loglik[1] = loglik[0]
    return scaled_coordinates(loglik, 40.0)


def _peak_bytes(fit) -> int:
    tracemalloc.start()
    try:
        fit()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_subspace_pca_agrees_with_the_exact_one():
    q = _q(300, 400)
    exact, exact_ratio = maps.pca_coordinates(q)
    fast, fast_ratio = maps.pca_coordinates(q, direct_max=100)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-9 * np.abs(exact).max())
    np.testing.assert_allclose(fast_ratio, exact_ratio, rtol=1e-9)
    assert maps.pca_solver(q.shape, 100).startswith("subspace iteration")


def test_pca_above_the_threshold_holds_no_k_by_k_matrix():
    q = _q(800, 1000)
    k_by_k = 800 * 800 * 8
    assert _peak_bytes(lambda: maps.pca_coordinates(q)) > k_by_k  # the Gram matrix, below it
    assert _peak_bytes(lambda: maps.pca_coordinates(q, direct_max=100)) < k_by_k / 4


def test_nearest_neighbours_are_exact_in_blocks_and_bounded():
    q = _q(800, 1000)
    d2 = cdist(q, q, "sqeuclidean")
    np.fill_diagonal(d2, np.inf)
    index, distance = maps.nearest_neighbours(q, 10, block=32)
    nearest = np.sort(d2, axis=1)[:, :10]  # by distance: models 0 and 1 tie for everyone
    np.testing.assert_allclose(np.take_along_axis(d2, index, axis=1), nearest, rtol=1e-9)
    np.testing.assert_allclose(distance ** 2, nearest, rtol=1e-9, atol=1e-12)
    assert index[0, 0] == 1 and distance[0, 0] == pytest.approx(0, abs=1e-6)  # the duplicate
    assert _peak_bytes(lambda: maps.nearest_neighbours(q, 10, block=32)) < 800 * 800 * 8 / 4


def test_the_default_block_of_distances_is_bounded_in_bytes(monkeypatch):
    q = _q(800, 100)
    monkeypatch.setattr(maps, "BLOCK_BYTES", 32 * 800 * 8)  # 32 rows of 800 distances
    assert _peak_bytes(lambda: maps.nearest_neighbours(q, 10)) < 800 * 800 * 8 / 4


def test_tsne_on_blockwise_neighbours_sees_the_neighbours_tsne_finds_itself():
    """The graph handed to t-SNE is scikit-learn's own k-NN graph of q̃ (what it builds with
    metric="euclidean"), so the affinities are the same. The coordinates are not compared: a
    1e-15 relative change of q̃ already gives another map (t-SNE's optimisation and its
    Barnes-Hut tree amplify rounding, which differs between BLAS kernels and machines)."""
    sklearn_neighbors = pytest.importorskip("sklearn.neighbors")
    q = _q(200, 300)
    k = int(3 * maps.TSNE_PERPLEXITY + 1)
    ours = maps._neighbour_graph(q, k)
    theirs = sklearn_neighbors.NearestNeighbors(n_neighbors=k).fit(q).kneighbors_graph(
        mode="distance")
    for row in range(len(q)):  # the duplicated pair 0/1 ties with each row itself: sort values
        mine = np.sort(ours[row].data)
        np.testing.assert_allclose(mine[1:], np.sort(theirs[row].data)[-k:], rtol=1e-9,
                                   atol=1e-12)
        assert set(ours[row].indices) - {row} <= set(theirs[row].indices) | {0, 1}
    direct = maps.fit_coordinates(q, "tsne")
    blockwise = maps.fit_coordinates(q, "tsne", direct_max=100)
    assert blockwise[0].shape == (200, 2) and np.isfinite(blockwise[0]).all()
    assert blockwise[3]["kl_divergence"] < 1.5 * direct[3]["kl_divergence"]  # a converged map
    assert blockwise[1]["metric"] == "euclidean" and blockwise[1]["init"] == "pca"
    assert blockwise[1]["neighbours"] == maps.BLOCKWISE and "neighbours" not in direct[1]
    assert any("blockwise" in note for note in blockwise[2])
    assert not any("blockwise" in note for note in direct[2])


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_another_metric_above_the_threshold_is_refused(method):
    pytest.importorskip("sklearn" if method == "tsne" else "umap")
    with pytest.raises(maps.MapError, match=r"above 10 models .* drop metric='cosine'"):
        maps.fit_coordinates(_q(20, 30), method, direct_max=10, metric="cosine")


@pytest.mark.slow
def test_umap_on_blockwise_neighbours():
    pytest.importorskip("umap")
    coords, params, notes, _ = maps.fit_coordinates(_q(60, 80), "umap", direct_max=10)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert params["precomputed_knn"] == maps.BLOCKWISE
    assert notes == [maps._blockwise_note("umap", 60, 10)]  # umap's remark on transform is quiet
