"""The SQL console: an editor, results in a table, errors inline and a query history.

Queries run on a read-only connection of the console's own (so a long query does not hold up
the other screens), in a thread worker, so the UI stays responsive while DuckDB works.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui import backend as db
from tui.backend import Backend
from tui.render import cell
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

EXAMPLE = """-- ctrl+enter (or ctrl+j, f8) runs; the atlas is open read-only
SELECT key, family, size, seed, step FROM model_variants ORDER BY key LIMIT 100
"""


def sql_language() -> str | None:
    """'sql' when tree-sitter and its SQL grammar are installed, else None (plain text)."""
    found = all(importlib.util.find_spec(name) is not None
                for name in ("tree_sitter", "tree_sitter_sql"))
    return "sql" if found else None


def editor(text: str) -> TextArea:
    language = sql_language()
    if language is None:
        return TextArea(text, id="editor", tab_behavior="indent", show_line_numbers=True,
                        soft_wrap=False)
    return TextArea.code_editor(text, language=language, id="editor")


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


class SqlScreen(AtlasScreen):
    DEFAULT_CSS = """
    SqlScreen #top { height: 40%; min-height: 6; }
    SqlScreen #editor { width: 1fr; }
    SqlScreen #history-box { width: 30; }
    SqlScreen #history-title { height: 1; padding: 0 1; color: $text-muted; }
    SqlScreen #history { height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    SqlScreen #sql-status { height: 1; padding: 0 1; color: $text-muted; }
    SqlScreen #results { height: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+enter,ctrl+j,f8", "run_query", "Run", priority=True),
        Binding("escape", "focus_results", "Results", show=False),
        Binding("ctrl+e", "focus_editor", "Editor"),
        Binding("ctrl+h", "focus_history", "History", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history: list[HistoryEntry] = []
        self.result: db.QueryResult | None = None
        self.console_backend: Backend | None = None

    def compose(self) -> ComposeResult:
        yield ModeBar()
        with Horizontal(id="top"):
            yield editor(EXAMPLE)
            with Vertical(id="history-box"):
                yield Static("History (Enter: edit)", id="history-title")
                yield OptionList(id="history")
        yield Notice(id="notice")
        yield Static("", id="sql-status")
        yield DataTable(id="results", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.console_backend = Backend(self.app.db_path)  # type: ignore[attr-defined]
        area = self.query_one("#editor", TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    # running ------------------------------------------------------------------------------------
    def action_run_query(self) -> None:
        query = self.query_one("#editor", TextArea).text.strip()
        if not query:
            self.notice().show("Nothing to run: write a query first.", "hint")
            return
        if self.busy("query"):
            self.notice().show("Still running the previous query; this one waits for it.",
                               "hint")
        self.query_one("#sql-status", Static).update("running…")
        self.query_one("#results", DataTable).loading = True
        self._pending = query
        self.start("query", partial(db.run_query, query=query), backend=self.console_backend)

    def loaded_query(self, result: db.QueryResult) -> None:
        self.result = result
        self.notice().clear()
        table = self.query_one("#results", DataTable)
        table.loading = False
        table.clear(columns=True)
        shown = result.shown
        for name in shown.columns:
            table.add_column(name, key=name)
        table.add_rows([tuple(cell(v) for v in row) for row in shown.iter_rows()])
        total = result.frame.height
        more = f" (showing the first {shown.height})" if total > shown.height else ""
        self.query_one("#sql-status", Static).update(
            f"{total} rows × {len(result.frame.columns)} columns in {result.seconds:.3f} s{more}")
        self._remember(HistoryEntry(result.query, True, total, result.seconds))

    def failed_query(self, error: str) -> None:
        self.query_one("#results", DataTable).loading = False
        self.query_one("#sql-status", Static).update("query failed")
        self.notice().show(error, "error")
        self._remember(HistoryEntry(getattr(self, "_pending", ""), False, None, None))

    def _remember(self, entry: HistoryEntry) -> None:
        self.history = [h for h in self.history if h.query != entry.query]
        self.history.insert(0, entry)
        history = self.query_one("#history", OptionList)
        history.clear_options()
        history.add_options([Option(h.prompt(), id=str(i)) for i, h in enumerate(self.history)])

    # navigation ---------------------------------------------------------------------------------
    @on(OptionList.OptionSelected, "#history")
    def _recall(self, event: OptionList.OptionSelected) -> None:
        entry = self.history[int(event.option_id or 0)]
        area = self.query_one("#editor", TextArea)
        area.text = entry.query
        area.focus()

    def action_focus_results(self) -> None:
        self.query_one("#results", DataTable).focus()

    def action_focus_editor(self) -> None:
        self.query_one("#editor", TextArea).focus()

    def action_focus_history(self) -> None:
        self.query_one("#history", OptionList).focus()
