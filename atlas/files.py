"""Files that appear whole or not at all: what a command writes for the user (a report, all
pairs, an export) is written under a hidden name beside its target and renamed over it, so a
refused input, a full disk or a kill leaves the old file (or none), never a part of the new."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A hidden name beside ``path``, this process's own, for what becomes ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield the temporary name to write; rename it over ``path`` when the block ends, remove
    it if the block fails."""
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
