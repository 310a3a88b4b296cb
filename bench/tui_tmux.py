"""Drive the real `atlas tui` in a real terminal (tmux) and show what a person would see.

Starts the app in a detached tmux session of the given size, sends keys, captures the pane after
each step into OUT/NN-step.txt, and checks that each screen shows what it should. Needs tmux and
an atlas (e.g. the one `atlas demo` writes). Run:

    python bench/tui_tmux.py atlas.duckdb [--out tui-capture] [--size 100x30]

Exit status 0 when every screen showed its expected text; the captures are there to read.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

SESSION = "atlas-tui-check"
KEY_NAMES = {"Enter", "Escape", "Tab", "Up", "Down", "Left", "Right"}
# (name, keys to send, text the pane must then contain)
STEPS = [
    ("models", [], "variants"),
    ("filter", ["/", "step400"], "of"),
    ("detail", ["Enter", "Enter"], "Nearest models"),
    ("back", ["Escape"], "variants"),
    ("sql", ["2"], "SQL"),
    ("scale", ["Escape", "3"], "median"),  # Escape leaves the SQL editor (digits type there)
    ("trajectory", ["4"], "step"),
    ("diffusion", ["5"], "c_q"),
    ("map", ["6"], "Map"),
    ("help", ["?"], "Help"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def capture() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--out", type=Path, default=Path("tui-capture"))
    parser.add_argument("--size", default="100x30")
    parser.add_argument("--wait", type=float, default=3.0, help="Seconds after each step.")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("tmux is not installed")
    if not args.db.exists():
        sys.exit(f"{args.db}: no atlas here; run `atlas demo` first")
    width, height = args.size.split("x")
    atlas = Path(sys.executable).parent / "atlas"
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    tmux("new-session", "-d", "-s", SESSION, "-x", width, "-y", height,
         f"{atlas} tui {args.db.resolve()}")
    failed = []
    try:
        for number, (name, keys, expected) in enumerate(STEPS):
            for key in keys:  # tmux key names as such, anything else as literal text
                tmux("send-keys", "-t", SESSION, *([key] if key in KEY_NAMES else ["-l", key]))
                time.sleep(0.6)  # an Escape followed at once by a key reads as Alt+key
            time.sleep(args.wait)
            screen = capture()
            (args.out / f"{number:02d}-{name}.txt").write_text(screen)
            status = "ok" if expected in screen else f"MISSING {expected!r}"
            if expected not in screen:
                failed.append(name)
            print(f"{number:02d} {name:<11} {status}")
        tmux("send-keys", "-t", SESSION, "q")
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    print(f"captures in {args.out}/; " + (f"failed: {', '.join(failed)}" if failed else "all ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
