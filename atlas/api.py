"""The Python API that the CLI and the TUI are thin over.

    import atlas
    db = atlas.open()                         # ./atlas.duckdb, or $ATLAS_DB
    db.import_textset("texts.jsonl", name="pile-2k")
    db.ingest("EleutherAI/pythia-70m", revision="step1000", family="pythia", size="70m",
              checkpoint="step1000", textset="pile-2k")
    db.kl("pythia-70m@step1000", "pythia-70m@step2000")     # KL(value, se, textset)
    db.nearest("pythia-70m@step1000", k=10)                 # polars DataFrame
    db.sql("SELECT * FROM model_variants")                  # any SQL → polars
    db.scale(where="family = 'pythia'")                     # the KL scale per setting
    run = db.run("pythia", "70m")                           # a training run's checkpoints
    db.diffusion(run, window=10, save=True).value           # c_q, c_w, α (stored)
    db.fit_map("tsne", textset="pile-2k")                   # a 2-D map, stored

Results come out as polars DataFrames. An open Atlas holds its DuckDB file (one writer *or*
many readers across processes) until ``close()``; ingest releases it while scoring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import polars as pl

from atlas import extras, pairs, queries
from atlas.analysis import maps, predict, protocol, scale, trajectory, views
from atlas.analysis.maps import MapResult
from atlas.analysis.predict import Prediction
from atlas.analysis.scale import Setting
from atlas.analysis.views import View, ViewError
from atlas.errors import AtlasError, StoreError, UnknownKeyError
from atlas.extras import require_scoring
from atlas.keys import ModelKey, quant_label
from atlas.kl import KLMatrix, kl_matrix
from atlas.queries import (
    Detail,
    FilterError,
    ModelPage,
    ModelQuery,
    QueryResult,
    Related,
    Run,
    RunResult,
)
from atlas.store import Store, StoredTextSet, duckdb_message
from atlas.textsets import TextSet, check_name, load_textset
from atlas.weights import DEFAULT_DIM as DEFAULT_SKETCH_DIM

if TYPE_CHECKING:  # torch and transformers load only when a model is ingested: readers
    from atlas.modelmap import ReleaseReport
    from atlas.pipeline.ingest import IngestResult  # (the TUI, SQL) start in a fraction of time
    from atlas.specs import QuantSpec

DEFAULT_DB = "atlas.duckdb"
# what a reader's methods return (atlas.queries), importable from here with Atlas
__all__ = ["KL", "Atlas", "Detail", "FilterError", "ModelPage", "ModelQuery", "QueryResult",
           "Related", "Run", "RunResult", "default_db_path", "open"]


def default_db_path() -> Path:
    """``$ATLAS_DB`` if set, else ``./atlas.duckdb``."""
    return Path(os.environ.get("ATLAS_DB") or DEFAULT_DB)


@dataclass(frozen=True)
class KL:
    """A KL estimate in bits/byte with its delta-method standard error."""

    key_a: str
    key_b: str
    value: float
    se: float
    textset: str


# DuckDB's words when query() (inside nearest) is given a column of a lateral join
LATERAL_QUERY = 'Table function "query" does not support lateral join'


class Atlas:
    """One atlas file."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False) -> None:
        self.store = Store(path or default_db_path(), read_only=read_only)

    @property
    def path(self) -> Path:
        return self.store.path

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file (other processes can then open it); later calls reopen it."""
        self.store.release()

    # text sets ----------------------------------------------------------------------------------
    def import_textset(self, source: str | Path | TextSet, name: str) -> tuple[StoredTextSet, bool]:
        """Store a text set (file, folder or ``TextSet``); returns (stored set, whether new)."""
        check_name(name)  # before reading what may be a large file
        textset = source if isinstance(source, TextSet) else load_textset(source)
        return self.store.add_textset(textset, name)

    def textsets(self) -> pl.DataFrame:
        return self.sql("SELECT name, n_texts, mean_bytes, content_hash, source, created_at "
                        "FROM textsets ORDER BY name")

    # ingest ------------------------------------------------------------------------------------
    def ingest(self, source: str, *, family: str, size: str, textset: str,
               seed: int | None = None, checkpoint: str | None = None,
               revision: str | None = None, quant: str | None = None,
               parent: str | None = None, device: str = "auto", dtype: str = "auto",
               batch_size: int | None = None, max_length: int | None = None, force: bool = False,
               trust_remote_code: bool = False, progress: bool = True,
               sketch_dim: int = DEFAULT_SKETCH_DIM, layers: str | Sequence[int] | None = None,
               lens_norm: str | None = None, lens_head: str | None = None,
               quantize: str | QuantSpec | None = None, bits: int | None = None,
               group_size: int | None = None, quant_type: str | None = None,
               calibration: str | Path | None = None,
               allow_missing: Sequence[str] = ()) -> IngestResult:
        """Score a model (hub id, local directory or .gguf file) and store its vector.

        ``checkpoint`` defaults to ``revision`` so hub checkpoints key themselves. The weights
        are sketched for weight-space distances unless ``sketch_dim`` is 0 (atlas.weights).

        ``layers`` ("all", "0,6,12", or a list of ints) scores those hidden states through the
        logit lens instead (0 = embeddings, l = output of block l, the last = the model's own
        output), all from one forward pass per batch, each stored as ``FAMILY-SIZE#LAYER``;
        ``result.layers`` says which were stored and which were there already.
        ``lens_norm`` / ``lens_head`` give the module paths of the final norm (comma-separated
        chain, or "none") and the unembedding for architectures atlas.lens does not describe.

        ``quantize`` (a method: torchao, bnb, gptq, with ``bits``, ``group_size``,
        ``quant_type``; or a label such as "int8", "bnb-nf4", "gptq-4bit-g128") scores the model
        quantized (atlas.quantize); GPTQ calibrates on ``calibration`` (a text-set file), by
        default on the default text set's training split. The key's quant is the label of what
        was loaded (a GGUF source's type, a pre-quantized checkpoint's config, then ``quantize``
        on top); ``quant`` may repeat it, or name a float variant freely.

        A checkpoint that lacks weights the model needs (transformers would initialise them
        randomly) or holds weights it does not use is refused, unless ``allow_missing`` (globs
        of weight names) names them; the patterns and the keys they let through are stored in
        the vector's provenance. ``result.warnings`` says what the user should know, e.g. how
        many texts were truncated to ``max_length`` tokens.
        """
        require_scoring("ingest")
        from atlas.layers import LensOverride
        from atlas.loading import allowed_patterns, check_source, resolve_device
        from atlas.pipeline.ingest import ingest
        from atlas.quantize import key_quant, require, source_label
        from atlas.specs import ModelSpec, QuantizeError, QuantSpec

        if self.store.read_only:
            raise StoreError(f"{self.path} is open read-only; open it writable to ingest")
        spec = ModelSpec(source=str(source), revision=revision, device=device, dtype=dtype,
                         trust_remote_code=trust_remote_code,
                         calibration=None if calibration is None else str(calibration),
                         allow_missing=allowed_patterns(allow_missing))
        if parent is not None:  # the cheapest check first; the write checks it again
            parent = self.store.resolve_parent(
                parent, ModelKey(family, size, seed, checkpoint=checkpoint or revision),
                fix="ingest or import the parent first, or drop --parent")
        check_source(spec)  # a bad path, config or file is refused before anything is stored
        if isinstance(quantize, str):
            quantize = quant_label(quantize)  # --quantize none: as loaded
        if quantize is not None:
            method = quantize if isinstance(quantize, QuantSpec) else QuantSpec.from_options(
                quantize, bits, group_size, quant_type)
            require(method, resolve_device(device))  # before anything is loaded or stored
            spec.quantize = method.on(source_label(spec))
        elif (bits, group_size, quant_type, calibration) != (None, None, None, None):
            raise QuantizeError("--bits, --group-size, --quant-type and --calibration describe "
                                "a quantization: they need --quantize")
        key = ModelKey(family=family, size=size, seed=seed, quant=key_quant(spec, quant),
                       checkpoint=checkpoint or revision)
        lens = LensOverride(lens_norm, lens_head) if (lens_norm or lens_head) else None
        return ingest(self.store, spec, key, textset, parent=parent, batch_size=batch_size,
                      max_length=max_length, force=force, progress=progress,
                      sketch_dim=sketch_dim, layers=layers, lens=lens)

    def import_vectors(self, path: str | Path, textset: str, force: bool = False,
                       progress: bool = False) -> list[tuple[str, bool]]:
        """Import precomputed vectors: Parquet or the reference pickle (atlas.imports), or the
        reference scorer's per-model JSONL files, a folder of them or one (atlas.modelmap)."""
        path = Path(path)
        if path.is_dir() or path.suffix == ".jsonl":
            from atlas.modelmap import import_scorer_files

            return import_scorer_files(self.store, path, textset, force=force)
        from atlas.imports import import_vectors

        return import_vectors(self.store, path, textset, force=force, progress=progress)

    def import_release(self, folder: str | Path, textset: str | None = None,
                       force: bool = False) -> ReleaseReport:
        """Import the reference papers' published release (its folder or its data/, any subset
        of its files): text set, vectors, hub metadata, lineage, scores, the clipping view."""
        from atlas.modelmap import import_release

        return import_release(self.store, folder, textset, force=force)

    def import_metrics(self, path: str | Path, source: str | None = None) -> int:
        """Store the metrics of a CSV or Parquet file (long: key/hub_id, metric, value; or wide:
        one column per metric) under ``source`` (default: the file's name); returns the rows."""
        queries._require_metric_tables(self)
        return queries.save_metrics(self, queries.read_metrics(self, Path(path), source))

    def add_domain_losses(self, textset: str | None = None) -> int:
        """Each model's loss per domain of the text set (bits/byte, from its stored vector) as
        metrics ``loss/DOMAIN``, source ``atlas-TEXTSET``; returns the rows stored."""
        textset = queries.analysis_textset(self, textset)
        keys, loglik, _ = self.store.matrix(None, textset)
        domains, n_bytes = queries.domain_texts(self, textset)
        losses = predict.domain_losses(loglik, domains, n_bytes)
        rows = pl.DataFrame([{"key": key, "metric": f"loss/{domain}", "value": float(v[i]),
                              "source": f"atlas-{textset}"}
                             for domain, v in losses.items() for i, key in enumerate(keys)],
                            schema={"key": pl.String, "metric": pl.String, "value": pl.Float64,
                                    "source": pl.String})
        return queries.save_metrics(self, rows) if rows.height else 0

    def predict(self, metric: str, where: str | None = None, textset: str | None = None,
                folds: int = 5, source: str | None = None, save: bool = True) -> Prediction:
        """Predict ``metric`` from the vectors of the models on ``textset`` that satisfy
        ``where`` (atlas.analysis.predict): cross-validated R², Pearson r and alpha, out-of-fold
        predictions for models with the metric and predictions for those without; ``save``
        stores them in ``metric_predictions`` (replacing that metric's)."""
        extras.require("atlas predict", "sklearn")
        values, source = queries.metric_values(self, metric, source)
        chosen = queries.selection(self, where, textset)
        keys, loglik, _ = self.store.matrix(sorted(chosen.models["key"].to_list()),
                                            chosen.textset)
        known = dict(values.iter_rows())
        observed = np.array([known.get(k, np.nan) for k in keys], dtype=np.float64)
        result = predict.predict_metric(metric, keys, loglik, observed, folds=folds,
                                        bounds=queries.LEADERBOARD_BOUNDS.get(source))
        if save:
            queries.save_prediction(self, result, chosen.textset, chosen.where)
        return result

    # queries -----------------------------------------------------------------------------------
    def sql(self, query: str, params: list | dict | None = None) -> pl.DataFrame:
        """Run any SQL (macros included) and return a polars DataFrame."""
        with self.store.connect() as con:
            try:
                relation = con.sql(query, params=params)
                return pl.DataFrame() if relation is None else pl.from_arrow(
                    relation.to_arrow_table())
            except duckdb.Error as exc:
                raise self._sql_error(exc) from None

    def sql_batches(self, query: str, batch_rows: int = 10_000) -> Iterator[pl.DataFrame]:
        """Run any SQL and yield its result in DataFrames of up to ``batch_rows`` rows as DuckDB
        produces them, so the first rows of a large result can be shown (or the rest left
        unread) before the last are computed. The first frame is empty and carries the columns
        (none for a statement without a result)."""
        with self.store.connect() as con:
            try:
                relation = con.sql(query)
                if relation is None:
                    yield pl.DataFrame()
                    return
                reader = relation.to_arrow_reader(batch_rows)
                yield pl.from_arrow(reader.schema.empty_table())
                for batch in reader:
                    yield pl.from_arrow(batch)
            except duckdb.Error as exc:
                raise self._sql_error(exc) from None

    def _sql_error(self, exc: duckdb.Error) -> AtlasError:
        """A query's error as DuckDB words it; one about the file (damage, no space, a
        read-only session reaching outside the atlas) as the store explains it; nearest()
        given a column (it runs query(), which takes constants) with the macro that takes one."""
        message = duckdb_message(exc)
        if LATERAL_QUERY in message:
            message += (" nearest() takes a constant key: per row of a table, call "
                        "nearest_raw(t.key, k, NULL) (or nearest_viewed(t.key, k, NULL, 'VIEW'))")
        return self.store.classify(exc) or AtlasError(message)

    def interrupt(self) -> None:
        """Stop the query this atlas is running in another thread (its caller gets an
        AtlasError saying it was interrupted); nothing happens when none runs."""
        con = self.store._con  # the open connection, if any; never opens one
        if con is not None:
            con.interrupt()

    def models(self) -> pl.DataFrame:
        """All model variants with their key columns, sorted by key."""
        return self.sql("SELECT * FROM model_variants ORDER BY family, size, seed, quant, layer, "
                        "step, key")

    def resolve(self, key: str) -> str:
        return self.store.resolve(key)

    def kl(self, key_a: str, key_b: str, textset: str | None = None,
           view: str | View | None = None) -> KL:
        """KL(a, b) in bits/byte with its SE, on the one text set both share (or ``textset``);
        through ``view`` (a stored view), on the view's text set."""
        a, b = self.resolve(key_a), self.resolve(key_b)  # in order: the first unknown is named
        if view is not None:
            fitted = self._view(view)
            matrix = self.kl_matrix([a, b], textset or fitted.textset, view=fitted)
            return KL(a, b, float(matrix.kl[0, 1]), float(matrix.se[0, 1]), fitted.textset)
        if textset is not None:
            self.store.textset(textset)  # a missing set is named as such, with the stored ones
        shared = self._keyed_sql(
            "SELECT kl_centred(c_a, c_b, mean_bytes), kl_se_bpb(c_a, c_b, mean_bytes), textset "
            "FROM canonical_shared_vectors(?, ?, ?)", [a, b, textset])  # one scan: value, SE, set
        if shared.height != 1:
            self._keyed_sql("SELECT kl(?, ?, ?)", [a, b, textset])  # raises the SQL's message
        return KL(a, b, *shared.row(0))

    def nearest(self, key: str, k: int = 10, textset: str | None = None,
                view: str | View | None = None) -> pl.DataFrame:
        """The ``k`` variants nearest to ``key`` by KL: (key, kl, se, textset), nearest first,
        and hub_id when some of them were imported from a hub release: the brute-force top k
        with exact values, but for a chance of at most k · RESID_FAILURE (10⁻¹² a vector, over
        the random residual projection of sets longer than 320 texts; atlas.sketches). Through
        ``view``: a stored view's name goes to SQL's nearest (a scan of the view's text set a
        part at a time: 0.97 s at 10⁴ × 10⁴ where reading and viewing every vector in numpy took
        10.3 s, bench/bench_views.py); a ``View`` object, stored or fitted on the fly, is applied
        in numpy."""
        if isinstance(view, View):
            return queries.with_hub_ids(self, self._nearest_viewed(key, k, textset, view))
        found = queries.with_hub_ids(self, self._keyed_sql(
            "SELECT * FROM nearest(?, ?, ?, view := ?)", [key, k, textset, view]))
        if view is not None:
            return found
        if textset is not None and found.is_empty():
            self.store.textset(textset)  # an unknown name is named as such
            has = self.sql("SELECT textset FROM loglik_vectors WHERE key = ? ORDER BY 1",
                           [self.resolve(key)])["textset"].to_list()
            if textset not in has:
                raise AtlasError(f"{self.resolve(key)} has no vector on text set '{textset}' "
                                 f"(it has: {', '.join(has) or 'none'}); choose one of those "
                                 "with --textset")
        return queries.nearest_floors(self, key, found)

    def _nearest_viewed(self, key: str, k: int, textset: str | None,
                        fitted: View) -> pl.DataFrame:
        textset = textset or fitted.textset
        key = self.resolve(key)
        keys, loglik, mean_bytes = self.viewed_matrix(None, textset, fitted)
        if key not in keys:
            raise UnknownKeyError(f"{key} has no vector on text set '{textset}', the text set "
                                  f"of view {fitted.name!r}; measure it on that set first")
        rows = views.nearest(keys, loglik, mean_bytes, key, k)
        return pl.DataFrame([(*row, textset) for row in rows], orient="row",
                            schema={"key": pl.String, "kl": pl.Float64, "se": pl.Float64,
                                    "textset": pl.String})

    def _keyed_sql(self, query: str, params: list) -> pl.DataFrame:
        """SQL whose macros resolve keys: their lookup failures become ``UnknownKeyError``."""
        try:
            return self.sql(query, params)
        except AtlasError as exc:
            if "model key" in str(exc):
                raise UnknownKeyError(str(exc)) from None
            raise

    def kl_matrix(self, keys: list[str] | None = None, textset: str | None = None,
                  with_se: bool = True, view: str | View | None = None) -> KLMatrix:
        """All-pairs KL (bits/byte) and SEs with BLAS, for ``keys`` or every vector on the set,
        through ``view`` (a stored view's name; None: the raw vectors)."""
        found, matrix, mean_bytes = self._kl_inputs(keys, textset, view)
        return kl_matrix(matrix, mean_bytes, found, with_se=with_se)

    def kl_pairs(self, path: str | Path, keys: list[str] | None = None,
                 textset: str | None = None, view: str | View | None = None, block: int = 1024,
                 with_se: bool = True) -> int:
        """``kl_matrix``'s pairs i < j as Parquet rows (key_a, key_b, kl[, se]) at ``path``,
        computed ``block`` × ``block`` models at a time so that 10⁴ models fit in memory;
        returns the number of pairs written."""
        path = Path(path)
        pairs.check_output(path)
        found, matrix, mean_bytes = self._kl_inputs(keys, textset, view)
        if len(found) < 2:
            raise pairs.PairsError(f"no pairs to write to {path}: {len(found)} model(s) with a "
                                   "vector were chosen; choose at least two (--where, --textset)")
        return pairs.write_pairs(path, found, matrix, mean_bytes, block, with_se)

    def _kl_inputs(self, keys: list[str] | None, textset: str | None,
                   view: str | View | None) -> tuple[list[str], np.ndarray, float]:
        if keys is not None:
            keys = [self.resolve(k) for k in keys]
        if textset is None:
            textset = self.only_textset()
        return self.viewed_matrix(keys, textset, view)

    def vector_textsets(self) -> list[str]:
        """The names of the text sets holding any vector, sorted."""
        return self.sql("SELECT DISTINCT textset FROM loglik_vectors ORDER BY 1"
                        )["textset"].to_list()

    def only_textset(self) -> str:
        names = self.vector_textsets()
        if len(names) != 1:
            raise AtlasError("name a text set: the atlas holds vectors on "
                             + (", ".join(names) if names else "no text set"))
        return names[0]

    # calibration (atlas.calibration) ----------------------------------------------------------
    def calibrate(self, key_a: str, key_b: str, *, samples: int = 64, length: int = 128,
                  prompts: str | None = None, seed: int = 0, device: str = "auto",
                  dtype: str = "auto", textset: str | None = None,
                  batch_size: int | None = None, progress: bool = True,
                  save: bool = True) -> dict:
        """Monte-Carlo KL between two stored variants in both directions, beside the atlas's
        estimate on their shared text set (or ``textset``); stored in ``calibrations``.

        Both models load from their recorded source, revision and quantization; samples are
        ancestral from BOS, or continue the first 32 tokens of the texts of ``prompts``."""
        require_scoring("calibrate")
        import time

        from atlas import calibration

        estimate = self.kl(key_a, key_b, textset)
        starts = None if prompts is None else self.store.texts(
            self.store.textset(prompts).textset_id)
        specs = [calibration.variant_spec(calibration.Variant(key, **queries.variant_record(
            self, key)), device, dtype) for key in (estimate.key_a, estimate.key_b)]
        texts = self.store.texts(self.store.textset(estimate.textset).textset_id)
        self.store.release()  # others may read and write while the models sample
        started = time.perf_counter()
        a, b = (calibration.load_variant(spec, texts) for spec in specs)
        ab, ba = calibration.measure(a, b, samples=samples, length=length, seed=seed,
                                     prompts=starts, batch_size=batch_size, progress=progress)
        mc_ab, mc_ba = ab.estimate(), ba.estimate()
        mc_mean = (mc_ab.bits_per_byte + mc_ba.bits_per_byte) / 2
        result = {
            "key_a": estimate.key_a, "key_b": estimate.key_b, "samples": samples,
            "length": length, "method": ab.method, "prompts": prompts, "seed": seed,
            "mc_ab": mc_ab.as_dict(), "mc_ba": mc_ba.as_dict(),
            "estimator": {"bits_per_byte": estimate.value, "se": estimate.se,
                          "textset": estimate.textset},
            "ratio": estimate.value / mc_mean if mc_mean > 0 else None,
            "device": a.device.type, "dtype": str(a.dtype).removeprefix("torch."),
            "seconds": time.perf_counter() - started, "versions": calibration.versions()}
        if save:
            self.store.add_calibration(calibration.calibration_row(result))
        return result

    def precision_floor(self, key: str, *, dtype: str = "bfloat16", device: str = "auto",
                        textset: str | None = None, batch_size: int | None = None,
                        progress: bool = True, save: bool = True) -> dict:
        """KL between ``key`` scored in float32 and in ``dtype`` on its text set, by the
        ordinary scorer: under a few of these, a KL of vectors scored in ``dtype`` is rounding.
        Stored per (key, dtype) in ``precision_floors``."""
        require_scoring("calibrate --floor")
        from atlas import calibration

        calibration.check_floor_dtype(dtype)
        key = self.resolve(key)
        textset = textset or self._vector_textset(key)
        stored = self.store.textset(textset)
        texts = self.store.texts(stored.textset_id)
        spec = calibration.variant_spec(calibration.Variant(key, **queries.variant_record(
            self, key)), device, "float32")
        self.store.release()
        floor = calibration.precision_floor(spec, texts, stored.mean_bytes, dtype=dtype,
                                            batch_size=batch_size, progress=progress)
        row = {"key": key, "textset": textset, **floor}
        if save:
            self.store.set_floor(calibration.floor_row(row))
        return row

    def calibrations(self) -> pl.DataFrame:
        """The stored Monte-Carlo calibrations, oldest first (``atlas.analysis.calibration``
        fits the estimator against them)."""
        return queries.calibrations(self)

    def _vector_textset(self, key: str) -> str:
        names = self.sql("SELECT textset FROM loglik_vectors WHERE key = ? ORDER BY 1",
                         [key])["textset"].to_list()
        if len(names) != 1:
            raise AtlasError(f"{key} has vectors on {', '.join(names) or 'no text set'}; name "
                             "one with --textset")
        return names[0]

    # reading (atlas.queries) ---------------------------------------------------------------------
    def model_page(self, query: ModelQuery, offset: int = 0, limit: int = 500) -> ModelPage:
        """Rows ``offset`` … of the models a query filters, sorts or groups, with its counts."""
        return queries.model_page(self, query, offset, limit)

    def matching_keys(self, text: str, limit: int = queries.PALETTE_KEYS) -> list[str]:
        """Keys holding the characters of ``text`` in order, keys containing it first."""
        return queries.matching_keys(self, text, limit)

    def model_detail(self, key: str, textset: str | None = None,
                     k: int = queries.NEAREST_K) -> Detail:
        """A model's provenance, nearest models and KLs to its related variants."""
        return queries.model_detail(self, key, textset, k)

    def related_variants(self, key: str) -> pl.DataFrame:
        """(relation, key): parent, fine-tunes, previous/next checkpoint, seeds, sizes."""
        return queries.related_variants(self, key)

    def sql_head(self, query: str, progress: Callable[[pl.DataFrame, int], None] | None = None
                 ) -> QueryResult:
        """A query's first rows and its row count, streamed (``progress`` sees rows so far)."""
        return queries.sql_head(self, query, progress)

    def export(self, query: str, path: str | Path) -> int:
        """Write the result of one SELECT to a .csv or .parquet file; returns its rows."""
        return queries.export(self, query, Path(path))

    def runs(self) -> list[Run]:
        """Training runs with two or more numbered checkpoints."""
        return queries.runs(self)

    # analyses (atlas.analysis computes; these read what it needs and store what it made) -------
    def run(self, family: str, size: str, seed: int | None = None,
            quant: str | None = None) -> Run:
        """The training run of (family, size, seed): its output variants with a step; ``quant``
        picks the run of a quantized variant (None, "" or "none": the unquantized one)."""
        return queries.run(self, family, size, seed, quant)

    def run_textsets(self, run: Run) -> list[str]:
        """The text sets holding a vector of every checkpoint of the run, sorted."""
        return queries.run_textsets(self, run)

    def trajectory(self, run: Run, textset: str | None = None,
                   view: str | View | None = None) -> RunResult:
        """KL (bits/byte, with SE) and weight distance between consecutive checkpoints.

        ``textset`` may be left out when the run's checkpoints share one set only; ``view``
        (a stored view) measures the KLs through it."""
        path, chosen, sets = self._run_path(run, textset, view)
        return RunResult(trajectory.consecutive(path), chosen, sets)

    def diffusion(self, run: Run, window: int = 10, *, t0: float | None = None,
                  textset: str | None = None, n_boot: int = 200,
                  save: bool = False, view: str | View | None = None,
                  min_t0: float | None = None) -> RunResult:
        """c_q, c_w and α of a run with bootstrap intervals (c_q alone without weight sketches);
        ``save`` stores the fit in ``diffusion_fits``, replacing one of the same settings.
        Starts are the checkpoints at step ≥ ``min_t0`` (default: the evenly spaced tail's first
        step, Pythia's 1,000, as P1; atlas.analysis.diffusion says what the intervals cover).
        ``view`` (a stored view) measures D_q through it; such a fit is not stored."""
        if save and view is not None:
            raise ViewError("a diffusion fit through a view is not stored (diffusion_fits has "
                            "no view column yet); pass --no-save (save=False) with --view")
        path, chosen, sets = self._run_path(run, textset, view)
        result = trajectory.fit(path, window=window, t0=t0, n_boot=n_boot, min_t0=min_t0)
        if save:
            queries.save_fit(self, trajectory.fit_row(
                (run.family, run.size, run.seed, chosen, t0), result, run.quant, min_t0))
        return RunResult(result, chosen, sets)

    def _run_path(self, run: Run, textset: str | None, view: str | View | None
                  ) -> tuple[trajectory.Trajectory, str, list[str]]:
        """A run's trajectory on its text set, its vectors through ``view`` when given."""
        path, chosen, sets = queries.load_trajectory(self, run, textset)
        if view is None:
            return path, chosen, sets
        _, loglik, mean_bytes = self.viewed_matrix(path.keys, chosen, view)
        return replace(path, loglik=loglik, mean_bytes=mean_bytes), chosen, sets

    def scale_pairs(self, where: str | None = None, textset: str | None = None,
                    settings: Iterable[str | Setting] | None = None,
                    protocol: str | None = None, view: str | View | None = None
                    ) -> pl.DataFrame:
        """Every pair of every setting (atlas.analysis.scale) among the variants on ``textset``
        that satisfy ``where`` (SQL over model_variants), with its KL and SE in bits/byte; and
        where measured, ``floor`` and ``within_floor`` (queries.with_floors, nearest's rule) and
        the stored calibration's ``est_over_mc``.

        ``protocol="kishino2026"`` takes P1's settings instead (atlas.analysis.protocol): its
        early, later, seeds and sizes on ``view`` (default: P1's clip + drop-texts view fitted
        on the fly, not stored, over the selection's pretraining runs), the others raw.
        Without a protocol, ``view`` (a stored view's name) applies to every setting."""
        chosen = queries.selection(self, where, textset)
        if protocol is None:
            found = scale.measured_pairs(chosen.models, chosen.scope, settings)
            return self._calibrated(self._with_kl(found, chosen.textset, view), chosen.textset)
        return self._calibrated(self._protocol_pairs(chosen, protocol, view), chosen.textset)

    def _with_kl(self, found: pl.DataFrame, textset: str, view: str | View | None
                 ) -> pl.DataFrame:
        """``found``'s pairs with their KL and SE on ``textset`` through ``view``."""
        keys = scale.pair_keys(found)
        return scale.with_kl(found, *self.viewed_matrix(keys, textset, view))

    def _calibrated(self, pairs: pl.DataFrame, textset: str) -> pl.DataFrame:
        """Pairs with ``floor``/``within_floor`` where a precision floor of either vector is
        stored, and ``est_over_mc`` where the pair was calibrated on ``textset``."""
        on_set = pairs.with_columns(textset=pl.lit(textset))
        return queries.with_calibrations(self, queries.with_floors(self, on_set)).drop("textset")

    def _protocol_pairs(self, chosen: queries.Selection, name: str,
                        view: str | View | None) -> pl.DataFrame:
        params = protocol.protocol_params(name)
        found = protocol.kishino2026_pairs(
            chosen.models, params, queries.protocol_context(self, chosen.textset))
        if found.height == 0:
            raise scale.ScaleError(f"no pair of {name}'s settings among the model variants "
                                   f"{chosen.scope}")
        pretraining = found.filter(pl.col("setting").is_in(protocol.PRETRAINING))
        if view is None and pretraining.height:
            try:
                view = self._fit_view(f"{name}-pretraining", chosen.textset, views.STAGES,
                                      protocol.pretraining_keys(chosen.models, params))
            except ViewError as exc:
                raise ViewError(f"{name}'s view of its pretraining settings cannot be fitted on "
                                f"the model variants {chosen.scope} ({exc}); fit one with `atlas "
                                "view create NAME --warmup S` and pass --view NAME") from None
        parts = [(pretraining, view), (found.filter(~pl.col("setting").is_in(
            protocol.PRETRAINING)), None)]
        measured = [self._with_kl(part, chosen.textset, part_view)
                    for part, part_view in parts if part.height]
        order = {setting: i for i, setting in enumerate(protocol.SETTINGS)}
        return pl.concat(measured).sort(pl.col("setting").replace_strict(order), "key_a",
                                        "key_b")

    def scale(self, where: str | None = None, textset: str | None = None,
              settings: Iterable[str | Setting] | None = None,
              protocol: str | None = None, view: str | View | None = None) -> pl.DataFrame:
        """The KL scale: per setting, the count, median, mean, sd and quartiles of its pairs
        (``protocol`` and ``view`` as in ``scale_pairs``), and where measured, how many are
        within 3 precision floors and the calibrated pairs' median estimator/MC ratio."""
        return scale.summarise(self.scale_pairs(where, textset, settings, protocol, view))

    # views (atlas.analysis.views) ---------------------------------------------------------------
    def create_view(self, name: str, kinds: Sequence[str] = views.STAGES,
                    where: str | None = None, textset: str | None = None, *, q: float = 0.02,
                    fraction: float = 0.03, warmup: int = 2_000, replace: bool = False) -> View:
        """Fit a view (clip, drop-texts, or both composed) on the variants on ``textset`` that
        satisfy ``where`` and store it as ``name``; models added later get the stored result."""
        check_name(name)
        chosen = queries.selection(self, where, textset)
        if chosen.models.height == 0:
            raise ViewError(f"no model variant {chosen.scope} to fit view {name!r} on; widen "
                            "--where")
        fitted = self._fit_view(name, chosen.textset, kinds, chosen.models, q=q,
                                fraction=fraction, warmup=warmup, run_set=chosen.where or "all")
        queries.save_view(self, fitted, chosen.models["key"].to_list(), replace)
        return fitted

    def _fit_view(self, name: str, textset: str, kinds: Sequence[str], models: pl.DataFrame,
                  q: float = 0.02, fraction: float = 0.03, warmup: int = 2_000,
                  run_set: str = "all") -> View:
        keys = sorted(models["key"].to_list())
        _, loglik, _ = self.store.matrix(keys, textset)
        runs = views.run_rows(protocol.runs_of(models), keys, warmup)
        return views.fit(name, textset, kinds, loglik, runs, q=q, fraction=fraction,
                         warmup=warmup, run_set=run_set)

    def views(self) -> pl.DataFrame:
        """The stored views: (name, kind, textset, model_set_hash, params, created_at)."""
        return queries.views(self)

    def view(self, name: str) -> View:
        """One stored view, fitted params included."""
        return queries.load_view(self, name)

    def _view(self, view: str | View) -> View:
        return view if isinstance(view, View) else queries.load_view(self, view)

    def viewed_matrix(self, keys: list[str] | None, textset: str,
                      view: str | View | None = None) -> tuple[list[str], np.ndarray, float]:
        """(keys, K × N matrix, B̄) of ``keys`` on ``textset`` through ``view`` (None: raw)."""
        found, loglik, mean_bytes = self.store.matrix(keys, textset)
        if view is None:
            return found, loglik, mean_bytes
        fitted = self._view(view)
        if fitted.textset != textset:
            raise ViewError(f"view {fitted.name!r} is fitted on text set '{fitted.textset}', "
                            f"not '{textset}'; measure on '{fitted.textset}' or fit a view on "
                            f"'{textset}'")
        return (found, *views.apply(fitted, loglik, queries.text_bytes(self, textset)))

    def fit_map(self, method: str = "umap", where: str | None = None,
                textset: str | None = None, name: str | None = None, seed: int = 42,
                save: bool = True, view: str | View | None = None, **params) -> MapResult:
        """Fit a 2-D map (atlas.analysis.maps) of the variants on ``textset`` that satisfy
        ``where`` and store it as ``name`` (default ``{method}-{textset}``), replacing a map of
        that name; ``save=False`` fits without storing (e.g. on a read-only atlas)."""
        method = maps.check_request(method, params)
        chosen = queries.selection(self, where, textset)
        maps.require_models(chosen.models.height, chosen.scope)
        keys, loglik, mean_bytes = self.viewed_matrix(sorted(chosen.models["key"].to_list()),
                                                      chosen.textset, view)
        # the matrix was read for this map alone: q̃ may take its memory
        result = maps.fit_map(keys, loglik, mean_bytes, method=method, textset=chosen.textset,
                              where=chosen.where, name=name, seed=seed, overwrite=True,
                              **params)
        if view is not None:
            result.notes.append(f"through view {self._view(view).name}")
        if save:
            queries.save_map(self, result)
        return result

    def maps(self) -> pl.DataFrame:
        """The stored maps."""
        return queries.maps(self)

    def map_points(self, name: str) -> pl.DataFrame:
        """The points of one stored map: (key, family, size, seed, step, x, y)."""
        return queries.map_points(self, name)

    def drop_map(self, name: str) -> bool:
        """Delete a stored map and its points; returns whether there was one."""
        return queries.drop_map(self, name)


def open(path: str | Path | None = None, read_only: bool = False) -> Atlas:
    """Open (creating if needed, unless ``read_only``) the atlas at ``path``."""
    return Atlas(path, read_only=read_only)
