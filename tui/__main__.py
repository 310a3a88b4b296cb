"""``python -m tui [DB]``: the TUI without the atlas CLI (DB defaults as for ``atlas``)."""

from __future__ import annotations

import sys

from atlas.api import default_db_path
from tui.app import run

if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else default_db_path())
