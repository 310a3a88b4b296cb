"""What is asked of an atlas: models paged, filtered, sorted and grouped; one model with its
related variants; SQL results streamed and exported; and the data the analyses need (a run's
vectors and weight sketches, the models a scale or a map is computed on) with what they store
(diffusion fits, maps). ``Atlas`` has a method for each (atlas.api), and the TUI is a thin layer
over them; the analyses' maths (atlas.analysis) sees arrays and frames only.

The rules live in SQL where they are SQL (sql/queries.sql: ``size_value``, ``related_variants``,
``training_runs``, …). What a user types stays SQL the atlas checks: a ``where …`` filter must
be exactly one SELECT (``one_select``, the one place that rule is written), a sort column comes
from a whitelist, and values travel as parameters.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from atlas.analysis import protocol, trajectory
from atlas.analysis.calibration import flag_floors, pair_ratios, with_ratios
from atlas.analysis.maps import MapError, MapResult
from atlas.analysis.scale import PROVENANCE, ScaleError
from atlas.analysis.views import View, ViewError
from atlas.errors import AtlasError, StoreError, UnknownKeyError
from atlas.files import replacing
from atlas.keys import quant_label, run_label
from atlas.store import registered, sql_literal

if TYPE_CHECKING:
    from atlas.api import Atlas


class FilterError(AtlasError):
    """A model filter that is not one SQL condition over model_variants."""


# user SQL ----------------------------------------------------------------------------------------
WHERE_PREFIX = re.compile(r"^\s*where\s+", re.IGNORECASE)


def one_select(query: str, error: type[Exception], message: str) -> Any:
    """The parsed statement of ``query`` if it is exactly one SELECT, else ``error(message)``
    (or the parser's own message): what keeps a user's condition from being a second statement."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise error(first_line(exc)) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise error(message)
    return statements[0]


def where_query(clause: str) -> str:
    """``SELECT key FROM model_variants WHERE (clause)``, refused unless it is one SELECT."""
    if not clause:
        raise FilterError("write a condition after 'where', e.g. where family = 'pythia'")
    query = f"SELECT key FROM model_variants WHERE ({clause})"
    one_select(query, FilterError, "a filter is one condition over model_variants (no ';')")
    return query


def first_line(exc: BaseException) -> str:
    """The message on one line, without DuckDB's echo of the query (LINE 1: … and its caret)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines
            if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept) or type(exc).__name__


# models ------------------------------------------------------------------------------------------
PALETTE_KEYS = 200  # candidate keys the command palette scores per keystroke
# the atlas's own order (Atlas.models): checkpoints by step rather than by the text of their key
ATLAS_ORDER = ("family", "size", "seed", "quant", "layer", "step", "key")
# what a sort column sorts by: sizes by the number they name, checkpoints by step
SORT_TERMS = {"key": ATLAS_ORDER, "size": ("size_value(size)", "size"),
              "checkpoint": ("step", "checkpoint")}
VARIANT_COLUMNS = ("key", "family", "size", "seed", "quant", "layer", "checkpoint", "n_params",
                   "textsets")
# one row per family: how many variants, and how many distinct values of each key column
GROUP_COLUMNS = ("family", "variants", "sizes", "seeds", "checkpoints", "quants", "layers")
GROUP_SELECT = ("family, count(*) AS variants, count(DISTINCT size) AS sizes, "
                "count(DISTINCT seed) AS seeds, count(DISTINCT checkpoint) AS checkpoints, "
                "count(DISTINCT quant) AS quants, count(DISTINCT layer) AS layers")
# model_variants with a textsets column: what a filter or an order on text sets needs
VARIANTS = "(SELECT * FROM model_variants LEFT JOIN variant_textsets() USING (key))"


@dataclass(frozen=True)
class ModelQuery:
    """Models as SQL over model_variants: a filter (part of a key, or a condition), an order,
    and either the variants or one row per family.

    Nothing holds more than a page: a 100,000-variant atlas is filtered, sorted, counted and
    grouped by DuckDB, and read a page at a time.
    """

    text: str = ""  # part of a key, case-insensitive
    where: str | None = None  # or a SQL condition over model_variants (it wins)
    sort: str = "key"
    descending: bool = False
    grouped: bool = False

    @staticmethod
    def where_clause(text: str) -> str | None:
        """The condition of a ``where …`` filter, or None when ``text`` is a plain substring."""
        if not WHERE_PREFIX.match(text):
            return None
        return WHERE_PREFIX.sub("", text, count=1).strip()

    @property
    def columns(self) -> tuple[str, ...]:
        return GROUP_COLUMNS if self.grouped else VARIANT_COLUMNS

    def condition(self) -> tuple[str, list]:
        """The filter as a SQL condition and its parameters."""
        if self.where is not None:
            where_query(self.where)  # one condition, or FilterError
            return f"({self.where})", []
        if self.text.strip():
            return "contains(lower(key), ?)", [self.text.strip().lower()]
        return "true", []

    @property
    def source(self) -> str:
        """model_variants, joined to every variant's text sets only when the filter or the
        order needs them (that costs a scan of all vectors; a page needs its own only)."""
        on_textsets = self.sort == "textsets" or "textsets" in (self.where or "").lower()
        return VARIANTS if on_textsets else "model_variants"

    def order_by(self) -> str:
        """``sort`` (nulls last) in the chosen direction, ties in the atlas's order."""
        if self.sort not in self.columns:
            raise FilterError(f"no column {self.sort!r} to sort by; sort by one of "
                              + ", ".join(self.columns))
        direction = " DESC NULLS LAST" if self.descending else " NULLS LAST"
        by = (self.sort,) if self.grouped else SORT_TERMS.get(self.sort, (self.sort,))
        ties = ("family",) if self.grouped else ATLAS_ORDER
        return ", ".join([f"{term}{direction}" for term in by] + list(ties))

    def for_family(self, family: str) -> ModelQuery:
        """The variants of one family, keeping this query's condition or key filter."""
        clause = f"family = {sql_literal(family)}"
        if self.where is not None:
            clause += f" and ({self.where})"
        elif self.text.strip():
            clause += f" and contains(lower(key), {sql_literal(self.text.strip().lower())})"
        return ModelQuery(where=clause)


@dataclass
class ModelPage:
    """Rows ``offset`` … of a query, with the counts a status line shows."""

    query: ModelQuery
    offset: int
    rows: pl.DataFrame
    matching: int  # rows of the whole query: variants, or families when grouped
    variants: int  # variants that pass the filter
    total: int  # variants in the atlas

    @property
    def end(self) -> int:
        return self.offset + self.rows.height


def model_page(atlas: Atlas, query: ModelQuery, offset: int, limit: int) -> ModelPage:
    """Rows ``offset`` … ``offset + limit`` of the query and its counts, in two queries."""
    condition, params = query.condition()
    try:
        counts = atlas.sql(f"SELECT count(*) FILTER (WHERE {condition}), count(DISTINCT family) "
                           f"FILTER (WHERE {condition}), count(*) FROM {query.source}",
                           params * 2).row(0)
        rows = atlas.sql(_page_sql(query, condition), [*params, int(limit), int(offset)])
    except AtlasError as exc:
        if query.where is None:
            raise
        raise FilterError(first_line(exc)) from None
    variants, families, total = counts
    return ModelPage(query, offset, rows, families if query.grouped else variants, variants,
                     total)


def _page_sql(query: ModelQuery, condition: str) -> str:
    """The page's rows (LIMIT and OFFSET are the last two parameters): families, or variants
    with the text sets of the page's keys alone."""
    order = query.order_by()
    window = f"ORDER BY {order} LIMIT ? OFFSET ?"
    if query.grouped:
        return (f"SELECT {GROUP_SELECT} FROM {query.source} WHERE {condition} GROUP BY family "
                f"{window}")
    if query.source == VARIANTS:
        return f"SELECT * FROM {VARIANTS} WHERE {condition} {window}"
    return (f"WITH page AS (SELECT * FROM model_variants WHERE {condition} {window}) "
            "SELECT page.*, s.textsets FROM page LEFT JOIN (SELECT r.key, string_agg(t.name, ', ' "
            "ORDER BY t.name) AS textsets FROM vector_rows r JOIN textsets t USING (textset_id) "
            f"WHERE r.key IN (SELECT key FROM page) GROUP BY r.key) s USING (key) ORDER BY {order}")


def matching_keys(atlas: Atlas, text: str, limit: int = PALETTE_KEYS) -> list[str]:
    """Keys holding the characters of ``text`` in order (a fuzzy finder's rule), keys that
    contain it as a whole first: candidates for a fuzzy matcher to score, found by DuckDB."""
    chars = [c for c in text.lower() if not c.isspace()]
    if not chars:
        return []
    pattern = "%" + "%".join("\\" + c if c in "%_\\" else c for c in chars) + "%"
    return atlas.sql("SELECT key FROM model_variants WHERE lower(key) LIKE ? ESCAPE '\\' "
                     "ORDER BY NOT contains(lower(key), ?), length(key), key LIMIT ?",
                     [pattern, "".join(chars), limit])["key"].to_list()


# one model ---------------------------------------------------------------------------------------
NEAREST_K = 10


@dataclass
class Related:
    """The KL from the model to one related variant (or why it could not be computed)."""

    relation: str
    key: str
    kl: float | None = None
    se: float | None = None
    error: str | None = None


@dataclass
class Detail:
    key: str
    info: dict[str, Any]  # model_variants' columns, revision and created_at
    textsets: list[dict[str, Any]]  # name, n_texts, mean_bytes of the sets with its vectors
    textset: str | None  # the set the KLs below are on
    nearest: pl.DataFrame
    related: list[Related] = field(default_factory=list)
    metrics: pl.DataFrame = field(default_factory=pl.DataFrame)  # metric, value, source
    predictions: pl.DataFrame = field(default_factory=pl.DataFrame)  # metric, predicted, …


def model_detail(atlas: Atlas, key: str, textset: str | None = None,
                 k: int = NEAREST_K) -> Detail:
    """Provenance, nearest models and KLs to related variants of one model."""
    key = atlas.resolve(key)
    info = atlas.sql("SELECT * FROM model_info(?)", [key]).row(0, named=True)
    names = atlas.sql("SELECT t.name FROM vector_rows JOIN textsets t USING (textset_id) "
                      "WHERE key = ? ORDER BY t.name", [key])["name"].to_list()
    sets = atlas.textsets().filter(pl.col("name").is_in(names))
    textsets = sets.select("name", "n_texts", "mean_bytes").to_dicts()
    metrics, predictions = model_metrics(atlas, key)
    if textset is None or textset not in names:
        textset = names[0] if names else None
    if textset is None:
        nearest = pl.DataFrame(schema={"key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                       "textset": pl.String, "hub_id": pl.String})
        return Detail(key, info, textsets, None, nearest, [], metrics, predictions)
    nearest = atlas.nearest(key, k=k, textset=textset)
    related = [_related_kl(atlas, key, relation, other, textset)
               for relation, other in related_variants(atlas, key).iter_rows()]
    return Detail(key, info, textsets, textset, nearest, related, metrics, predictions)


def related_variants(atlas: Atlas, key: str) -> pl.DataFrame:
    """(relation, key): parent, fine-tunes, previous/next checkpoint, other seeds and sizes."""
    return atlas._keyed_sql("SELECT * FROM related_variants(?)", [key])


def _related_kl(atlas: Atlas, key: str, relation: str, other: str, textset: str) -> Related:
    try:
        result = atlas.kl(key, other, textset=textset)
    except AtlasError as exc:
        return Related(relation, other, error=first_line(exc))
    return Related(relation, result.key_b, result.value, result.se)


# SQL results -------------------------------------------------------------------------------------
SQL_DISPLAY_ROWS = 500  # rows of a result kept to show; the rest are counted
SQL_BATCH_ROWS = 2_048  # rows DuckDB hands over at a time
PROGRESS_SECONDS = 0.25  # at most this often, a running query reports its rows so far


@dataclass
class QueryResult:
    """The first ``SQL_DISPLAY_ROWS`` rows of a result (``shown``) and how many it had."""

    query: str
    shown: pl.DataFrame
    rows: int
    seconds: float


def sql_head(atlas: Atlas, query: str,
             progress: Callable[[pl.DataFrame, int], None] | None = None) -> QueryResult:
    """Stream a query's result: keep its first rows, count the rest, and call
    ``progress(shown, rows so far)`` once the first rows are in and then every
    ``PROGRESS_SECONDS``, so rows can be shown while a long result is still coming.

    Memory stays bounded by the shown rows and one batch however large the result is;
    ``Atlas.interrupt`` from another thread stops it (AtlasError)."""
    started = last = time.perf_counter()
    batches = atlas.sql_batches(query, SQL_BATCH_ROWS)
    shown = next(batches)
    rows = 0
    for batch in batches:
        rows += batch.height
        filling = shown.height < SQL_DISPLAY_ROWS
        if filling:
            shown = pl.concat([shown, batch.head(SQL_DISPLAY_ROWS - shown.height)],
                              how="vertical_relaxed")
        now = time.perf_counter()
        if progress is not None and (filling or now - last >= PROGRESS_SECONDS):
            progress(shown, rows)
            last = now
    return QueryResult(query, shown, rows, time.perf_counter() - started)


def export(atlas: Atlas, query: str, path: Path) -> int:
    """Write the whole result of ``query`` (one SELECT) to a .csv or .parquet file; returns its
    rows.

    The rows are written here, in Python, batch by batch (memory stays bounded): a read-only
    session cannot write files, so this is its one explicit way out. The file appears complete
    or not at all (written beside it, then renamed)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise AtlasError(f"{path.name}: export to a .csv or .parquet file")
    statement = one_select(query, AtlasError, "only the result of one SELECT can be exported")
    try:
        with replacing(path) as partial:
            rows = _write_batches(atlas.sql_batches(statement.query), partial, suffix)
    except OSError as exc:
        raise AtlasError(f"{path}: cannot write the export ({exc.strerror or exc}); choose "
                         "another file or free space") from None
    return rows


def csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """List columns joined with ';' so that a frame can be written as CSV."""
    return frame.with_columns(
        pl.col(c).cast(pl.List(pl.String)).list.join(";")
        for c, dtype in frame.schema.items() if isinstance(dtype, pl.List))


def _write_batches(batches: Iterator[pl.DataFrame], path: Path, suffix: str) -> int:
    """Write ``Atlas.sql_batches`` output (an empty frame with the columns first) to ``path``."""
    first = next(batches)
    rows = 0
    if suffix == ".csv":
        with path.open("wb") as out:
            csv_ready(first).write_csv(out)
            for batch in batches:
                csv_ready(batch).write_csv(out, include_header=False)
                rows += batch.height
        return rows
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, first.to_arrow().schema) as writer:
        for batch in batches:
            writer.write_table(batch.to_arrow())
            rows += batch.height
    return rows


# runs, trajectories, diffusion -------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """A training run: the output variants of one (family, size, seed) with numbered steps."""

    family: str
    size: str
    seed: int | None
    n_checkpoints: int
    label: str  # run_label (atlas.keys, sql/analysis.sql), e.g. pythia-70m/s1
    quant: str | None = None  # the run of a quantized variant (its checkpoints' quant)

    @property
    def ident(self) -> str:
        return self.ident_of(self.family, self.size, self.seed)

    @staticmethod
    def ident_of(family: str, size: str, seed: int | None) -> str:
        """A run's identity as one string (e.g. the value of a picker)."""
        return f"{family}\t{size}\t{'' if seed is None else seed}"

    @property
    def default_window(self) -> int:
        """The CLI's window of 10 lags, shortened for short runs to half their lags (at least
        3), so that several starts t0 have a full window."""
        return min(10, max(3, (self.n_checkpoints - 1) // 2))


@dataclass
class RunResult:
    """A run's trajectory frame or DiffusionResult (``value``), on ``textset``, one of the
    ``textsets`` that hold a vector of every checkpoint of the run."""

    value: Any
    textset: str
    textsets: list[str]


def runs(atlas: Atlas) -> list[Run]:
    """Training runs with two or more numbered checkpoints (output variants), by label."""
    return [Run(*row) for row in atlas.sql("SELECT * FROM training_runs()").iter_rows()]


def run(atlas: Atlas, family: str, size: str, seed: int | None,
        quant: str | None = None) -> Run:
    """The run of (family, size, seed[, quant]); an error names the runs there are."""
    quant = quant_label(quant)
    steps = trajectory.checkpoints(atlas.models(), family, size, seed, quant)["step"]
    return Run(family, size, seed, steps.n_unique(), run_label(family, size, seed, quant), quant)


def run_textsets(atlas: Atlas, run: Run) -> list[str]:
    """The text sets holding a vector of each checkpoint of the run."""
    sets = atlas.sql("SELECT textset FROM run_textsets(?, ?, ?, run_quant := ?)",
                     [run.family, run.size, run.seed, run.quant])["textset"].to_list()
    if not sets:
        raise AtlasError(f"the checkpoints of {run.label} share no text set: score them all on "
                         "one to compare them")
    return sets


def _run_textset(run: Run, textset: str | None, sets: list[str]) -> str:
    """The text set a run is measured on: the one named, else the only one it has."""
    if textset is None and len(sets) == 1:
        return sets[0]
    if textset is None:
        raise AtlasError(f"name a text set (--textset): every checkpoint of {run.label} has "
                         f"vectors on {', '.join(sets)}")
    if textset not in sets:
        raise AtlasError(f"the checkpoints of {run.label} are not all on text set '{textset}'; "
                         f"name one they share: {', '.join(sets)}")
    return textset


def load_trajectory(atlas: Atlas, run: Run, textset: str | None
                    ) -> tuple[trajectory.Trajectory, str, list[str]]:
    """A run's vectors and weight distances on its text set, that set, and the sets it has."""
    keys_steps = trajectory.checkpoints(atlas.models(), run.family, run.size, run.seed,
                                        run.quant)
    keys = keys_steps["key"].to_list()
    if textset is not None:
        atlas.store.textset(textset)  # a name the atlas does not have is said as such
    sets = run_textsets(atlas, run)
    chosen = _run_textset(run, textset, sets)
    _, loglik, mean_bytes = atlas.store.matrix(keys, chosen)
    try:
        sketches = atlas.store.sketches(keys)
    except (UnknownKeyError, StoreError):  # imported vectors, older atlases: no weights, no c_w
        sketches = {}
    path = trajectory.Trajectory(keys, keys_steps["step"].to_numpy(), loglik, mean_bytes,
                                 trajectory.weight_distances(keys, sketches))
    return path, chosen, sets


def save_fit(atlas: Atlas, row: list) -> None:
    """Store a row of ``diffusion_fits`` (trajectory.fit_row), replacing one with its id."""
    columns = ("fit_id, family, size, seed, textset, lags, t0, n_boot, ci_level, c_q, c_q_low, "
               "c_q_high, c_w, c_w_low, c_w_high, alpha, alpha_low, alpha_high, result, quant")
    with atlas.store.transaction() as con:
        con.execute(f"INSERT OR REPLACE INTO diffusion_fits ({columns}) VALUES "
                    f"({', '.join('?' * len(row))})", row)


# the models an analysis runs on ------------------------------------------------------------------
@dataclass
class Selection:
    """The model variants on ``textset`` that satisfy ``where`` (a condition over
    model_variants, without a leading WHERE): what the scale and a map are computed on."""

    textset: str
    where: str | None
    models: pl.DataFrame

    @property
    def scope(self) -> str:
        """The selection in words, for a message that says it is too small."""
        return f"on text set '{self.textset}'" + (f" matching {self.where!r}" if self.where
                                                  else "")


def analysis_textset(atlas: Atlas, textset: str | None) -> str:
    """The text set to measure on: the one given, else the only one holding vectors."""
    if textset is not None:
        atlas.store.textset(textset)  # raises with the names it has
        return textset
    names = atlas.vector_textsets()
    if not names:
        raise ScaleError(f"{atlas.path} holds no log-likelihood vectors yet: ingest models "
                         "(atlas ingest) or import vectors (atlas import) first")
    if len(names) > 1:
        raise ScaleError("name a text set (textset=...): the atlas holds vectors on "
                         + ", ".join(names))
    return names[0]


def selection(atlas: Atlas, where: str | None, textset: str | None) -> Selection:
    """The variants on ``textset`` (or the only set) that satisfy ``where``; a bad condition is
    refused before it runs unless it is one SELECT's condition."""
    textset = analysis_textset(atlas, textset)
    where = WHERE_PREFIX.sub("", where or "", count=1).strip() or None
    query = "SELECT * FROM model_variants" + (f" WHERE ({where})" if where else "")
    try:
        one_select(query, ScaleError, "give one condition over model_variants columns, e.g. "
                   "\"family = 'pythia' AND layer IS NULL\"")
        models = atlas.sql(query)
    except AtlasError as exc:
        raise ScaleError(f"bad where clause {where!r}: {exc}") from None
    scored = atlas.sql(
        "SELECT v.key, " + ", ".join(f"json_extract_string(v.provenance, '$.{name}') AS {name}"
                                     for name in PROVENANCE)
        + " FROM vector_rows v JOIN textsets t USING (textset_id) WHERE t.name = ?", [textset])
    return Selection(textset, where, models.join(scored, on="key", how="inner",
                                                        maintain_order="left"))


# maps --------------------------------------------------------------------------------------------
def _require_map_tables(atlas: Atlas) -> None:
    found = atlas.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'maps'")
    if found["n"][0] == 0:
        raise MapError(f"{atlas.path} predates maps; open it writable once (e.g. `atlas init`) "
                       "to upgrade it")


def maps(atlas: Atlas) -> pl.DataFrame:
    """The stored maps, by name: (name, method, textset, model_where, n_models, params, notes,
    stats, keys_hash, created_at)."""
    _require_map_tables(atlas)
    return atlas.sql("SELECT name, method, textset, model_where, n_models, params, notes, stats, "
                     "keys_hash, created_at FROM maps ORDER BY name")


def map_points(atlas: Atlas, name: str) -> pl.DataFrame:
    """The points of a stored map: (key, family, size, seed, step, x, y), by key."""
    _require_map_tables(atlas)
    try:
        return atlas.sql("SELECT * FROM map_points(?)", [name])
    except AtlasError as exc:
        raise MapError(str(exc)) from None


def save_map(atlas: Atlas, result: MapResult) -> None:
    """Write (or replace) a map and its points in one transaction."""
    points = pa.table({
        "map_name": pa.array([result.name] * result.n_models, pa.string()),
        "key": pa.array(result.keys, pa.string()),
        "x": pa.array(result.coords[:, 0], pa.float64()),
        "y": pa.array(result.coords[:, 1], pa.float64()),
    })
    with atlas.store.transaction() as con:
        _delete_map(con, result.name)
        con.execute(
            "INSERT INTO maps (name, method, params, textset, model_where, n_models, keys_hash, "
            "notes, stats, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
            [result.name, result.method, json.dumps(result.params, sort_keys=True),
             result.textset, result.where, result.n_models, result.keys_hash,
             "; ".join(result.notes) or None, json.dumps(result.stats, sort_keys=True)])
        with registered(con, "new_map_points", points):
            con.execute("INSERT INTO map_coordinates SELECT map_name, key, x, y "
                        "FROM new_map_points")


def drop_map(atlas: Atlas, name: str) -> bool:
    """Delete a stored map and its points; returns whether there was one."""
    with atlas.store.transaction() as con:
        existed = con.execute("SELECT count(*) FROM maps WHERE name = ?", [name]).fetchall()
        _delete_map(con, name)
    return bool(existed[0][0])


def _delete_map(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute("DELETE FROM map_coordinates WHERE map_name = ?", [name])
    con.execute("DELETE FROM maps WHERE name = ?", [name])


# metrics and predictions -------------------------------------------------------------------------
LEADERBOARD_BOUNDS = {"open-llm-leaderboard-v1": (0.0, 100.0)}  # scores a prediction clips to
HUB_COLUMNS = ("hub_id", "model_name", "source")  # a metrics file may name models by hub id


def _has_table(atlas: Atlas, table: str) -> bool:
    """Whether the file has ``table``: a read-only atlas from an older version may lack it."""
    found = atlas.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = ? AND "
                      "database_name = current_database()", [table])
    return bool(found["n"][0])


def _require_metric_tables(atlas: Atlas) -> None:
    if not _has_table(atlas, "metric_values"):
        raise AtlasError(f"{atlas.path} predates metrics; open it writable once (e.g. `atlas "
                         "init`) to upgrade it")


def save_metrics(atlas: Atlas, rows: pl.DataFrame) -> int:
    """Store (key, metric, value, source) rows, replacing equal (key, metric, source)."""
    table = rows.select("key", "metric", pl.col("value").cast(pl.Float64), "source").to_arrow()
    with atlas.store.transaction() as con, registered(con, "new_metrics", table):
        con.execute("INSERT OR REPLACE INTO metric_values BY NAME SELECT * FROM new_metrics")
    return rows.height


def read_metrics(atlas: Atlas, path: Path, source: str | None) -> pl.DataFrame:
    """A CSV or Parquet file of metrics as (key, metric, value, source) rows, every model found
    in the atlas: long (a key or hub id column, metric, value) or wide (one column a metric)."""
    frame = _metric_file(path)
    name_column = next((c for c in ("key", *HUB_COLUMNS) if c in frame.columns), None)
    if name_column is None:
        raise AtlasError(f"{path}: needs a 'key' column (atlas keys) or a 'hub_id'/'model_name' "
                         f"column (hub ids); it has {', '.join(frame.columns)}")
    keys = _metric_keys(atlas, path, name_column, frame[name_column].cast(pl.String).to_list())
    frame = frame.with_columns(pl.Series("key", keys))
    if {"metric", "value"} <= set(frame.columns):
        long = frame.select("key", pl.col("metric").cast(pl.String), "value")
    else:
        metrics = [c for c, t in frame.schema.items()
                   if c not in ("key", *HUB_COLUMNS) and t.is_numeric()]
        if not metrics:
            raise AtlasError(f"{path}: no numeric metric columns (or 'metric' and 'value' "
                             "columns); give one column per metric")
        long = frame.unpivot(metrics, index="key", variable_name="metric", value_name="value")
    long = long.with_columns(pl.col("value").cast(pl.Float64, strict=False)).filter(
        pl.col("value").is_not_null() & pl.col("value").is_finite())
    return long.with_columns(pl.lit(source or path.stem).alias("source"))


def _metric_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise AtlasError(f"{path}: give a .csv or .parquet file of metrics")
    try:
        return pl.read_csv(path) if suffix == ".csv" else pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AtlasError(f"{path}: cannot read it ({first_line(exc)}); give a readable .csv or "
                         ".parquet file") from None


def _metric_keys(atlas: Atlas, path: Path, column: str, names: list[str | None]) -> list[str]:
    """The atlas key of each row's model (keys resolve; hub ids are looked up as sources)."""
    if column == "key":
        known = dict(atlas.sql("SELECT key, key FROM models").iter_rows())
    else:
        known = dict(atlas.sql("SELECT source, key FROM models WHERE source IS NOT NULL"
                               ).iter_rows())
    keys = []
    for row, name in enumerate(names, start=2 if path.suffix.lower() == ".csv" else 0):
        key = known.get(name)
        if key is None and column == "key" and name:
            try:
                key = atlas.resolve(name)
            except UnknownKeyError:
                key = None
        if key is None:
            raise AtlasError(f"{path}: {'line' if row else 'row'} {row}: {column} {name!r} is not "
                             "a model of the atlas; import its vector first or drop the row")
        keys.append(key)
    return keys


def metric_values(atlas: Atlas, metric: str, source: str | None) -> tuple[pl.DataFrame, str]:
    """(key, value) of one metric and its source; a metric from several sources needs one."""
    _require_metric_tables(atlas)
    sources = atlas.sql("SELECT DISTINCT source FROM model_metrics WHERE metric = ? ORDER BY 1",
                        [metric])["source"].to_list()
    if source is not None and source not in sources:
        sources = []
    if not sources:
        known = atlas.sql("SELECT DISTINCT metric FROM model_metrics ORDER BY 1")["metric"]
        raise AtlasError(f"no metric {metric!r}" + (f" from source {source!r}" if source else "")
                         + f" in the atlas (metrics: {', '.join(known.to_list()) or 'none'}); "
                         "import scores with `atlas import metrics FILE`")
    if len(sources) > 1:
        raise AtlasError(f"metric {metric!r} comes from several sources ({', '.join(sources)}); "
                         "name one with --source")
    values = atlas.sql("SELECT key, value FROM model_metrics WHERE metric = ? AND source = ?",
                       [metric, sources[0]])
    return values, sources[0]


def save_prediction(atlas: Atlas, result, textset: str, where: str | None) -> None:
    """Replace the stored predictions of ``result.metric`` (an analysis.predict.Prediction)."""
    rows = pa.table({
        "metric": [result.metric] * len(result.keys), "key": result.keys,
        "predicted": pa.array(result.predicted, pa.float64()),
        "observed": pa.array(result.observed, pa.float64(), from_pandas=True),
        "out_of_fold": pa.array(result.out_of_fold), "textset": [textset] * len(result.keys),
        "model_where": pa.array([where] * len(result.keys), pa.string()),
        "alpha": [result.alpha] * len(result.keys), "r2": [result.r2] * len(result.keys)})
    with atlas.store.transaction() as con:
        con.execute("DELETE FROM metric_predictions WHERE metric = ?", [result.metric])
        with registered(con, "new_predictions", rows):
            con.execute("INSERT INTO metric_predictions BY NAME SELECT * FROM new_predictions")


def domain_texts(atlas: Atlas, textset: str) -> tuple[list[str | None], list[int]]:
    """The domain and UTF-8 length of every text of a set, in order."""
    rows = atlas.sql("SELECT domain, n_bytes FROM texts JOIN textsets USING (textset_id) "
                     "WHERE name = ? ORDER BY idx", [textset])
    return rows["domain"].to_list(), rows["n_bytes"].to_list()


def model_metrics(atlas: Atlas, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(metric, value, source) and (metric, predicted, out_of_fold) of one model; empty frames
    for an atlas that predates metrics."""
    if not _has_table(atlas, "metric_values"):
        return pl.DataFrame(), pl.DataFrame()
    metrics = atlas.sql("SELECT metric, value, source FROM model_metrics WHERE key = ? "
                        "ORDER BY metric, source", [key])
    predicted = atlas.sql("SELECT metric, predicted, out_of_fold, r2 FROM metric_predictions "
                          "WHERE key = ? ORDER BY metric", [key])
    return metrics, predicted


def with_hub_ids(atlas: Atlas, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with a key column) and, when any of its keys was imported from a hub
    release, a hub_id column (null for the others): frames of other atlases keep their
    columns."""
    ids: dict[str, str] = {}
    if frame.height and _has_table(atlas, "hub_models"):
        ids = dict(atlas.sql("SELECT key, hub_id FROM hub_models WHERE list_contains(?, key)",
                             [frame["key"].to_list()]).iter_rows())
    if not ids:
        return frame
    return frame.with_columns(pl.Series("hub_id", [ids.get(k) for k in frame["key"]],
                                        pl.String))


# the papers' protocol and views ------------------------------------------------------------------
def protocol_context(atlas: Atlas, textset: str) -> protocol.Context:
    """Lineage, scoring provenance (dtype, tokenizer fingerprint) and hub model types on
    ``textset``, as frames (empty where the atlas predates those tables)."""
    context = protocol.Context()
    lineage = (atlas.sql("SELECT key, base_source, base_key FROM model_lineage")
               if _has_table(atlas, "model_lineage") else context.lineage)
    types = (atlas.sql("SELECT key, model_type FROM hub_models")
             if _has_table(atlas, "hub_models") else context.types)
    provenance = atlas.sql(
        "SELECT v.key, v.provenance->>'dtype' AS dtype, "
        "v.provenance->>'tokenizer_fingerprint' AS tokenizer_fingerprint "
        "FROM vector_rows v JOIN textsets t USING (textset_id) WHERE t.name = ?", [textset])
    return protocol.Context(lineage, provenance, types)


def text_bytes(atlas: Atlas, textset: str) -> np.ndarray:
    """The UTF-8 length of every text of a set, in order (B̄ over kept texts needs them)."""
    return np.asarray(domain_texts(atlas, textset)[1], dtype=np.float64)


def _require_views(atlas: Atlas) -> None:
    if not _has_table(atlas, "views"):
        raise ViewError(f"{atlas.path} predates views; open it writable once (e.g. `atlas "
                        "init`) to upgrade it")


def views(atlas: Atlas) -> pl.DataFrame:
    """The stored views: (name, kind, textset, model_set_hash, params, created_at), by name."""
    _require_views(atlas)
    return atlas.sql("SELECT name, kind, textset, model_set_hash, params, created_at FROM views "
                     "ORDER BY name")


def load_view(atlas: Atlas, name: str) -> View:
    """A stored view, ready to apply; an unknown name lists the stored ones."""
    _require_views(atlas)
    row = atlas.sql("SELECT kind, params, textset FROM views WHERE name = ?", [name])
    if row.height == 0:
        known = atlas.sql("SELECT name FROM views ORDER BY name")["name"].to_list()
        raise ViewError(f"no view {name!r} in {atlas.path} (views: {', '.join(known) or 'none'})"
                        "; make one with `atlas view create NAME`")
    kind, params, textset = row.row(0)
    return View.from_row(name, kind, json.loads(params), textset)


def save_view(atlas: Atlas, view: View, keys: list[str], replace: bool) -> None:
    """Store a fitted view with the hash of the model set it was fitted on."""
    from atlas.modelmap import model_set_hash

    _require_views(atlas)
    with atlas.store.transaction() as con:
        exists = con.execute("SELECT count(*) FROM views WHERE name = ?", [view.name]).fetchall()
        if exists[0][0] and not replace:
            raise ViewError(f"a view named {view.name!r} exists; choose another name or pass "
                            "--replace")
        con.execute("DELETE FROM views WHERE name = ?", [view.name])
        con.execute("INSERT INTO views (name, kind, params, textset, model_set_hash) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [view.name, view.kind, json.dumps(view.stored_params(), sort_keys=True),
                     view.textset, model_set_hash(keys)])


# calibration (sql/calibration.sql) ---------------------------------------------------------------
def variant_record(atlas: Atlas, key: str) -> dict:
    """How ``key`` was loaded: its models row's source, revision and layer, and its
    quantizations row (None for a float variant)."""
    row = atlas.sql("SELECT m.source, m.revision, m.layer, q.method, q.bits, q.group_size, "
                    "q.qtype, q.source_quant FROM models m LEFT JOIN quantizations q USING (key) "
                    "WHERE m.key = ?", [key]).row(0, named=True)
    quant = {name: row.pop(name) for name in ("method", "bits", "group_size", "qtype",
                                               "source_quant")}
    return {**row, "quantization": quant if quant["method"] is not None else None}


def scored_floors(atlas: Atlas) -> pl.DataFrame:
    """(key, textset, floor): each vector's precision floor for the dtype it was scored in."""
    if not _has_table(atlas, "precision_floors"):
        return pl.DataFrame(schema={"key": pl.String, "textset": pl.String, "floor": pl.Float64})
    return atlas.sql(
        "SELECT v.key, t.name AS textset, f.kl_bpb AS floor FROM vector_rows v "
        "JOIN textsets t USING (textset_id) JOIN precision_floors f ON f.key = v.key "
        "AND f.dtype = json_extract_string(v.provenance, '$.dtype')")


def with_floors(atlas: Atlas, pairs: pl.DataFrame,
                keys: tuple[str, str] = ("key_a", "key_b")) -> pl.DataFrame:
    """``pairs`` flagged by the stored precision floors (``flag_floors``: the rule)."""
    return flag_floors(pairs, scored_floors(atlas), keys)


def nearest_floors(atlas: Atlas, key: str, found: pl.DataFrame) -> pl.DataFrame:
    """``nearest`` rows (key, kl, textset …) with ``floor`` and ``within_floor`` against
    ``key`` when some pair has a measured floor; the rows as they were otherwise."""
    return with_floors(atlas, found.with_columns(_of=pl.lit(atlas.resolve(key))),
                       ("_of", "key")).drop("_of")


def with_calibrations(atlas: Atlas, pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` (key_a, key_b, textset …) with the estimator/MC ratio of their latest stored
    calibration (``est_over_mc``) when some pair has one; the rows as they were otherwise."""
    if not _has_table(atlas, "calibrations"):
        return pairs
    stored = atlas.sql("SELECT key_a, key_b, textset, ratio, created_at FROM calibrations")
    return with_ratios(pairs, pair_ratios(stored))


def calibrations(atlas: Atlas) -> pl.DataFrame:
    """Every row of ``calibrations`` (none on an atlas that predates the table)."""
    if not _has_table(atlas, "calibrations"):
        raise StoreError(f"{atlas.path} predates calibrations; open it writable once (e.g. "
                         "`atlas init`) to upgrade it, then run `atlas calibrate`")
    return atlas.sql("SELECT * FROM calibrations ORDER BY created_at, key_a, key_b")
