"""The SQL console: an editor, results in a table, errors inline and a query history.

Queries run on a read-only connection of the console's own (so a long query does not hold up
the other screens), in a thread worker that streams the result (``Atlas.sql_head``): the
first rows show while the rest are counted, and ctrl+g interrupts DuckDB. ctrl+s exports the
whole result to CSV or Parquet. The history is kept across sessions (``tui.history``); ctrl+up /
ctrl+down walk it in the editor.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import ClassVar

import polars as pl
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from atlas.api import Atlas, QueryResult
from tui import history
from tui.backend import Backend
from tui.render import cell
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

DEFAULT_EXPORT = "atlas-result.csv"
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


class QueryProgress(Message, bubble=False):
    """Rows so far of the running query (posted from its worker thread)."""

    def __init__(self, run: object, shown: pl.DataFrame, rows: int) -> None:
        super().__init__()
        self.run = run
        self.shown = shown
        self.rows = rows


class ExportScreen(ModalScreen[str | None]):
    """Asks where to write the result (.csv or .parquet); Escape gives up."""

    DEFAULT_CSS = """
    ExportScreen { align: center middle; }
    ExportScreen > Vertical {
        width: 70; height: auto; border: thick $primary; background: $surface; padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Export the whole result to (.csv or .parquet):")
            yield Input(DEFAULT_EXPORT, id="export-path")

    @on(Input.Submitted, "#export-path")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


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
        Binding("ctrl+g", "cancel_query", "Cancel", priority=True),
        Binding("ctrl+s", "export", "Export", priority=True),
        Binding("ctrl+up", "recall(1)", "Older", priority=True),
        Binding("ctrl+down", "recall(-1)", "Newer", priority=True),
        Binding("escape", "focus_results", "Results", show=False),
        Binding("ctrl+e", "focus_editor", "Editor"),
        Binding("ctrl+h", "focus_history", "History", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history_file = history.history_path()
        self.history: list[history.HistoryEntry] = []
        self.result: QueryResult | None = None
        self.console_backend: Backend | None = None
        self._run: object | None = None  # identifies the running query; None when idle
        self._query = ""  # its text
        self._shown_rows = -1  # rows of the running query's result already in the table
        self._cancelled = False
        self._recalled = -1  # index into history of the query in the editor (-1: the draft)
        self._draft = ""
        self._export_path: Path | None = None

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
        self.history = history.load(self.history_file)
        self._show_history()
        area = self.query_one("#editor", TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Cancel is offered (and shown in the footer) only while a query runs, export once
        one has a result."""
        if action == "cancel_query":
            return self._run is not None
        if action == "export":
            return self.result is not None and self._run is None
        return True

    # running ------------------------------------------------------------------------------------
    def action_run_query(self) -> None:
        query = self.query_one("#editor", TextArea).text.strip()
        if not query:
            self.notice().show("Nothing to run: write a query first.", "hint")
            return
        if self._run is not None:
            self.notice().show("Still running the previous query (ctrl+g cancels it).", "hint")
            return
        self._run, self._query, self._shown_rows, self._cancelled = object(), query, -1, False
        self.notice().clear()
        self.query_one("#sql-status", Static).update("running… (ctrl+g cancels)")
        self.query_one("#results", DataTable).loading = True
        self.refresh_bindings()
        progress = partial(self._progress, self._run)
        self.start("query", partial(Atlas.sql_head, query=query, progress=progress),
                   backend=self.console_backend)

    def _progress(self, run: object, shown: pl.DataFrame, rows: int) -> None:
        """Called in the worker thread: hand the rows so far to the UI thread."""
        self.post_message(QueryProgress(run, shown, rows))

    @on(QueryProgress)
    def _rows_so_far(self, message: QueryProgress) -> None:
        if message.run is not self._run:
            return
        self._fill(message.shown)
        self.query_one("#sql-status", Static).update(
            f"{message.rows:,} rows so far… (ctrl+g cancels)")

    def _fill(self, shown: pl.DataFrame) -> None:
        """Show the first rows of the result (once: later batches only add to the count)."""
        table = self.query_one("#results", DataTable)
        table.loading = False
        if shown.height == self._shown_rows:
            return
        self._shown_rows = shown.height
        table.clear(columns=True)
        for name in shown.columns:
            table.add_column(name, key=name)
        table.add_rows([tuple(cell(v) for v in row) for row in shown.iter_rows()])

    def action_cancel_query(self) -> None:
        if self._run is not None and self.console_backend is not None:
            self._cancelled = True
            self.query_one("#sql-status", Static).update("cancelling…")
            self.console_backend.interrupt()

    def loaded_query(self, result: QueryResult) -> None:
        self._finish()
        self.result = result
        self._fill(result.shown)
        more = (f" (showing the first {result.shown.height})"
                if result.rows > result.shown.height else "")
        self.query_one("#sql-status", Static).update(
            f"{result.rows:,} rows × {len(result.shown.columns)} columns in "
            f"{result.seconds:.3f} s{more}")
        self._remember(history.HistoryEntry(result.query, True, result.rows, result.seconds))

    def failed_query(self, error: str) -> None:
        query, cancelled = self._query, self._cancelled
        self._finish()
        self.query_one("#results", DataTable).loading = False
        if cancelled:
            self.query_one("#sql-status", Static).update("cancelled")
            self.notice().show("Query cancelled.", "hint")
            return
        self.query_one("#sql-status", Static).update("query failed")
        self.notice().show(error, "error")
        self._remember(history.HistoryEntry(query, False, None, None))

    def _finish(self) -> None:
        self._run = None
        self.refresh_bindings()

    # export -------------------------------------------------------------------------------------
    def action_export(self) -> None:
        """Write the last result, all of it (the query runs again, into the file)."""
        if self.result is None:
            return
        query = self.result.query

        def chosen(path: str | None) -> None:
            if path is not None:
                target = self._export_path = Path(path).expanduser().resolve()
                self.query_one("#sql-status", Static).update(f"exporting to {target}…")
                self.start("export", partial(Atlas.export, query=query, path=target),
                           backend=self.console_backend)

        self.app.push_screen(ExportScreen(), chosen)

    def loaded_export(self, rows: int) -> None:
        self.query_one("#sql-status", Static).update(f"wrote {rows:,} rows to {self._export_path}")

    def failed_export(self, error: str) -> None:
        self.query_one("#sql-status", Static).update("export failed")
        self.notice().show(f"Export: {error}", "error")

    # history ------------------------------------------------------------------------------------
    def _remember(self, entry: history.HistoryEntry) -> None:
        self.history = history.remember(self.history, entry)
        self._recalled = -1
        self._show_history()
        try:
            history.save(self.history_file, self.history)
        except OSError as exc:
            self.notify(f"{self.history_file}: {exc.strerror or exc}", title="History not saved",
                        severity="warning")

    def _show_history(self) -> None:
        options = self.query_one("#history", OptionList)
        options.clear_options()
        options.add_options([Option(h.prompt(), id=str(i)) for i, h in enumerate(self.history)])

    def action_recall(self, step: int) -> None:
        """ctrl+up / ctrl+down: the next older / newer query of the history into the editor,
        back to what was being written past the newest."""
        index = max(-1, min(len(self.history) - 1, self._recalled + step))
        if index == self._recalled:
            return
        area = self.query_one("#editor", TextArea)
        if self._recalled == -1:
            self._draft = area.text
        self._recalled = index
        area.text = self._draft if index == -1 else self.history[index].query
        area.move_cursor(area.document.end)
        if index >= 0:
            self.query_one("#history", OptionList).highlighted = index

    @on(OptionList.OptionSelected, "#history")
    def _recall(self, event: OptionList.OptionSelected) -> None:
        entry = self.history[int(event.option_id or 0)]
        area = self.query_one("#editor", TextArea)
        area.text = entry.query
        area.focus()

    # navigation ---------------------------------------------------------------------------------
    def action_focus_results(self) -> None:
        self.query_one("#results", DataTable).focus()

    def action_focus_editor(self) -> None:
        self.query_one("#editor", TextArea).focus()

    def action_focus_history(self) -> None:
        self.query_one("#history", OptionList).focus()
