"""What the store must never do: write where it was not asked to (a read-only session reaching
other files), write to a damaged file, or lose a scored vector when the disk is full."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import atlas
from atlas.cli import main
from atlas.errors import AtlasError, DamagedError, StoreError
from atlas.textsets import TextSet

N_TEXTS = 2000
N_VECTORS = 300
REPO = Path(__file__).resolve().parent.parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A ~7 MB atlas: 300 checkpoints of one run on 2,000 texts, with a stored PCA map."""
    root = tmp_path_factory.mktemp("template")
    rng = np.random.default_rng(5)
    walk = np.cumsum(rng.normal(0, 1, size=(N_VECTORS, N_TEXTS)), axis=0) - 500
    keys = [f"fam-s/s0@step{i}" for i in range(N_VECTORS)]
    vectors = root / "v.parquet"
    pl.DataFrame({"key": keys, "loglik": walk.astype(np.float32).tolist()},
                 schema={"key": pl.String, "loglik": pl.List(pl.Float32)}).write_parquet(vectors)
    path = root / "atlas.duckdb"
    with atlas.open(path) as handle:
        handle.import_textset(TextSet([f"text {i} " * (1 + i % 5) for i in range(N_TEXTS)]),
                              "eval")
        handle.import_vectors(vectors, "eval")
        handle.fit_map(method="pca", name="m")
    return path


@pytest.fixture
def db(template, tmp_path) -> Path:
    path = tmp_path / "atlas.duckdb"
    shutil.copy(template, path)
    return path


def cli(db: Path, *args: str):
    return CliRunner().invoke(main, ["--db", str(db), *args])


# a read-only session writes nothing anywhere --------------------------------------------------
def attacks(db: Path) -> dict[str, tuple[str, Path]]:
    """Each attack of issue #12 and the file it would change."""
    other, victim, link = db.with_name("other.duckdb"), db.with_name("victim.duckdb"), \
        db.with_name("link.duckdb")
    shutil.copy(db, other)
    victim.write_text("precious")
    os.link(db, link)  # a second name for the open atlas
    return {
        "attach other": (f"ATTACH '{other}' AS o (READ_WRITE); DELETE FROM o.vectors", other),
        "copy to": (f"COPY (SELECT 1) TO '{victim}' (FORMAT csv)", victim),
        "hard link": (f"ATTACH '{link}' AS h (READ_WRITE); DELETE FROM h.models", db),
        "install": ("INSTALL httpfs", db),
        "load": ("LOAD httpfs", db),
        "read file": ("SELECT * FROM read_text('/etc/hostname')", db),
        "unlock": ("SET enable_external_access = true", db),
    }


@pytest.mark.parametrize("name", ["attach other", "copy to", "hard link", "install", "load",
                                  "read file", "unlock"])
def test_read_only_sql_reaches_nothing_outside_the_atlas(db, name):
    query, target = attacks(db)[name]
    before = digest(target), digest(db)
    with atlas.open(db, read_only=True) as handle:
        with pytest.raises(AtlasError) as raised:
            handle.sql(query)
        with pytest.raises(AtlasError):
            list(handle.sql_batches(query))
        assert handle.sql("SELECT count(*) AS n FROM models")["n"][0] == N_VECTORS
    message = str(raised.value)
    assert "read-only" in message or "configuration has been locked" in message
    assert "download" not in message.lower()  # INSTALL never tried the network
    result = cli(db, "sql", query)
    assert result.exit_code == 1 and result.output.startswith("error:"), result.output
    assert (digest(target), digest(db)) == before


def test_read_only_queries_macros_and_exports_still_work(db, tmp_path):
    with atlas.open(db, read_only=True) as handle:
        assert handle.kl("fam-s/s0@step0", "fam-s/s0@step1").value > 0
        assert handle.nearest("fam-s/s0@step5", 3)["key"][0] in ("fam-s/s0@step4",
                                                                  "fam-s/s0@step6")
        assert handle.sql("SELECT * FROM trajectory('fam', 's', 0)").height == N_VECTORS
        assert handle.sql("SELECT * FROM diffusion_fit('fam', 's', 0, 1, lags := 5)").height
        assert handle.sql("SELECT * FROM map_points('m')").height == N_VECTORS
        frames = list(handle.sql_batches("SELECT key FROM models", batch_rows=100))
        assert sum(f.height for f in frames) == N_VECTORS
        query = "SELECT key, loglik FROM loglik_vectors ORDER BY key"
        assert handle.export(query, tmp_path / "out.parquet") == N_VECTORS
        assert handle.export(query, tmp_path / "out.csv") == N_VECTORS
    parquet = pl.read_parquet(tmp_path / "out.parquet")
    assert parquet.height == N_VECTORS and len(parquet["loglik"][0]) == N_TEXTS
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "key,loglik" and len(lines) == N_VECTORS + 1
    result = cli(db, "sql", "SELECT key FROM models ORDER BY key LIMIT 2", "--format", "csv")
    assert result.output == "key\nfam-s/s0@step0\nfam-s/s0@step1\n"


def test_sql_write_keeps_full_access(db, tmp_path):
    """--write is the explicit way to change the atlas, with all of DuckDB: COPY TO included."""
    out = tmp_path / "keys.csv"
    result = cli(db, "sql", "--write", f"COPY (SELECT key FROM models) TO '{out}'")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == N_VECTORS + 1


# damaged files ----------------------------------------------------------------------------------
def truncate(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size * 2 // 5)


def flip_a_data_block(db: Path) -> None:
    """Invert bytes inside the last block of ℓ (not the header, not the catalog)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    block = con.execute("SELECT max(block_id) FROM pragma_storage_info('vector_parts')"
                        ).fetchone()[0]
    size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
    con.close()
    with db.open("r+b") as f:
        f.seek(3 * 4096 + block * size + 5000)
        data = f.read(64)
        f.seek(3 * 4096 + block * size + 5000)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("damage", [truncate, flip_a_data_block])
def test_a_damaged_atlas_takes_no_writes(db, damage, tmp_path):
    damage(db)
    before = digest(db)
    with pytest.raises(DamagedError, match=f"{db}.*is damaged.*Restore it from a backup"):
        atlas.open(db)
    texts = tmp_path / "t.json"
    texts.write_text('["one text", "another text"]')
    result = cli(db, "textset", "import", str(texts), "--name", "more")
    assert result.exit_code == 1 and "is damaged" in result.output, result.output
    assert digest(db) == before
    assert not db.with_name(db.name + ".wal").exists()


def test_a_truncated_atlas_is_refused_clearly_when_read(db):
    truncate(db)
    result = cli(db, "nearest", "fam-s/s0@step5")
    assert result.exit_code == 1 and f"{db} is damaged (truncated" in result.output, result.output


def test_a_bad_block_read_only_is_a_clear_error(db):
    flip_a_data_block(db)
    with atlas.open(db, read_only=True) as handle:
        assert handle.models().height == N_VECTORS  # what DuckDB can still read, it reads
        with pytest.raises(DamagedError, match="checksum"):
            handle.sql("SELECT sum(hash(vectors)) FROM vectors")  # every column


# a full disk, a file that cannot be written -----------------------------------------------------
FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
from atlas.cli import main
from atlas.store import Store

def fill():
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

def empty():
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

if sys.argv[1] == "at-write":  # the disk fills while the model is scored
    write = Store.write_vectors  # every writer's one transaction
    def full_write(*args, **kwargs):
        fill()
        try:
            return write(*args, **kwargs)
        finally:
            empty()
    Store.write_vectors = full_write
else:  # the disk is full once the command has started (its imports done)
    import atlas.pipeline.ingest  # noqa: F401
    fill()
main(sys.argv[2:])
"""


def run_full(when: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", FULL, when, *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_disk_full_at_text_set_import_is_a_clear_error(db, tmp_path):
    texts = tmp_path / "t.json"
    texts.write_text('["one text", "another text"]')
    before = digest(db)
    result = run_full("now", "--db", str(db), "textset", "import", str(texts), "--name", "x")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: no space to write") and str(db) in result.stderr
    assert "free space" in result.stderr and "Traceback" not in result.stderr
    assert digest(db) == before
    with atlas.open(db, read_only=True) as handle:
        assert handle.textsets()["name"].to_list() == ["eval"]


def test_disk_full_keeps_the_scored_vector(tmp_path, model_dirs, textset):
    path = tmp_path / "atlas.duckdb"
    with atlas.open(path) as handle:
        handle.import_textset(textset, "eval")
    ingest = ["--db", str(path), "ingest", str(model_dirs["gpt_neox"]), "--family", "tiny",
              "--size", "1k", "--textset", "eval", "--device", "cpu", "--sketch-dim", "0"]
    start = run_full("now", *ingest)
    assert start.returncode == 1 and "error: no space" in start.stderr, start.stderr
    late = run_full("at-write", *ingest)
    assert late.returncode == 1 and "Traceback" not in late.stderr, late.stderr
    assert "no space to write" in late.stderr and "atlas import vectors" in late.stderr
    pending = next(path.parent.glob("atlas.duckdb.pending/*.parquet"))
    assert cli(path, "import", "vectors", str(pending), "--textset", "eval").exit_code == 0
    with atlas.open(path, read_only=True) as handle:
        assert handle.models()["key"].to_list() == ["tiny-1k"]


UNWRITABLE = """
import ctypes, os, sys
if os.geteuid() == 0:  # root writes through file modes: drop the capabilities that allow it
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, effective after exec
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
    os.execv(sys.executable, [sys.executable, "-c", "from atlas.cli import main; main()",
                              *sys.argv[1:]])
from atlas.cli import main
main()
"""


def test_an_unwritable_atlas_refuses_writers_and_serves_readers(db, tmp_path):
    texts = tmp_path / "t.json"
    texts.write_text('["one text", "another text"]')
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        def run(*args):
            return subprocess.run([sys.executable, "-c", UNWRITABLE, "--db", str(db), *args],
                                  capture_output=True, text=True, env=env, timeout=120)
        writer = run("textset", "import", str(texts), "--name", "x")
        reader = run("sql", "SELECT count(*) AS n FROM models", "--format", "csv")
    finally:
        db.parent.chmod(0o755)
    assert writer.returncode == 1 and "Traceback" not in writer.stderr, writer.stderr
    assert "cannot be written" in writer.stderr and str(db) in writer.stderr
    assert reader.returncode == 0 and reader.stdout == f"n\n{N_VECTORS}\n", reader.stderr


def test_a_file_that_is_no_atlas_is_named(db):
    db.write_text("not an atlas")
    with pytest.raises(StoreError, match=f"{db} is not an atlas"):
        atlas.open(db, read_only=True).sql("SELECT 1")


def test_read_only_session_on_an_older_atlas_uses_this_versions_macros(tmp_path):
    """A read-only open cannot migrate the file: an atlas written by an older version (its
    persisted macros and views differ) gets this version's as temporary definitions, and the
    file stays byte-for-byte as it was."""
    import duckdb

    path = tmp_path / "old.duckdb"
    atlas.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("DROP MACRO size_value")  # a macro this version has and the older one lacked
    con.execute("CREATE OR REPLACE MACRO kl_bpb(a, b, m) AS -1.0")  # an older definition
    con.execute("UPDATE atlas_meta SET value = 'older' WHERE name = 'macros_sha'")
    con.close()
    before = path.read_bytes()
    with atlas.open(path, read_only=True) as db:
        row = db.sql("SELECT size_value('1.4b') AS s, kl_bpb([0.0, 1.0], [0.0, 0.0], 1.0) AS k")
    assert row["s"][0] == 1.4e9 and row["k"][0] > 0
    assert path.read_bytes() == before
