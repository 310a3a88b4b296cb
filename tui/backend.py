"""Everything the TUI asks of the atlas, as plain functions over a read-only ``Atlas``.

The screens never touch DuckDB themselves: they hand one of these functions to a thread worker
(``AtlasScreen.start``), which calls it through ``Backend.call`` and posts the result back as a
message. Keeping the queries here, free of Textual, makes them testable on their own and keeps
the UI thread free of I/O.

``Backend.call`` opens the atlas read-only for one job and releases the file afterwards (a
reopen costs ~20 ms), so an ingest in another process can take the write lock between two
screens' queries. DuckDB connections are not meant for concurrent use, so one lock serialises
the jobs of one backend; the SQL console has a backend of its own, so a long query there does
not hold up browsing.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import polars as pl

from atlas.api import Atlas
from atlas.errors import AtlasError

T = TypeVar("T")

NEAREST_K = 10
RELATED_PER_GROUP = 6  # other seeds / other sizes shown on the detail screen
WHERE_PREFIX = re.compile(r"^\s*where\s+", re.IGNORECASE)
RUN_KEY = ("family", "size", "seed")


class FilterError(AtlasError):
    """A model filter that is not one SQL condition over model_variants."""


class Backend:
    """A read-only atlas file, opened for one job at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._atlas: Atlas | None = None

    def interrupt(self) -> None:
        """Stop the running job's query (from the UI thread: takes no lock)."""
        atlas = self._atlas
        if atlas is not None:
            atlas.interrupt()

    def call(self, job: Callable[[Atlas], T]) -> T:
        """Run ``job(atlas)`` on the read-only atlas; the file is released afterwards."""
        with self._lock:
            if self._atlas is None:
                self._atlas = Atlas(self.path, read_only=True)
            try:
                return job(self._atlas)
            finally:
                self._atlas.close()


# models -----------------------------------------------------------------------------------------
PALETTE_KEYS = 200  # candidate keys the command palette scores per keystroke
# the atlas's own order (Atlas.models): checkpoints by step rather than by the text of their key
ATLAS_ORDER = ("family", "size", "seed", "quant", "layer", "step", "key")
# atlas.analysis.scale.size_value in SQL: the parameter count a label like 70m or 1.4b names
SIZE_VALUE = (r"CASE WHEN regexp_full_match(lower(trim(size)), '[0-9]+(\.[0-9]+)?[kmbt]') "
              r"THEN CAST(regexp_extract(lower(trim(size)), '^[0-9.]+') AS DOUBLE) "
              r"* pow(1000, strpos('kmbt', right(lower(trim(size)), 1))) END")
SORT_KEYS = {"key": ATLAS_ORDER, "size": (SIZE_VALUE, "size"), "checkpoint": ("step", "checkpoint")}
VARIANT_COLUMNS = ("key", "family", "size", "seed", "quant", "layer", "checkpoint", "n_params",
                   "textsets")
# one row per family: how many variants, and how many distinct values of each key column
GROUP_COLUMNS = ("family", "variants", "sizes", "seeds", "checkpoints", "quants", "layers")
GROUP_SELECT = ("family, count(*) AS variants, count(DISTINCT size) AS sizes, "
                "count(DISTINCT seed) AS seeds, count(DISTINCT checkpoint) AS checkpoints, "
                "count(DISTINCT quant) AS quants, count(DISTINCT layer) AS layers")
# the text sets each variant has vectors on, of the keys that pass a condition
TEXTSETS = ("SELECT key, string_agg(textset, ', ' ORDER BY textset) AS textsets "
            "FROM loglik_vectors WHERE {keys} GROUP BY key")
# model_variants with a textsets column: what a filter or an order on text sets needs
VARIANTS = ("(SELECT m.*, s.textsets FROM model_variants m "
            f"LEFT JOIN ({TEXTSETS.format(keys='true')}) s USING (key))")


@dataclass(frozen=True)
class ModelQuery:
    """What the Models screen shows, as SQL over model_variants: a filter (part of a key, or a
    condition), an order, and either the variants or one row per family.

    The screen never holds more than the rows it shows: a 100,000-variant atlas is filtered,
    sorted, counted and grouped by DuckDB, and read a page at a time.
    """

    text: str = ""  # part of a key, case-insensitive
    where: str | None = None  # or a SQL condition over model_variants (it wins)
    sort: str = "key"
    descending: bool = False
    grouped: bool = False

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
            raise ValueError(f"no column {self.sort!r} to sort by")
        direction = " DESC NULLS LAST" if self.descending else " NULLS LAST"
        by = (self.sort,) if self.grouped else SORT_KEYS.get(self.sort, (self.sort,))
        ties = ("family",) if self.grouped else ATLAS_ORDER
        return ", ".join([f"{term}{direction}" for term in by] + list(ties))


@dataclass
class ModelPage:
    """Rows ``offset`` … of a query, with the counts the status line shows."""

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
        rows = atlas.sql(_page_sql(query, condition, offset, limit), params)
    except AtlasError as exc:
        if query.where is None:
            raise
        raise FilterError(_first_line(exc)) from None
    variants, families, total = counts
    return ModelPage(query, offset, rows, families if query.grouped else variants, variants,
                     total)


def _page_sql(query: ModelQuery, condition: str, offset: int, limit: int) -> str:
    """The page's rows: families, or variants with the text sets of the page's keys alone."""
    order = query.order_by()
    window = f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(offset)}"
    if query.grouped:
        return (f"SELECT {GROUP_SELECT} FROM {query.source} WHERE {condition} GROUP BY family "
                f"{window}")
    if query.source == VARIANTS:
        return f"SELECT * FROM {VARIANTS} WHERE {condition} {window}"
    textsets = TEXTSETS.format(keys="key IN (SELECT key FROM page)")
    return (f"WITH page AS (SELECT * FROM model_variants WHERE {condition} {window}) "
            f"SELECT page.*, s.textsets FROM page LEFT JOIN ({textsets}) s USING (key) "
            f"ORDER BY {order}")


def matching_keys(atlas: Atlas, text: str, limit: int = PALETTE_KEYS) -> list[str]:
    """Keys holding the characters of ``text`` in order (the palette's fuzzy rule), keys that
    contain it as a whole first: candidates for the palette to score, found by DuckDB."""
    chars = [c for c in text.lower() if not c.isspace()]
    if not chars:
        return []
    pattern = "%" + "%".join("\\" + c if c in "%_\\" else c for c in chars) + "%"
    return atlas.sql("SELECT key FROM model_variants WHERE lower(key) LIKE ? ESCAPE '\\' "
                     "ORDER BY NOT contains(lower(key), ?), length(key), key LIMIT ?",
                     [pattern, "".join(chars), limit])["key"].to_list()


def where_clause(text: str) -> str | None:
    """The condition of a ``where …`` filter, or None when ``text`` is a plain substring."""
    if not WHERE_PREFIX.match(text):
        return None
    return WHERE_PREFIX.sub("", text, count=1).strip()


def where_query(clause: str) -> str:
    """``SELECT key FROM model_variants WHERE (clause)``, refused unless it is one SELECT."""
    if not clause:
        raise FilterError("write a condition after 'where', e.g. where family = 'pythia'")
    query = f"SELECT key FROM model_variants WHERE ({clause})"
    one_select(query, FilterError, "a filter is one condition over model_variants (no ';')")
    return query


def one_select(query: str, error: type[Exception], message: str):
    """The parsed statement of ``query`` if it is exactly one SELECT, else ``error``."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise error(_first_line(exc)) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise error(message)
    return statements[0]


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sort_models(models: pl.DataFrame, column: str, descending: bool = False) -> pl.DataFrame:
    """Sorted by ``column`` (nulls last), ties in the atlas's order.

    The key sorts in the atlas's order (steps numerically), sizes by the number they name,
    checkpoints by step.
    """
    if column not in models.columns:
        return models
    by: list[Any] = [pl.col(column)]
    if column == "size":
        from atlas.analysis.scale import size_value

        by = [pl.col("size").map_elements(size_value, return_dtype=pl.Float64), pl.col("size")]
    elif column == "checkpoint" and "step" in models.columns:
        by = [pl.col("step"), pl.col("checkpoint")]
    elif column == "key" and "order" in models.columns:
        by = [pl.col("order")]
    tie = [pl.col("order")] if "order" in models.columns else [pl.col("key")]
    return models.sort([*by, *tie], descending=[descending] * len(by) + [False] * len(tie),
                       nulls_last=True)


# one model ---------------------------------------------------------------------------------------
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
    info: dict[str, Any]
    textsets: list[dict[str, Any]]  # name, n_texts, mean_bytes of the sets with its vectors
    textset: str | None  # the set the KLs below are on
    nearest: pl.DataFrame
    related: list[Related] = field(default_factory=list)


def model_detail(atlas: Atlas, key: str, textset: str | None = None,
                 k: int = NEAREST_K) -> Detail:
    """Provenance, nearest models and KLs to related variants of one model."""
    key = atlas.resolve(key)
    models = atlas.models()
    row = models.filter(pl.col("key") == key).row(0, named=True)
    info = dict(row)
    try:  # revision and created_at live in the models table, outside the public view
        extra = atlas.sql("SELECT revision, created_at FROM models WHERE key = ?", [key])
        if extra.height:
            info.update(extra.row(0, named=True))
    except AtlasError:
        pass
    names = atlas.sql("SELECT textset FROM loglik_vectors WHERE key = ? ORDER BY textset",
                      [key])["textset"].to_list()
    sets = atlas.textsets().filter(pl.col("name").is_in(names))
    textsets = sets.select("name", "n_texts", "mean_bytes").to_dicts()
    if textset is None or textset not in names:
        textset = names[0] if names else None
    if textset is None:
        nearest = pl.DataFrame(schema={"key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                       "textset": pl.String})
        return Detail(key, info, textsets, None, nearest, [])
    nearest = atlas.nearest(key, k=k, textset=textset)
    related = [_related_kl(atlas, key, relation, other, textset)
               for relation, other in related_keys(models, row)]
    return Detail(key, info, textsets, textset, nearest, related)


def _same(models: pl.DataFrame, row: dict, columns: tuple[str, ...]) -> pl.DataFrame:
    """The rows that agree with ``row`` on ``columns`` (nulls equal)."""
    cond = pl.lit(True)
    for name in columns:
        cond = cond & pl.col(name).eq_missing(row[name])
    return models.filter(cond)


def related_keys(models: pl.DataFrame, row: dict) -> list[tuple[str, str]]:
    """(relation, key) pairs: parent, fine-tunes, previous/next checkpoint, seeds, sizes."""
    key = row["key"]
    found: list[tuple[str, str]] = []
    keys = set(models["key"].to_list())
    if row.get("parent"):
        found.append(("parent", row["parent"]))
    children = models.filter(pl.col("parent") == key)["key"].to_list()
    found += [("fine-tune", child) for child in children[:RELATED_PER_GROUP]]
    if row.get("step") is not None:
        run = _same(models, row, ("family", "size", "seed", "quant", "layer")).filter(
            pl.col("step").is_not_null()).sort("step", "key")
        earlier = run.filter(pl.col("step") < row["step"])
        later = run.filter(pl.col("step") > row["step"])
        if earlier.height:
            found.append(("previous checkpoint", earlier["key"][-1]))
        if later.height:
            found.append(("next checkpoint", later["key"][0]))
    seeds = _same(models, row, ("family", "size", "quant", "layer", "checkpoint")).filter(
        pl.col("seed").ne_missing(row["seed"])).sort("seed", nulls_last=False)
    found += [("other seed", k) for k in seeds["key"].to_list()[:RELATED_PER_GROUP]]
    sizes = _same(models, row, ("family", "seed", "quant", "layer", "checkpoint")).filter(
        pl.col("size") != row["size"])
    sizes = sort_models(sizes, "size")
    found += [("other size", k) for k in sizes["key"].to_list()[:RELATED_PER_GROUP]]
    return [(relation, other) for relation, other in found
            if other != key and (other in keys or relation == "parent")]


def _related_kl(atlas: Atlas, key: str, relation: str, other: str, textset: str) -> Related:
    try:
        result = atlas.kl(key, other, textset=textset)
    except AtlasError as exc:
        return Related(relation, other, error=_first_line(exc))
    return Related(relation, result.key_b, result.value, result.se)


# SQL console -------------------------------------------------------------------------------------
SQL_DISPLAY_ROWS = 500  # rows of a result the console keeps and shows; the rest are counted
SQL_BATCH_ROWS = 2_048  # rows DuckDB hands over at a time
PROGRESS_SECONDS = 0.25  # at most this often, a running query reports its rows so far


@dataclass
class QueryResult:
    """The first ``SQL_DISPLAY_ROWS`` rows of a result (``shown``) and how many it had."""

    query: str
    shown: pl.DataFrame
    rows: int
    seconds: float


def run_query(atlas: Atlas, query: str,
              progress: Callable[[pl.DataFrame, int], None] | None = None) -> QueryResult:
    """Stream a query's result: keep its first rows, count the rest, and call
    ``progress(shown, rows so far)`` once the first rows are in and then every
    ``PROGRESS_SECONDS``, so the console shows rows while a long result is still coming.

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


def export_result(atlas: Atlas, query: str, path: Path) -> int:
    """Write the whole result of ``query`` (one SELECT) to a .csv or .parquet file; returns how
    many rows it wrote. ``Atlas.export`` writes it from Python: the read-only session itself
    cannot write files."""
    statement = one_select(query, AtlasError, "only the result of one SELECT can be exported")
    return atlas.export(statement.query.strip().rstrip(";"), path)


# runs, trajectories, diffusion ------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    family: str
    size: str
    seed: int | None
    n_checkpoints: int

    @property
    def label(self) -> str:
        seed = "" if self.seed is None else f"/s{self.seed}"
        return f"{self.family}-{self.size}{seed}"

    @property
    def ident(self) -> str:
        return f"{self.family}\t{self.size}\t{'' if self.seed is None else self.seed}"


def runs(atlas: Atlas) -> list[Run]:
    """Training runs with two or more numbered checkpoints (output variants), by label."""
    models = atlas.models().filter(pl.col("quant").is_null(), pl.col("layer").is_null(),
                                   pl.col("step").is_not_null())
    counted = models.group_by(list(RUN_KEY)).agg(n=pl.col("step").n_unique())
    found = [Run(f, s, d, n) for f, s, d, n in counted.iter_rows() if n >= 2]
    return sorted(found, key=lambda r: (r.family, r.size, -1 if r.seed is None else r.seed))


def _no_sketches(exc: AtlasError) -> bool:
    return "no weight sketch" in str(exc)


@dataclass
class RunResult:
    """What a run screen shows: ``value`` (a frame or a DiffusionResult), on ``textset``, one of
    the ``textsets`` that hold a vector of every checkpoint of the run."""

    value: Any
    textset: str
    textsets: list[str]


def run_textsets(atlas: Atlas, run: Run) -> tuple[list[str], list[str]]:
    """(checkpoint keys in step order, the text sets holding a vector of each of them)."""
    from atlas.analysis import trajectory as traj

    keys = traj.checkpoints(atlas, run.family, run.size, run.seed)["key"].to_list()
    sets = atlas.sql("SELECT textset FROM loglik_vectors WHERE list_contains(?, key) "
                     "GROUP BY textset HAVING count(*) = ? ORDER BY textset",
                     [keys, len(keys)])["textset"].to_list()
    if not sets:
        raise AtlasError(f"the checkpoints of {run.label} share no text set: score them all on "
                         "one to compare them")
    return keys, sets


def _pick(sets: list[str], textset: str | None) -> str:
    return textset if textset in sets else sets[0]


def trajectory(atlas: Atlas, run: Run, textset: str | None = None) -> RunResult:
    """KL (with SE) between consecutive checkpoints: atlas.analysis.trajectory.consecutive."""
    from atlas.analysis import trajectory as traj

    _, sets = run_textsets(atlas, run)
    chosen = _pick(sets, textset)
    try:
        return RunResult(traj.consecutive(atlas, run.family, run.size, run.seed, chosen),
                         chosen, sets)
    except AtlasError as exc:
        if not _no_sketches(exc):
            raise
    # trajectory.load insists on a weight sketch of every checkpoint (Store.sketches raises
    # for missing ones); without them the KLs come from the vectors alone
    from atlas.kl import kl_bpb, kl_se_bpb

    keys, steps, loglik, mean_bytes = run_vectors(atlas, run, chosen)
    rows = [{"step": int(steps[i]), "next_step": int(steps[i + 1]), "key": keys[i],
             "next_key": keys[i + 1], "kl": kl_bpb(loglik[i], loglik[i + 1], mean_bytes),
             "se": kl_se_bpb(loglik[i], loglik[i + 1], mean_bytes), "weight_sq": None}
            for i in range(len(keys) - 1)]
    frame = pl.DataFrame(rows, schema={"step": pl.Int64, "next_step": pl.Int64,
                                       "key": pl.String, "next_key": pl.String,
                                       "kl": pl.Float64, "se": pl.Float64,
                                       "weight_sq": pl.Float64})
    return RunResult(frame, chosen, sets)


def run_vectors(atlas: Atlas, run: Run, textset: str
                ) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """(keys, steps, log-likelihoods K × N, B̄) of a run's checkpoints on ``textset``, read
    through the public views."""
    from atlas.analysis import trajectory as traj

    checkpoints = traj.checkpoints(atlas, run.family, run.size, run.seed)
    keys = checkpoints["key"].to_list()
    vectors = atlas.sql("SELECT key, loglik, mean_bytes FROM loglik_vectors "
                        "WHERE textset = ? AND list_contains(?, key)", [textset, keys])
    by_key = dict(zip(vectors["key"].to_list(), vectors["loglik"].to_list(), strict=True))
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise AtlasError(f"no vector on {textset} for {', '.join(missing)}")
    loglik = np.array([by_key[k] for k in keys], dtype=np.float64)
    return keys, checkpoints["step"].to_numpy(), loglik, float(vectors["mean_bytes"][0])


def default_window(n_checkpoints: int) -> int:
    """The CLI's window of 10 lags, shortened for short runs to half their lags (at least 3),
    so that several starts t0 have a full window."""
    return min(10, max(3, (n_checkpoints - 1) // 2))


def diffusion(atlas: Atlas, run: Run, window: int, textset: str | None = None,
              n_boot: int = 200) -> RunResult:
    """c_q, c_w, α of a run: atlas.analysis.trajectory.fit (c_q alone without sketches)."""
    from atlas.analysis import trajectory as traj

    _, sets = run_textsets(atlas, run)
    chosen = _pick(sets, textset)
    try:
        return RunResult(traj.fit(atlas, run.family, run.size, run.seed, window=window,
                                  textset=chosen, n_boot=n_boot), chosen, sets)
    except AtlasError as exc:
        if not _no_sketches(exc):
            raise
    from atlas.analysis.diffusion import diffusion as fit

    _, steps, loglik, mean_bytes = run_vectors(atlas, run, chosen)
    result = fit(steps, loglik, mean_bytes, weight_sq=None, window=window, n_boot=n_boot)
    return RunResult(result, chosen, sets)


def fitted_line(lags, distances, slope: float | None) -> tuple[list[float], list[float]] | None:
    """A line of the fitted slope through the centroid of the (ln Δt, ln D) points."""
    if slope is None or lags is None or distances is None:
        return None
    pairs = [(math.log(t), math.log(d)) for t, d in zip(lags.ravel(), distances.ravel(),
                                                       strict=True)
             if t > 0 and d is not None and math.isfinite(d) and d > 0]
    if not pairs:
        return None
    xs = [p[0] for p in pairs]
    mx, my = sum(xs) / len(xs), sum(p[1] for p in pairs) / len(pairs)
    lo, hi = min(xs), max(xs)
    return [lo, hi], [my + slope * (lo - mx), my + slope * (hi - mx)]


# scale and maps ----------------------------------------------------------------------------------
def text_set_names(atlas: Atlas) -> list[str]:
    return atlas.sql("SELECT DISTINCT textset FROM loglik_vectors ORDER BY 1")["textset"].to_list()


def kl_scale(atlas: Atlas, textset: str | None = None, where: str | None = None) -> pl.DataFrame:
    from atlas.analysis import scale

    return scale.scale(atlas, where=where or None, textset=textset)


def map_names(atlas: Atlas) -> pl.DataFrame:
    from atlas.analysis import maps

    return maps.maps(atlas)


def map_points(atlas: Atlas, name: str) -> pl.DataFrame:
    from atlas.analysis import maps

    return maps.load_map(atlas, name)


# messages ----------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    """The message on one line, without DuckDB's echo of the query (LINE 1: … and its caret)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines
            if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept) or type(exc).__name__


def error_text(exc: BaseException) -> str:
    """A one-paragraph message for the user: atlas errors as they are, others with their type."""
    if isinstance(exc, AtlasError | duckdb.Error):
        return str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
