"""The bad-input table's one rule, shared by every ``test_bad_input_*.py``: a refused input
exits non-zero with a one-line ``error:`` that names what was wrong, where, and how to fix it,
without a traceback, and leaves the atlas byte-for-byte as it was (its file, its WAL and the
side files of work in progress beside it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from atlas.cli import main


def atlas_state(db: Path) -> dict[str, str]:
    """SHA-256 of every file that belongs to the atlas at ``db``: the file, its WAL, and the
    pending/shard folders beside it."""
    paths = [db, db.with_name(db.name + ".wal")]
    for folder in db.parent.glob(db.name + ".*"):
        if folder.is_dir():
            paths.extend(sorted(p for p in folder.rglob("*") if p.is_file()))
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def refused(db: Path, args: list[str], *, what: str, where: str, fix: str,
            input: str | None = None) -> str:
    """Run ``atlas --db DB ARGS``; assert it is refused as described above, the message holding
    the three fragments (case-insensitive); return the message."""
    before = atlas_state(db)
    result = CliRunner().invoke(main, ["--db", str(db), *args], input=input)
    output = result.output
    assert result.exit_code not in (0, None), f"accepted: atlas {' '.join(args)}\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"a traceback instead of an error: {result.exception!r}\n{output}")
    assert "Traceback" not in output, output
    assert "error:" in output, output
    for name, fragment in (("what", what), ("where", where), ("fix", fix)):
        assert fragment.lower() in output.lower(), f"no {name} {fragment!r} in:\n{output}"
    assert atlas_state(db) == before, f"the atlas changed: atlas {' '.join(args)}"
    return output
