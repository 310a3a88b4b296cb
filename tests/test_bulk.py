"""Bulk ingestion: manifest validation, planning, shards + merge, failures, status."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

import atlas
from atlas import tiny
from atlas.bulk import run as run_module
from atlas.bulk.manifest import PYTHIA, ManifestError, read_manifest, schedule
from atlas.bulk.plan import PlanError, make_plan
from atlas.bulk.run import prepare, run_bulk
from atlas.bulk.shards import ShardDir, default_shard_dir
from atlas.bulk.status import read_status
from atlas.store import Store

SIZES = {"s": 16, "m": 32}  # hidden width per size label
SEEDS = (1, 2)
STEPS = (0, 100, 200)


@pytest.fixture(scope="session")
def release(tmp_path_factory, tokenizer):
    """A tiny 'release': 2 sizes × 2 seeds × 3 checkpoints of GPT-NeoX, plus a fine-tune whose
    README names its base model (as a hub model card would)."""
    root = tmp_path_factory.mktemp("release")
    for size, hidden in SIZES.items():
        config = tiny.tiny_config("gpt_neox", tokenizer, hidden=hidden)
        for seed in SEEDS:
            for step in STEPS:
                model = tiny.build_model(config, seed=seed * 1000 + step)
                tiny.save(model, tokenizer, root / f"tiny-{size}-seed{seed}" / f"step{step}")
    finetune = tiny.save(tiny.build_model(tiny.tiny_config("gpt_neox", tokenizer, hidden=32),
                                          seed=77), tokenizer, root / "tiny-ft")
    base = root / "tiny-m-seed1" / "step200"
    (finetune / "README.md").write_text(f"---\nbase_model: {base}\n---\n# a fine-tune\n")
    return root


def write_manifest(path, text: str):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def family_manifest(tmp_path, release, extra: str = "", **grid) -> object:
    sizes = grid.get("sizes", '["s", "m"]')
    seeds = grid.get("seeds", "[1, 2]")
    steps = grid.get("steps", "[0, 100, 200]")
    return write_manifest(tmp_path / "releases.toml", f"""
        [defaults]
        textset = "eval"
        dtype = "float32"
        batch_size = 4

        [[family]]
        name = "tiny"
        source = "{release}/tiny-{{size}}-seed{{seed}}/step{{step}}"
        sizes = {sizes}
        seeds = {seeds}
        steps = {steps}
        """ + textwrap.dedent(extra))


# manifest ------------------------------------------------------------------------------------
def test_manifest_errors_name_their_lines(tmp_path):
    path = write_manifest(tmp_path / "bad.toml", """
        [defaults]
        textset = "eval"

        [[family]]
        name = "pythia"
        source = "EleutherAI/pythia-{size}"
        revision = "step{step}"
        sizes = ["70m", "160m"]
        sezes = ["410m"]
        steps = "weekly"

        [[family]]
        name = "other"
        sizes = ["1b"]
        seeds = [1, "two"]

        [[model]]
        key = "ft-70m@step10"
        source = "./ft"
        parent = "not a key"
        """)
    with pytest.raises(ManifestError) as error:
        read_manifest(path)
    message = str(error.value)
    assert "bad.toml line 9: [[family]] #1 'pythia': unknown field 'sezes' (did you mean " \
           "'sizes'?)" in message
    assert "bad.toml line 10: [[family]] #1 'pythia': steps 'weekly'" in message
    assert "bad.toml line 12: [[family]] #2 'other': missing 'source'" in message
    assert "bad.toml line 15: [[family]] #2 'other': 'seeds' must be a non-empty list of " \
           "non-negative integers" in message
    assert "bad.toml line 20: [[model]] #1 'ft-70m@step10': cannot parse model key " \
           "'not a key'" in message
    assert message.startswith("5 problem(s)")


def test_manifest_grid_must_reach_the_source(tmp_path):
    path = write_manifest(tmp_path / "grid.toml", """
        [[family]]
        name = "tiny"
        source = "models/tiny-{size}"
        sizes = ["s", "m"]
        seeds = [1, 2]
        steps = [0, 100]
        textset = "eval"
        """)
    with pytest.raises(ManifestError) as error:
        read_manifest(path)
    message = str(error.value)
    for line, grid, name in ((5, "seeds", "seed"), (6, "steps", "step")):
        assert (f"line {line}: [[family]] #1 'tiny': '{grid}' has several values but neither "
                f"source nor revision uses {{{name}}}") in message
    path.write_text(path.read_text().replace("[0, 100]", "[0, 0]"))
    with pytest.raises(ManifestError, match=r"line 6: .*'steps' lists 0 more than once"):
        read_manifest(path)


def test_manifest_syntax_error_and_missing_textset(tmp_path):
    broken = write_manifest(tmp_path / "broken.toml", "[[family]]\nname = \n")
    with pytest.raises(ManifestError, match=r"not valid TOML: .*line 2"):
        read_manifest(broken)
    bare = write_manifest(tmp_path / "bare.toml", '[[model]]\nkey = "a-b"\nsource = "x/y"\n')
    with pytest.raises(ManifestError, match=r"bare.toml line 1: no text set"):
        read_manifest(bare)


def test_schedules():
    pythia = schedule(**PYTHIA)
    assert len(pythia) == 154 and pythia[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert pythia[-1] == 143000
    assert schedule(stop=400, every=50, log_until=32) == (
        0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200, 250, 300, 350, 400)


# plan ----------------------------------------------------------------------------------------
def test_plan_expands_the_grid_and_skips_what_ingest_stored(tmp_path, release, db):
    manifest = family_manifest(tmp_path, release, extra=f"""
        [[model]]
        key = "tinyft-m/s1@step40"
        source = "{release}/tiny-ft"
        parent = "auto"
        """)
    db.ingest(str(release / "tiny-s-seed1" / "step100"), family="tiny", size="s", seed=1,
              checkpoint="step100", textset="eval", dtype="float32", batch_size=4,
              progress=False)
    db.close()
    plan, _ = prepare(manifest, db.path, None, 3, merge=False)
    expected = {f"tiny-{size}/s{seed}@step{step}" for size in SIZES for seed in SEEDS
                for step in STEPS} | {"tinyft-m/s1@step40"}
    assert {str(row.variant.key) for row in plan.rows} == expected
    states = {str(row.variant.key): row.state for row in plan.rows}
    assert states.pop("tiny-s/s1@step100") == "done"
    assert set(states.values()) == {"new"}
    assert len(plan.work()) == 12  # one load per model
    finetune = next(row.unit for row in plan.rows if row.unit.base.family == "tinyft")
    assert finetune.parent == "tiny-m/s1@step200"
    assert plan.estimated_tokens() > 0


def test_a_plan_reads_a_folder_config_once_and_the_atlas_once_per_textset(tmp_path, release,
                                                                         db, monkeypatch):
    """10,001 schedule points of one folder planned in 35 s (4 ms to read its config and 2 ms
    of queries per point); a changed config.json is read again."""
    import transformers

    from atlas.store import Store

    reads, queries = [], []
    read = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: reads.append(a[0]) or read(*a, **k))
    stored_states = Store.stored_states
    monkeypatch.setattr(Store, "stored_states",
                        lambda self, *a: queries.append(a) or stored_states(self, *a))
    db.close()
    folder = shutil.copytree(release / "tiny-s-seed1" / "step0", tmp_path / "model")
    path = write_manifest(tmp_path / "one.toml", f"""
        [[family]]
        name = "one"
        source = "{folder}"
        revision = "step{{step}}"
        sizes = ["s"]
        steps = {{start = 0, stop = 40, every = 1}}
        textset = "eval"
        layers = "all"
        """)
    plan, _ = prepare(path, db.path, None, 3, merge=False)
    assert len({row.unit.revision for row in plan.rows}) == 41
    assert reads == [str(folder)] and len(queries) == 1
    assert {row.variant.key.layer for row in plan.rows} == {0, 1, 2, None}
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 2',
                                                 '"num_hidden_layers": 3'))
    plan, _ = prepare(path, db.path, None, 3, merge=False)
    assert reads == [str(folder)] * 2
    assert {row.variant.key.layer for row in plan.rows} == {0, 1, 2, 3, None}


def test_steps_available_lists_local_checkpoints(tmp_path, release, db):
    db.close()
    manifest = family_manifest(tmp_path, release, steps='"available"', sizes='["s"]',
                               seeds="[2]")
    plan, _ = prepare(manifest, db.path, None, 3, merge=False)
    assert [str(row.variant.key) for row in plan.rows] == [
        f"tiny-s/s2@step{step}" for step in STEPS]


def test_steps_available_lists_hub_revisions(tmp_path, release, db, monkeypatch):
    from atlas.bulk import sources

    monkeypatch.setattr(sources, "list_revisions", lambda repo: {
        "EleutherAI/pythia-70m": ["main", "step0", "step1000", "step143000"]}[repo])
    db.close()
    path = write_manifest(tmp_path / "hub.toml", """
        [[family]]
        name = "pythia"
        source = "EleutherAI/pythia-{size}"
        revision = "step{step}"
        sizes = ["70m"]
        steps = "available"
        textset = "eval"
        """)
    units = __import__("atlas.bulk.plan", fromlist=["expand"]).expand(read_manifest(path))
    assert [(str(u.base), u.revision) for u in units] == [
        ("pythia-70m@step0", "step0"), ("pythia-70m@step1000", "step1000"),
        ("pythia-70m@step143000", "step143000")]


# run + merge ---------------------------------------------------------------------------------
def vectors(path) -> dict:
    with atlas.open(path, read_only=True) as handle:
        rows = handle.sql("SELECT v.key, v.loglik, v.config_id, v.provenance, v.n_tokens, "
                          "m.parent, m.source, m.n_params FROM vectors v JOIN models m "
                          "USING (key) ORDER BY key").rows()
        sketches = dict(handle.sql("SELECT key, sketch FROM weight_sketches").rows())
    return {row[0]: (*row[1:], sketches.get(row[0])) for row in rows}


def test_run_and_merge_equal_individual_ingest(tmp_path, release, textset):
    manifest = family_manifest(tmp_path, release, sizes='["m"]', seeds="[1]",
                               steps="[100, 200]", extra="""
        layers = "0,2"
        """)
    bulk_db, ingest_db = atlas.open(tmp_path / "bulk.duckdb"), atlas.open(tmp_path / "ing.duckdb")
    for handle in (bulk_db, ingest_db):
        handle.import_textset(textset, "eval")
        handle.close()
    report = run_bulk(manifest, bulk_db.path, workers=0, progress=False)
    assert (report.variants, report.written, report.merge.stored) == (6, 6, 6)
    for step in (100, 200):
        kwargs = dict(family="tiny", size="m", seed=1, checkpoint=f"step{step}",
                      textset="eval", dtype="float32", batch_size=4, progress=False)
        source = str(release / "tiny-m-seed1" / f"step{step}")
        ingest_db.ingest(source, **kwargs)
        ingest_db.ingest(source, layers="0,2", **kwargs)
    ingest_db.close()
    ours, theirs = vectors(bulk_db.path), vectors(ingest_db.path)
    assert list(ours) == list(theirs) and len(ours) == 6
    assert ours == theirs  # same floats, config ids, provenance, sketches
    assert sum(s is not None for *_, s in ours.values()) == 2  # model outputs carry sketches
    # and the other way round: ingest and plan both see the bulk vectors as done
    with atlas.open(bulk_db.path) as handle:
        again = handle.ingest(str(release / "tiny-m-seed1" / "step200"), family="tiny",
                              size="m", seed=1, checkpoint="step200", textset="eval",
                              dtype="float32", batch_size=4, progress=False)
    assert again.status == "skipped"
    plan, shards = prepare(manifest, bulk_db.path, None, 3)
    assert set(plan.counts()) == {"done"}
    assert shards.count(shards.merged) == 6 and shards.count(shards.ready) == 0


def test_failures_are_recorded_retried_and_do_not_stop_the_run(tmp_path, release, db,
                                                              monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    manifest = family_manifest(tmp_path, release, sizes='["s"]', seeds="[1]", steps="[0]",
                               extra=f"""
        [[model]]
        key = "broken-s"
        source = "{broken}"
        """)
    db.close()
    monkeypatch.setattr(run_module, "BACKOFF_SECONDS", 0.0)
    report = run_bulk(manifest, db.path, workers=0, max_attempts=2, backoff=0.0, progress=False)
    assert report.merge.stored == 1
    assert [outcome.label for outcome in report.failed] == ["broken-s"]
    shards = ShardDir(default_shard_dir(db.path))
    failed = [e for e in shards.events() if e["event"] == "failed"]
    assert [e["attempt"] for e in failed] == [1, 2] and "LoadError" in failed[0]["error"]
    status = {u.label: u for u in read_status(shards).units}
    assert status["broken-s"].state == "failed" and status["broken-s"].attempts == 2
    assert status["tiny-s/s1@step0"].state == "done"
    plan, _ = prepare(manifest, db.path, None, 2, merge=False)
    states = {str(row.variant.key): (row.state, row.note) for row in plan.rows}
    assert states["broken-s"][0] == "failed" and "LoadError" in states["broken-s"][1]
    assert plan.work() == [] and len(plan.work(retry_failed=True)) == 1


def test_merge_verifies_checksums_and_is_idempotent(tmp_path, release, db):
    manifest = family_manifest(tmp_path, release, sizes='["s"]', seeds="[1]", steps="[0, 100]")
    db.close()
    plan, shards = prepare(manifest, db.path, None, 3)
    tasks = run_module.tasks_of(plan, shards, db.path, False)
    for task in tasks:
        run_module.run_task(task)
    first, second = shards.ready_shards()
    second.parquet_path.write_bytes(second.parquet_path.read_bytes() + b"x")
    store = Store(db.path)
    report = run_module.merge_ready(store, shards)
    assert report.stored == 1 and "checksum mismatch" in report.rejected[0]
    assert "checksum" in json.loads(
        (shards.rejected / second.manifest_path.name).read_text())["rejected"]
    # a merger killed after writing but before moving the shard: merging again is a no-op
    for path in (first.manifest_path, first.parquet_path):
        (shards.merged / path.name).rename(path)
    assert run_module.merge_ready(store, shards).present == 1
    assert len(vectors(db.path)) == 1
    plan = make_plan(read_manifest(manifest), Store(db.path, read_only=True), shards)
    assert sorted(row.state for row in plan.rows) == ["done", "new"]


def scored_shards(tmp_path, release, db, steps: str) -> ShardDir:
    """The shards of tiny-s/s1 at ``steps``, scored by the bulk worker and not merged yet."""
    manifest = family_manifest(tmp_path, release, sizes='["s"]', seeds="[1]", steps=steps)
    db.close()
    plan, shards = prepare(manifest, db.path, None, 3)
    for task in run_module.tasks_of(plan, shards, db.path, False):
        run_module.run_task(task)
    return shards


def test_merge_writes_a_batch_of_shards_in_one_transaction(tmp_path, release, db, monkeypatch):
    shards = scored_shards(tmp_path, release, db, "[0, 100]")
    batches = []
    write = Store.write_vectors

    def counted(self, records, **options):
        batches.append(sorted(str(r.key) for r in records))
        return write(self, records, **options)

    monkeypatch.setattr(Store, "write_vectors", counted)
    report = run_module.merge_ready(Store(db.path), shards)
    assert (report.stored, batches) == (2, [["tiny-s/s1@step0", "tiny-s/s1@step100"]])


def test_a_full_disk_stops_the_merge_and_rejects_no_shard(tmp_path, release, db, monkeypatch):
    """A shard is not at fault when the disk is full: it stays in ready/ for the next merge
    (it was set aside as rejected, so no later merge would store it)."""
    from atlas.errors import NoSpaceError

    shards = scored_shards(tmp_path, release, db, "[0, 100]")

    def full(self, records, **options):
        raise NoSpaceError(f"no space left on the disk of {self.path}")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "write_vectors", full)
        report = run_module.merge_ready(Store(db.path), shards)
        assert (report.stored, report.rejected, len(shards.ready_shards())) == (0, [], 2)
        assert "no space left" in report.stopped
        from click.testing import CliRunner

        from atlas.cli import main

        result = CliRunner().invoke(main, ["--db", str(db.path), "bulk", "merge"])
        assert result.exit_code == 1 and "stopped: no space left" in result.output
        assert len(shards.ready_shards()) == 2
    assert run_module.merge_ready(Store(db.path), shards).stored == 2


def test_bulk_merge_exits_1_when_it_rejects_a_shard(tmp_path, release, db):
    shards = scored_shards(tmp_path, release, db, "[0]")
    (shard,) = shards.ready_shards()
    shard.parquet_path.write_bytes(shard.parquet_path.read_bytes() + b"x")
    process = subprocess.run(bulk_command(db.path, "merge"), capture_output=True, text=True)
    assert process.returncode == 1 and "rejected: " in process.stderr


@pytest.mark.parametrize("edit", [lambda meta: {k: v for k, v in meta.items()
                                                if k != "textset_hash"},
                                  lambda meta: [meta]])
def test_a_shard_with_a_malformed_manifest_is_rejected_with_its_reason(tmp_path, release, db,
                                                                       edit):
    shards = scored_shards(tmp_path, release, db, "[0]")
    (shard,) = shards.ready_shards()
    shard.manifest_path.write_text(json.dumps(edit(shard.meta)))
    report = run_module.merge_ready(Store(db.path), shards)
    assert report.stored == 0 and len(report.rejected) == 1
    assert re.search(r"no textset_hash|checksum mismatch", report.rejected[0])
    assert not shards.ready_shards() and not vectors(db.path)


def test_a_parent_must_be_in_the_atlas_or_the_manifest(tmp_path, release, db):
    manifest = family_manifest(tmp_path, release, sizes='["s"]', seeds="[1]", steps="[0]",
                               extra=f"""
        [[model]]
        key = "ft-s/s1@step40"
        source = "{release}/tiny-ft"
        parent = "nosuch-1m"
        """)
    db.close()
    with pytest.raises(PlanError, match=r"releases.toml line 13: ft-s/s1@step40: parent "
                                        r"'nosuch-1m' of ft-s/s1@step40 is not a model of the "
                                        r"atlas .*; add the parent to the manifest"):
        prepare(manifest, db.path, None, 3, merge=False)
    manifest.write_text(manifest.read_text().replace('"nosuch-1m"', '"tiny-s@step0"'))
    plan, _ = prepare(manifest, db.path, None, 3, merge=False)  # a shorthand of the manifest's
    assert {row.unit.parent for row in plan.rows} == {None, "tiny-s/s1@step0"}


def test_merge_writes_a_parent_before_its_child(tmp_path, release, db):
    manifest = family_manifest(tmp_path, release, sizes='["m"]', seeds="[1]", steps="[200]",
                               extra=f"""
        [[model]]
        key = "ft-m/s1@step40"
        source = "{release}/tiny-ft"
        parent = "auto"
        """)
    db.close()
    plan, shards = prepare(manifest, db.path, None, 3)
    for task in run_module.tasks_of(plan, shards, db.path, False):
        run_module.run_task(task)
    assert shards.ready_shards()[0].name.startswith("ft-m_s1_step40")  # the child comes first
    report = run_module.merge_ready(Store(db.path), shards)
    assert (report.stored, report.rejected, report.waiting) == (2, [], [])
    assert vectors(db.path)["ft-m/s1@step40"][4] == "tiny-m/s1@step200"


# the runner as a command: process workers, readers, status, kills --------------------------------
def bulk_command(db_path, *args) -> list[str]:
    return [sys.executable, "-c", "from atlas.cli import main; main()", "--db", str(db_path),
            "bulk", *map(str, args)]


def cli(db_path, *args) -> str:
    from click.testing import CliRunner

    from atlas.cli import main

    result = CliRunner().invoke(main, ["--db", str(db_path), "bulk", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def fresh_atlas(path, textset):
    with atlas.open(path) as handle:
        handle.import_textset(textset, "eval")
    return path


def test_process_workers_with_a_reader_querying_during_the_run(tmp_path, release, textset):
    path = fresh_atlas(tmp_path / "live.duckdb", textset)
    manifest = family_manifest(tmp_path, release, seeds="[1]")
    process = subprocess.Popen(bulk_command(path, "run", manifest, "--workers", 2,
                                            "--no-progress"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    counts = []
    try:
        while process.poll() is None:  # a reader (SQL, TUI) keeps working during the run
            with atlas.open(path, read_only=True) as reader:
                counts.append(reader.sql("SELECT count(*) AS n FROM vectors")["n"][0])
            time.sleep(0.2)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "scored 6/6 vectors from 6 model loads" in output
    assert len(counts) > 5 and counts == sorted(counts)
    assert len(vectors(path)) == 6
    status = cli(path, "status")
    assert "runner stopped; models: 6 done" in status
    assert "vectors: 6/6 scored, 0 waiting to merge, 6 merged, 0 rejected" in status
    plan = cli(path, "plan", manifest)
    assert "vectors: 6 done (6 in the manifest)" in plan and "nothing to score" in plan


def kill_and_resume(tmp_path, release, textset, kills: int, seed: int) -> None:
    """Run `atlas bulk run`, SIGKILL it at random moments, re-run until it completes: the atlas
    must equal an uninterrupted run's (same vectors, no duplicates, no partial rows). The kills
    fall at 20–60 % of an uninterrupted run's time measured here (fixed times missed a run that
    finished first on a fast moment: nothing was killed)."""
    manifest = family_manifest(tmp_path, release, extra='layers = "1"\n')
    clean = fresh_atlas(tmp_path / "clean.duckdb", textset)
    command = ["run", manifest, "--workers", 0, "--no-progress"]
    started = time.perf_counter()
    subprocess.run(bulk_command(clean, *command), check=True, stdout=subprocess.DEVNULL)
    whole = time.perf_counter() - started
    path = fresh_atlas(tmp_path / "killed.duckdb", textset)
    rng = random.Random(seed)
    killed = 0
    for _ in range(kills + 1):
        process = subprocess.Popen(bulk_command(path, *command), start_new_session=True,
                                   stdout=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(0.2, 0.6) * whole if killed < kills else 120)
            break
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the runner and anything it started
            process.wait()
            killed += 1
            with atlas.open(path, read_only=True) as reader:  # never a partial row
                assert reader.sql("SELECT count(*) AS n FROM vectors WHERE len(loglik) <> "
                                  f"{len(textset)}")["n"][0] == 0
    assert process.returncode == 0 and killed >= 1
    with atlas.open(path, read_only=True) as reader:
        keys = reader.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM vectors").row(0)
    assert keys == (24, 24)
    assert vectors(path) == vectors(clean)


@pytest.mark.slow  # ~28 s; the default run kills bulk runs in test_kill_matrix (0 and 2 workers)
def test_killed_runs_resume_to_the_same_atlas(tmp_path, release, textset):
    kill_and_resume(tmp_path, release, textset, kills=2, seed=11)


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_atlas_many_times(tmp_path, release, textset):
    kill_and_resume(tmp_path, release, textset, kills=12, seed=5)


def test_ray_local_mode_on_two_cpu_workers(tmp_path, release, textset, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray in tests
    manifest = family_manifest(tmp_path, release, sizes='["s"]')
    clean = fresh_atlas(tmp_path / "clean.duckdb", textset)
    run_bulk(manifest, clean, workers=0, progress=False)
    path = fresh_atlas(tmp_path / "ray.duckdb", textset)
    report = run_bulk(manifest, path, workers=2, ray_address="local", progress=False)
    assert (report.written, report.merge.stored, report.failed) == (6, 6, [])
    hosts = {e["pid"] for e in ShardDir(default_shard_dir(path)).events()}
    assert len(hosts) >= 1 and os.getpid() not in hosts  # scored in Ray workers
    assert vectors(path) == vectors(clean)


def test_one_load_serves_output_layers_and_quantizations(tmp_path, release, textset,
                                                         monkeypatch):
    from atlas.pipeline import score

    loads = []
    real_load = score.load_model
    monkeypatch.setattr(score, "load_model", lambda spec: loads.append(spec) or real_load(spec))
    manifest = family_manifest(tmp_path, release, sizes='["s"]', seeds="[2]", steps="[200]",
                               extra='quantizations = ["none", "int8"]\nlayers = "1"\n')
    bulk_db = fresh_atlas(tmp_path / "bulk.duckdb", textset)
    report = run_bulk(manifest, bulk_db, workers=0, progress=False)
    assert (report.written, report.failed, len(loads)) == (4, [], 1)
    ingest_db = fresh_atlas(tmp_path / "ingest.duckdb", textset)
    source = str(release / "tiny-s-seed2" / "step200")
    with atlas.open(ingest_db) as handle:
        for options in ({}, {"quantize": "int8"}, {"layers": "1"},
                        {"quantize": "int8", "layers": "1"}):
            handle.ingest(source, family="tiny", size="s", seed=2, checkpoint="step200",
                          textset="eval", dtype="float32", batch_size=4, progress=False,
                          **options)
    ours, theirs = vectors(bulk_db), vectors(ingest_db)
    assert sorted(ours) == ["tiny-s/s2#1@step200", "tiny-s/s2+int8#1@step200",
                            "tiny-s/s2+int8@step200", "tiny-s/s2@step200"]
    assert ours == theirs


def test_the_demo_scores_through_bulk_parents_first(tmp_path, release, textset):
    """The demo describes its checkpoints as a manifest run by bulk (one merger writes): a
    fine-tune listed before its parent is stored after it, lens layers come from the same
    load, and a re-run finds everything stored."""
    from atlas.demo import _score
    from atlas.suite import Checkpoint

    def checkpoint(folder: str, size: str, step: int, parent: str | None = None):
        return Checkpoint(release / folder, "tiny", size, 1, step, parent)

    base = checkpoint("tiny-m-seed1/step200", "m", 200)
    entries = [(checkpoint("tiny-ft", "m", 30, parent=base.key), None), (base, "0,2"),
               (checkpoint("tiny-s-seed1/step0", "s", 0), None)]
    path = fresh_atlas(tmp_path / "demo.duckdb", textset)
    assert _score(path, entries, "eval", workers=2) == Counter(stored=5)
    stored = vectors(path)
    assert sorted(stored) == ["tiny-m/s1#0@step200", "tiny-m/s1#2@step200", "tiny-m/s1@step200",
                              "tiny-m/s1@step30", "tiny-s/s1@step0"]
    assert stored["tiny-m/s1@step30"][4] == base.key  # the parent, stored first
    assert _score(path, entries, "eval", workers=2) == Counter(skipped=5)
