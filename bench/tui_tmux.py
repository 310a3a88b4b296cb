"""Drive the real `atlas tui` in a real terminal (tmux) and show what a person would see.

Starts the app in a detached tmux session of the given size, sends keys, captures the pane after
each step into OUT/NN-step.txt, and checks that each screen shows what it should. Needs tmux and
an atlas (e.g. the one `atlas demo` writes). Run:

    python bench/tui_tmux.py atlas.duckdb [--out tui-capture] [--size 100x30] [--filter step400]

Exit status 0 when every screen showed its expected text; the captures are there to read.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tui.history import HISTORY_ENV

SESSION = "atlas-tui-check"
KEY_NAMES = {"Enter", "Escape", "Tab", "Up", "Down", "Left", "Right", "F8", "C-Up"}
# (name, keys to send, text the pane must then contain)
def steps(filter_text: str) -> list[tuple[str, list[str], str]]:
    return [
        ("models", [], "variants"),
        ("group", ["g"], "families"),
        ("ungroup", ["g"], "variants"),
        ("filter", ["/", filter_text], "key filter"),
        ("detail", ["Enter", "Enter"], "Nearest models"),
        ("back", ["Escape"], "variants"),
        ("sql", ["2"], "SQL"),
        ("sql-run", ["F8"], "rows ×"),
        ("sql-history", ["C-Up"], "✓"),
        ("scale", ["Escape", "3"], "median"),  # Escape leaves the editor (digits type there)
        ("trajectory", ["4"], "step"),
        ("diffusion", ["5"], "c_q"),
        ("map", ["6"], "Map"),
        ("help", ["?"], "Help"),
    ]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def capture() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_for(expected: str, seconds: float) -> str:
    """The pane once it shows ``expected``, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while expected not in (screen := capture()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return screen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--out", type=Path, default=Path("tui-capture"))
    parser.add_argument("--size", default="100x30")
    parser.add_argument("--wait", type=float, default=15.0,
                        help="Seconds a step may take to show its text.")
    parser.add_argument("--filter", default="step400",
                        help="Text typed into the Models filter (default: a demo checkpoint).")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("tmux is not installed")
    if not args.db.exists():
        sys.exit(f"{args.db}: no atlas here; run `atlas demo` first")
    width, height = args.size.split("x")
    atlas = Path(sys.executable).parent / "atlas"
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    history = args.out.resolve() / "sql-history.jsonl"  # not the user's own history
    history.unlink(missing_ok=True)
    tmux("new-session", "-d", "-s", SESSION, "-x", width, "-y", height,
         f"env {HISTORY_ENV}={history} {atlas} tui {args.db.resolve()}")
    failed = []
    try:
        for number, (name, keys, expected) in enumerate(steps(args.filter)):
            for key in keys:  # tmux key names as such, anything else as literal text
                tmux("send-keys", "-t", SESSION, *([key] if key in KEY_NAMES else ["-l", key]))
                time.sleep(0.6)  # an Escape followed at once by a key reads as Alt+key
            screen = wait_for(expected, args.wait)
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
