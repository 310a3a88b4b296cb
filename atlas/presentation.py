"""How the CLI shows results: tables, CSV or JSON, and durations. One place for `atlas` and
`atlas bulk` alike, so every command prints the same way and neither CLI imports the other."""

from __future__ import annotations

import datetime
import json

import click
import polars as pl

from atlas.queries import csv_ready

FORMATS = click.Choice(["table", "csv", "json"])


def cell(value) -> str:
    """A value as a table shows it: floats to 6 significant digits, lists by their head."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (list, pl.Series)):
        items = list(value)
        head = ", ".join(cell(v) for v in items[:3])
        return f"[{head}{', …' if len(items) > 3 else ''}] ({len(items)})"
    return "" if value is None else str(value)


def emit(frame: pl.DataFrame, fmt: str = "table", title: str | None = None) -> None:
    """Print a DataFrame as a rich table, CSV or JSON (one object per row)."""
    if fmt == "csv":
        click.echo(csv_ready(frame).write_csv(), nl=False)
        return
    if fmt == "json":
        click.echo(json.dumps(frame.to_dicts(), default=str, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in frame.columns:
        table.add_column(column, overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*(cell(v) for v in row))
    Console().print(table)


def duration(seconds: float | None) -> str:
    """``1h02m`` or ``3m07s``; "unknown" for None."""
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
