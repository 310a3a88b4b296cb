"""Files written whole or not at all (atlas.files): a writer killed with SIGKILL leaves only a
hidden temporary, which the next write beside the same target removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from atlas.files import remove_stale, replacing, temporary_beside, writer

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from atlas.files import replacing
    with replacing(Path(sys.argv[1])) as temporary:
        temporary.write_text("half of a new file")
        print("writing", flush=True)
        time.sleep(60)
""")


def _killed_writer(target: Path) -> int:
    """The pid of a process killed (SIGKILL, the process alone) inside ``replacing(target)``."""
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    return child.pid


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_tidies(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    pid = _killed_writer(target)
    left = [p.name for p in tmp_path.iterdir() if p.name != "report.html"]
    assert target.read_text() == "old" and len(left) == 1 and left[0].endswith(f"-{pid}.tmp")
    with replacing(target) as temporary:
        temporary.write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert target.read_text() == "new"


def test_only_dead_writers_of_this_host_are_removed(tmp_path):
    target = tmp_path / "pairs.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = writer().rsplit("-", 1)[0]
    names = {"dead": f".pairs.parquet.{host}-{dead}.tmp",
             "live": temporary_beside(target).name,  # this process: alive
             "other host": f".pairs.parquet.elsewhere.example-{dead}.tmp",
             "other target": f".other.parquet.{host}-{dead}.tmp"}
    for name in names.values():
        (tmp_path / name).write_text("x")
    (tmp_path / names["other target"]).unlink()
    (tmp_path / names["other target"]).mkdir()  # a killed writer's folder
    remove_stale(tmp_path, target.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other host"], names["other target"]])
    remove_stale(tmp_path)  # any target
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other host"]])
