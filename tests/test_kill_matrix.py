"""The kill matrix: every writing command, SIGKILLed alone (as ``kill -9 PID`` or the OOM killer
does it, not its process group) at a seeded random moment within its measured duration, must
leave no process of ours running, an atlas that opens with nothing partial in it (no vector
shorter than its text set, no model without a vector, no half text set, no half map), and a
re-run that exits 0 with the same result as an uninterrupted run.

Every process a case starts carries ``ATLAS_TEST_MARK=<uuid>`` in its environment (inherited by
spawned workers), so the survivors are found in /proc whatever their parent became.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import atlas
from atlas.bulk.run import prepare, tasks_of
from atlas.bulk.shards import ShardDir, default_shard_dir
from atlas.bulk.worker import run_task
from atlas.textsets import TextSet

MARK = "ATLAS_TEST_MARK"
GRACE = 5.0  # seconds for the guards of orphaned workers to act
N_IMPORTED = 150  # vectors in the Parquet file imported (and mapped)
N_TEXTS = 20000  # texts in the JSON text set imported


def command(db: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from atlas.cli import main; main()", "--db", str(db), *args]


def start(db: Path, args: list[str], mark: str) -> subprocess.Popen:
    """The command, its output in a file beside the atlas (not a pipe: an orphan holding the
    pipe would keep a reader waiting)."""
    with open(db.parent / "output.log", "w") as output:
        return subprocess.Popen(command(db, args), env={**os.environ, MARK: mark},
                                stdout=output, stderr=subprocess.STDOUT)


def finish(db: Path, args: list[str]) -> float:
    """Run to the end; its duration. Exit 0 and no process left over are required."""
    mark = uuid.uuid4().hex
    started = time.perf_counter()
    process = start(db, args, mark)
    process.wait(timeout=300)
    seconds = time.perf_counter() - started
    output = (db.parent / "output.log").read_text()
    assert process.returncode == 0, f"atlas {' '.join(args)}:\n{output}"
    assert_none_left(mark)
    return seconds


def marked(mark: str) -> list[int]:
    """Pids of the live processes whose environment carries the mark."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            continue
        if f"{MARK}={mark}".encode() in variables:
            found.append(int(environ.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def assert_none_left(mark: str) -> None:
    deadline = time.monotonic() + GRACE
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # never leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after the kill: {left}"


# what a command leaves ---------------------------------------------------------------------------
def vectors(db: Path) -> dict:
    with atlas.open(db, read_only=True) as handle:
        rows = handle.sql("SELECT v.key, v.textset_id, v.loglik, v.config_id, v.provenance, "
                          "v.n_tokens, m.parent, m.source, m.n_params FROM vectors v JOIN models "
                          "m USING (key) ORDER BY key, textset_id").rows()
        sketches = dict(handle.sql("SELECT key, sketch FROM weight_sketches").rows())
    return {row[:2]: (*row[2:], sketches.get(row[0])) for row in rows}


def textsets(db: Path) -> dict:
    with atlas.open(db, read_only=True) as handle:
        rows = handle.sql("SELECT s.name, s.content_hash, t.idx, t.text FROM textsets s "
                          "JOIN texts t USING (textset_id) ORDER BY s.name, t.idx").rows()
    found: dict = {}
    for name, digest, _, text in rows:
        found.setdefault((name, digest), []).append(text)
    return found


def maps(db: Path) -> dict:
    with atlas.open(db, read_only=True) as handle:
        rows = handle.sql("SELECT m.name, m.n_models, m.keys_hash, c.key, c.x, c.y FROM maps m "
                          "JOIN map_coordinates c ON c.map_name = m.name "
                          "ORDER BY m.name, c.key").rows()
    return {row[0]: row[1:] for row in rows} | {"points": [row[3:] for row in rows]}


def assert_same(found, expected, rtol: float = 1e-5, atol: float = 1e-3) -> None:
    """Equal, floats to tolerance: an ingest that resumes from its side file scores the rest of
    the texts in other batches, and scores agree across batchings to float tolerance only
    (method.md §7), as in test_ingest's resume test."""
    if isinstance(found, float) and isinstance(expected, float):
        assert abs(found - expected) <= atol + rtol * abs(expected), (found, expected)
    elif isinstance(found, dict) and isinstance(expected, dict):
        assert found.keys() == expected.keys()
        for key in expected:
            assert_same(found[key], expected[key], rtol, atol)
    elif isinstance(found, (list, tuple)) and isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), (found, expected)
        for a, b in zip(found, expected, strict=True):
            assert_same(a, b, rtol, atol)
    else:
        assert found == expected


def assert_nothing_partial(db: Path) -> None:
    """The atlas opens (read-only: as a reader after the crash) and holds no half-written
    thing."""
    with atlas.open(db, read_only=True) as handle:
        def count(sql: str) -> int:
            return handle.sql(f"SELECT count(*) AS n FROM ({sql})")["n"][0]

        assert count("SELECT 1 FROM vectors v JOIN textsets s USING (textset_id) "
                     "WHERE len(v.loglik) <> s.n_texts") == 0, "a vector shorter than its texts"
        assert count("SELECT 1 FROM models m WHERE NOT EXISTS "
                     "(SELECT 1 FROM vectors v WHERE v.key = m.key)") == 0, "a model, no vector"
        assert count("SELECT 1 FROM textsets s WHERE n_texts <> (SELECT count(*) FROM texts t "
                     "WHERE t.textset_id = s.textset_id)") == 0, "half a text set"
        assert count("SELECT 1 FROM maps m WHERE n_models <> (SELECT count(*) FROM "
                     "map_coordinates c WHERE c.map_name = m.name)") == 0, "half a map"


# the cases ---------------------------------------------------------------------------------------
@dataclass
class Case:
    args: list[str]
    result: Callable[[Path], object]  # what the command made, compared with a clean run's
    shards: bool = False  # bulk: its shard dir belongs to the state, and units are not redone


def bulk_manifest(folder: Path, model_dirs: dict[str, Path]) -> Path:
    entries = "".join(f"""
        [[model]]
        key = "kill-{arch.replace('_', '')}"
        source = "{path}"
        """ for arch, path in model_dirs.items() if arch != "gpt_neox")  # two loads suffice
    path = folder / "models.toml"
    path.write_text(textwrap.dedent("""
        [defaults]
        textset = "eval"
        dtype = "float32"
        batch_size = 4
        layers = "1"
        """ + entries))
    return path


@pytest.fixture(scope="session")
def matrix(tmp_path_factory, model_dirs, corpus, textset) -> dict[str, tuple[Case, Path]]:
    """Each command with the atlas (and files) it starts from, made once."""
    root = tmp_path_factory.mktemp("kill-matrix")
    manifest = bulk_manifest(root, model_dirs)
    n = len(textset)
    rng = np.random.default_rng(0)
    imported = root / "vectors.parquet"
    pl.DataFrame({"key": [f"imp-{i}m" for i in range(N_IMPORTED)],
                  "loglik": (-rng.gamma(2.0, 20.0, (N_IMPORTED, n))).tolist()}
                 ).write_parquet(imported)
    texts = root / "texts.json"
    texts.write_text(json.dumps([f"{i}: {corpus[i % len(corpus)]}" for i in range(N_TEXTS)]))

    def base(name: str) -> Path:
        db = root / name / "atlas.duckdb"
        db.parent.mkdir()
        with atlas.open(db) as handle:
            handle.import_textset(textset, "eval")
        return db

    mapped = base("map")
    with atlas.open(mapped) as handle:
        handle.import_vectors(str(imported), textset="eval")
    merged = base("merge")
    plan, shards = prepare(manifest, merged, None, 3, merge=False)
    for task in tasks_of(plan, shards, merged, False):
        run_task(task)
    ingest = ["ingest", str(model_dirs["gpt2"]), "--family", "kill", "--size", "gpt2",
              "--textset", "eval", "--dtype", "float32", "--batch-size", "4"]
    run = ["bulk", "run", str(manifest), "--no-progress", "--workers"]
    return {
        "ingest": (Case(ingest, vectors), base("ingest")),
        "bulk-run-0": (Case([*run, "0"], vectors, shards=True), base("bulk0")),
        "bulk-run-2": (Case([*run, "2"], vectors, shards=True), base("bulk2")),
        "import-vectors": (Case(["import", "vectors", str(imported), "--textset", "eval"],
                                vectors), base("import")),
        "textset-import": (Case(["textset", "import", str(texts), "--name", "big"], textsets),
                           base("textset")),
        "map": (Case(["map", "--method", "tsne", "--name", "m"], maps), mapped),
        "bulk-merge": (Case(["bulk", "merge"], vectors, shards=True), merged),
    }


def clone(db: Path, into: Path) -> Path:
    """The atlas (file, WAL) and its side folders, copied."""
    into.mkdir(parents=True, exist_ok=True)
    for path in db.parent.glob(db.name + "*"):
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, into / path.name)
    return into / db.name


@pytest.fixture(scope="session")
def clean(matrix, tmp_path_factory) -> dict[str, tuple[object, float]]:
    """Each command run uninterrupted: its result and its duration."""
    results = {}
    for name, (case, db) in matrix.items():
        copy = clone(db, tmp_path_factory.mktemp(f"clean-{name}"))
        seconds = finish(copy, case.args)
        results[name] = (case.result(copy), seconds)
    return results


def events(db: Path) -> list[dict]:
    return list(ShardDir(default_shard_dir(db)).events())


def done_units(db: Path) -> set[str]:
    return {e["unit"] for e in events(db) if e["event"] == "done"}


def kill_and_rerun(name: str, matrix, clean, folder: Path, seed: int) -> None:
    case, db = matrix[name]
    expected, seconds = clean[name]
    db = clone(db, folder)
    delay = random.Random(seed).uniform(0.1, 0.9) * seconds
    mark = uuid.uuid4().hex
    process = start(db, case.args, mark)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)  # the process alone, not its group
    killed_at = time.time()
    process.wait()
    assert_none_left(mark)
    if case.shards:  # an orphaned worker would go on scoring (and then exit by itself)
        late = [e for e in events(db) if e["time"] > killed_at + 0.5]
        assert not late, f"written after the runner was killed: {late}"
    assert_nothing_partial(db)
    finished = done_units(db) if case.shards else set()
    rerun_started = time.time()
    finish(db, case.args)
    assert_same(case.result(db), expected)
    if case.shards:  # nothing finished before the kill is scored again
        again = {e["unit"] for e in events(db)
                 if e["event"] == "start" and e["time"] >= rerun_started}
        assert not again & finished, f"re-scored after the kill: {again & finished}"


NAMES = ("ingest", "bulk-run-0", "bulk-run-2", "import-vectors", "textset-import", "map",
         "bulk-merge")


@pytest.mark.parametrize("name", NAMES)
def test_killed_alone_leaves_nothing_behind(name, matrix, clean, tmp_path):
    kill_and_rerun(name, matrix, clean, tmp_path / "killed", seed=NAMES.index(name))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 106))
@pytest.mark.parametrize("name", NAMES)
def test_killed_alone_at_many_moments(name, seed, matrix, clean, tmp_path):
    kill_and_rerun(name, matrix, clean, tmp_path / "killed", seed=seed)


# the reported case, made certain: the runner killed while its workers score --------------------
def test_runner_killed_alone_takes_its_workers_along(matrix, corpus, tmp_path):
    """Before the guards, a worker went on with its unit and the queued one after ``kill -9``
    of the runner, writing shards beside the re-run."""
    case, db = matrix["bulk-run-2"]
    db = clone(db, tmp_path / "killed")
    with atlas.open(db) as handle:  # long enough a unit that a worker is caught scoring
        handle.import_textset(TextSet([f"{i}: {corpus[i % len(corpus)]}" for i in range(400)],
                                      source="tests"), "eval2")
    manifest = Path(case.args[2])
    manifest = tmp_path / manifest.name
    manifest.write_text(Path(case.args[2]).read_text().replace('"eval"', '"eval2"'))
    args = [*case.args[:2], str(manifest), *case.args[3:]]
    mark = uuid.uuid4().hex
    process = start(db, args, mark)
    deadline = time.monotonic() + 120
    while not (workers := {e["pid"] for e in events(db) if e["event"] == "start"}):
        assert process.poll() is None and time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.time()
    process.wait()
    time.sleep(1.0)
    alive = [pid for pid in workers if running(pid)]
    assert_none_left(mark)
    assert not alive, f"workers {alive} outlived their runner by a second"
    late = [e for e in events(db) if e["time"] > killed_at + 0.5]
    assert not late, f"written after the runner was killed: {late}"


def test_parent_watch_alone_ends_an_orphan(tmp_path):
    """Where prctl is missing, the polling thread alone ends a worker whose parent died."""
    pid_file = tmp_path / "child.pid"
    child = ("import os, time; from atlas.processes import watch_parent; "
             "watch_parent(os.getppid(), 0.1); "
             f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    parent = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)")
    mark = uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, MARK: mark})
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():  # the child watches
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert running(worker)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    alive = running(worker)
    assert_none_left(mark)
    assert not alive, "the orphan outlived its parent by a second"
