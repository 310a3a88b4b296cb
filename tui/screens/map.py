"""A stored map as a scatter coloured by family; arrows move a cursor, Enter opens the model."""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import polars as pl
from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Select, Static
from textual_plotext import PlotextPlot

from atlas.api import Atlas
from tui.render import number
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

COLORS = ("cyan", "orange", "green", "magenta", "blue", "yellow", "red", "gray")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, 1.0), "down": (0.0, -1.0)}


def step_towards(xs: list[float], ys: list[float], current: int, direction: str) -> int:
    """The nearest point in ``direction`` (within 60° of it, else anywhere on that side).

    Coordinates are normalised to the unit square first, so both axes count alike.
    """
    if not xs:
        return current
    dx, dy = DIRECTIONS[direction]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    cx, cy = xs[current] / span_x, ys[current] / span_y
    best, best_score = current, math.inf
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if i == current:
            continue
        vx, vy = x / span_x - cx, y / span_y - cy
        along = vx * dx + vy * dy
        if along <= 1e-12:
            continue
        across = abs(vx * dy - vy * dx)
        distance = math.hypot(vx, vy)
        score = distance * (1.0 if across <= along * math.sqrt(3) else 4.0) + across
        if score < best_score:
            best, best_score = i, score
    return best


class MapPlot(PlotextPlot, can_focus=True):
    """The scatter, focusable, with a cursor on one point."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move('left')", "←", show=False),
        Binding("right", "move('right')", "→", show=False),
        Binding("up", "move('up')", "↑", show=False),
        Binding("down", "move('down')", "↓", show=False),
        Binding("n", "cycle(1)", "Next"),
        Binding("p", "cycle(-1)", "Prev"),
        Binding("enter", "open", "Open"),
    ]

    class Moved(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    class Opened(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.points = pl.DataFrame()
        self.cursor = 0
        self.title = ""

    def show(self, points: pl.DataFrame, title: str) -> None:
        self.points = points
        self.title = title
        self.cursor = 0
        self.draw()

    def draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        if self.points.is_empty():
            self.refresh()
            return
        families = sorted(set(self.points["family"].to_list()))
        for i, family in enumerate(families):
            group = self.points.filter(pl.col("family") == family)
            plt.scatter(group["x"].to_list(), group["y"].to_list(), marker="●",
                        color=COLORS[i % len(COLORS)], label=family)
        x, y = self.points["x"][self.cursor], self.points["y"][self.cursor]
        cursor = "white" if self.app.current_theme.dark else "black"
        plt.scatter([x], [y], marker="◉", color=cursor)
        plt.xlabel("x")
        self.refresh()

    def action_move(self, direction: str) -> None:
        if self.points.is_empty():
            return
        self.cursor = step_towards(self.points["x"].to_list(), self.points["y"].to_list(),
                                   self.cursor, direction)
        self.draw()
        self.post_message(self.Moved(self.cursor))

    def action_cycle(self, delta: int) -> None:
        if self.points.is_empty():
            return
        self.cursor = (self.cursor + delta) % self.points.height
        self.draw()
        self.post_message(self.Moved(self.cursor))

    def action_open(self) -> None:
        if not self.points.is_empty():
            self.post_message(self.Opened(self.cursor))


class MapScreen(AtlasScreen):
    AUTO_FOCUS = "#plot"
    DEFAULT_CSS = """
    MapScreen #controls { height: 3; }
    MapScreen #map-name { width: 36; }
    MapScreen #map-info { height: auto; padding: 0 1; color: $text-muted; }
    MapScreen #plot { height: 1fr; }
    MapScreen #point { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.maps = pl.DataFrame()
        self.name_shown: str | None = None

    def compose(self) -> ComposeResult:
        yield ModeBar()
        with Horizontal(id="controls"):
            yield Select([], prompt="map", id="map-name", allow_blank=True)
            yield Static("", id="map-info")
        yield Notice(id="notice")
        yield MapPlot(id="plot")
        yield Static("", id="point")
        yield Footer()

    def on_mount(self) -> None:
        self.start("maps", Atlas.maps)

    def loaded_maps(self, frame: pl.DataFrame) -> None:
        self.maps = frame
        names = frame["name"].to_list() if frame.height else []
        select = self.query_one("#map-name", Select)
        with self.prevent(Select.Changed):
            select.set_options([(name, name) for name in names])
        if not names:
            self.notice().show("No stored map: fit one with `atlas map --method pca` "
                               "(or tsne, umap), then press r.", "hint")
            return
        self.choose(names[0])

    def choose(self, name: str) -> None:
        select = self.query_one("#map-name", Select)
        if select.value != name:
            with self.prevent(Select.Changed):
                select.value = name
        self.name_shown = name
        row = self.maps.filter(pl.col("name") == name).row(0, named=True)
        where = f", where {row['model_where']}" if row.get("model_where") else ""
        self.query_one("#map-info", Static).update(
            f"{row['method']} on {row['textset']}{where}: {row['n_models']} models")
        self.start("points", partial(Atlas.map_points, name=name))

    @on(Select.Changed, "#map-name")
    def _map_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.name_shown:
            self.choose(event.value)

    def loaded_points(self, points: pl.DataFrame) -> None:
        self.notice().clear()
        plot = self.query_one("#plot", MapPlot)
        plot.show(points.sort("key"), self.name_shown or "")
        plot.focus()
        self._describe(plot.cursor)

    def _describe(self, index: int) -> None:
        plot = self.query_one("#plot", MapPlot)
        if plot.points.is_empty():
            return
        row = plot.points.row(index, named=True)
        self.query_one("#point", Static).update(
            f"[b]{escape(row['key'])}[/b]  family {escape(str(row['family']))}  "
            f"({number(row['x'])}, {number(row['y'])})  arrows/n/p move · Enter opens")

    @on(MapPlot.Moved)
    def _moved(self, event: MapPlot.Moved) -> None:
        self._describe(event.index)

    @on(MapPlot.Opened)
    def _opened(self, event: MapPlot.Opened) -> None:
        plot = self.query_one("#plot", MapPlot)
        self.app.open_model(plot.points["key"][event.index])  # type: ignore[attr-defined]
