"""The progress bar of long jobs (scoring, the demo, bulk runs), so they all look alike.

rich is imported when a bar is made: most commands never show one.
"""

from __future__ import annotations


def progress_bar(label: str, *fields: str, remaining_label: str | None = None, **options):
    """A rich ``Progress``: ``label``, bar, done/total, the ``fields`` (text templates such as
    ``"{task.fields[rate]}"``), elapsed and remaining time; ``options`` go to ``Progress``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
               *(TextColumn(field) for field in fields), TimeElapsedColumn()]
    if remaining_label:
        columns.append(TextColumn(remaining_label))
    return Progress(*columns, TimeRemainingColumn(), **options)
