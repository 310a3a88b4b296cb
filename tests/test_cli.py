"""The CLI as a user types it (click's runner, real files, real models)."""

import json

import polars as pl
import pytest
from click.testing import CliRunner

from atlas.cli import main


@pytest.fixture
def run(tmp_path):
    db = tmp_path / "cli.duckdb"

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return invoke


@pytest.fixture
def texts_file(tmp_path, texts):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "domain": "code"}) for t in texts))
    return path


def test_full_session(run, texts_file, model_dirs, seed_dirs, texts):
    assert "atlas ready" in run("init")
    out = run("textset", "import", str(texts_file), "--name", "eval")
    assert f"N={len(texts)}" in out
    assert "already stored" in run("textset", "import", str(texts_file), "--name", "eval")
    for seed, path in seed_dirs.items():
        out = run("ingest", str(path), "--family", "tiny", "--size", "s", "--seed", str(seed),
                  "--checkpoint", "step100", "--textset", "eval", "--batch-size", "4")
        assert f"tiny-s/s{seed}@step100: stored" in out
    assert "already stored" in run("ingest", str(seed_dirs[1]), "--family", "tiny", "--size",
                                   "s", "--seed", "1", "--checkpoint", "step100",
                                   "--textset", "eval")
    models = json.loads(run("models", "--format", "json"))
    assert [m["key"] for m in models] == [f"tiny-s/s{s}@step100" for s in (1, 2, 3)]
    assert "bits/byte" in run("kl", "tiny-s/s1", "tiny-s/s2")
    nearest = json.loads(run("nearest", "tiny-s/s1", "-k", "2", "--format", "json"))
    assert len(nearest) == 2 and nearest[0]["kl"] <= nearest[1]["kl"]
    csv = run("sql", "SELECT key, kl FROM nearest('tiny-s/s1', 5)", "--format", "csv")
    assert csv.splitlines()[0] == "key,kl" and len(csv.splitlines()) == 3
    table = run("sql", "SELECT key, loglik FROM loglik_vectors LIMIT 1")
    assert f"({len(texts)})" in table  # long lists are abbreviated with their length


def test_errors_are_one_line_messages(run, texts_file, tmp_path):
    run("textset", "import", str(texts_file), "--name", "eval")
    out = run("kl", "ghost-1b", "other-1b", ok=False)
    assert out.startswith("error: unknown model key 'ghost-1b'")
    assert "Traceback" not in out
    assert "error:" in run("sql", "SELEC nonsense", ok=False)
    assert "no such file" in run("textset", "import", str(tmp_path / "nope.json"), "--name",
                                 "x", ok=False)
    assert "read-only" in run("sql", "CREATE TABLE t (a INT)", ok=False)


def test_import_vectors_command(run, texts_file, tmp_path, texts):
    run("textset", "import", str(texts_file), "--name", "eval")
    path = tmp_path / "v.parquet"
    pl.DataFrame({"key": ["x-1b", "y-1b"],
                  "loglik": [[-1.0] * len(texts), [-2.0 - i for i in range(len(texts))]]}
                 ).write_parquet(path)
    assert "imported 2 vectors" in run("import", "vectors", str(path), "--textset", "eval")
    assert "imported 0 vectors (2 already stored)" in run("import", "vectors", str(path),
                                                          "--textset", "eval")


def test_build_default_textset(run, tmp_path):
    out = run("textset", "build-default", "--texts", "50", "--output", str(tmp_path / "d.jsonl"))
    assert "built text set 'default-50': N=50" in out
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 50
    assert "already stored: text set 'default-50'" in run("textset", "build-default", "--texts",
                                                          "50")
