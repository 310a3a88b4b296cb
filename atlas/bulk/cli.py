"""``atlas bulk …``: plan, run, watch and merge the ingestion of a manifest of models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click
import polars as pl

if TYPE_CHECKING:  # the planner imports the ingest stack (torch): loaded when a command runs,
    from atlas.bulk.plan import Plan  # so that `atlas --help`, `atlas sql` … start quickly

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


def _emit(frame: pl.DataFrame, title: str) -> None:
    from atlas.cli import emit  # the CLI's table printer (imported late: it imports us)

    emit(frame, title=title)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


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
    _emit(plan_table(plan, show_all), f"plan of {manifest.name}: one row per model load")
    for line in plan_summary(plan):
        click.echo(line)


def plan_table(plan: Plan, show_all: bool = False) -> pl.DataFrame:
    """One row per unit (model load): its variants by state, and the first note."""
    from atlas.bulk.plan import STATES

    rows: dict[str, dict] = {}
    for row in plan.rows:
        entry = rows.setdefault(row.unit.id, {
            "model": str(row.unit.base), "source": row.unit.source,
            "revision": row.unit.revision, "states": Counter(), "note": ""})
        entry["states"][row.state] += 1
        entry["note"] = entry["note"] or row.note
    shown = [r for r in rows.values() if show_all or set(r["states"]) - {"done"}]
    return pl.DataFrame([{**r, "states": ", ".join(f"{n} {s}" for s, n in sorted(
        r["states"].items(), key=lambda item: STATES.index(item[0])))} for r in shown],
        schema={"model": pl.String, "source": pl.String, "revision": pl.String,
                "states": pl.String, "note": pl.String})


def plan_summary(plan: Plan) -> list[str]:
    from atlas.bulk.plan import STATES, TODO

    counts = plan.counts()
    tokens = plan.estimated_tokens()
    lines = ["vectors: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
             + f" ({sum(counts.values())} in the manifest)"]
    todo = sum(counts[s] for s in TODO)
    loads = len(plan.work())
    if not todo:
        lines.append("nothing to score")
        return lines
    rate = plan.history_rate
    time_note = (f"~{_duration(tokens / rate)} for one worker at the {rate:,.0f} tok/s measured "
                 "in this shard dir" if rate else
                 "time: measured once the first models finish (`atlas bulk status`)")
    lines.append(f"to score: {todo} vectors from {loads} model loads, ~{tokens:,} tokens "
                 f"(estimated at 4 bytes/token); {time_note}")
    return lines


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
               f"loads in {_duration(report.seconds)} ({report.tokens_per_second:,.0f} tok/s); "
               f"merged {merge.stored} new ({merge.present} already stored)")
    for outcome in report.failed:
        click.echo(f"failed: {outcome.label}: {outcome.error}", err=True)
    for rejected in merge.rejected:
        click.echo(f"rejected: {rejected}", err=True)
    if merge.locked:
        click.echo(f"not merged yet: {merge.locked} Run `atlas bulk merge` later.", err=True)
    if report.failed or merge.rejected:
        ctx.exit(1)


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
        _emit(pl.DataFrame([{"model": u.label, "state": u.state, "attempts": u.attempts,
                             "vectors": f"{u.written}/{u.variants}", "tokens": u.tokens,
                             "error": u.error} for u in units]), "models of the last run")
    counts = status.counts()
    runner = {True: "running", False: "stopped", None: "on another host"}[status.runner_alive]
    click.echo(f"runner {runner}; models: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    click.echo(f"vectors: {status.written}/{status.variants} scored, {status.ready} waiting to "
               f"merge, {status.merged} merged, {status.rejected} rejected; "
               f"{status.tokens_per_second():,.0f} tok/s; ETA {_duration(status.eta_seconds())}")


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
    if report.locked:
        raise click.ClickException(f"stopped: {report.locked}")
