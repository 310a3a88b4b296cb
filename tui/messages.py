"""Messages that thread workers post back to the UI thread (Harlequin's pattern).

A worker never touches a widget: it posts ``JobDone`` or ``JobFailed`` to the screen that
started it, and the screen's handler updates the widgets on the UI thread. ``seq`` numbers the
jobs of one tag, so a late answer to a superseded job (the user typed on) is dropped.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class JobDone(Message, bubble=False):
    """A job finished; ``result`` is what its function returned."""

    def __init__(self, tag: str, seq: int, result: Any, seconds: float) -> None:
        super().__init__()
        self.tag = tag
        self.seq = seq
        self.result = result
        self.seconds = seconds


class JobFailed(Message, bubble=False):
    """A job raised; ``error`` is the message to show, ``locked`` when another process holds
    the atlas file (worth retrying), ``internal`` for errors that are not the atlas's."""

    def __init__(self, tag: str, seq: int, error: str, *, locked: bool = False,
                 internal: bool = False) -> None:
        super().__init__()
        self.tag = tag
        self.seq = seq
        self.error = error
        self.locked = locked
        self.internal = internal
