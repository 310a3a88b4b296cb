"""The LM Atlas TUI: a read-only Textual browser of an atlas file.

    from tui.app import run
    run("atlas.duckdb")

Each top-level screen is a Textual *mode* with its own screen stack, so switching keeps each
screen's state (the SQL editor's text, the chosen run); a model's detail screen is pushed onto
the stack of the mode it was opened from. All database work runs in thread workers
(tui.screens.base) over a read-only ``atlas.api.Atlas`` (tui.backend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.screen import Screen

from atlas.api import Atlas, Run
from atlas.errors import AtlasError
from tui.backend import Backend
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.map import MapScreen
from tui.screens.models import ModelsScreen
from tui.screens.runs import DiffusionScreen, TrajectoryScreen
from tui.screens.scale import ScaleScreen
from tui.screens.sql import SqlScreen
from tui.widgets import MODES as MODE_KEYS

DARK, LIGHT = "textual-dark", "textual-light"
DESCRIPTIONS = {
    "models": "Browse and filter the model variants",
    "sql": "Run SQL over the atlas (read-only)",
    "scale": "The KL scale: median and quartiles per setting",
    "trajectory": "Consecutive-checkpoint KL of a run",
    "diffusion": "Diffusion exponents c_q, c_w and α of a run",
    "map": "A stored 2-D map of the models",
}


class ModelCommands(Provider):
    """Command palette: open any model by (part of) its key.

    DuckDB finds the candidates (keys holding the typed characters in order) so that the palette
    stays quick on a 100,000-variant atlas; the palette's matcher scores them.
    """

    async def search(self, query: str) -> Hits:
        app = self.app
        try:
            keys = await asyncio.to_thread(app.backend.call,  # type: ignore[attr-defined]
                                           partial(Atlas.matching_keys, text=query))
        except AtlasError:
            return  # no atlas, or locked: the screens say so
        matcher = self.matcher(query)
        for key in keys:
            score = matcher.match(key)
            if score > 0:
                yield Hit(score, matcher.highlight(key), partial(app.open_model, key),  # type: ignore[attr-defined]
                          help="open this model")


class AtlasApp(App[None]):
    TITLE = "LM Atlas"
    MODES: ClassVar[dict[str, str | Callable[[], Screen]]] = {
        "models": ModelsScreen,
        "sql": SqlScreen,
        "scale": ScaleScreen,
        "trajectory": TrajectoryScreen,
        "diffusion": DiffusionScreen,
        "map": MapScreen,
    }
    DEFAULT_MODE = "models"
    COMMANDS = App.COMMANDS | {ModelCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, f"switch_mode('{mode}')", label, show=False)
          for mode, key, label in MODE_KEYS),
        # F2–F7 switch screens from anywhere, the SQL editor included, where digits are text
        *(Binding(f"f{index + 2}", f"switch_mode('{mode}')", label, show=False, priority=True)
          for index, (mode, _, label) in enumerate(MODE_KEYS)),
        Binding("question_mark,f1", "help", "Help"),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, db_path: str | Path) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.db_name = self.db_path.name
        self.backend = Backend(self.db_path)
        self.selected_run: str | None = None  # Run.ident shared by trajectory and diffusion
        self.theme = DARK

    # navigation ---------------------------------------------------------------------------------
    def open_model(self, key: str) -> None:
        self.push_screen(DetailScreen(key))

    def show_run(self, family: str, size: str, seed: int | None, mode: str) -> None:
        self.selected_run = Run.ident_of(family, size, seed)
        self.switch_mode(mode)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT if self.theme == DARK else DARK

    # command palette ----------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for mode, key, label in MODE_KEYS:
            yield SystemCommand(f"Screen: {label}", f"{DESCRIPTIONS[mode]} (key {key})",
                                partial(self.switch_mode, mode))
        yield from self.screen_commands(screen)
        yield SystemCommand("Toggle light/dark theme", "Switch between the light and dark "
                            "theme (ctrl+t)", self.action_toggle_theme)
        yield SystemCommand("Help", "Keys of every screen (?)", self.action_help)
        yield from super().get_system_commands(screen)

    def screen_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The actions of the screen under the palette (what its keys do, those it allows
        now), so that every action can also be found by name, even one whose key the focused
        widget takes (ctrl+e in the SQL editor)."""
        seen: set[str] = set()
        for cls in type(screen).__mro__:
            if not cls.__module__.startswith("tui."):
                continue
            for binding in cls.__dict__.get("BINDINGS", []):
                if not isinstance(binding, Binding):
                    continue
                action = binding.action
                if action in seen or screen.check_action(action.split("(")[0], ()) is False:
                    continue
                seen.add(action)
                yield SystemCommand(binding.description, f"key {binding.key.replace(',', ', ')}",
                                    partial(self.run_action, action, screen))

def run(db_path: str | Path) -> None:
    """Open the TUI on the atlas at ``db_path`` (read-only)."""
    AtlasApp(db_path).run()
