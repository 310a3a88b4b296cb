"""The ? help: every screen's keys in one place."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# LM Atlas TUI

A read-only browser of an atlas file: nothing here changes it. Screens (keys work when no text
field has the focus; the command palette, **ctrl+p**, works everywhere):

| key | screen |
|---|---|
| 1 | **Models**: all variants, a page at a time; type to filter by key, or `where <SQL>` + Enter |
| 2 | **SQL**: console over the atlas's macros and views |
| 3 | **Scale**: median and quartiles of the KL per setting, on one log axis |
| 4 | **Trajectory**: consecutive-checkpoint KL of a run |
| 5 | **Diffusion**: ln D vs ln Δt, c_q, c_w and α of a run |
| 6 | **Map**: a stored 2-D map of the models |

| key | where | what |
|---|---|---|
| / | Models | filter (Escape back to the table) |
| s / S | Models | sort by the next column / reverse (or click a header) |
| g | Models | group by family: one row per family with counts (again: ungroup) |
| Enter | Models, grouped | list the family's variants (`where family = …`) |
| Enter | Models, Map, tables of a model | open the model |
| Escape | model | back |
| x | model | next text set of the model |
| t / d | model | its run's trajectory / diffusion |
| ctrl+enter, ctrl+j, f8 | SQL | run the query |
| ctrl+g | SQL | cancel the running query |
| ctrl+s | SQL | export the whole result to a .csv or .parquet file |
| ctrl+up / ctrl+down | SQL | older / newer query of the history (kept across sessions) |
| ctrl+e / Escape | SQL | editor / results |
| arrows, n / p | Map | move the cursor |
| r | any | reload (also retries after a lock) |
| ctrl+t | any | light / dark theme |
| ? | any | this help |
| q, ctrl+q | any | quit |

If another process holds the atlas (an ingest writing its vectors), the screen says so and
retries by itself; press **r** to retry at once.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
