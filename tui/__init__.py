"""A Textual TUI over an LM Atlas file; it opens the atlas read-only and never changes it."""

from tui.app import AtlasApp, run

__all__ = ["AtlasApp", "run"]
