"""The KL scale: median and quartiles of the KL per setting on one log axis.

The answer to "is this difference large?": a KL between two models reads against how far apart
consecutive checkpoints, seeds, sizes, fine-tunes and random pairs are in the same atlas. Where
the atlas holds them, two columns say how far to trust each setting's numbers: how many of its
pairs are within 3 precision floors (rounding, `atlas calibrate --floor`), and the median
estimator/Monte-Carlo ratio of its calibrated pairs (`atlas calibrate`), with their count.
"""

from __future__ import annotations

from functools import partial

import polars as pl
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Select, Static

from atlas.api import Atlas
from tui.render import ScaleRow, number, scale_chart
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice


class ScaleChart(Static):
    """The chart re-renders to its width."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[ScaleRow] = []

    def set_rows(self, rows: list[ScaleRow], message: str = "") -> None:
        self.rows = rows
        if rows:
            self._draw()
        else:
            self.update(message)

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if self.rows:
            self.update(scale_chart(self.rows, max(40, self.size.width - 1)))


MEASURED = {"within_floor": "≤3 floors", "est_over_mc": "est/MC"}  # column → heading


def measured_cell(name: str, row: dict) -> str:
    """A setting's floor flag (flagged/pairs) or calibration ratio (median, pairs); '—' when
    none of its pairs has one."""
    if name == "within_floor":
        flagged = row.get("within_floor")
        return "—" if flagged is None else f"{flagged}/{row['count']}"
    if not row.get("calibrated"):
        return "—"
    return f"{number(row['est_over_mc'])} ({row['calibrated']})"


class ScaleScreen(AtlasScreen):
    AUTO_FOCUS = "#stats"  # not the filter: digits must still switch screens
    DEFAULT_CSS = """
    ScaleScreen #controls { height: 3; }
    ScaleScreen #textset { width: 30; }
    ScaleScreen #where { width: 1fr; }
    ScaleScreen #chart { height: auto; padding: 1 1 0 1; }
    ScaleScreen #stats { height: auto; margin-top: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.textset: str | None = None
        self.where: str = ""
        self.frame: pl.DataFrame | None = None

    def compose(self) -> ComposeResult:
        yield ModeBar()
        with Horizontal(id="controls"):
            yield Select([], prompt="text set", id="textset", allow_blank=True)
            yield Input(placeholder="optional model filter: where family = 'pythia' (Enter)",
                        id="where")
        yield Notice(id="notice")
        with VerticalScroll(id="body"):
            yield ScaleChart(id="chart")
            yield DataTable(id="stats", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#stats", DataTable)
        for name in ("setting", "pairs", "median", "q1", "q3", "mean", "sd"):
            table.add_column(name, key=name)
        self.start("textsets", Atlas.vector_textsets)

    def loaded_textsets(self, names: list[str]) -> None:
        select = self.query_one("#textset", Select)
        with self.prevent(Select.Changed):
            select.set_options([(name, name) for name in names])
            if names:
                self.textset = names[0]
                select.value = names[0]
        select.disabled = len(names) < 2
        if not names:
            self.notice().show("The atlas holds no vectors yet: ingest or import models first.")
            return
        self.load()

    def load(self) -> None:
        self.query_one("#chart", ScaleChart).set_rows([], "computing the KL scale…")
        self.start("scale", partial(Atlas.scale, textset=self.textset, where=self.where))

    def loaded_scale(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.notice().clear()
        rows = [ScaleRow(r["setting"], r["count"], r["q1"], r["median"], r["q3"])
                for r in frame.iter_rows(named=True)]
        self.query_one("#chart", ScaleChart).set_rows(rows)
        table = self.query_one("#stats", DataTable)
        table.clear()
        for name, heading in MEASURED.items():  # kept once shown: other text sets get '—'
            if name in frame.columns and name not in table.columns:
                table.add_column(heading, key=name)
        measured = [name for name in MEASURED if name in table.columns]
        for r in frame.iter_rows(named=True):
            table.add_row(r["setting"], str(r["count"]), number(r["median"]), number(r["q1"]),
                          number(r["q3"]), number(r["mean"]), number(r["sd"]),
                          *(measured_cell(name, r) for name in measured), key=r["setting"])

    def failed_scale(self, error: str) -> None:
        self.query_one("#chart", ScaleChart).set_rows([], "")
        self.query_one("#stats", DataTable).clear()
        self.notice().show(error)

    @on(Select.Changed, "#textset")
    def _textset(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.textset:
            self.textset = event.value
            self.load()

    @on(Input.Submitted, "#where")
    def _where(self, event: Input.Submitted) -> None:
        self.where = event.value.strip()
        self.load()
