"""The base screen: database jobs in thread workers, answers by message, errors inline.

``start(tag, job)`` runs ``job(atlas)`` in a thread worker (exclusive per tag: a new filter
supersedes the last one) and posts ``JobDone``/``JobFailed`` back. The screen then calls
``loaded_<tag>(result)`` or ``failed_<tag>(error)`` (default: the screen's ``Notice``). A locked
atlas (an ingest writing) is retried every few seconds with a notice; ``r`` retries at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from atlas.errors import AtlasError, LockedError
from tui.backend import Backend, error_text
from tui.messages import JobDone, JobFailed
from tui.widgets import ModeBar, Notice

LOCK_RETRY_SECONDS = 3.0
LOCK_RETRIES = 40  # two minutes or more of retries (the store itself waits 10 s per attempt)


class AtlasScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Reload", show=False)]

    def __init__(self, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._seq: dict[str, int] = {}
        self._jobs: dict[str, tuple[Callable[[Any], Any], Backend | None]] = {}
        self._lock_tries: dict[str, int] = {}

    # jobs ---------------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined]

    def start(self, tag: str, job: Callable[[Any], Any], backend: Backend | None = None) -> None:
        """Run ``job(atlas)`` in a thread worker; its answer comes back as a message."""
        seq = self._seq.get(tag, 0) + 1
        self._seq[tag] = seq
        self._jobs[tag] = (job, backend)
        target = backend or self.backend
        self.run_worker(lambda: self._work(target, tag, seq, job), name=tag, group=tag,
                        thread=True, exclusive=True, exit_on_error=False,
                        description=f"atlas job {tag}")

    def busy(self, tag: str) -> bool:
        return any(w.node is self and w.group == tag
                   and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in self.workers)

    def _work(self, backend: Backend, tag: str, seq: int, job: Callable[[Any], Any]) -> None:
        started = time.perf_counter()
        try:
            result = backend.call(job)
        except LockedError as exc:
            self.post_message(JobFailed(tag, seq, error_text(exc), locked=True))
            return
        except AtlasError as exc:
            self.post_message(JobFailed(tag, seq, error_text(exc)))
            return
        except Exception as exc:  # a bug, not the user's doing: shown, never a traceback
            self.post_message(JobFailed(tag, seq, error_text(exc), internal=True))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(JobDone(tag, seq, result, time.perf_counter() - started))

    def _current(self, tag: str, seq: int) -> bool:
        return self._seq.get(tag) == seq

    @on(JobDone)
    def _job_done(self, message: JobDone) -> None:
        if not self._current(message.tag, message.seq):
            return
        if self._lock_tries.pop(message.tag, None) is not None:
            self.notice().clear()
        handler = getattr(self, f"loaded_{message.tag}", None)
        if handler is not None:
            handler(message.result)

    @on(JobFailed)
    def _job_failed(self, message: JobFailed) -> None:
        if not self._current(message.tag, message.seq):
            return
        if message.locked:
            self._locked(message)
            return
        handler = getattr(self, f"failed_{message.tag}", None)
        if handler is not None:
            handler(message.error)
        else:
            self.notice().show(message.error)

    def _locked(self, message: JobFailed) -> None:
        tries = self._lock_tries.get(message.tag, 0) + 1
        self._lock_tries[message.tag] = tries
        if tries == 1:
            self.notify("Another process (an ingest?) holds the atlas; retrying.",
                        title="Atlas locked", severity="warning")
        if tries > LOCK_RETRIES:
            self.notice().show(f"{message.error}\nPress r to retry.", "locked")
            return
        self.notice().show(f"{message.error}\nRetrying in {LOCK_RETRY_SECONDS:g} s "
                           f"(attempt {tries}); press r to retry now.", "locked")
        self.set_timer(LOCK_RETRY_SECONDS, lambda: self._retry(message.tag, message.seq))

    def _retry(self, tag: str, seq: int) -> None:
        if self._current(tag, seq) and tag in self._jobs and not self.busy(tag):
            job, backend = self._jobs[tag]
            self.start(tag, job, backend)

    @on(Worker.StateChanged)
    def _worker_error(self, event: Worker.StateChanged) -> None:
        # _work catches everything; this is the safety net for errors outside it
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.notice().show(error_text(event.worker.error))

    def action_reload(self) -> None:
        """Run the last job of every tag again (after a lock, or to see new ingests)."""
        self.notice().clear()
        for tag, (job, backend) in list(self._jobs.items()):
            self._lock_tries.pop(tag, None)
            self.start(tag, job, backend)

    # widgets ------------------------------------------------------------------------------------
    def notice(self) -> Notice:
        return self.query_one("#notice", Notice)

    def on_screen_resume(self) -> None:
        for bar in self.query(ModeBar):
            bar.update_modes()
