"""Small widgets shared by the screens."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.widgets import Static

# (mode, key, label) in the order of the mode bar; the keys are the app's bindings
MODES = (
    ("models", "1", "Models"),
    ("sql", "2", "SQL"),
    ("scale", "3", "Scale"),
    ("trajectory", "4", "Trajectory"),
    ("diffusion", "5", "Diffusion"),
    ("map", "6", "Map"),
)


class ModeBar(Static):
    """The top line: the screens with their keys (clickable), the current one highlighted."""

    DEFAULT_CSS = """
    ModeBar {
        height: 1;
        background: $panel;
        color: $text-muted;
    }
    """

    def on_mount(self) -> None:
        self.update_modes()

    def update_modes(self) -> None:
        current = self.app.current_mode
        parts = ["[b]LM Atlas[/b] "]
        for mode, key, label in MODES:
            text = f" {key} {label} "
            if mode == current:
                parts.append(f"[reverse b]{text}[/]")
            else:
                parts.append(f"[@click=app.switch_mode('{mode}')]{text}[/]")
        name = getattr(self.app, "db_name", "")
        self.update("".join(parts) + (f" [dim]{escape(name)}[/]" if name else ""))


class Notice(Static):
    """One inline message under a control: an error, a hint, or a lock notice; hidden if empty."""

    DEFAULT_CSS = """
    Notice {
        height: auto;
        max-height: 6;
        padding: 0 1;
        display: none;
    }
    Notice.-shown { display: block; }
    Notice.-error { color: $text-error; background: $error-muted; }
    Notice.-locked { color: $text-warning; background: $warning-muted; }
    Notice.-hint { color: $text-muted; }
    """

    KINDS = ("error", "locked", "hint")

    def show(self, message: str, kind: str = "error") -> None:
        for name in self.KINDS:
            self.set_class(name == kind, f"-{name}")
        self.add_class("-shown")
        self._message = message
        self.update(Text(message))

    def clear(self) -> None:
        self.remove_class("-shown")
        self._message = ""
        self.update("")

    @property
    def message(self) -> str:
        return getattr(self, "_message", "")

    @property
    def kind(self) -> str | None:
        if not self.has_class("-shown"):
            return None
        return next((name for name in self.KINDS if self.has_class(f"-{name}")), None)
