"""Files that appear whole or not at all: what a command writes for the user (a report, all
pairs, an export, a bulk shard) is written under a hidden name beside its target and renamed
over it, so a refused input, a full disk or a kill leaves the old file (or none), never a part
of the new.

A hidden name carries its writer (host and pid): a process killed with SIGKILL cannot remove
its own, so the next write beside the same target removes those of this host's dead writers
(``remove_stale``), and a live writer's, or another host's on a shared disk, is left alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from atlas.keys import safe_name


def writer() -> str:
    """This process as a writer of temporary files: ``HOST-PID``."""
    return f"{safe_name(socket.gethostname())}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True when that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def temporary_beside(path: Path) -> Path:
    """A hidden name beside ``path``, this process's own, for what becomes ``path``."""
    return path.with_name(f".{path.name}.{writer()}.tmp")


def remove_stale(folder: Path, target: str | None = None) -> None:
    """Remove the temporary files and folders (``temporary_beside`` names) of ``target`` (any
    target: None, searching subfolders too) in ``folder`` whose writer ran on this host and has
    died."""
    host = f"{safe_name(socket.gethostname())}-"
    pattern = f".{'*' if target is None else glob.escape(target)}.{host}*.tmp"
    for path in folder.rglob(pattern) if target is None else folder.glob(pattern):
        pid = path.name.removesuffix(".tmp").rsplit("-", 1)[-1]  # a host may have dots
        if pid.isdigit() and not pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield the temporary name to write; rename it over ``path`` when the block ends, remove
    it if the block fails. A killed writer's leftovers for ``path`` go first."""
    remove_stale(path.parent, path.name)
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole and on disk (fsync) before it has the name."""
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
