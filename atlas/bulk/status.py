"""``atlas bulk status``: where a run stands, read from the shard directory alone.

It never opens the atlas (a run's merger may be writing): the run description (run.json) says
what was planned, the workers' event logs say what happened to each unit since.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from atlas.bulk.shards import ShardDir
from atlas.files import pid_alive


@dataclass
class UnitStatus:
    unit: str
    label: str
    state: str = "queued"  # queued | running | done | retrying | failed
    attempts: int = 0
    variants: int = 0
    written: int = 0
    tokens: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class RunStatus:
    started: float | None
    runner_alive: bool | None  # None: the runner is on another host
    units: list[UnitStatus] = field(default_factory=list)
    ready: int = 0
    merged: int = 0
    rejected: int = 0
    variants: int = 0

    @property
    def written(self) -> int:
        return sum(u.written for u in self.units)

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)

    def elapsed(self, now: float | None = None) -> float:
        return max(1e-9, (now or time.time()) - self.started) if self.started else 0.0

    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed() if self.started else 0.0

    def eta_seconds(self) -> float | None:
        """Remaining vectors at the rate vectors were written so far in this run."""
        if not self.written or not self.started:
            return None
        return (self.variants - self.written) * self.elapsed() / self.written

    def counts(self) -> Counter:
        return Counter(u.state for u in self.units)


def read_status(shards: ShardDir) -> RunStatus:
    run = shards.read_run() or {}
    started = run.get("started")
    units = {unit: UnitStatus(unit, "", variants=n) for unit, n in run.get("units", {}).items()}
    max_attempts = run.get("max_attempts", 3)
    for event in shards.events():
        if started is None or event.get("time", 0) < started or event["unit"] not in units:
            continue
        _apply(units[event["unit"]], event, max_attempts)
    return RunStatus(started, _alive(run), list(units.values()), shards.count(shards.ready),
                     shards.count(shards.merged), shards.count(shards.rejected),
                     run.get("variants", 0))


def _apply(status: UnitStatus, event: dict, max_attempts: int) -> None:
    status.label = event.get("label", status.label)
    status.attempts = max(status.attempts, event.get("attempt", 0))
    kind = event["event"]
    if kind == "start":
        status.state = "running"
    elif kind == "done":
        status.state, status.error = "done", ""
        status.written += event.get("written", 0)
        status.tokens += event.get("tokens", 0)
        status.seconds += event.get("seconds", 0.0)
    elif kind == "failed":
        status.error = event.get("error", "")
        status.state = "failed" if status.attempts >= max_attempts else "retrying"


def _alive(run: dict) -> bool | None:
    pid = run.get("pid")
    if pid is None or run.get("host", socket.gethostname()) != socket.gethostname():
        return None
    return pid_alive(pid)
