"""The DuckDB store: text sets, model variants and their log-likelihood vectors.

It knows nothing of torch. Connections are short-lived: DuckDB lets one process write *or* many
read, so holding a connection only for the duration of an operation lets readers (SQL, TUI) work
while a long ingest scores, and each write of a vector is one transaction: a crash leaves either
the whole vector or nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from atlas.errors import (
    InvalidKeyError,
    LockedError,
    StoreError,
    UnknownKeyError,
    UnknownParentError,
)
from atlas.keys import ModelKey
from atlas.textsets import TextSet, check_name
from atlas.weights import WeightSketch

SCHEMA_VERSION = "1"
LOCK_RETRY_SECONDS = 10.0
PARENT_FIX = "store the parent first (atlas ingest, atlas import vectors), or drop the parent"
_LOCK_RE = re.compile(r"(Could not set lock|Conflicting lock)", re.IGNORECASE)


def sql_dir() -> Path:
    """``sql/`` beside the package in a checkout, ``atlas/_sql`` in an installed wheel."""
    packaged = resources.files("atlas") / "_sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql"


def read_sql(name: str) -> str:
    return (sql_dir() / name).read_text(encoding="utf-8")


def sql_files() -> list[str]:
    """The SQL applied on open, in order: schema.sql, macros.sql, then the others by name
    (each feature's tables and macros in its own file, e.g. analysis.sql)."""
    first = ["schema.sql", "macros.sql"]
    return first + sorted(p.name for p in sql_dir().glob("*.sql") if p.name not in first)


@dataclass(frozen=True)
class StoredTextSet:
    textset_id: int
    name: str
    content_hash: str
    n_texts: int
    mean_bytes: float


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Connect, retrying briefly while another process holds the lock, then explain it."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.ConnectionException as exc:
            raise StoreError(
                f"{path} is already open in this process with another mode (read-only vs "
                "read-write); close the other Atlas first (Atlas.close())") from exc
        except duckdb.IOException as exc:
            if not _LOCK_RE.search(str(exc)):
                raise StoreError(f"{path}: cannot open the atlas: {exc}") from exc
            if time.monotonic() > deadline:
                holder = re.search(r"PID (\d+)", str(exc))
                raise LockedError(
                    f"{path} is locked by another process"
                    + (f" (PID {holder.group(1)})" if holder else "")
                    + ", probably an ingest or an open read-write session. Wait for it to finish"
                    " and retry; nothing was changed."
                ) from exc
            time.sleep(0.25)


class Store:
    """A DuckDB atlas file.

    One connection is held while the store is used and can be released at any time (``release``)
    so that other processes can open the file, e.g. while an ingest is busy scoring.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no atlas here; create one with `atlas init`")
        if not read_only:
            with self.connect() as con:
                self._migrate(con)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The store's connection, opened on first use."""
        if self._con is None:
            self._con = _connect(self.path, self.read_only)
        yield self._con

    def release(self) -> None:
        """Close the connection (and its file lock); the next call reopens it."""
        if self._con is not None:
            self._con.close()
            self._con = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only; open it writable to change it")
        with self.connect() as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply schema and macros when the file is new or from an older atlas."""
        has_meta = first_row(
            con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'atlas_meta'")[0]
        if has_meta:
            row = first_row(con, "SELECT value FROM atlas_meta WHERE name = 'schema_version'")
            if row and row[0] == SCHEMA_VERSION and self._macros_current(con):
                return
        for name in sql_files():
            con.execute(read_sql(name))
        con.execute(
            "INSERT OR REPLACE INTO atlas_meta VALUES ('schema_version', ?), ('macros_sha', ?)",
            [SCHEMA_VERSION, _macros_sha()],
        )

    @staticmethod
    def _macros_current(con: duckdb.DuckDBPyConnection) -> bool:
        row = first_row(con, "SELECT value FROM atlas_meta WHERE name = 'macros_sha'")
        return bool(row) and row[0] == _macros_sha()

    # text sets -------------------------------------------------------------------------------
    def add_textset(self, textset: TextSet, name: str) -> tuple[StoredTextSet, bool]:
        """Store a text set under ``name``; returns (stored set, whether it was new).

        The same content under the same name is a no-op; the same name for other content, or
        the same content under another name, is an error that names the existing set.
        """
        check_name(name)
        digest = textset.content_hash
        with self.transaction() as con:
            by_name = self._textset_row(con, "name", name)
            by_hash = self._textset_row(con, "content_hash", digest)
            if by_hash is not None:
                if by_hash.name != name:
                    raise StoreError(
                        f"these texts are already stored as text set '{by_hash.name}' "
                        f"(hash {digest[:12]}); use that name")
                return by_hash, False
            if by_name is not None:
                raise StoreError(
                    f"text set '{name}' already exists with other texts "
                    f"(hash {by_name.content_hash[:12]}, N={by_name.n_texts}); choose another name")
            textset_id = first_row(
                con, "INSERT INTO textsets (name, content_hash, n_texts, mean_bytes, source) "
                "VALUES (?, ?, ?, ?, ?) RETURNING textset_id",
                [name, digest, len(textset), textset.mean_bytes, textset.source],
            )[0]
            rows = pa.table({
                "textset_id": pa.array([textset_id] * len(textset), pa.int32()),
                "idx": pa.array(range(len(textset)), pa.int32()),
                "text": textset.texts,
                "n_bytes": pa.array(textset.n_bytes, pa.int32()),
                "domain": pa.array(textset.domains, pa.string()),
                "meta": pa.array([json.dumps(m) if m else None for m in textset.metas],
                                 pa.string()),
            })
            con.register("new_texts", rows)
            con.execute("INSERT INTO texts SELECT * FROM new_texts")
            con.unregister("new_texts")
        return self.textset(name), True

    @staticmethod
    def _textset_row(con, column: str, value: str) -> StoredTextSet | None:
        row = first_row(
            con, "SELECT textset_id, name, content_hash, n_texts, mean_bytes FROM textsets "
            f"WHERE {column} = ?", [value])
        return StoredTextSet(*row) if row else None

    def textset(self, name: str) -> StoredTextSet:
        with self.connect() as con:
            found = self._textset_row(con, "name", name)
            if found is None:
                names = [r[0] for r in con.execute(
                    "SELECT name FROM textsets ORDER BY name").fetchall()]
        if found is None:
            raise StoreError(
                f"no text set named '{name}' in {self.path}"
                + (f" (have: {', '.join(names)})" if names else "")
                + "; import one with `atlas textset import FILE --name NAME`")
        return found

    def texts(self, textset_id: int) -> list[str]:
        with self.connect() as con:
            rows = con.execute("SELECT text FROM texts WHERE textset_id = ? ORDER BY idx",
                               [textset_id]).fetchall()
        return [row[0] for row in rows]

    # model variants and vectors -------------------------------------------------------------
    def needs_vector(self, key: str, textset_id: int, source: str | None, config_id: str,
                     force: bool = False) -> bool:
        """Whether a vector must be (re)written; raises on conflicts, as ``write_vector`` does."""
        with self.connect() as con:
            return self._check_conflicts(con, key, textset_id, source, config_id, force)

    def write_vector(self, key: ModelKey, *, textset_id: int, loglik: np.ndarray,
                     n_tokens: np.ndarray | None, n_truncated: int, config_id: str,
                     provenance: dict, n_params: int | None = None, parent: str | None = None,
                     source: str | None = None, revision: str | None = None,
                     force: bool = False) -> bool:
        """Write one complete vector and its variant row in one transaction.

        Returns False (and writes nothing) when the same variant, text set and config is stored
        already; raises when a different one is, unless ``force``.
        """
        loglik = np.asarray(loglik, dtype=np.float64)
        if not np.isfinite(loglik).all():
            raise StoreError(f"{key}: refusing to store a vector with NaN or inf values")
        stored = loglik.astype(np.float32)
        mean = float(stored.astype(np.float64).mean())
        with self.transaction() as con:
            if parent is not None:  # a dangling parent would break kl(key, parent) queries
                parent = self._resolve_parent(con, parent, str(key))
            n_texts = first_row(con, "SELECT n_texts FROM textsets WHERE textset_id = ?",
                                  [textset_id])[0]
            if stored.size != n_texts:
                raise StoreError(f"{key}: vector has {stored.size} values, text set has {n_texts}")
            if not self._check_conflicts(con, str(key), textset_id, source, config_id, force):
                return False
            self._upsert_model(con, key, n_params=n_params, parent=parent, source=source,
                               revision=revision)
            self._record_quantization(con, key, provenance.get("quantization"))
            con.execute("DELETE FROM vectors WHERE key = ? AND textset_id = ?",
                        [str(key), textset_id])
            con.execute(
                "INSERT INTO vectors (key, textset_id, loglik, loglik_mean, loglik_centred, "
                "n_tokens, total_tokens, n_truncated, config_id, provenance) "
                "VALUES (?, ?, ?::FLOAT[], ?, ?::DOUBLE[], ?::INTEGER[], ?, ?, ?, ?)",
                [str(key), textset_id, stored.tolist(), mean,
                 (stored.astype(np.float64) - mean).tolist(),
                 None if n_tokens is None else np.asarray(n_tokens).tolist(),
                 None if n_tokens is None else int(np.sum(n_tokens)),
                 n_truncated, config_id, json.dumps(provenance)],
            )
        return True

    @staticmethod
    def _check_conflicts(con, key: str, textset_id: int, source: str | None, config_id: str,
                         force: bool) -> bool:
        model = first_row(con, "SELECT source FROM models WHERE key = ?", [key])
        if model and source and model[0] and model[0] != source and not force:
            raise StoreError(
                f"key {key} is already taken by a model loaded from {model[0]!r}, not {source!r}; "
                "give this model another key (seed, checkpoint, quant …) or pass --force to "
                "replace it")
        vector = first_row(con, "SELECT config_id FROM vectors WHERE key = ? AND textset_id = ?",
                             [key, textset_id])
        if vector and not force:
            if vector[0] == config_id:
                return False
            raise StoreError(
                f"{key} is already scored on this text set with another scoring config "
                f"({vector[0]} vs {config_id}: dtype, max length or source differ); pass "
                "--force to replace it, or store it as another variant (e.g. --quant)")
        return True

    @staticmethod
    def _record_quantization(con, key: ModelKey, record: dict | None) -> None:
        """The ``quantizations`` row of a quantized variant (atlas.quantize.QuantSpec.record)."""
        if not record:
            return
        columns = ["method", "bits", "group_size", "qtype", "source_quant", "compute_dtype",
                   "library", "library_version"]
        con.execute(
            f"INSERT OR REPLACE INTO quantizations (key, {', '.join(columns)}) "
            f"VALUES (?{', ?' * len(columns)})",
            [str(key), *(record.get(column) for column in columns)])

    @staticmethod
    def _upsert_model(con, key: ModelKey, **fields) -> None:
        con.execute(
            "INSERT INTO models (key, family, size, n_params, seed, quant, layer, checkpoint, "
            "step, parent, source, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET n_params = coalesce(excluded.n_params, n_params), "
            "parent = coalesce(excluded.parent, parent), "
            "source = coalesce(excluded.source, source), "
            "revision = coalesce(excluded.revision, revision)",
            [str(key), key.family, key.size, fields["n_params"], key.seed, key.quant, key.layer,
             key.checkpoint, key.step, fields["parent"], fields["source"], fields["revision"]],
        )

    def resolve_parent(self, parent: str, key: ModelKey | str, pending: Collection[str] = (),
                       fix: str = PARENT_FIX) -> str:
        """The canonical key of ``key``'s parent: a stored variant (shorthands resolve) or one
        of ``pending``, keys written in the same operation (an import file, a bulk manifest)
        that the caller writes first. Raises ``UnknownParentError`` (ending in ``fix``)
        otherwise."""
        with self.connect() as con:
            return self._resolve_parent(con, parent, str(key), pending, fix)

    @staticmethod
    def _resolve_parent(con, parent: str, key: str, pending: Collection[str] = (),
                        fix: str = PARENT_FIX) -> str:
        try:
            wanted = ModelKey.parse(parent)
        except InvalidKeyError as exc:
            raise UnknownParentError(f"parent of {key}: {exc}") from None
        parent = str(wanted)
        if parent in pending:
            found = parent
        else:
            try:
                found = first_row(con, "SELECT resolve_key(?)", [parent])[0]
            except duckdb.InvalidInputException as exc:
                matches = [k for k in pending if wanted.covers(ModelKey.parse(k))]
                if len(matches) != 1 or "unknown model key" not in str(exc):
                    raise UnknownParentError(
                        f"parent {parent!r} of {key} is not a model of the atlas "
                        f"({duckdb_message(exc)}); {fix}") from None
                found = matches[0]
        if found == key:
            raise UnknownParentError(f"{key} cannot be its own parent ({parent!r})")
        return found

    def resolve(self, key: str) -> str:
        """Canonical key of a key or unambiguous shorthand (the SQL ``resolve_key`` rule)."""
        with self.connect() as con:
            try:
                return first_row(con, "SELECT resolve_key(?)", [key])[0]
            except duckdb.InvalidInputException as exc:
                raise UnknownKeyError(duckdb_message(exc)) from None

    def matrix(self, keys: list[str] | None, textset: str) -> tuple[list[str], np.ndarray, float]:
        """Raw vectors of ``keys`` (all on the text set if None) as a K × N float64 matrix."""
        stored = self.textset(textset)
        with self.connect() as con:
            query = ("SELECT key, loglik FROM vectors WHERE textset_id = ?"
                     + (" AND list_contains(?, key)" if keys is not None else "") + " ORDER BY key")
            params = [stored.textset_id] + ([keys] if keys is not None else [])
            table = con.sql(query, params=params).to_arrow_table()
        found = table.column("key").to_pylist()
        if keys is not None:
            missing = sorted(set(keys) - set(found))
            if missing:
                raise UnknownKeyError(
                    f"no vector on text set '{textset}' for: {', '.join(missing)}")
            order = {k: i for i, k in enumerate(found)}
            found, rows = keys, [order[k] for k in keys]
        else:
            rows = list(range(len(found)))
        flat = table.column("loglik").combine_chunks().flatten().to_numpy()
        matrix = flat.reshape(len(table), stored.n_texts).astype(np.float64)[rows]
        return found, matrix, stored.mean_bytes

    # weight sketches --------------------------------------------------------------------------
    def write_sketch(self, key: str | ModelKey, sketch: WeightSketch) -> None:
        """Store (or replace) the weight sketch of a stored variant, in one transaction."""
        with self.transaction() as con:
            if first_row(con, "SELECT 1 FROM models WHERE key = ?", [str(key)]) is None:
                raise UnknownKeyError(
                    f"no model variant {key} in {self.path}: store its vector first; a sketch "
                    "belongs to a variant")
            con.execute(
                "INSERT OR REPLACE INTO weight_sketches (key, method, dim, seed, layout_hash, "
                "n_params, sq_norm, sketch, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?::DOUBLE[], current_timestamp)",
                [str(key), sketch.method, sketch.dim, sketch.seed, sketch.layout_hash,
                 sketch.n_params, sketch.sq_norm, sketch.sketch.tolist()])

    def delete_sketch(self, key: str | ModelKey) -> None:
        """Forget a variant's weight sketch (its weights were replaced without a new one)."""
        with self.transaction() as con:
            con.execute("DELETE FROM weight_sketches WHERE key = ?", [str(key)])

    def sketches(self, keys: list[str] | None = None) -> dict[str, WeightSketch]:
        """The stored weight sketches of ``keys`` (canonical keys; all sketches if None)."""
        if keys is not None and not keys:
            return {}
        query = ("SELECT key, method, dim, seed, layout_hash, n_params, sq_norm, sketch "
                 "FROM weight_sketches" + (" WHERE list_contains(?, key)" if keys is not None
                                           else "") + " ORDER BY key")
        with self.connect() as con:
            try:
                table = con.sql(query, params=[keys] if keys is not None else None
                                ).to_arrow_table()
            except duckdb.CatalogException as exc:
                raise StoreError(f"{self.path} predates weight sketches; open it writable once "
                                 "(e.g. `atlas init`) to upgrade it") from exc
        column = table.column("sketch").combine_chunks()
        ends = np.cumsum(column.value_lengths().to_numpy())
        flat = column.flatten().to_numpy().astype(np.float64)
        values = np.split(flat, ends[:-1]) if len(ends) else []
        found = {}
        for row, sketch in zip(table.drop_columns("sketch").to_pylist(), values, strict=True):
            key = row.pop("key")
            found[key] = WeightSketch(sketch=sketch, **row)
        missing = [key for key in keys or [] if key not in found]
        if missing:
            raise UnknownKeyError(
                f"no weight sketch stored for: {', '.join(missing)}; weights are sketched at "
                "ingest (sketch dim > 0), re-ingest with --force to add one")
        return found if keys is None else {key: found[key] for key in keys}

    # ingest runs ------------------------------------------------------------------------------
    def start_run(self, key: str, textset: str, source: str) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.transaction() as con:
            con.execute(
                "UPDATE ingest_runs SET status = 'interrupted' "
                "WHERE key = ? AND textset = ? AND status = 'running'", [key, textset])
            con.execute(
                "INSERT INTO ingest_runs (run_id, key, textset, source, status, started_at) "
                "VALUES (?, ?, ?, ?, 'running', now())", [run_id, key, textset, source])
        return run_id

    def finish_run(self, run_id: str, status: str, *, error: str | None = None,
                   seconds: float | None = None, tokens: int | None = None) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE ingest_runs SET status = ?, error = ?, finished_at = now(), seconds = ?, "
                "tokens = ? WHERE run_id = ?", [status, error, seconds, tokens, run_id])


def first_row(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None):
    """The first row of a query (or None), with the result consumed as DuckDB 2 requires."""
    rows = con.execute(query, params).fetchall()
    return rows[0] if rows else None


def _macros_sha() -> str:
    """Hash of all SQL files: a change to any re-applies them all (new tables included)."""
    import hashlib

    text = "".join(read_sql(name) for name in sql_files())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def duckdb_message(exc: Exception) -> str:
    """The message of a DuckDB error without its 'Invalid Input Error: ' prefix."""
    return re.sub(r"^[A-Za-z ]+Error: ", "", str(exc)).strip()
