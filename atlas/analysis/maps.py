"""Maps of models (method.md §6): 2-D coordinates of the scaled double-centred q̃, stored.

    result = db.fit_map("tsne", where="layer IS NULL")   # fitted and stored as tsne-<set>
    db.maps()                                             # the stored maps
    db.map_points("tsne-default-500")                     # key, family, size, seed, step, x, y
    -- in SQL, from any DuckDB client:  SELECT * FROM map_points('tsne-default-500')

This module fits coordinates to a matrix of vectors; ``Atlas.fit_map`` reads the vectors of the
chosen models and stores the map (atlas.queries).

Every method embeds the rows of q̃ = Q / √(2 N B̄ ln 2) (atlas.kl.scaled_coordinates), whose
squared Euclidean distances are the KLs in bits/byte, so a map is a picture of the KL geometry of
the chosen models. Double centring depends on the model set: a map belongs to the set it was
fitted on, which is stored with it (text set, WHERE clause, number of models, hash of the keys).

* ``pca``: the first two principal components of q̃ (numpy alone). Signs follow scikit-learn's
  convention (the largest loading of each component over the texts is positive) so they do not
  flip between runs or machines; the explained-variance ratios are kept in ``stats``.
* ``tsne``: scikit-learn's TSNE with the reference's parameters: perplexity 30, ``init="pca"``,
  ``random_state=seed`` (42), the other parameters scikit-learn's defaults. t-SNE needs
  perplexity < n_models − 1 here, so with fewer than 32 models it is lowered to n_models − 2 (at
  least 1), and a note says so. With PCA initialisation scikit-learn's (Barnes-Hut) t-SNE draws
  nothing at random, so its result does not depend on the seed.
* ``umap`` (our addition; umap-learn): its defaults with ``random_state=seed`` (which also makes
  it single-threaded and reproducible); ``n_neighbors`` (15) is lowered to n_models − 1 for small
  sets, and with 3 models the spectral initialisation (which needs more) becomes ``init="pca"``.
  Its first fit in a process pays numba's compilation (about 20 s on a busy 2-core machine; a
  warm fit of 150 models takes 0.3 s).

Above ``DIRECT_MAX`` (2,000) models no K × K matrix and no copy of q̃ is made (at 10⁴ × 10⁴
the Gram matrix and its eigh took 8.6 min and 6.5 GB): PCA's two components come from seeded
subspace iteration (the same components as the exact path to about 1e-9 where the spectrum has
a gap), and t-SNE and UMAP run on the exact nearest neighbours of q̃, found blockwise (block ×
K distances at a time), with t-SNE's PCA start computed as scikit-learn computes it. Barnes-Hut
t-SNE and UMAP see the data only through those neighbours' distances (and their start), so the
map is the one they would fit on q̃ itself, not one of fewer principal components (which keep
neither the KLs nor the neighbours: bench/bench_maps.py); a note says which way a map was fitted.
For UMAP the exact neighbours replace the approximate ones of its NN-descent (which it uses
above 4,096 points).

Extra keyword parameters go to the estimator (e.g. ``perplexity=50``, ``n_neighbors=30``,
``min_dist=0.5``); ``params`` of the stored map holds every parameter of the fit as it ran, with
the library's version. Maps are 2-D: ``n_components`` cannot be changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from atlas.errors import AtlasError
from atlas.extras import require
from atlas.kl import scaled_coordinates, sq_distances

METHODS = ("pca", "tsne", "umap")
MIN_MODELS = 3
TSNE_PERPLEXITY = 30.0
# Up to this many models the fits see q̃ itself (eigh of the Gram matrix; scikit-learn and
# umap-learn on the K × N matrix); above it no K × K matrix and no copy of q̃ is made: PCA by
# subspace iteration, t-SNE and UMAP on exact neighbours found blockwise (same affinities).
DIRECT_MAX = 2_000
OVERSAMPLE = 20
PASSES = 7
BLOCK_BYTES = 128 << 20  # one block of squared distances in nearest_neighbours
BLOCKWISE = "exact k-NN of q̃, blockwise"  # the neighbours, in the params of such a map
UMAP_NEIGHBORS = 15
# One thread: the coordinates are the same for any thread count, and on a busy 2-core machine
# OpenMP's spinning threads made a 150-model fit 4-15x slower (1 s against 4-18 s).
TSNE_THREADS = 1
# umap's remarks that random_state makes it single-threaded and that precomputed neighbours
# leave no index for transform (a map never transforms) are expected, not news.
_QUIET = re.compile(r"n_jobs value .* overridden|random_state|knn_search_index", re.IGNORECASE)


class MapError(AtlasError):
    """A map cannot be fitted, stored or found as asked."""


@dataclass
class MapResult:
    """One fitted map: ``coords[i]`` is the (x, y) of ``keys[i]`` (keys sorted)."""

    name: str
    method: str
    textset: str
    where: str | None
    keys: list[str]
    coords: np.ndarray
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_models(self) -> int:
        return len(self.keys)

    @property
    def keys_hash(self) -> str:
        return keys_hash(self.keys)

    def to_polars(self) -> pl.DataFrame:
        """(key, x, y), one row per model."""
        return pl.DataFrame({"key": self.keys, "x": self.coords[:, 0], "y": self.coords[:, 1]})


def keys_hash(keys: list[str]) -> str:
    """SHA-256 of the sorted keys, one per line: the identity of a map's model set."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


# the fits, on a matrix ------------------------------------------------------------------------
def pca_coordinates(q: np.ndarray, direct_max: int = DIRECT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of q̃ (rows are models, columns already centred) and
    the fraction of the total variance each explains.

    Up to ``direct_max`` models with fewer models than texts (the usual case) they come from the
    K × K Gram matrix q̃ q̃ᵀ (its eigenvectors are the left singular vectors): 1,000 × 10,000
    takes about 2 s on 2 cores where a full SVD takes about 20 s. Above it the Gram matrix
    (800 MB and O(K³) at 10⁴ models) gives way to subspace iteration (``top_components``).
    Each component's sign makes its largest loading over the texts positive (scikit-learn's
    convention), so signs do not flip between runs.
    """
    u, s, vt = _svd_top2(q, direct_max)
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    coords = u * s * signs
    total = float(np.vdot(q, q))  # not np.sum(q * q): that is a K × N temporary
    ratio = (s * s / total) if total > 0 else np.zeros_like(s)
    if coords.shape[1] < 2:  # only with a single text; ≥ 3 models otherwise give rank ≥ 2
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        ratio = np.pad(ratio, (0, 2 - ratio.size))
    return coords, ratio


def pca_solver(shape: tuple[int, int], direct_max: int = DIRECT_MAX) -> str:
    """How ``pca_coordinates`` computes the components of a K × N q̃ (stored in the params)."""
    n_models, n_texts = shape
    if n_models > direct_max:
        return f"subspace iteration (rank {2 + OVERSAMPLE}, {PASSES} passes, seed 0)"
    return "eigh(q q^T)" if n_models <= n_texts else "svd(q)"


def _svd_top2(q: np.ndarray, direct_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_models, n_texts = q.shape
    if n_models > direct_max:
        u, s, vt = top_components(q)
        return u[:, :2], s[:2], vt[:2]
    if n_models <= n_texts:
        values, vectors = np.linalg.eigh(q @ q.T)
        top = np.argsort(values)[::-1][:2]
        s = np.sqrt(np.maximum(values[top], 0.0))
        u = vectors[:, top]
        return u, s, (q.T @ u).T / np.where(s > 0, s, 1.0)[:, None]
    u, s, vt = np.linalg.svd(q, full_matrices=False)
    return u[:, :2], s[:2], vt[:2]


def top_components(q: np.ndarray, rank: int = 2 + OVERSAMPLE,
                   passes: int = PASSES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leading ``rank`` singular triplets (u, s, vt) of q by randomized subspace iteration
    (Halko, Martinsson & Tropp 2011, as scikit-learn's randomized PCA): ``passes`` pairs of
    products with q, so memory is (K + N) × rank and time O(K N rank), never K × K. The first
    two are accurate to about (σ_rank / σ_2)^(2 passes + 1); the start is seeded, so the
    result is the same on every run."""
    rank = min(rank, *q.shape)
    start = np.random.default_rng(0).standard_normal((q.shape[1], rank))
    basis = np.linalg.qr(q @ start)[0]
    for _ in range(passes):
        basis = np.linalg.qr(q @ np.linalg.qr(q.T @ basis)[0])[0]
    small_u, s, vt = np.linalg.svd(basis.T @ q, full_matrices=False)
    return basis @ small_u, s, vt


def nearest_neighbours(q: np.ndarray, k: int,
                       block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row of q (K × k indices, nearest first) and their
    Euclidean distances, exact: squared distances from one block of rows at a time against all
    (block × K, by default about BLOCK_BYTES, never K × K); for q̃ the squared distances are the
    KLs in bits/byte."""
    n_models = q.shape[0]
    block = block or max(1, BLOCK_BYTES // (8 * n_models))
    norms = np.einsum("ij,ij->i", q, q)
    index = np.empty((n_models, k), dtype=np.int64)
    distance = np.empty((n_models, k))
    for start in range(0, n_models, block):
        rows = slice(start, min(n_models, start + block))
        d2 = sq_distances(q[rows], q, norms[rows], norms)
        local = np.arange(d2.shape[0])
        d2[local, start + local] = np.inf  # by index: a duplicate model is still a neighbour
        top = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(d2, top, axis=1)
        order = np.argsort(part, axis=1, kind="stable")
        index[rows] = np.take_along_axis(top, order, axis=1)
        distance[rows] = np.sqrt(np.maximum(np.take_along_axis(part, order, axis=1), 0.0))
    return index, distance


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=repr, sort_keys=True))


def _check_params(method: str, params: dict[str, Any]) -> None:
    if "n_components" in params and params["n_components"] != 2:
        raise MapError("maps are 2-D: n_components cannot be changed")
    if "random_state" in params:
        raise MapError(f"pass seed=... rather than random_state for {method}")
    if method == "pca" and params:
        raise MapError(f"pca takes no parameters (got {', '.join(sorted(params))})")


def _estimator(factory, method: str, params: dict[str, Any]):
    try:
        return factory(**params)
    except TypeError as exc:
        raise MapError(f"bad {method} parameter: {exc}") from None


def _run(estimator, q: np.ndarray, method: str, notes: list[str]) -> np.ndarray:
    """fit_transform, with its warnings turned into notes (and its errors into MapError)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            coords = estimator.fit_transform(q)
        except (ValueError, TypeError) as exc:
            raise MapError(f"{method} failed on {q.shape[0]} models: {exc}") from None
    for warning in caught:
        text = str(warning.message).strip()
        if text and not _QUIET.search(text) and text not in notes:
            notes.append(f"{method}: {text}")
    return np.asarray(coords, dtype=np.float64)


def tsne_coordinates(q: np.ndarray, seed: int = 42, direct_max: int = DIRECT_MAX,
                     **params) -> tuple[np.ndarray, dict, list, dict]:
    """t-SNE with the reference's parameters: (coords, params as run, notes, stats). Above
    ``direct_max`` models it runs on the exact neighbour graph of q̃ (``_neighbour_graph``)
    with the PCA initialisation scikit-learn would compute, which is the same fit: Barnes-Hut
    t-SNE sees the data only through those neighbours' distances and its start."""
    require("a t-SNE map (or use method 'pca', which needs no extra)", "sklearn")
    import sklearn
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n_models = q.shape[0]
    notes: list[str] = []
    chosen = {"n_components": 2, "perplexity": TSNE_PERPLEXITY, "init": "pca",
              "random_state": seed, **params}
    limit = n_models - 1
    if chosen["perplexity"] >= limit:
        lowered = float(max(1, n_models - 2))
        notes.append(f"tsne: perplexity {chosen['perplexity']:g} lowered to {lowered:g}: it must "
                     f"be below n_models - 1 = {limit} ({n_models} models)")
        chosen["perplexity"] = lowered
    data, run, shown = q, chosen, {}
    if n_models > direct_max:
        _check_euclidean("tsne", chosen, direct_max)
        k = min(n_models - 1, int(3.0 * chosen["perplexity"] + 1))  # scikit-learn's count
        data = _neighbour_graph(q, k)
        shown = {"metric": "euclidean", "init": chosen["init"], "neighbours": BLOCKWISE}
        run = {**chosen, "metric": "precomputed", "init": _tsne_init(q, chosen["init"])}
        notes.append(_blockwise_note("tsne", n_models, direct_max))
    estimator = _estimator(TSNE, "tsne", run)
    with threadpool_limits(limits=TSNE_THREADS):
        coords = _run(estimator, data, "tsne", notes)
    used = {**estimator.get_params(), **shown, "sklearn_version": sklearn.__version__}
    stats = {"kl_divergence": float(estimator.kl_divergence_), "n_iter": int(estimator.n_iter_)}
    return coords, _jsonable(used), notes, stats


def _check_euclidean(method: str, chosen: dict[str, Any], direct_max: int) -> None:
    if chosen.get("metric", "euclidean") != "euclidean":
        raise MapError(f"{method} above {direct_max} models runs on the exact Euclidean "
                       f"neighbours of q̃ (whose squares are the KLs): drop "
                       f"metric={chosen['metric']!r}")


def _blockwise_note(method: str, n_models: int, direct_max: int) -> str:
    return (f"{method}: {n_models} models (more than {direct_max}): fitted on the exact nearest "
            "neighbours of q̃, found blockwise, not on the K × N matrix (same affinities, "
            "bounded memory)")


def _with_self(index: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's own index first, at distance 0, as k-NN graphs of scikit-learn and umap-learn
    count it."""
    itself = np.arange(index.shape[0])[:, None]
    return np.hstack([itself, index]), np.hstack([np.zeros(itself.shape), distance])


def _neighbour_graph(q: np.ndarray, k: int):
    """The k-nearest-neighbour distances of q̃ as the sparse graph scikit-learn's
    ``metric="precomputed"`` takes (K × K, each row itself and its k neighbours)."""
    from scipy.sparse import csr_matrix

    index, distance = _with_self(*nearest_neighbours(q, k))
    n_models, width = index.shape
    return csr_matrix((distance.ravel(), index.ravel(), np.arange(0, n_models * width + 1,
                                                                  width)),
                      shape=(n_models, n_models))


def _tsne_init(q: np.ndarray, init: Any) -> Any:
    """scikit-learn's ``init="pca"`` (which it refuses with precomputed distances): the first
    two principal components, rescaled so the first has standard deviation 1e-4."""
    if not (isinstance(init, str) and init == "pca"):
        return init
    coords = pca_coordinates(q, direct_max=0)[0].astype(np.float32)
    return coords / np.std(coords[:, 0]) * 1e-4


def umap_coordinates(q: np.ndarray, seed: int = 42, direct_max: int = DIRECT_MAX,
                     **params) -> tuple[np.ndarray, dict, list, dict]:
    """UMAP (umap-learn defaults, random_state=seed): (coords, params as run, notes, stats).
    Above ``direct_max`` models its neighbours are the exact ones of q̃, found blockwise,
    rather than its approximate search over the K × N matrix."""
    require("a UMAP map (or use method 'pca', which needs no extra)", "umap")
    import umap

    n_models = q.shape[0]
    notes: list[str] = []
    chosen = {"n_components": 2, "n_neighbors": UMAP_NEIGHBORS, "random_state": seed, **params}
    if chosen["n_neighbors"] > n_models - 1:
        lowered = max(2, n_models - 1)
        notes.append(f"umap: n_neighbors {chosen['n_neighbors']} lowered to {lowered} "
                     f"({n_models} models)")
        chosen["n_neighbors"] = lowered
    if n_models <= 3 and chosen.get("init", "spectral") == "spectral":
        # the spectral layout needs more points than n_components + 1 eigenvectors
        notes.append(f"umap: init 'spectral' replaced by 'pca' ({n_models} models)")
        chosen["init"] = "pca"
    run, shown = chosen, {}
    if n_models > direct_max:
        _check_euclidean("umap", chosen, direct_max)
        index, distance = _with_self(*nearest_neighbours(q, chosen["n_neighbors"] - 1))
        run = {**chosen, "precomputed_knn": (index, distance, None)}
        shown = {"precomputed_knn": BLOCKWISE}
        notes.append(_blockwise_note("umap", n_models, direct_max))
    estimator = _estimator(umap.UMAP, "umap", run)
    coords = _run(estimator, q, "umap", notes)
    used = {**estimator.get_params(), **shown, "umap_version": umap.__version__}
    return coords, _jsonable(used), notes, {}


def fit_coordinates(q: np.ndarray, method: str, seed: int = 42, direct_max: int = DIRECT_MAX,
                    **params) -> tuple[np.ndarray, dict, list, dict]:
    """2-D coordinates of the rows of ``q``: (coords, params as run, notes, stats). Above
    ``direct_max`` models nothing K × K and no copy of ``q`` is made (see DIRECT_MAX)."""
    method = _method(method)
    _check_params(method, params)
    params = {k: v for k, v in params.items() if k != "n_components"}
    if q.shape[0] < MIN_MODELS:
        raise MapError(f"a map needs at least {MIN_MODELS} models, got {q.shape[0]}")
    if method == "pca":
        coords, ratio = pca_coordinates(q, direct_max)
        return (coords, {"n_components": 2, "solver": pca_solver(q.shape, direct_max)}, [],
                {"explained_variance_ratio": [float(r) for r in ratio]})
    if method == "tsne":
        return tsne_coordinates(q, seed, direct_max, **params)
    return umap_coordinates(q, seed, direct_max, **params)


def _method(method: str) -> str:
    name = str(method).lower().replace("-", "")
    if name not in METHODS:
        raise MapError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    return name


# fitting -----------------------------------------------------------------------------------------
def check_request(method: str, params: dict[str, Any]) -> str:
    """The method's canonical name, once the method and its parameters are known to be valid
    (before anything is read)."""
    method = _method(method)
    _check_params(method, params)
    return method


def require_models(n_models: int, scope: str) -> None:
    """Refuse a selection too small to map (``scope`` says which, e.g. "on text set 'eval'")."""
    if n_models < MIN_MODELS:
        raise MapError(f"a map needs at least {MIN_MODELS} models; {n_models} model "
                       f"variant(s) {scope}")


def fit_map(keys: list[str], loglik: np.ndarray, mean_bytes: float, *, method: str,
            textset: str, where: str | None, name: str | None = None, seed: int = 42,
            overwrite: bool = False, direct_max: int = DIRECT_MAX, **params) -> MapResult:
    """A map of the models ``keys`` (the rows of ``loglik``, on ``textset``, chosen by
    ``where``) named ``name``, by default ``{method}-{textset}``. ``Atlas.fit_map`` reads the
    vectors and stores the result. ``overwrite``: q̃ is computed in ``loglik``'s memory (a
    float64 K × N is 800 MB at 10⁴ × 10⁴), which the caller then no longer has."""
    q = scaled_coordinates(loglik, mean_bytes, overwrite=overwrite)
    started = time.perf_counter()
    coords, used, notes, stats = fit_coordinates(q, method, seed, direct_max, **params)
    method = _method(method)
    return MapResult(name=name or f"{method}-{textset}", method=method, textset=textset,
                     where=where, keys=list(keys), coords=coords, params=used, notes=notes,
                     stats=stats, seconds=time.perf_counter() - started)
