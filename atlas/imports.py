"""Import precomputed log-likelihood vectors into a stored text set.

Formats:
- Parquet: a ``loglik`` column (list of N floats, text-set order) and either a ``key`` column or
  the key columns of ``model_variants`` (family, size, seed, quant, layer, checkpoint); optional
  n_params, parent, source, revision and provenance (a JSON object as a string, as ingest's
  pending files carry when the atlas was locked at write time). Whole numbers (seed, layer,
  n_params) are refused rather than rounded; a quant of "none" or "" is unquantized
  (atlas.keys.quant_label); a parent must be a key of the atlas or of the same file (shorthands
  resolve to the stored key), and parents are written before their children.
- The reference's pickle: a dict model name → N floats (a numpy array, a list of numpy scalars
  or of plain floats). It is read by an unpickler that allows plain containers, numbers, dates
  and what rebuilds numpy arrays, scalars and dtypes, and refuses every other class and global:
  a pickle can otherwise run arbitrary code. Names that are not keys become ``FAMILY-na`` keys
  with the non-key characters replaced by ``_``
  (``EleutherAI/pythia-70m`` → ``EleutherAI_pythia-70m``).

All rows are validated before anything is written; the vectors are then written in batches of
IMPORT_BATCH, each batch one transaction (all of it or nothing), and re-importing the same values
is a no-op. A Parquet file is read twice, a batch at a time (validated, then written), so the
import holds about one batch of vectors whatever the file's size (10⁵ × 10⁴ is 4 GB of float32).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import math
import pickle
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas.errors import ImportFormatError, InvalidKeyError, StoreError
from atlas.keys import ModelKey
from atlas.progress import progress_bar
from atlas.store import Store, VectorRecord

IMPORT_BATCH = 2048  # vectors per transaction: one Arrow insert each (~80 MB at 10k texts)
READ_VALUES = 1 << 22  # ℓ values per Parquet read batch (Arrow's list reader peaks at ~4×)

KEY_COLUMNS = ("family", "size", "seed", "quant", "layer", "checkpoint")


@dataclass
class ImportedVector:
    key: ModelKey
    loglik: np.ndarray | None  # None until read: a Parquet file's ℓ are read in batches
    fields: dict = field(default_factory=dict)  # n_params, parent, source


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (an array's raw data), and
    nothing else: another codec is refused."""
    if encoding != "latin1" or not isinstance(text, str):
        raise ImportFormatError(f"the pickle asks for _codecs.encode with {encoding!r}: only "
                                "the latin1 bytes of plain data are accepted")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """What rebuilds numpy arrays, scalars and dtypes, under the module paths of numpy 1
    (``numpy.core``) and numpy 2 (``numpy._core``), mapped to this numpy's objects (numpy 2's
    ``numpy.core`` is a deprecated shim: nothing here imports it)."""
    from numpy._core import multiarray, numeric

    found: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray,
                                            ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


SAFE_GLOBALS: dict[tuple[str, str], object] = {
    **_numpy_globals(), ("_codecs", "encode"): _latin1,
    ("datetime", "datetime"): datetime.datetime, ("datetime", "date"): datetime.date,
    ("datetime", "timedelta"): datetime.timedelta, ("datetime", "timezone"): datetime.timezone,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain containers, strings, numbers, dates and numpy arrays, scalars and dtypes
    (``SAFE_GLOBALS``: constructors that run no code of the pickle's choosing); any other class
    or global is refused, so a pickle cannot run a command while it is read."""

    def find_class(self, module: str, name: str):
        found = SAFE_GLOBALS.get((module, name))
        if found is None:
            raise ImportFormatError(
                f"the pickle asks for {module}.{name}: only plain dicts, lists and numbers are "
                "accepted (a pickle can run code). Re-save it as {name: [floats]} or as Parquet")
        return found

    def persistent_load(self, pid):
        raise ImportFormatError("the pickle uses persistent ids; only plain data is accepted")


def load_pickle(path: Path):
    """The data of a pickle file, read by ``_PlainUnpickler``; errors name the file."""
    try:
        return _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except ImportFormatError as exc:
        raise ImportFormatError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise ImportFormatError(f"{path}: not a readable pickle ({exc}); give a .parquet file "
                                "or the reference pickle (dict name → list of floats)") from None


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


def as_vector(values, where: str, n_texts: int) -> np.ndarray:
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise ImportFormatError(f"{where}: expected a list of numbers, got {type(values).__name__}")
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImportFormatError(f"{where}: values must all be numbers") from None
    if vector.ndim != 1 or vector.size != n_texts:
        raise ImportFormatError(
            f"{where}: {vector.size} values, but the text set has {n_texts} texts; import it "
            "into the text set it was scored on (--textset), one value per text in its order")
    if not np.isfinite(vector).all():
        raise ImportFormatError(f"{where}: contains NaN or inf at index "
                                f"{int(np.flatnonzero(~np.isfinite(vector))[0])}; re-score that "
                                "text or leave the model out")
    return vector


def read_pickle(path: Path, n_texts: int) -> list[ImportedVector]:
    data = load_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ImportFormatError(f"{path}: expected a dict of model name → list of floats")
    return [ImportedVector(key_from_name(name), as_vector(values, f"{path}: {name}", n_texts),
                           {"source": name})
            for name, values in data.items()]


def _integer(row: dict, column: str, where: str) -> int | None:
    """A whole-number column (seed, layer, n_params): empty is None; 1.5 or "lots" is refused,
    not rounded (a seed of 1.5 must not become s1)."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImportFormatError(f"{where}: column '{column}' is {value!r}, not a non-negative "
                                "integer; fix the value or leave it empty")
    return value


def _text(row: dict, column: str, where: str) -> str | None:
    value = row.get(column)
    if value is not None and not isinstance(value, str):
        raise ImportFormatError(f"{where}: column '{column}' is {value!r}, not a string; store "
                                "it as text or leave it empty")
    return value


def _row_key(row: dict, where: str) -> ModelKey:
    if row.get("key"):
        return ModelKey.parse(_text(row, "key", where))
    missing = [c for c in ("family", "size") if not row.get(c)]
    if missing:
        raise ImportFormatError(f"{where}: needs a key column or family and size ({missing})")
    return ModelKey(family=row["family"], size=str(row["size"]),
                    seed=_integer(row, "seed", where), quant=_text(row, "quant", where),
                    layer=_integer(row, "layer", where),
                    checkpoint=_text(row, "checkpoint", where))


def _provenance(row: dict, where: str) -> dict:
    """The ``provenance`` column: a JSON object (as ingest's pending files write it), or empty."""
    value = row.get("provenance")
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{where}: column 'provenance' is not valid JSON ({exc.msg} at "
                                f"character {exc.pos}); give a JSON object or leave it empty"
                                ) from None
    if not isinstance(parsed, dict):
        raise ImportFormatError(f"{where}: column 'provenance' must be a JSON object "
                                f"{{\"name\": value, …}}, not {value!r}; fix it or leave it empty")
    return parsed


def _parent(row: dict, where: str) -> str | None:
    parent = _text(row, "parent", where)
    if not parent:
        return None
    try:
        return str(ModelKey.parse(parent))
    except InvalidKeyError as exc:
        raise ImportFormatError(f"{where}: column 'parent': {exc}") from None


def _row_fields(row: dict, where: str) -> dict:
    return {"n_params": _integer(row, "n_params", where), "parent": _parent(row, where),
            "source": _text(row, "source", where), "revision": _text(row, "revision", where),
            "provenance": _provenance(row, where)}


def _parquet_file(path: Path):
    """The file opened to be read a batch at a time: buffered and not pre-buffered, since
    otherwise Arrow reads a whole column chunk (of a file written as one row group: all of
    it) before the first batch."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except Exception as exc:
        raise ImportFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    if "loglik" not in file.schema_arrow.names:
        raise ImportFormatError(f"{path}: needs a 'loglik' column (list of floats per model)")
    return file


class ParquetVectors:
    """A Parquet file of vectors, never held whole: ``rows`` validates every ℓ a read batch
    at a time and returns the keys and fields, ``read`` reads the ℓ of some rows again, so an
    import holds about one batch of vectors whatever the size of the file."""

    def __init__(self, path: Path, n_texts: int):
        self.path, self.n_texts, self.file = path, n_texts, _parquet_file(path)
        counts = [self.file.metadata.row_group(g).num_rows
                  for g in range(self.file.metadata.num_row_groups)]
        self.starts = np.cumsum([0, *counts])  # first row of each row group, then the end
        self.batch = max(1, min(IMPORT_BATCH, READ_VALUES // max(n_texts, 1)))

    def rows(self) -> list[ImportedVector]:
        """Every row validated (ℓ, key, fields), the ℓ not kept (``read`` gives them)."""
        for _ in self._matrices(range(len(self.starts) - 1)):
            pass  # each batch validated, then let go
        columns = [c for c in self.file.schema_arrow.names if c != "loglik"]
        rows = []
        for i, row in enumerate(self.file.read(columns=columns).to_pylist()):
            where = f"{self.path}: row {i}"
            try:
                key = _row_key(row, where)
            except InvalidKeyError as exc:
                raise ImportFormatError(f"{where}: {exc}") from None
            rows.append(ImportedVector(key, None, _row_fields(row, f"{where} ({key})")))
        return rows

    def read(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(row, ℓ) of the ``wanted`` rows in file order, reading only their row groups."""
        groups = sorted({int(np.searchsorted(self.starts, i, side="right")) - 1 for i in wanted})
        for first, matrix in self._matrices(groups):
            for offset in range(len(matrix)):
                if first + offset in wanted:
                    yield first + offset, matrix[offset]

    def _matrices(self, groups) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, validated ℓ matrix) per read batch of the row groups ``groups``."""
        for group in groups:
            first = int(self.starts[group])
            for batch in self.file.iter_batches(batch_size=self.batch, row_groups=[group],
                                                columns=["loglik"]):
                yield first, _loglik_matrix(batch.column(0), self.path, self.n_texts, first)
                first += batch.num_rows


class PickleVectors:
    """The reference pickle's vectors: a pickle is read whole, so they are held in memory."""

    def __init__(self, path: Path, n_texts: int):
        self.vectors = read_pickle(path, n_texts)

    def rows(self) -> list[ImportedVector]:
        return self.vectors

    def read(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        return ((i, v.loglik) for i, v in enumerate(self.vectors) if i in wanted)


def _loglik_matrix(column, path: Path, n_texts: int, first: int = 0) -> np.ndarray:
    """A ``loglik`` column (rows ``first`` on of the file) as a K × N float64 matrix with no
    Python object per value (a list column of numbers, N each, all finite); otherwise row by
    row, so the first bad row is named as ``as_vector`` names it."""
    import pyarrow as pa

    kind = column.type
    if ((pa.types.is_list(kind) or pa.types.is_large_list(kind)
         or pa.types.is_fixed_size_list(kind))
            and (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type))
            and column.null_count == 0):
        values = column.flatten()
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if values.null_count == 0 and (lengths == n_texts).all():
            matrix = values.to_numpy(zero_copy_only=False).astype(np.float64)
            matrix = matrix.reshape(len(column), n_texts)
            if np.isfinite(matrix).all():
                return matrix
    rows = [as_vector(column[i].as_py(), f"{path}: row {first + i}", n_texts)
            for i in range(len(column))]
    return np.stack(rows) if rows else np.empty((0, n_texts))


def _resolve_parents(store: Store, path: Path, vectors: list[ImportedVector]) -> None:
    """Each parent resolved (in place) to a key of the atlas or of this file; a cycle of
    parents in the file is refused."""
    in_file = {str(v.key): v for v in vectors}
    for vector in vectors:
        if vector.fields.get("parent") is None:
            continue
        try:
            vector.fields["parent"] = store.resolve_parent(
                vector.fields["parent"], vector.key, pending=in_file,
                fix="import the parent first or add it to this file, or leave 'parent' empty")
        except StoreError as exc:
            raise ImportFormatError(f"{path}: {vector.key}: column 'parent': {exc}") from None
    acyclic: set[str] = set()
    for vector in vectors:
        chain: dict[str, None] = {}  # the keys walked from ``vector`` up, in order
        while vector is not None and str(vector.key) not in acyclic:
            key = str(vector.key)
            if key in chain:
                walked = list(chain)
                cycle = " → ".join((*walked[walked.index(key):], key))
                raise ImportFormatError(f"{path}: parents form a cycle: {cycle}; a model "
                                        "cannot descend from itself")
            chain[key] = None
            vector = in_file.get(vector.fields.get("parent") or "")
        acyclic.update(chain)


def _in_write_order(source: ParquetVectors | PickleVectors, vectors: list[ImportedVector]
                    ) -> Iterator[ImportedVector]:
    """The vectors with their ℓ in file order, except that a child whose parent (of this
    file) comes later is put off to a later read of its rows: parents are written first."""
    index = {str(v.key): i for i, v in enumerate(vectors)}
    done: set[int] = set()
    wanted = set(range(len(vectors)))
    while wanted:
        later = set()
        for i, loglik in source.read(wanted):
            parent = index.get(vectors[i].fields.get("parent") or "")
            if parent is not None and parent not in done:
                later.add(i)
                continue
            done.add(i)
            yield dataclasses.replace(vectors[i], loglik=loglik)
        wanted = later


def _check_unique(path: Path, vectors: list[ImportedVector]) -> None:
    keys = [str(v.key) for v in vectors]
    duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)
    if duplicates:
        raise ImportFormatError(f"{path}: the same key appears twice: {', '.join(duplicates)}; "
                                "keep one row per key")


def import_vectors(store: Store, path: str | Path, textset: str, force: bool = False,
                   progress: bool = False) -> list[tuple[str, bool]]:
    """Validate every vector in the file, then write them IMPORT_BATCH at a time (with a
    progress bar if ``progress``); returns (key, written) pairs in the order written."""
    from rich.console import Console

    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file; give the path of a .parquet file or "
                                "of the reference pickle")
    stored = store.textset(textset)
    source = (ParquetVectors if path.suffix == ".parquet" else PickleVectors)(
        path, stored.n_texts)
    vectors = source.rows()
    _check_unique(path, vectors)
    _resolve_parents(store, path, vectors)
    written: list[tuple[str, bool]] = []
    with progress_bar("importing", transient=True, disable=not progress,
                      console=Console(stderr=True)) as bar:  # stdout: the command's result
        task = bar.add_task("importing", total=len(vectors))
        ordered = _in_write_order(source, vectors)
        while batch := [_record(v, path) for v in itertools.islice(ordered, IMPORT_BATCH)]:
            done = store.write_vectors(batch, textset_id=stored.textset_id, force=force)
            written += [(str(r.key), w) for r, w in zip(batch, done, strict=True)]
            bar.update(task, advance=len(batch))
    return written


def _record(vector: ImportedVector, path: Path) -> VectorRecord:
    values = vector.loglik.astype(np.float32)
    provenance = {**vector.fields.get("provenance", {}),
                  "imported_from": str(path.resolve()), "format": path.suffix.lstrip(".")}
    return VectorRecord(
        vector.key, vector.loglik,
        config_id="import-" + hashlib.sha256(values.tobytes()).hexdigest()[:16],
        provenance=provenance, n_params=vector.fields.get("n_params"),
        parent=vector.fields.get("parent"), source=vector.fields.get("source"),
        revision=vector.fields.get("revision"))
