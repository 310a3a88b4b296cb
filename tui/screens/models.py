"""Models: every variant in a table, filtered by key substring or a SQL WHERE clause, sortable."""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import polars as pl
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from tui import backend as db
from tui.render import optional, params
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

# (frame column, header); the order of the table's columns and of the sort cycle
COLUMNS = (
    ("key", "key"), ("family", "family"), ("size", "size"), ("seed", "seed"),
    ("quant", "quant"), ("layer", "layer"), ("checkpoint", "checkpoint"),
    ("n_params", "params"), ("textsets", "text sets"),
)


class ModelsScreen(AtlasScreen):
    """The model variants; Enter opens one."""

    AUTO_FOCUS = "#models"

    DEFAULT_CSS = """
    ModelsScreen #filter { margin: 0 0; border: tall $border-blurred; }
    ModelsScreen #filter:focus { border: tall $border; }
    ModelsScreen #models { height: 1fr; }
    ModelsScreen #status { height: 1; color: $text-muted; padding: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse"),
        Binding("escape", "focus_table", "Table", show=False),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models = pl.DataFrame()
        self.where_keys: set[str] | None = None
        self.sort_column = "key"
        self.descending = False
        self.shown: pl.DataFrame = pl.DataFrame()

    def compose(self) -> ComposeResult:
        yield ModeBar()
        yield Input(placeholder="filter: part of a key, or where family = 'pythia' and step > 100",
                    id="filter")
        yield Notice(id="notice")
        table: DataTable = DataTable(id="models", cursor_type="row", zebra_stripes=True)
        table.loading = True
        yield table
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        for column, header in COLUMNS:
            table.add_column(header, key=column)
        self.start("models", db.load_models)

    # loading ------------------------------------------------------------------------------------
    def loaded_models(self, frame: pl.DataFrame) -> None:
        self.models = frame
        self.app.model_keys = frame["key"].to_list()  # type: ignore[attr-defined]
        table = self.query_one("#models", DataTable)
        table.loading = False
        self.refresh_table()
        if frame.is_empty():
            self.notice().show("The atlas holds no models yet: ingest or import some.", "hint")
        if not self.query_one("#filter", Input).value:
            table.focus()

    def failed_models(self, error: str) -> None:
        self.query_one("#models", DataTable).loading = False
        self.notice().show(error)

    # filtering ------------------------------------------------------------------------------------
    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        if db.where_clause(event.value) is None:
            self.where_keys = None
            self.notice().clear()
            self.refresh_table()
        elif not self.busy("filter"):
            self.notice().show("A SQL condition over model_variants: press Enter to apply it",
                               "hint")

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        clause = db.where_clause(event.value)
        if clause is None:
            self.action_focus_table()
            return
        self.start("filter", partial(db.filter_keys, clause=clause))

    def loaded_filter(self, keys: list[str]) -> None:
        self.where_keys = set(keys)
        self.notice().clear()
        self.refresh_table()

    def failed_filter(self, error: str) -> None:
        self.notice().show(f"WHERE clause: {error}", "error")

    def filtered(self) -> pl.DataFrame:
        if self.models.is_empty():
            return self.models
        text = self.query_one("#filter", Input).value
        if self.where_keys is not None:
            frame = self.models.filter(pl.col("key").is_in(list(self.where_keys)))
        elif db.where_clause(text) is not None:
            frame = self.models  # a WHERE clause not applied (yet): everything
        else:
            frame = db.substring_filter(self.models, text)
        return db.sort_models(frame, self.sort_column, self.descending)

    def refresh_table(self) -> None:
        table = self.query_one("#models", DataTable)
        self.shown = self.filtered()
        table.clear(columns=True)
        for name, header in COLUMNS:
            arrow = (" ▼" if self.descending else " ▲") if name == self.sort_column else ""
            table.add_column(Text(header + arrow), key=name)
        for row in self.shown.iter_rows(named=True):
            table.add_row(*(params(row[name]) if name == "n_params" else optional(row.get(name))
                            for name, _ in COLUMNS), key=row["key"])
        table.refresh()
        self._status()

    def _status(self) -> None:
        mode = "WHERE" if self.where_keys is not None else "key filter"
        total = self.models.height
        filtered = f" ({mode})" if self.shown.height != total else ""
        order = "descending" if self.descending else "ascending"
        self.query_one("#status", Static).update(
            f"{self.shown.height} of {total} variants{filtered} · sorted by {self.sort_column} "
            f"{order} · Enter: details")

    # sorting ------------------------------------------------------------------------------------
    def sort_by(self, column: str, descending: bool | None = None) -> None:
        if descending is None:
            descending = not self.descending if column == self.sort_column else False
        self.sort_column, self.descending = column, descending
        self.refresh_table()

    @on(DataTable.HeaderSelected, "#models")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    def action_sort_next(self) -> None:
        names = [name for name, _ in COLUMNS]
        following = names[(names.index(self.sort_column) + 1) % len(names)]
        self.sort_by(following, False)

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.descending)

    # navigation ---------------------------------------------------------------------------------
    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#models", DataTable).focus()

    @on(DataTable.RowSelected, "#models")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.open_model(event.row_key.value)  # type: ignore[attr-defined]
