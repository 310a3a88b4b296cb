"""The SQL console's query history, kept across sessions in one JSON-lines file.

The file is ``$ATLAS_TUI_HISTORY`` if set (tests point it at a temporary file), else
``$XDG_STATE_HOME/lm-atlas/sql-history.jsonl`` (``~/.local/state/…`` by default): state, not
configuration, so it follows the XDG base-directory rule for state. Newest first, one entry per
distinct query, at most ``MAX_ENTRIES``; written whole to a temporary file and renamed, so two
consoles never leave a half-written file (the last to finish wins).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.text import Text

HISTORY_ENV = "ATLAS_TUI_HISTORY"
MAX_ENTRIES = 500


@dataclass
class HistoryEntry:
    query: str
    ok: bool
    rows: int | None
    seconds: float | None

    def prompt(self) -> Text:
        """One line: ✓/✗, the row count, the query without its comment lines."""
        lines = [line for line in self.query.splitlines()
                 if line.strip() and not line.strip().startswith("--")]
        first = " ".join(" ".join(lines).split()) or self.query.strip()
        where = f"{self.rows} rows" if self.ok else "error"
        return Text.assemble(("✓ " if self.ok else "✗ ", "green" if self.ok else "red"),
                             (f"{where} │ ", "dim"), first, no_wrap=True, overflow="ellipsis")


def history_path() -> Path:
    override = os.environ.get(HISTORY_ENV)
    if override:
        return Path(override)
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "lm-atlas" / "sql-history.jsonl"


def load(path: Path) -> list[HistoryEntry]:
    """The saved entries, newest first; lines that do not parse are skipped, a missing file
    is an empty history."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(HistoryEntry(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return entries[:MAX_ENTRIES]


def remember(entries: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """``entry`` first, any older run of the same query dropped, at most ``MAX_ENTRIES``."""
    return [entry, *(e for e in entries if e.query != entry.query)][:MAX_ENTRIES]


def save(path: Path, entries: list[HistoryEntry]) -> None:
    """Write the file whole (raises OSError when it cannot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(json.dumps(asdict(e)) + "\n" for e in entries), encoding="utf-8")
    partial.replace(path)
