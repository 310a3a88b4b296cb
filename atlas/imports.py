"""Import precomputed log-likelihood vectors into a stored text set.

Formats:
- Parquet: a ``loglik`` column (list of N floats, text-set order) and either a ``key`` column or
  the key columns of ``model_variants`` (family, size, seed, quant, layer, checkpoint); optional
  n_params, parent, source, revision and provenance (a JSON string, as ingest's pending files
  carry when the atlas was locked at write time).
- The reference's pickle: a dict model name → list of N floats. It is read by an unpickler that
  refuses every class and global, so only plain containers and numbers get through: a pickle can
  otherwise run arbitrary code. Names that are not keys become ``FAMILY-na`` keys with the
  non-key characters replaced by ``_`` (``EleutherAI/pythia-70m`` → ``EleutherAI_pythia-70m``).

All rows are validated before anything is written; each vector is then written atomically, and
re-importing the same values is a no-op.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas.errors import ImportFormatError, InvalidKeyError
from atlas.keys import ModelKey
from atlas.store import Store

KEY_COLUMNS = ("family", "size", "seed", "quant", "layer", "checkpoint")


@dataclass
class ImportedVector:
    key: ModelKey
    loglik: np.ndarray
    fields: dict = field(default_factory=dict)  # n_params, parent, source


class _PlainUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, tuples, strings and numbers; any class or global is refused."""

    def find_class(self, module: str, name: str):
        raise ImportFormatError(
            f"the pickle asks for {module}.{name}: only plain dicts, lists and numbers are "
            "accepted (a pickle can run code). Re-save it as {name: [floats]} or as Parquet")

    def persistent_load(self, pid):
        raise ImportFormatError("the pickle uses persistent ids; only plain data is accepted")


def key_from_name(name: str) -> ModelKey:
    """A key for a free-form model name: the name itself if it is a key, else a sanitised one."""
    try:
        return ModelKey.parse(name)
    except InvalidKeyError:
        cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("-") or "model"
        try:
            return ModelKey.parse(cleaned)
        except InvalidKeyError:
            return ModelKey(family=cleaned, size="na")


def _as_vector(values, where: str, n_texts: int) -> np.ndarray:
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise ImportFormatError(f"{where}: expected a list of numbers, got {type(values).__name__}")
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImportFormatError(f"{where}: values must all be numbers") from None
    if vector.ndim != 1 or vector.size != n_texts:
        raise ImportFormatError(
            f"{where}: {vector.size} values, but the text set has {n_texts} texts")
    if not np.isfinite(vector).all():
        raise ImportFormatError(f"{where}: contains NaN or inf at index "
                                f"{int(np.flatnonzero(~np.isfinite(vector))[0])}")
    return vector


def read_pickle(path: Path, n_texts: int) -> list[ImportedVector]:
    try:
        data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except ImportFormatError as exc:
        raise ImportFormatError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ImportFormatError(f"{path}: not a readable pickle ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ImportFormatError(f"{path}: expected a dict of model name → list of floats")
    return [ImportedVector(key_from_name(name), _as_vector(values, f"{path}: {name}", n_texts),
                           {"source": name})
            for name, values in data.items()]


def _row_key(row: dict, where: str) -> ModelKey:
    if row.get("key"):
        return ModelKey.parse(row["key"])
    missing = [c for c in ("family", "size") if not row.get(c)]
    if missing:
        raise ImportFormatError(f"{where}: needs a key column or family and size ({missing})")
    seed, layer = row.get("seed"), row.get("layer")
    return ModelKey(family=row["family"], size=str(row["size"]),
                    seed=None if seed is None or (isinstance(seed, float) and math.isnan(seed))
                    else int(seed),
                    quant=row.get("quant"), layer=None if layer is None else int(layer),
                    checkpoint=row.get("checkpoint"))


def read_parquet(path: Path, n_texts: int) -> list[ImportedVector]:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise ImportFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    if "loglik" not in frame.columns:
        raise ImportFormatError(f"{path}: needs a 'loglik' column (list of floats per model)")
    vectors = []
    for i, row in enumerate(frame.iter_rows(named=True)):
        where = f"{path}: row {i}"
        try:
            key = _row_key(row, where)
        except InvalidKeyError as exc:
            raise ImportFormatError(f"{where}: {exc}") from None
        extra = {name: row.get(name)
                 for name in ("n_params", "parent", "source", "revision", "provenance")}
        vectors.append(ImportedVector(key, _as_vector(row["loglik"], where, n_texts), extra))
    return vectors


def import_vectors(store: Store, path: str | Path, textset: str,
                   force: bool = False) -> list[tuple[str, bool]]:
    """Validate every vector in the file, then write each; returns (key, written) pairs."""
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    stored = store.textset(textset)
    reader = read_parquet if path.suffix == ".parquet" else read_pickle
    vectors = reader(path, stored.n_texts)
    keys = [str(v.key) for v in vectors]
    duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)
    if duplicates:
        raise ImportFormatError(f"{path}: the same key appears twice: {', '.join(duplicates)}")
    results = []
    for vector in vectors:
        values = vector.loglik.astype(np.float32)
        config_id = "import-" + hashlib.sha256(values.tobytes()).hexdigest()[:16]
        provenance = {**json.loads(vector.fields.get("provenance") or "{}"),
                      "imported_from": str(path.resolve()), "format": path.suffix.lstrip(".")}
        written = store.write_vector(
            vector.key, textset_id=stored.textset_id, loglik=vector.loglik, n_tokens=None,
            n_truncated=0, config_id=config_id, provenance=provenance,
            n_params=vector.fields.get("n_params"), parent=vector.fields.get("parent"),
            source=vector.fields.get("source"), revision=vector.fields.get("revision"),
            force=force)
        results.append((str(vector.key), written))
    return results
