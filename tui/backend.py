"""The TUI's adapter to the atlas: a read-only ``Atlas`` opened for one job at a time.

The screens hand a job — a function of the ``Atlas``, usually one of its reading methods
(atlas.queries) — to a thread worker (``AtlasScreen.start``), which runs it through
``Backend.call`` and posts the result back as a message. The queries themselves are the atlas's;
this module only decides when the file is open.

``Backend.call`` opens the atlas read-only for one job and releases the file afterwards (a
reopen costs ~20 ms), so an ingest in another process can take the write lock between two
screens' queries. DuckDB connections are not meant for concurrent use, so one lock serialises
the jobs of one backend; the SQL console has a backend of its own, so a long query there does
not hold up browsing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from atlas.api import Atlas
from atlas.errors import AtlasError

T = TypeVar("T")


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


def error_text(exc: BaseException) -> str:
    """A one-paragraph message for the user: atlas errors as they are, others with their type."""
    if isinstance(exc, AtlasError):
        return str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
