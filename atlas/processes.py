"""Worker processes that die with the process that started them.

A spawned worker outlives a runner killed alone (``kill -9 PID``, the OOM killer): it is
re-parented to init and goes on writing. Two guards make it exit: the kernel's parent-death
signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and, where that is missing, a daemon thread
that polls the parent pid.

The parent-death signal fires when the *thread* that spawned the worker exits, not the process:
a ``ProcessPoolExecutor`` (Python 3.11, spawn) starts workers in the thread that calls
``submit``, so a guarded pool must be created and fed from a thread that outlives it (the bulk
runner's and the demo's main loops are).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.5  # seconds between two looks at the parent pid
ORPHANED_EXIT = 70  # a worker's exit status when it finds its parent gone


def set_parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux, or no prctl
        return False


def watch_parent(parent_pid: int, interval: float = WATCH_INTERVAL) -> None:
    """Exit this process as soon as ``parent_pid`` is no longer its parent (re-parented to
    init or a subreaper when the parent died): a daemon thread, polling."""
    if os.getppid() != parent_pid:  # died before we looked: the signal came too late
        os._exit(ORPHANED_EXIT)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="atlas-parent-watch", daemon=True).start()


def _guarded_init(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    set_parent_death_signal()
    watch_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def guarded_pool(workers: int, initializer: Callable | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A spawn ``ProcessPoolExecutor`` whose workers die with this process (see above)."""
    context = multiprocessing.get_context("spawn")  # never fork a process holding torch
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_guarded_init,
                               initargs=(os.getpid(), initializer, initargs))
