"""Models: the variants a page at a time, filtered, sorted and grouped by DuckDB.

The table never holds the whole atlas: each change of filter, order or grouping asks
``Atlas.model_page`` for the first ``PAGE_ROWS`` rows and the counts, and scrolling near the
end of what is loaded fetches the next page, so a 100,000-variant atlas opens as fast as a small
one. Typing in the filter box waits ``FILTER_DELAY`` seconds for a pause before querying.
``g`` groups the variants by family: one row per family with counts; Enter on one lists its
variants.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static

from atlas.api import Atlas, ModelPage, ModelQuery
from tui.render import optional, params
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

PAGE_ROWS = 200  # rows per query (a DataTable lays out ~1 ms a row); more as the end nears
FILTER_DELAY = 0.15  # seconds of no typing before a substring filter is queried
PREFETCH_ROWS = 50  # fetch the next page when the cursor or the view is this close to the end
HEADERS = {"n_params": "params", "textsets": "text sets"}


class ModelsScreen(AtlasScreen):
    """The model variants (Enter opens one), or one row per family (Enter lists its variants)."""

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
        Binding("g", "toggle_group", "Group by family"),
        Binding("escape", "focus_table", "Table", show=False),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_spec = ModelQuery()  # what was asked for last
        self.page: ModelPage | None = None  # what the table shows (its first page)
        self.loaded = 0  # rows in the table
        self._filter_timer: Timer | None = None

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
        self.watch(table, "scroll_y", self._scrolled, init=False)
        self.ask(self.query_spec)

    @property
    def settled(self) -> bool:
        """Whether no filter waits for a pause in typing and no query runs."""
        return self._filter_timer is None and not self.busy("page") and not self.busy("more")

    # querying -----------------------------------------------------------------------------------
    def ask(self, spec: ModelQuery) -> None:
        """Query the first page of ``spec``; the table keeps its rows until the answer."""
        self.query_spec = spec
        self.start("page", partial(Atlas.model_page, query=spec, offset=0, limit=PAGE_ROWS))

    def loaded_page(self, page: ModelPage) -> None:
        table = self.query_one("#models", DataTable)
        table.loading = False
        first = self.page is None
        if page.offset == 0:
            self.page = page
            self._set_columns(table, page.query)
            self.loaded = 0
        elif self.page is None or page.query != self.page.query or page.offset != self.loaded:
            return  # a next page of a superseded query
        for key, cells in self._rows(page):
            table.add_row(*cells, key=key)
        self.loaded = page.end
        self._status()
        self._scrolled(table.scroll_y)  # a view taller than what is loaded wants more
        if page.offset == 0 and page.total == 0:
            self.notice().show("The atlas holds no models yet: ingest or import some.", "hint")
        elif page.offset == 0 and page.query.where is not None:
            self.notice().clear()
        if first and not self.query_one("#filter", Input).value:
            table.focus()

    def failed_page(self, error: str) -> None:
        self.query_one("#models", DataTable).loading = False
        prefix = "WHERE clause: " if self.query_spec.where is not None else ""
        self.notice().show(prefix + error, "error")
        if self.page is not None:  # the table still shows the last good query
            self.query_spec = self.page.query

    def _more(self) -> None:
        """Fetch the next page when the end of the loaded rows comes near."""
        page = self.page
        if page is None or self.loaded >= page.matching or self.busy("more"):
            return
        self.start("more", partial(Atlas.model_page, query=page.query, offset=self.loaded,
                                   limit=PAGE_ROWS))

    loaded_more = loaded_page

    def _scrolled(self, scroll_y: float) -> None:
        table = self.query_one("#models", DataTable)
        if scroll_y + table.scrollable_content_region.height >= self.loaded - PREFETCH_ROWS:
            self._more()

    @on(DataTable.RowHighlighted, "#models")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row >= self.loaded - PREFETCH_ROWS:
            self._more()

    # the table ----------------------------------------------------------------------------------
    def _set_columns(self, table: DataTable, spec: ModelQuery) -> None:
        table.clear(columns=True)
        for name in spec.columns:
            arrow = (" ▼" if spec.descending else " ▲") if name == spec.sort else ""
            table.add_column(Text(HEADERS.get(name, name) + arrow), key=name)

    @staticmethod
    def _rows(page: ModelPage) -> list[tuple[str, tuple[str, ...]]]:
        """(row key, cells): the variant's key, or the family when grouped."""
        names = page.query.columns
        return [(row[names[0]], tuple(params(row[name]) if name == "n_params"
                                      else optional(row[name]) for name in names))
                for row in page.rows.iter_rows(named=True)]

    def _status(self) -> None:
        page = self.page
        if page is None:
            return
        spec = page.query
        shown = (f"showing 1–{self.loaded:,} of " if self.loaded < page.matching else "")
        if spec.grouped:
            what = f"{shown}{page.matching:,} families · {page.variants:,} variants"
        else:
            what = f"{shown}{page.matching:,} variants"
        if page.variants != page.total:
            kind = "WHERE" if spec.where is not None else "key filter"
            what += f" ({kind}; {page.total:,} in the atlas)"
        order = "descending" if spec.descending else "ascending"
        enter = "Enter: its variants" if spec.grouped else "Enter: details"
        self.query_one("#status", Static).update(
            f"{what} · sorted by {spec.sort} {order} · {enter}")

    # filtering ----------------------------------------------------------------------------------
    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._stop_typing_timer()
        clause = ModelQuery.where_clause(event.value)
        if clause is not None:
            if clause != self.query_spec.where:
                self.notice().show("A SQL condition over model_variants: press Enter to apply "
                                   "it", "hint")
            return
        self.notice().clear()
        self._filter_timer = self.set_timer(FILTER_DELAY, partial(self._apply_text, event.value))

    def _stop_typing_timer(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None

    def _apply_text(self, text: str) -> None:
        self._filter_timer = None
        self.ask(replace(self.query_spec, text=text, where=None))

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        clause = ModelQuery.where_clause(event.value)
        if clause is None:
            self.action_focus_table()
            return
        self.ask(replace(self.query_spec, text="", where=clause))

    # sorting and grouping -----------------------------------------------------------------------
    def sort_by(self, column: str, descending: bool | None = None) -> None:
        spec = self.query_spec
        if descending is None:
            descending = not spec.descending if column == spec.sort else False
        self.ask(replace(spec, sort=column, descending=descending))

    @on(DataTable.HeaderSelected, "#models")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    def action_sort_next(self) -> None:
        names = self.query_spec.columns
        following = names[(names.index(self.query_spec.sort) + 1) % len(names)]
        self.sort_by(following, False)

    def action_sort_reverse(self) -> None:
        self.sort_by(self.query_spec.sort, not self.query_spec.descending)

    def action_toggle_group(self) -> None:
        """Variants ⇄ one row per family (counts of its variants, sizes, seeds, …)."""
        grouped = not self.query_spec.grouped
        sort = "family" if grouped else "key"
        self.ask(replace(self.query_spec, grouped=grouped, sort=sort, descending=False))

    def show_family(self, family: str) -> None:
        """List the variants of one family: the filter becomes ``where family = …``, kept
        together with a condition or key filter already there."""
        spec = self.query_spec.for_family(family)
        self.query_one("#filter", Input).value = f"where {spec.where}"
        self._stop_typing_timer()
        self.notice().clear()
        self.ask(spec)
        self.action_focus_table()

    # navigation ---------------------------------------------------------------------------------
    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#models", DataTable).focus()

    @on(DataTable.RowSelected, "#models")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is None or self.page is None:
            return
        if self.page.query.grouped:
            self.show_family(event.row_key.value)
        else:
            self.app.open_model(event.row_key.value)  # type: ignore[attr-defined]
