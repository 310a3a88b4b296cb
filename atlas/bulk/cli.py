"""``atlas bulk …``: plan, run, watch and merge the ingestion of a manifest of models."""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl

from atlas.presentation import duration, emit

SHARD_DIR = click.option("--shard-dir", type=click.Path(file_okay=False, path_type=Path),
                         default=None, help="Where workers write finished vectors (default: "
                         "beside the atlas, ATLAS.duckdb.shards/; shared by all nodes on a "
                         "cluster).")
MAX_ATTEMPTS = click.option("--max-attempts", type=click.IntRange(min=1), default=3,
                            show_default=True, help="Attempts per model before it is failed.")
MAX_LOADS = click.option("--max-loads", type=click.IntRange(min=1), default=20_000,
                         show_default=True, help="Refuse a manifest that expands to more model "
                         "loads (a mistyped steps schedule would plan for minutes).")
ALL = click.option("--all", "show_all", is_flag=True,
                   help="List every model, not only those with work or problems.")


def _db(ctx: click.Context, exists: bool = True) -> Path:
    """The atlas; one that does not exist is an error, not a new file (``exists``)."""
    path = ctx.find_root().obj["db"]
    if exists and not path.exists():
        from atlas.errors import AtlasError

        raise AtlasError(f"{path}: no atlas here; create it with `atlas init` and import a "
                         "text set, or point --db at an existing atlas")
    return path


@click.group("bulk")
def bulk() -> None:
    """Ingest model releases in bulk from a TOML manifest (families × sizes × seeds × steps)."""


@bulk.command("plan")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@SHARD_DIR
@MAX_ATTEMPTS
@MAX_LOADS
@ALL
@click.pass_context
def plan_command(ctx: click.Context, manifest: Path, shard_dir: Path | None, max_attempts: int,
                 max_loads: int, show_all: bool) -> None:
    """Expand MANIFEST and show what is new, done, scored, failed; estimate tokens and time."""
    from atlas.bulk.run import prepare

    plan, _ = prepare(manifest, _db(ctx), shard_dir, max_attempts, merge=False,
                      max_loads=max_loads)
    emit(plan.table(show_all), title=f"plan of {manifest.name}: one row per model load")
    for line in plan.summary():
        click.echo(line)


@bulk.command("run")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Worker processes on this machine (0: score in this process); with --ray, "
                   "concurrent Ray tasks (default: one per GPU, else per CPU).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]", help="Run the workers as Ray tasks: on a local Ray "
              "instance, or on the cluster at ADDRESS (pip install 'lm-atlas[ray]').")
@SHARD_DIR
@MAX_ATTEMPTS
@MAX_LOADS
@click.option("--retry-failed", is_flag=True, help="Try again models that used all attempts.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def run_command(ctx: click.Context, manifest: Path, workers: int, ray_address: str | None,
                shard_dir: Path | None, max_attempts: int, max_loads: int, retry_failed: bool,
                progress: bool) -> None:
    """Score every variant of MANIFEST not yet in the atlas; shards are merged as they land."""
    from atlas.bulk.run import run_bulk

    if ray_address is not None and ctx.get_parameter_source("workers").name == "DEFAULT":
        workers = 0  # Ray: as many tasks as the cluster has GPUs (or CPUs)
    report = run_bulk(manifest, _db(ctx), workers=workers, ray_address=ray_address,
                      shard_dir=shard_dir, max_attempts=max_attempts, retry_failed=retry_failed,
                      progress=progress, max_loads=max_loads)
    merge = report.merge
    click.echo(f"scored {report.written}/{report.variants} vectors from {report.units} model "
               f"loads in {duration(report.seconds)} ({report.tokens_per_second:,.0f} tok/s); "
               f"merged {merge.stored} new ({merge.present} already stored)")
    for outcome in report.failed:
        click.echo(f"failed: {outcome.label}: {outcome.error}", err=True)
    for rejected in merge.rejected:
        click.echo(f"rejected: {rejected}", err=True)
    _report_waiting(merge.waiting)
    if merge.stopped:
        click.echo(f"not merged yet: {merge.stopped} Run `atlas bulk merge` later.", err=True)
    if report.failed or merge.rejected:
        ctx.exit(1)


def _report_waiting(names: list[str]) -> None:
    """Shards kept in ready/ because their parent is not stored yet (it failed, or is running)."""
    for name in names:
        click.echo(f"not merged yet: {name}: its parent is not in the atlas yet; it merges "
                   "with `atlas bulk merge` once the parent is stored", err=True)


@bulk.command("status")
@SHARD_DIR
@ALL
@click.pass_context
def status_command(ctx: click.Context, shard_dir: Path | None, show_all: bool) -> None:
    """Per-model state, errors, throughput and ETA of the last run (never locks the atlas)."""
    from atlas.bulk.shards import ShardDir, default_shard_dir
    from atlas.bulk.status import read_status

    status = read_status(ShardDir(shard_dir or default_shard_dir(_db(ctx, exists=False))))
    if status.started is None:
        click.echo("no bulk run recorded here yet (`atlas bulk run MANIFEST`)")
        return
    units = [u for u in status.units if show_all or u.state != "done"]
    if units:
        emit(pl.DataFrame([{"model": u.label, "state": u.state, "attempts": u.attempts,
                             "vectors": f"{u.written}/{u.variants}", "tokens": u.tokens,
                             "error": u.error} for u in units]), title="models of the last run")
    counts = status.counts()
    runner = {True: "running", False: "stopped", None: "on another host"}[status.runner_alive]
    click.echo(f"runner {runner}; models: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    click.echo(f"vectors: {status.written}/{status.variants} scored, {status.ready} waiting to "
               f"merge, {status.merged} merged, {status.rejected} rejected; "
               f"{status.tokens_per_second():,.0f} tok/s; ETA {duration(status.eta_seconds())}")


@bulk.command("merge")
@SHARD_DIR
@click.pass_context
def merge_command(ctx: click.Context, shard_dir: Path | None) -> None:
    """Fold finished shards into the atlas (the single writer; safe while a run goes on)."""
    from atlas.bulk.run import merge_standalone

    report = merge_standalone(_db(ctx), shard_dir)
    click.echo(f"merged {report.stored} new vectors ({report.present} already stored)")
    for rejected in report.rejected:
        click.echo(f"rejected: {rejected}", err=True)
    _report_waiting(report.waiting)
    if report.stopped:
        raise click.ClickException(f"stopped: {report.stopped}")
    if report.rejected:
        ctx.exit(1)
