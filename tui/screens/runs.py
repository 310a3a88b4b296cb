"""One training run (family, size, seed): its trajectory and its diffusion exponents.

Trajectory: KL between consecutive checkpoints against the step, on log–log axes.
Diffusion: ln D against ln Δt for both spaces (D_q = KL in bits/byte, D_w = ‖ΔW‖² from the
weight sketches) with lines of the fitted slopes, and c_q, c_w, α with bootstrap intervals
per start t0 and overall (``Atlas.diffusion``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import numpy as np
import polars as pl
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, Select, Static
from textual_plotext import PlotextPlot

from atlas.api import Atlas, Run, RunResult
from tui.render import estimate, fitted_line, log_axis, number
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice


def on_a_shared_set(job: Callable[..., RunResult], atlas: Atlas, run: Run, textset: str | None,
                    **options) -> RunResult:
    """``job`` on ``textset`` where the run's checkpoints share it, else on the first set they
    share: the screen keeps its text set from run to run where it can."""
    sets = atlas.run_textsets(run)
    return job(atlas, run, textset=textset if textset in sets else sets[0], **options)


class RunScreen(AtlasScreen):
    """A run picker; subclasses load and draw the chosen run."""

    DEFAULT_CSS = """
    RunScreen #controls { height: 3; }
    RunScreen #run { width: 36; }
    RunScreen #plot { height: 1fr; min-height: 8; }
    RunScreen #info { width: 1fr; height: 3; padding: 0 1; color: $text-muted; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "next_textset", "Text set"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.run: Run | None = None
        self.textset: str | None = None  # None: the first the run's checkpoints share
        self.textsets: list[str] = []

    def compose_controls(self) -> ComposeResult:
        yield Select([], prompt="run", id="run", allow_blank=True)

    def on_mount(self) -> None:
        # Textual calls on_mount of every class in the MRO: subclasses add setup_tables instead
        self.setup_tables()
        self.start("runs", Atlas.runs)

    def setup_tables(self) -> None:
        pass

    def loaded_runs(self, runs: list[Run]) -> None:
        self.runs = runs
        select = self.query_one("#run", Select)
        with self.prevent(Select.Changed):
            select.set_options([(f"{r.label} ({r.n_checkpoints} ckpts)", r.ident) for r in runs])
        if not runs:
            self.notice().show("No run with two or more numbered checkpoints in this atlas.")
            return
        wanted = self.app.selected_run  # type: ignore[attr-defined]
        self.choose(wanted if wanted in {r.ident for r in runs} else runs[0].ident)

    def choose(self, ident: str) -> None:
        run = next((r for r in self.runs if r.ident == ident), None)
        if run is None:
            return
        self.run = run
        select = self.query_one("#run", Select)
        if select.value != ident:
            with self.prevent(Select.Changed):
                select.value = ident
        self.app.selected_run = ident  # type: ignore[attr-defined]
        self.load_run(run)

    def load_run(self, run: Run) -> None:
        raise NotImplementedError

    def took(self, result: RunResult) -> None:
        """Remember the text set a result is on, and the others the run could use."""
        self.textset, self.textsets = result.textset, result.textsets

    def textset_note(self) -> str:
        if len(self.textsets) < 2:
            return f"on {self.textset}"
        return f"on {self.textset} (x: {len(self.textsets) - 1} other text set" + (
            "s)" if len(self.textsets) > 2 else ")")

    def action_next_textset(self) -> None:
        if self.run is None or len(self.textsets) < 2:
            self.notify("The checkpoints of this run share one text set only.")
            return
        at = self.textsets.index(self.textset) if self.textset in self.textsets else -1
        self.textset = self.textsets[(at + 1) % len(self.textsets)]
        self.load_run(self.run)

    @on(Select.Changed, "#run")
    def _run_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and (self.run is None or event.value != self.run.ident):
            self.choose(event.value)

    def on_screen_resume(self) -> None:  # AtlasScreen's runs too (Textual walks the MRO)
        wanted = self.app.selected_run  # type: ignore[attr-defined]
        if self.runs and wanted and (self.run is None or wanted != self.run.ident):
            self.choose(wanted)

    def plot(self) -> PlotextPlot:
        return self.query_one("#plot", PlotextPlot)


class TrajectoryScreen(RunScreen):
    AUTO_FOCUS = "#steps"
    DEFAULT_CSS = """
    TrajectoryScreen #traj-body { height: 1fr; }
    TrajectoryScreen #steps { width: 40; height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield ModeBar()
        with Horizontal(id="controls"):
            yield from self.compose_controls()
            yield Static("", id="info")
        yield Notice(id="notice")
        with Horizontal(id="traj-body"):
            yield PlotextPlot(id="plot")
            yield DataTable(id="steps", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def setup_tables(self) -> None:
        # fixed widths: auto widths follow the rows a refresh later, so what a screen (or an
        # SVG snapshot) shows first would depend on timing
        table = self.query_one("#steps", DataTable)
        for name, key, width in (("step", "step", 5), ("→ next", "next", 6), ("KL", "kl", 7),
                                 ("± SE", "se", 6)):
            table.add_column(name, key=key, width=width)

    def load_run(self, run: Run) -> None:
        # no `loading` overlay on the table: a loading widget cannot take the focus, which
        # would make the screen's initial focus depend on how fast the atlas answers
        self.query_one("#info", Static).update(f"loading {run.label}…")
        self.start("trajectory", partial(on_a_shared_set, Atlas.trajectory, run=run,
                                         textset=self.textset))

    def loaded_trajectory(self, result: RunResult) -> None:
        self.took(result)
        frame: pl.DataFrame = result.value
        self.notice().clear()
        table = self.query_one("#steps", DataTable)
        table.clear()
        for r in frame.iter_rows(named=True):
            table.add_row(str(r["step"]), str(r["next_step"]), number(r["kl"]),
                          number(r["se"], 2), key=r["key"])
        usable = frame.filter((pl.col("kl") > 0) & (pl.col("next_step") > 0))
        plt = self.plot().plt
        plt.clear_figure()
        plt.title(f"{self.run.label if self.run else ''}: consecutive KL")
        if usable.height:
            xs = log_axis(plt, "x", usable["next_step"].to_list())
            ys = log_axis(plt, "y", usable["kl"].to_list())
            plt.plot(xs, ys, marker="braille", color="cyan")
            plt.scatter(xs, ys, marker="●", color="cyan")
        plt.xlabel("next step")
        plt.ylabel("KL bpb")
        self.plot().refresh()
        dropped = frame.height - usable.height
        self.query_one("#info", Static).update(
            f"{frame.height} consecutive pairs {self.textset_note()}"
            + (f"; {dropped} with KL 0 not plotted" if dropped else ""))

    def failed_trajectory(self, error: str) -> None:
        self.query_one("#steps", DataTable).clear()
        self.query_one("#info", Static).update("")
        self.notice().show(error)


class DiffusionScreen(RunScreen):
    AUTO_FOCUS = "#fits"
    DEFAULT_CSS = """
    DiffusionScreen #window { width: 18; }
    DiffusionScreen #fits { height: auto; max-height: 9; }
    DiffusionScreen #notes { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.window: int | None = None
        self.result = None

    def compose(self) -> ComposeResult:
        yield ModeBar()
        with Horizontal(id="controls"):
            yield from self.compose_controls()
            yield Input(placeholder="window", id="window", type="integer")
            yield Static("", id="info")
        yield Notice(id="notice")
        yield PlotextPlot(id="plot")
        yield DataTable(id="fits", cursor_type="row", zebra_stripes=True)
        yield Static("", id="notes")
        yield Footer()

    def setup_tables(self) -> None:
        table = self.query_one("#fits", DataTable)
        for name in ("t0", "c_q", "c_w", "α", "R² q/w"):
            table.add_column(name, key=name)

    def load_run(self, run: Run) -> None:
        window_input = self.query_one("#window", Input)
        window = self.window or run.default_window
        window = min(window, max(3, run.n_checkpoints - 1))
        with self.prevent(Input.Changed):
            window_input.value = str(window)
        self.query_one("#info", Static).update(f"fitting {run.label}, window {window}…")
        self.start("fit", partial(on_a_shared_set, Atlas.diffusion, run=run, window=window,
                                  textset=self.textset))

    @on(Input.Submitted, "#window")
    def _window(self, event: Input.Submitted) -> None:
        try:
            self.window = int(event.value)
        except ValueError:
            self.notice().show("The window is a whole number of lags (3 or more).", "error")
            return
        if self.run is not None:
            self.load_run(self.run)

    def loaded_fit(self, answer: RunResult) -> None:
        self.took(answer)
        result = answer.value
        self.result = result
        self.notice().clear()
        table = self.query_one("#fits", DataTable)
        table.clear()
        table.add_row("overall", estimate(result.c_q.value, result.c_q.ci_low, result.c_q.ci_high),
                      estimate(result.c_w.value, result.c_w.ci_low, result.c_w.ci_high),
                      estimate(result.alpha.value, result.alpha.ci_low, result.alpha.ci_high),
                      "", key="overall")
        for row in result.per_t0:
            table.add_row(str(row.t0), number(row.c_q), number(row.c_w), number(row.alpha),
                          f"{number(row.r2_q, 2)}/{number(row.r2_w, 2)}", key=f"t0={row.t0}")
        level = round(100 * result.ci_level)
        self.query_one("#info", Static).update(
            f"window {result.window} · {len(result.per_t0)} starts t0 · {result.n_texts} texts "
            f"{self.textset_note()} · {level}% CI, {result.n_boot} bootstrap draws")
        notes = list(result.notes)
        if result.d_w is None:
            notes.append("no weight sketches for this run: D_w, c_w and α are not available")
        self.query_one("#notes", Static).update("\n".join(notes))
        self.draw(result)

    def draw(self, result) -> None:
        plt = self.plot().plt
        plt.clear_figure()
        plt.title(f"{self.run.label if self.run else ''}: ln D vs ln Δt")
        for name, distances, fit, color in (("D_q", result.d_q, result.c_q.value, "cyan"),
                                            ("D_w", result.d_w, result.c_w.value, "orange")):
            if distances is None:
                continue
            lags = np.asarray(result.lags, dtype=float)
            values = np.asarray(distances, dtype=float)
            ok = np.isfinite(values) & (values > 0) & (lags > 0)
            if not ok.any():
                continue
            xs = [math.log(v) for v in lags[ok]]
            ys = [math.log(v) for v in values[ok]]
            plt.scatter(xs, ys, marker="•", color=color, label=f"{name} c={number(fit)}")
            line = fitted_line(lags[ok], values[ok], fit)
            if line is not None:
                plt.plot(*line, marker="braille", color=color)
        plt.xlabel("ln Δt (steps)")
        plt.ylabel("ln D")
        self.plot().refresh()

    def failed_fit(self, error: str) -> None:
        self.query_one("#fits", DataTable).clear()
        self.query_one("#info", Static).update("")
        self.plot().plt.clear_figure()
        self.plot().refresh()
        self.notice().show(error)
