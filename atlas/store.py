"""The DuckDB store: text sets, model variants and their log-likelihood vectors.

It knows nothing of torch. Connections are short-lived: DuckDB lets one process write *or* many
read, so holding a connection only for the duration of an operation lets readers (SQL, TUI) work
while a long ingest scores, and each write of a vector is one transaction: a crash leaves either
the whole vector or nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
import pyarrow.compute as pc

from atlas.errors import (
    DamagedError,
    InvalidKeyError,
    LockedError,
    NoSpaceError,
    StoreError,
    UnknownKeyError,
    UnknownParentError,
)
from atlas.keys import KEY_FIELDS, KEY_PATTERN, SIZE_PATTERN, SIZE_UNITS, ModelKey
from atlas.sketches import (
    BASIS_MIN,
    RESID_BOUND,
    RESID_DIM,
    SKETCH_DIM,
    SketchBasis,
    draw_projection,
    vector_columns,
)
from atlas.textsets import TextSet, check_name
from atlas.weights import WeightSketch

SCHEMA_VERSION = "4"  # 2: no DOUBLE centred copy, sketches; 3: ℓ in parts; 4: residual sketches
LOGLIK_PART = 256  # values per row of vector_parts (its FLOAT[LOGLIK_PART], SQL_CONSTANTS)
PART_BATCH = 65_536  # parts (64 MB of ℓ) per Arrow batch when whole vectors are read
UPGRADE_BATCH = 2048  # vectors moved into parts, or sketched, per step of an upgrade
LOCK_RETRY_SECONDS = 10.0
PARENT_FIX = "store the parent first (atlas ingest, atlas import vectors), or drop the parent"
_LOCK_RE = re.compile(r"(Could not set lock|Conflicting lock)", re.IGNORECASE)


def sql_dir() -> Path:
    """``sql/`` beside the package in a checkout, ``atlas/_sql`` in an installed wheel."""
    packaged = resources.files("atlas") / "_sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql"


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (a constant written into the SQL, or a condition a user
    sees and may edit)."""
    return "'" + text.replace("'", "''") + "'"


# What the SQL files name as {{NAME}}, filled in as they are read: the rules that Python needs
# too, so each has one copy (the key grammar and size labels of atlas.keys, the widths of a
# vector part and of the sketches, the residual bound of atlas.sketches).
SQL_CONSTANTS = {"KEY_PATTERN": sql_literal(KEY_PATTERN),
                 "KEY_FIELDS": "[" + ", ".join(map(sql_literal, KEY_FIELDS)) + "]",
                 "SIZE_PATTERN": sql_literal(SIZE_PATTERN), "SIZE_UNITS": sql_literal(SIZE_UNITS),
                 "LOGLIK_PART": str(LOGLIK_PART), "SKETCH_DIM": str(SKETCH_DIM),
                 "RESID_DIM": str(RESID_DIM), "RESID_BOUND": repr(RESID_BOUND)}


def read_sql(name: str) -> str:
    """An SQL file as it is applied: its {{NAME}}s replaced by ``SQL_CONSTANTS``."""
    text = (sql_dir() / name).read_text(encoding="utf-8")
    for constant, value in SQL_CONSTANTS.items():
        text = text.replace("{{" + constant + "}}", value)
    return text


def sql_files() -> list[str]:
    """The SQL applied on open, in order: schema.sql, views.sql, macros.sql, then the others by
    name (each feature's tables and macros in its own file, e.g. analysis.sql). DuckDB binds a
    macro when it is created, so what a file calls comes first: kl and nearest take a view."""
    first = ["schema.sql", "views.sql", "macros.sql"]
    return first + sorted(p.name for p in sql_dir().glob("*.sql") if p.name not in first)


# Tables a batched write may fill beside the vectors (rows replaced by primary key).
BATCH_TABLES = ("hub_models", "model_lineage", "metric_values", "views")


@dataclass(frozen=True)
class StoredTextSet:
    textset_id: int
    name: str
    content_hash: str
    n_texts: int
    mean_bytes: float


@dataclass
class VectorRecord:
    """One vector to store and its variant's fields (``Store.write_vectors``); a scored one
    also names its text set and carries its model's weight sketch, or why there is none
    (atlas.pipeline; a bulk shard and a pending file are its Parquet form)."""

    key: ModelKey
    loglik: np.ndarray
    config_id: str
    provenance: dict
    n_tokens: np.ndarray | None = None
    n_truncated: int = 0
    n_params: int | None = None
    parent: str | None = None
    source: str | None = None
    revision: str | None = None
    textset: str | None = None
    sketch: WeightSketch | None = None
    sketch_note: str | None = None  # why no sketch (disabled, quantized weights …); not stored


def _sketch_array(sketch: np.ndarray | None, rows: int, width: int = SKETCH_DIM) -> pa.Array:
    """A sketch column (K × width float32) as Arrow, NULLs where there is none."""
    kind = pa.list_(pa.float32(), width)
    if sketch is None:
        return pa.nulls(rows, kind)
    return pa.FixedSizeListArray.from_arrays(pa.array(sketch.ravel()), width)


def _parts_table(vids: np.ndarray, loglik: np.ndarray) -> pa.Table:
    """The vector_parts rows of K vectors (K × N float32): each cut into LOGLIK_PART values a
    row, its last part padded with zeros."""
    rows, n_texts = loglik.shape
    n_parts = -(-n_texts // LOGLIK_PART)
    padded = np.zeros((rows, n_parts * LOGLIK_PART), dtype=np.float32)
    padded[:, :n_texts] = loglik
    return pa.table({
        "vid": np.repeat(np.asarray(vids, dtype=np.int64), n_parts),
        "part": np.tile(np.arange(n_parts, dtype=np.int32), rows),
        "loglik": pa.FixedSizeListArray.from_arrays(pa.array(padded.ravel()), LOGLIK_PART)})


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table) -> Iterator[None]:
    """``rows`` (an Arrow table) visible to SQL as ``name`` for the block, even if it fails."""
    con.register(name, rows)
    try:
        yield
    finally:
        con.unregister(name)


def _keys_table(con: duckdb.DuckDBPyConnection,
                keys: list[str]) -> contextlib.AbstractContextManager[None]:
    """``keys`` as the table ``atlas_keys`` (key) for queries to join: a hash join, where
    ``list_contains(?, key)`` compares every row with every key (hours at 10⁶ models)."""
    return registered(con, "atlas_keys", pa.table({"key": pa.array(keys, pa.string())}))


def _rows_of_keys(con: duckdb.DuckDBPyConnection, query: str, keys: list[str],
                  params: list | None = None) -> list[tuple]:
    """The rows of ``query``, which joins ``atlas_keys`` (``_keys_table``)."""
    with _keys_table(con, keys):
        return con.execute(query, params).fetchall()


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """One INSERT of an Arrow table's rows (by column name)."""
    with registered(con, "atlas_arrow_rows", rows):
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM atlas_arrow_rows")


def _model_row(record: VectorRecord) -> dict:
    key = record.key
    return {"key": str(key), "family": key.family, "size": key.size,
            "n_params": record.n_params, "seed": key.seed, "quant": key.quant,
            "layer": key.layer, "checkpoint": key.checkpoint, "step": key.step,
            "parent": record.parent, "source": record.source, "revision": record.revision}


@dataclass(frozen=True)
class StoredStates:
    """Of some keys on one text set: the source each variant was loaded from, and the config
    each stored vector was scored with (keys absent: nothing stored)."""

    sources: dict[str, str | None]
    configs: dict[str, str]


def _stored_states(con: duckdb.DuckDBPyConnection, keys: list[str],
                   textset_id: int) -> StoredStates:
    rows = _rows_of_keys(con, "SELECT m.key, m.source, v.config_id FROM models m "
                              "JOIN atlas_keys USING (key) LEFT JOIN vector_rows v "
                              "ON v.key = m.key AND v.textset_id = ?", keys, [textset_id])
    return StoredStates({key: source for key, source, _ in rows},
                        {key: config for key, _, config in rows if config is not None})


def needs_writing(key: str, source: str | None, config_id: str, stored: StoredStates,
                  force: bool = False) -> bool:
    """Whether to write ``key``'s vector given what is stored; raises on a conflict."""
    stored_source, stored_config = stored.sources.get(key), stored.configs.get(key)
    if stored_source and source and stored_source != source and not force:
        raise StoreError(
            f"key {key} is already taken by a model loaded from {stored_source!r}, not "
            f"{source!r}; give this model another key (seed, checkpoint, quant …) or pass "
            "--force to replace it")
    if stored_config is not None and not force:
        if stored_config == config_id:
            return False
        raise StoreError(
            f"{key} is already scored on this text set with another scoring config "
            f"({stored_config} vs {config_id}: dtype, max length or source differ); pass "
            "--force to replace it, or store it as another variant (e.g. --quant)")
    return True


# A read-only session reads its own file and nothing else: no other file (COPY TO, read_csv,
# ATTACH of another atlas or of a hard link to this one), no extension download or load, and
# no SET that would undo it (DuckDB refuses to re-enable external access once running).
READ_ONLY_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}
HEADER_BYTES = 3 * 4096  # DuckDB's file header and its two database headers, before block 0
_DAMAGED_RE = re.compile(
    r"Corrupt database file|checksum|Could not read enough bytes|not a valid DuckDB database",
    re.IGNORECASE)
_NO_SPACE_RE = re.compile(r"No space left on device|File too large|Disk quota exceeded",
                          re.IGNORECASE)
_UNWRITABLE_RE = re.compile(r"Permission denied|Read-only file system|Operation not permitted",
                            re.IGNORECASE)


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Connect, retrying briefly while another process holds the lock, then explain it."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only,
                                  config=READ_ONLY_CONFIG if read_only else {})
        except duckdb.ConnectionException as exc:
            raise StoreError(
                f"{path} is already open in this process with another mode (read-only vs "
                "read-write); close the other Atlas first (Atlas.close())") from exc
        except duckdb.IOException as exc:
            if not _LOCK_RE.search(str(exc)):
                raise _classify(path, exc, read_only) or StoreError(
                    f"{path}: cannot open the atlas: {duckdb_message(exc)}") from exc
            if time.monotonic() > deadline:
                holder = re.search(r"PID (\d+)", str(exc))
                raise LockedError(
                    f"{path} is locked by another process"
                    + (f" (PID {holder.group(1)})" if holder else "")
                    + ", probably an ingest or an open read-write session. Wait for it to finish"
                    " and retry; nothing was changed."
                ) from exc
            time.sleep(0.25)


def _classify(path: Path, exc: duckdb.Error, read_only: bool) -> StoreError | None:
    """The StoreError a user can act on for a DuckDB error about the file itself (damage, no
    space, no write permission, a read-only session reaching outside); None for others."""
    message = duckdb_message(exc)
    if "not a valid DuckDB database" in message:
        return StoreError(f"{path} is not an atlas: the file exists but is not a DuckDB database; "
                          "point --db at an atlas file, or give `atlas init` a new path")
    if _DAMAGED_RE.search(message):
        return damaged(path, message)
    if _NO_SPACE_RE.search(message):
        return NoSpaceError(
            f"no space to write {path} ({message}); free space on that disk (or raise the file "
            "size limit) and re-run: what the atlas held before is intact")
    if _UNWRITABLE_RE.search(message):
        return StoreError(
            f"{path} cannot be written ({message}); reading commands (models, kl, nearest, "
            "sql without --write, tui) still work: to change it, fix its permissions or copy "
            "it somewhere writable")
    if read_only and "read-only mode" in message:
        return StoreError(f"{message}: {path} is open read-only; to change the atlas, use "
                          "`atlas sql --write` (or open it with read_only=False)")
    if "No such file or directory" in message:
        return StoreError(f"{path}: its folder {path.parent} does not exist; create the folder "
                          "first, or choose another path")
    if read_only and isinstance(exc, duckdb.PermissionException):
        return StoreError(
            f"{message}: {path} is open read-only, and a read-only session reads only the atlas "
            "itself (no other files, databases, COPY TO or extensions); export a result with "
            "`atlas sql QUERY --format csv > FILE` or the TUI's export (ctrl+s), or use "
            "`atlas sql --write` for DuckDB's full access")
    return None


def damaged(path: Path, detail: str) -> DamagedError:
    """The message for a damaged atlas file: what, where, and how to get a good one back."""
    return DamagedError(
        f"{path} is damaged ({detail}); nothing was written to it. Restore it from a backup, or "
        "re-create it: `atlas --db NEW.duckdb init`, then re-import the text sets and vectors "
        "(`atlas textset import`, `atlas import vectors`) or re-ingest the models")


class Store:
    """A DuckDB atlas file.

    One connection is held while the store is used and can be released at any time (``release``)
    so that other processes can open the file, e.g. while an ingest is busy scoring.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        self._verified = False  # every block read once (writers, before their first write)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not an atlas file; point --db at the "
                             f".duckdb file (e.g. {self.path / 'atlas.duckdb'})")
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no atlas here; create one with `atlas init`")
        if not read_only:
            with self.connect() as con:
                self._migrate(con)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The store's connection, opened (and checked) on first use; a DuckDB error about the
        file comes out as a StoreError that names it."""
        if self._con is None:
            self._con = self._open()
        try:
            yield self._con
        except duckdb.Error as exc:
            raise self.error(exc) from exc

    def _open(self) -> duckdb.DuckDBPyConnection:
        """Connect; refuse a truncated file, and before the first write a file with a bad
        block, so that nothing is ever added to a damaged atlas."""
        con = _connect(self.path, self.read_only)
        try:
            self._check_length(con)
            if self.read_only:
                _overlay_current_sql(con)
            if not (self.read_only or self._verified):
                self._read_every_block(con)
                self._verified = True
        except duckdb.Error as exc:
            con.close()
            raise self.error(exc) from exc
        except BaseException:
            con.close()
            raise
        return con

    def _check_length(self, con: duckdb.DuckDBPyConnection) -> None:
        """The file must hold every block its header counts: a truncated copy opens and lists
        models, then fails on the first block past its end (costs one stat)."""
        block_size, blocks = first_row(
            con, "SELECT block_size, total_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()")
        expected = HEADER_BYTES + block_size * blocks
        size = self.path.stat().st_size
        if size >= expected:
            return
        # Short files are not always damaged: after a kill, the blocks at the end may be free
        # ones DuckDB never wrote. Reading every block tells a lost block from a free one.
        try:
            self._read_every_block(con)
        except duckdb.Error:
            raise damaged(self.path, f"truncated: {size:,} bytes of {expected:,}") from None
        self._verified = True

    def _read_every_block(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every column of every table once: DuckDB checks a block's checksum only when it
        reads it, so a bad block would otherwise surface only in some later query."""
        tables = con.execute(
            "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
            "WHERE database_name = current_database() AND NOT internal "
            "AND table_name IN (SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database()) GROUP BY table_name").fetchall()
        for table, columns in tables:
            hashes = ", ".join(f'sum(hash("{column}"))' for column in columns)
            con.execute(f'SELECT count(*), {hashes} FROM "{table}"').fetchall()

    def error(self, exc: duckdb.Error) -> StoreError:
        """A DuckDB error from this store's file as a StoreError that names the file."""
        return self.classify(exc) or StoreError(f"{self.path}: {duckdb_message(exc)}")

    def classify(self, exc: duckdb.Error) -> StoreError | None:
        """``error`` for errors about the file itself; None for errors of a query (syntax …)."""
        return _classify(self.path, exc, self.read_only)

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
        con.begin()
        try:
            self._upgrade_vectors(con)
            for name in sql_files():
                con.execute(read_sql(name))
            self._sketch_unsketched(con)
            self._project_unprojected(con)
            con.execute(
                "INSERT OR REPLACE INTO atlas_meta VALUES ('schema_version', ?), "
                "('macros_sha', ?)", [SCHEMA_VERSION, _macros_sha()])
        except BaseException:
            con.rollback()
            raise
        con.commit()

    @staticmethod
    def _upgrade_vectors(con: duckdb.DuckDBPyConnection) -> None:
        """A ``vectors`` table of schema 1 or 2 becomes schema 3's vector_rows and vector_parts
        (the view ``vectors`` takes its name): 1 → 2 drops the DOUBLE centred copy and adds
        the sketch columns, 2 → 3 moves ℓ into parts, a few thousand vectors at a time."""
        columns = _listed_vectors(con)
        if not columns:
            return
        if "loglik_centred" in columns:
            con.execute("ALTER TABLE vectors DROP COLUMN loglik_centred")
        if "sketch" not in columns:
            con.execute(f"ALTER TABLE vectors ADD COLUMN sketch FLOAT[{SKETCH_DIM}]")
            con.execute("ALTER TABLE vectors ADD COLUMN sketch_resid DOUBLE")
        con.execute(read_sql("schema.sql"))
        con.execute("INSERT INTO vector_rows BY NAME SELECT nextval('vector_ids') AS vid, "
                    "* EXCLUDE (loglik) FROM vectors")
        last = first_row(con, "SELECT coalesce(max(rowid), -1) FROM vectors")[0]
        for start in range(0, last + 1, UPGRADE_BATCH):
            table = con.sql(
                "SELECT r.vid, v.loglik FROM vectors v JOIN vector_rows r USING (key, textset_id) "
                "WHERE v.rowid >= ? AND v.rowid < ?", params=[start, start + UPGRADE_BATCH]
            ).to_arrow_table()
            column = table.column("loglik").combine_chunks()
            for n_texts in np.unique(column.value_lengths().to_numpy()):
                rows = table.filter(pc.equal(column.value_lengths(), n_texts))
                loglik = rows.column("loglik").combine_chunks().flatten().to_numpy()
                _insert_arrow(con, "vector_parts", _parts_table(
                    rows.column("vid").to_numpy(), loglik.reshape(len(rows), n_texts)))
        con.execute("DROP TABLE vectors")

    def _sketch_unsketched(self, con: duckdb.DuckDBPyConnection) -> None:
        """Fit the basis of every text set that has enough vectors but none (an upgraded file)."""
        for (textset_id,) in con.execute(
                "SELECT textset_id FROM vector_rows WHERE textset_id NOT IN "
                "(SELECT textset_id FROM vector_bases) GROUP BY textset_id "
                "HAVING count(*) >= ?", [BASIS_MIN]).fetchall():
            self._basis(con, textset_id, np.empty((0, 0)))

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
            with registered(con, "new_texts", rows):
                con.execute("INSERT INTO texts SELECT * FROM new_texts")
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
        return needs_writing(key, source, config_id, self.stored_states([key], textset_id), force)

    def stored_states(self, keys: list[str], textset_id: int) -> StoredStates:
        """What is stored of ``keys`` on a text set, in one query (a plan asks for 10⁴ keys)."""
        with self.connect() as con:
            return _stored_states(con, keys, textset_id)

    def write_vector(self, key: ModelKey, *, textset_id: int, loglik: np.ndarray,
                     n_tokens: np.ndarray | None, n_truncated: int, config_id: str,
                     provenance: dict, n_params: int | None = None, parent: str | None = None,
                     source: str | None = None, revision: str | None = None,
                     force: bool = False, sketch: WeightSketch | None = None) -> bool:
        """Write one complete vector, its variant row and its weight sketch (if any) in one
        transaction, so that a kill between them cannot leave a vector without its sketch.

        Returns False when the same variant, text set and config is stored already (the sketch,
        of the same weights, is still written); raises when a different one is, unless
        ``force`` (then a vector written without a sketch drops the old one).
        """
        record = VectorRecord(key, loglik, config_id, provenance, n_tokens, n_truncated,
                              n_params, parent, source, revision)
        return self.write_vectors([record], textset_id=textset_id, force=force,
                                  weight_sketches={str(key): sketch})[0]

    def write_vectors(self, records: list[VectorRecord], *, textset_id: int,
                      force: bool = False, also: dict[str, pa.Table] | None = None,
                      weight_sketches: dict[str, WeightSketch | None] | None = None
                      ) -> list[bool]:
        """Write many vectors (with their sketches), their variant rows and rows of
        ``BATCH_TABLES`` (``also``) in one transaction, the vectors as one Arrow insert: the
        whole batch or nothing. Per record, False where the same vector and config is stored
        already; a conflict refuses the whole batch. Variant rows are upserted for every record
        (a later import may add a parent or source to a stored vector). A parent must be stored
        or be a key of the batch."""
        if not records:
            return []
        matrix = np.stack([np.asarray(r.loglik, dtype=np.float64) for r in records])
        bad = [str(r.key) for r, ok in zip(records, np.isfinite(matrix).all(axis=1), strict=True)
               if not ok]
        if bad:
            raise StoreError(f"{bad[0]}: refusing to store a vector with NaN or inf values")
        with self.transaction() as con:
            n_texts = first_row(con, "SELECT n_texts FROM textsets WHERE textset_id = ?",
                                [textset_id])[0]
            if matrix.shape[1] != n_texts:
                raise StoreError(f"{records[0].key}: vector has {matrix.shape[1]} values, text "
                                 f"set has {n_texts}")
            written = self._to_write(con, records, textset_id, force)
            self._upsert_models(con, records)
            chosen = [r for r, w in zip(records, written, strict=True) if w]
            if chosen:
                self._insert(con, chosen, matrix[np.flatnonzero(written)], textset_id)
            for key, sketch in (weight_sketches or {}).items():
                if sketch is not None:
                    _put_sketch(con, key, sketch)
                elif force and key in {str(r.key) for r in chosen}:  # of replaced weights
                    con.execute("DELETE FROM weight_sketches WHERE key = ?", [key])
            for table, rows in (also or {}).items():
                if table not in BATCH_TABLES:
                    raise ValueError(f"write_vectors cannot fill table {table!r}")
                with registered(con, "atlas_batch_rows", rows):
                    con.execute(f"INSERT OR REPLACE INTO {table} BY NAME "
                                "SELECT * FROM atlas_batch_rows")
        return written

    def _to_write(self, con, records: list[VectorRecord], textset_id: int,
                  force: bool) -> list[bool]:
        """Which records to write (conflicts raise), their parents resolved in place."""
        keys = [str(r.key) for r in records]
        stored = _stored_states(con, keys, textset_id)
        written = []
        for i, record in enumerate(records):
            if record.parent is not None:  # a dangling parent would break kl(key, parent)
                record.parent = self._resolve_parent(con, record.parent, keys[i], keys)
            written.append(needs_writing(keys[i], record.source, record.config_id, stored, force))
        return written

    @staticmethod
    def _upsert_models(con, records: list[VectorRecord]) -> None:
        """The variant rows of ``records``: new ones inserted, known ones completed."""
        models = pa.Table.from_pylist([_model_row(r) for r in records])
        with registered(con, "atlas_new_models", models):
            con.execute(f"INSERT INTO models ({', '.join(models.column_names)}) "
                        "SELECT * FROM atlas_new_models ON CONFLICT (key) DO UPDATE SET "
                        "n_params = coalesce(excluded.n_params, n_params), "
                        "parent = coalesce(excluded.parent, parent), "
                        "source = coalesce(excluded.source, source), "
                        "revision = coalesce(excluded.revision, revision)")

    def _insert(self, con, records: list[VectorRecord], matrix: np.ndarray,
                textset_id: int) -> None:
        """Quantizations and vectors (with sketches) of the records: the rows they replace
        deleted, then one Arrow insert into vector_rows and one into vector_parts."""
        keys = [str(r.key) for r in records]
        for record in records:
            self._record_quantization(con, record.key, record.provenance.get("quantization"))
        replaced = "SELECT vid FROM vector_rows JOIN atlas_keys USING (key) WHERE textset_id = ?"
        if _rows_of_keys(con, replaced, keys, [textset_id]):
            with _keys_table(con, keys):
                con.execute(f"DELETE FROM vector_parts WHERE vid IN ({replaced})", [textset_id])
                con.execute(f"DELETE FROM vector_rows WHERE vid IN ({replaced})", [textset_id])
        vids = np.array([row[0] for row in con.execute(
            "SELECT nextval('vector_ids') FROM range(?)", [len(keys)]).fetchall()], np.int64)
        basis = self._basis(con, textset_id, matrix)
        columns = vector_columns(matrix, basis)
        _insert_arrow(con, "vector_rows", pa.table({
            "vid": vids, "key": keys,
            "textset_id": pa.array([textset_id] * len(keys), pa.int32()),
            "loglik_mean": columns["loglik_mean"],
            "n_tokens": pa.array([None if r.n_tokens is None else
                                  np.asarray(r.n_tokens, dtype=np.int32) for r in records],
                                 pa.list_(pa.int32())),
            "total_tokens": pa.array([None if r.n_tokens is None else int(np.sum(r.n_tokens))
                                      for r in records], pa.int64()),
            "n_truncated": pa.array([r.n_truncated for r in records], pa.int32()),
            "config_id": [r.config_id for r in records],
            "provenance": [json.dumps(r.provenance) for r in records],
            "sketch": _sketch_array(columns.get("sketch"), len(keys)),
            "sketch_resid": pa.array(columns.get("sketch_resid", [None] * len(keys)),
                                     pa.float64()),
            "resid_sketch": _sketch_array(columns.get("resid_sketch"), len(keys), RESID_DIM),
        }))
        _insert_arrow(con, "vector_parts", _parts_table(vids, columns["loglik"]))

    def _basis(self, con, textset_id: int, new: np.ndarray) -> SketchBasis | None:
        """The text set's sketch basis; fitted (and the stored vectors sketched) the first time
        the set holds BASIS_MIN vectors, from a sample of them."""
        basis = _stored_basis(con, textset_id)
        if basis is not None:
            return basis
        stored = first_row(con, "SELECT count(*) FROM vector_rows WHERE textset_id = ?",
                           [textset_id])[0]
        if stored + len(new) < BASIS_MIN:
            return None
        vids, _, stored_loglik = _stored_loglik(con, textset_id)
        sample = np.vstack([stored_loglik, new.reshape(-1, stored_loglik.shape[1])])
        sample = sample.astype(np.float64)
        basis = SketchBasis.fit(sample)
        row = _basis_row(textset_id, basis).append_column("n_fit", pa.array([len(sample)]))
        with registered(con, "atlas_basis", row):
            con.execute("INSERT INTO vector_bases BY NAME SELECT * FROM atlas_basis")
        if stored:
            self._sketch_stored(con, vids, stored_loglik, basis)
        return basis

    @staticmethod
    def _sketch_stored(con, vids: np.ndarray, loglik: np.ndarray, basis: SketchBasis) -> None:
        """Sketch stored vectors (a new basis or projection), as one Arrow update."""
        columns = vector_columns(loglik.astype(np.float64), basis)
        table = pa.table({"vid": vids, "sketch": _sketch_array(columns["sketch"], len(vids)),
                          "sketch_resid": columns["sketch_resid"],
                          "resid_sketch": _sketch_array(columns.get("resid_sketch"), len(vids),
                                                        RESID_DIM)})
        with registered(con, "atlas_sketches", table):
            con.execute("UPDATE vector_rows SET sketch = s.sketch, sketch_resid = s.sketch_resid, "
                        "resid_sketch = s.resid_sketch FROM atlas_sketches s "
                        "WHERE vector_rows.vid = s.vid")

    def _project_unprojected(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give every basis of a long enough set that has none (a file of schema 3) its residual
        projection, and its stored vectors their residual sketches, UPGRADE_BATCH at a time."""
        for textset_id, n_texts in con.execute(
                "SELECT b.textset_id, t.n_texts FROM vector_bases b JOIN textsets t "
                "USING (textset_id) WHERE b.resid_projection IS NULL").fetchall():
            projection = draw_projection(n_texts, np.random.default_rng(textset_id))
            if projection is None:
                continue
            basis = dataclasses.replace(_stored_basis(con, textset_id), projection=projection)
            with registered(con, "atlas_basis", _basis_row(textset_id, basis)):
                con.execute("UPDATE vector_bases SET resid_projection = b.resid_projection "
                            "FROM atlas_basis b WHERE vector_bases.textset_id = b.textset_id")
            keys = [key for (key,) in con.execute(
                "SELECT key FROM vector_rows WHERE textset_id = ? ORDER BY vid",
                [textset_id]).fetchall()]
            for start in range(0, len(keys), UPGRADE_BATCH):
                vids, _, loglik = _stored_loglik(con, textset_id, keys[start:start + UPGRADE_BATCH])
                self._sketch_stored(con, vids, loglik, basis)

    @staticmethod
    def _record_quantization(con, key: ModelKey, record: dict | None) -> None:
        """The ``quantizations`` row of a quantized variant (atlas.specs.QuantSpec.record)."""
        if not record:
            return
        columns = ["method", "bits", "group_size", "qtype", "source_quant", "compute_dtype",
                   "library", "library_version"]
        con.execute(
            f"INSERT OR REPLACE INTO quantizations (key, {', '.join(columns)}) "
            f"VALUES (?{', ?' * len(columns)})",
            [str(key), *(record.get(column) for column in columns)])

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
                matches = [row[0] for row in con.execute(
                    "SELECT key FROM listed_key_matches(?, ?::VARCHAR[])",
                    [parent, list(pending)]).fetchall()]
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
        """Raw vectors of ``keys`` (all on the text set, by key, if None) as a K × N float64
        matrix."""
        stored = self.textset(textset)
        with self.connect() as con:
            _, found, loglik = _stored_loglik(con, stored.textset_id, keys, np.float64)
        if keys is None:
            return found, loglik, stored.mean_bytes
        missing = sorted(set(keys) - set(found))
        if missing:
            raise UnknownKeyError(f"no vector on text set '{textset}' for: {', '.join(missing)}")
        if len(found) < len(keys):  # a key asked for twice
            row = {key: i for i, key in enumerate(found)}
            loglik = loglik[[row[key] for key in keys]]
        return keys, loglik, stored.mean_bytes

    # calibration (sql/calibration.sql) ---------------------------------------------------------
    def add_calibration(self, row: dict) -> None:
        """Keep one Monte-Carlo calibration (a measurement: never replaced)."""
        self._insert_row("calibrations", row, "INSERT")

    def set_floor(self, row: dict) -> None:
        """Store the precision floor of (key, dtype), replacing an earlier one."""
        self._insert_row("precision_floors", row, "INSERT OR REPLACE")

    def _insert_row(self, table: str, row: dict, verb: str) -> None:
        columns = ", ".join(row)
        with self.transaction() as con:
            con.execute(f"{verb} INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))

    # weight sketches --------------------------------------------------------------------------
    def write_sketch(self, key: str | ModelKey, sketch: WeightSketch) -> None:
        """Store (or replace) the weight sketch of a stored variant, in one transaction."""
        with self.transaction() as con:
            if first_row(con, "SELECT 1 FROM models WHERE key = ?", [str(key)]) is None:
                raise UnknownKeyError(
                    f"no model variant {key} in {self.path}: store its vector first; a sketch "
                    "belongs to a variant")
            _put_sketch(con, str(key), sketch)

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


def _basis_row(textset_id: int, basis: SketchBasis) -> pa.Table:
    """A vector_bases row of ``basis`` as Arrow: its matrices (64 and 256 × N values) go in as
    arrays (as Python lists they cost seconds and GBs at 10⁵ texts)."""
    def listed(values: np.ndarray | None, kind: pa.DataType) -> pa.Array:
        if values is None:
            return pa.nulls(1, pa.list_(kind))
        flat = pa.array(values.ravel(), kind)
        return pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat)

    return pa.table({"textset_id": pa.array([textset_id], pa.int32()),
                     "dim": pa.array([len(basis.basis)], pa.int32()),
                     "mean": listed(basis.mean, pa.float64()),
                     "basis": listed(basis.basis, pa.float32()),
                     "resid_projection": listed(basis.projection, pa.float32())})


def _stored_basis(con: duckdb.DuckDBPyConnection, textset_id: int) -> SketchBasis | None:
    """The text set's stored basis (float32 as stored, in float64), or None before its fit."""
    table = con.sql("SELECT mean, basis, resid_projection FROM vector_bases "
                    "WHERE textset_id = ?", params=[textset_id]).to_arrow_table()
    if not len(table):
        return None
    n_texts = len(table.column("mean")[0])

    def matrix(name: str) -> np.ndarray | None:
        cell = table.column(name).combine_chunks()
        if cell.null_count:
            return None
        return cell.flatten().to_numpy().astype(np.float64).reshape(-1, n_texts)

    return SketchBasis(table.column("mean").combine_chunks().flatten().to_numpy(),
                       matrix("basis"), matrix("resid_projection"))


def _stored_loglik(con: duckdb.DuckDBPyConnection, textset_id: int,
                   keys: list[str] | None = None, dtype: type = np.float32
                   ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The vids, keys and ℓ (K × N, of ``dtype``) of the text set's vectors: of ``keys`` in
    their order (those stored, once each), else all by key. The parts are read in one scan and
    put in place as they stream, straight into the one K × N array returned (ordering 1 KB rows
    in SQL, or twice in numpy, costs seconds; the whole result, a float32 gather and a float64
    copy held four K × N arrays at once)."""
    n_texts = first_row(con, "SELECT n_texts FROM textsets WHERE textset_id = ?",
                        [textset_id])[0]
    keys = None if keys is None else list(dict.fromkeys(keys))
    rows = "vector_rows r" + ("" if keys is None else " JOIN atlas_keys USING (key)")
    with _keys_table(con, keys or []):
        vid_of = dict(con.execute(f"SELECT r.key, r.vid FROM {rows} WHERE r.textset_id = ?",
                                  [textset_id]).fetchall())
    names = sorted(vid_of) if keys is None else [k for k in keys if k in vid_of]
    vids = np.array([vid_of[k] for k in names], dtype=np.int64)
    loglik = np.empty((len(names), n_texts), dtype=dtype)
    sorter = np.argsort(vids)
    with registered(con, "atlas_vids", pa.table({"vid": vids})):
        # a join on vid alone: the scan of vector_parts reads only these vectors' rows
        reader = con.sql("SELECT p.vid, p.part, p.loglik FROM atlas_vids "
                         "JOIN vector_parts p USING (vid)").to_arrow_reader(PART_BATCH)
        for batch in reader:
            row = sorter[np.searchsorted(vids, batch.column("vid").to_numpy(), sorter=sorter)]
            _place(loglik, row, batch.column("part").to_numpy(),
                   batch.column("loglik").flatten().to_numpy().reshape(-1, LOGLIK_PART))
    return vids, names, loglik


def _place(loglik: np.ndarray, row: np.ndarray, part: np.ndarray, values: np.ndarray) -> None:
    """Put parts (``values[i]`` is part ``part[i]`` of vector ``row[i]``) in place in ℓ, a part
    column at a time (the last part's padding cut off)."""
    n_texts = loglik.shape[1]
    for number in np.unique(part):
        start = int(number) * LOGLIK_PART
        width = min(LOGLIK_PART, n_texts - start)
        mine = np.flatnonzero(part == number)
        loglik[row[mine], start:start + width] = values[mine, :width]


def _put_sketch(con: duckdb.DuckDBPyConnection, key: str, sketch: WeightSketch) -> None:
    con.execute(
        "INSERT OR REPLACE INTO weight_sketches (key, method, dim, seed, layout_hash, "
        "n_params, sq_norm, sketch, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?::DOUBLE[], current_timestamp)",
        [key, sketch.method, sketch.dim, sketch.seed, sketch.layout_hash,
         sketch.n_params, sketch.sq_norm, sketch.sketch.tolist()])


def first_row(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None):
    """The first row of a query (or None), with the result consumed as DuckDB 2 requires."""
    rows = con.execute(query, params).fetchall()
    return rows[0] if rows else None


_DEFINITION = re.compile(r"^((?:\s|--[^\n]*\n)*)CREATE\s+OR\s+REPLACE\s+(MACRO|VIEW)\b",
                         re.IGNORECASE)  # after the statement's leading comments
_TABLE = re.compile(r"^((?:\s|--[^\n]*\n)*)CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)",
                    re.IGNORECASE)
# Tables that kl, kl_se and nearest read (their view := path): a file older than one gets it
# empty and temporary, so those macros bind (every view name is then unknown) rather than the
# file's own older macros staying in force.
_OVERLAY_TABLES = ("views",)


def _overlay_current_sql(con: duckdb.DuckDBPyConnection) -> None:
    """A read-only session on an atlas written by an older version (its persisted macros and
    views are not this version's, and a read-only file cannot be migrated): define this
    version's macros and views as temporary ones, which DuckDB looks up first. Tables are not
    touched (a definition over a table the file lacks is skipped, except ``_OVERLAY_TABLES``,
    made empty and temporary); the file is not written."""
    has_meta = first_row(con, "SELECT count(*) FROM duckdb_tables() "
                              "WHERE table_name = 'atlas_meta'")[0]
    if has_meta and Store._macros_current(con):
        return
    listed = _overlay_vector_parts(con)
    if not listed:
        _overlay_resid_sketch(con)
    for name in sql_files():
        for statement in duckdb.extract_statements(read_sql(name)):
            text = statement.query
            _overlay_table(con, text)
            if not _DEFINITION.match(text) or (listed and _VECTORS_VIEW.search(text)):
                continue  # a file of schema 1 or 2 keeps its table `vectors`
            with contextlib.suppress(duckdb.CatalogException, duckdb.BinderException):
                # one over a table this older file lacks keeps the file's own (or none)
                con.execute(_DEFINITION.sub(r"\1CREATE OR REPLACE TEMP \2", text, count=1))


def _overlay_table(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """Create one of ``_OVERLAY_TABLES`` empty and temporary when the file lacks it."""
    table = _TABLE.match(text)
    if table and table.group(2) in _OVERLAY_TABLES and not first_row(
            con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
            [table.group(2)])[0]:
        con.execute(_TABLE.sub(r"\1CREATE TEMP TABLE \2", text, count=1))


_VECTORS_VIEW = re.compile(r"\bVIEW\s+vectors\s+AS\b", re.IGNORECASE)


def _listed_vectors(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The columns of a ``vectors`` table, ℓ one list per row (schemas 1 and 2); none in a
    file of schema 3, where ``vectors`` is a view."""
    return {row[0] for row in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'vectors' "
        "AND database_name = current_database() AND table_oid IN (SELECT table_oid "
        "FROM duckdb_tables() WHERE database_name = current_database())").fetchall()}


def _overlay_vector_parts(con: duckdb.DuckDBPyConnection) -> bool:
    """In a read-only file of schema 1 or 2, temporary views vector_rows and vector_parts
    over its ``vectors`` table (the row number as vid, ℓ cut into parts as schema 3 stores
    it), so this version's macros and ``Store.matrix`` read it. Whether it is such a file."""
    columns = _listed_vectors(con)
    if not columns:
        return False
    table = _file_table(con, "vectors")
    sketch = ("sketch, sketch_resid" if "sketch" in columns else
              f"NULL::FLOAT[{SKETCH_DIM}] AS sketch, NULL::DOUBLE AS sketch_resid")
    sketch += f", NULL::FLOAT[{RESID_DIM}] AS resid_sketch"
    con.execute(
        "CREATE OR REPLACE TEMP VIEW vector_rows AS SELECT rowid AS vid, key, textset_id, "
        "loglik_mean, n_tokens, total_tokens, n_truncated, config_id, provenance, scored_at, "
        f"{sketch} FROM {table}")
    size = LOGLIK_PART
    con.execute(
        "CREATE OR REPLACE TEMP VIEW vector_parts AS SELECT v.rowid AS vid, p.part, "
        f"list_resize(v.loglik[p.part * {size} + 1:(p.part + 1) * {size}], {size}, 0)"
        f"::FLOAT[{size}] AS loglik FROM {table} v, LATERAL (SELECT unnest(range("
        f"((len(v.loglik) + {size} - 1) // {size})::BIGINT)) AS part) p")
    return True


def _file_table(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """The file's own table ``name``, qualified: a temporary view of that name shadows it."""
    return f'"{first_row(con, "SELECT current_database()")[0]}".main.{name}'


def _overlay_resid_sketch(con: duckdb.DuckDBPyConnection) -> None:
    """In a read-only file of schema 3, a temporary view vector_rows over its table with the
    residual sketches NULL (nearest then bounds with the sketch alone)."""
    if first_row(con, "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'vector_rows' "
                 "AND column_name = 'resid_sketch' AND database_name = current_database()")[0]:
        return
    table = _file_table(con, "vector_rows")
    if first_row(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'vector_rows' "
                 "AND database_name = current_database()")[0]:
        con.execute(f"CREATE OR REPLACE TEMP VIEW vector_rows AS SELECT *, "
                    f"NULL::FLOAT[{RESID_DIM}] AS resid_sketch FROM {table}")


def _macros_sha() -> str:
    """Hash of all SQL files: a change to any re-applies them all (new tables included)."""
    import hashlib

    text = "".join(read_sql(name) for name in sql_files())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def duckdb_message(exc: Exception) -> str:
    """The message of a DuckDB error without its 'Invalid Input Error: ' prefix."""
    return re.sub(r"^[A-Za-z ]+Error: ", "", str(exc)).strip()
