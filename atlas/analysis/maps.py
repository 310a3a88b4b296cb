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
from atlas.kl import scaled_coordinates

METHODS = ("pca", "tsne", "umap")
MIN_MODELS = 3
TSNE_PERPLEXITY = 30.0
UMAP_NEIGHBORS = 15
# One thread: the coordinates are the same for any thread count, and on a busy 2-core machine
# OpenMP's spinning threads made a 150-model fit 4-15x slower (1 s against 4-18 s).
TSNE_THREADS = 1
# umap's remark that random_state makes it single-threaded is expected, not news.
_QUIET = re.compile(r"n_jobs value .* overridden|random_state", re.IGNORECASE)


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
def pca_coordinates(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of q̃ (rows are models, columns already centred) and
    the fraction of the total variance each explains.

    With fewer models than texts (the usual case) they come from the K × K Gram matrix q̃ q̃ᵀ
    (its eigenvectors are the left singular vectors): 1,000 × 10,000 takes about 2 s on 2 cores
    where a full SVD takes about 20 s. Each component's sign makes its largest loading over the
    texts positive (scikit-learn's convention), so signs do not flip between runs.
    """
    n_models, n_texts = q.shape
    if n_models <= n_texts:
        values, vectors = np.linalg.eigh(q @ q.T)
        top = np.argsort(values)[::-1][:2]
        s = np.sqrt(np.maximum(values[top], 0.0))
        u = vectors[:, top]
        vt = (q.T @ u).T / np.where(s > 0, s, 1.0)[:, None]
    else:
        u, s, vt = np.linalg.svd(q, full_matrices=False)
        u, s, vt = u[:, :2], s[:2], vt[:2]
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    coords = u * s * signs
    total = float(np.sum(q * q))
    ratio = (s * s / total) if total > 0 else np.zeros_like(s)
    if coords.shape[1] < 2:  # only with a single text; ≥ 3 models otherwise give rank ≥ 2
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        ratio = np.pad(ratio, (0, 2 - ratio.size))
    return coords, ratio


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


def tsne_coordinates(q: np.ndarray, seed: int = 42, **params) -> tuple[np.ndarray, dict, list,
                                                                         dict]:
    """t-SNE with the reference's parameters: (coords, params as run, notes, stats)."""
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
    estimator = _estimator(TSNE, "tsne", chosen)
    with threadpool_limits(limits=TSNE_THREADS):
        coords = _run(estimator, q, "tsne", notes)
    used = {**estimator.get_params(), "sklearn_version": sklearn.__version__}
    stats = {"kl_divergence": float(estimator.kl_divergence_), "n_iter": int(estimator.n_iter_)}
    return coords, _jsonable(used), notes, stats


def umap_coordinates(q: np.ndarray, seed: int = 42, **params) -> tuple[np.ndarray, dict, list,
                                                                         dict]:
    """UMAP (umap-learn defaults, random_state=seed): (coords, params as run, notes, stats)."""
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
    estimator = _estimator(umap.UMAP, "umap", chosen)
    coords = _run(estimator, q, "umap", notes)
    used = {**estimator.get_params(), "umap_version": umap.__version__}
    return coords, _jsonable(used), notes, {}


def fit_coordinates(q: np.ndarray, method: str, seed: int = 42,
                    **params) -> tuple[np.ndarray, dict, list, dict]:
    """2-D coordinates of the rows of ``q``: (coords, params as run, notes, stats)."""
    method = _method(method)
    _check_params(method, params)
    params = {k: v for k, v in params.items() if k != "n_components"}
    if q.shape[0] < MIN_MODELS:
        raise MapError(f"a map needs at least {MIN_MODELS} models, got {q.shape[0]}")
    if method == "pca":
        coords, ratio = pca_coordinates(q)
        solver = "eigh(q q^T)" if q.shape[0] <= q.shape[1] else "svd(q)"
        return (coords, {"n_components": 2, "solver": solver}, [],
                {"explained_variance_ratio": [float(r) for r in ratio]})
    if method == "tsne":
        return tsne_coordinates(q, seed, **params)
    return umap_coordinates(q, seed, **params)


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
            **params) -> MapResult:
    """A map of the models ``keys`` (the rows of ``loglik``, on ``textset``, chosen by
    ``where``) named ``name``, by default ``{method}-{textset}``. ``Atlas.fit_map`` reads the
    vectors and stores the result."""
    q = scaled_coordinates(loglik, mean_bytes)
    started = time.perf_counter()
    coords, used, notes, stats = fit_coordinates(q, method, seed, **params)
    method = _method(method)
    return MapResult(name=name or f"{method}-{textset}", method=method, textset=textset,
                     where=where, keys=list(keys), coords=coords, params=used, notes=notes,
                     stats=stats, seconds=time.perf_counter() - started)
