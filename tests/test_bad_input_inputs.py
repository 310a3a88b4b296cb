"""Bad inputs to the commands that bring data in (text sets, vectors, parents) and the commands
that read it back by key (kl, nearest, trajectory, diffusion, scale, map): each is refused with
one ``error:`` line naming what was wrong, where and how to fix it, and the atlas is unchanged
(tests/badinput.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from badinput import refused

import atlas
from atlas import imports
from atlas.textsets import TextSet

N = 6
STEPS = (0, 10, 20, 30)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _parquet(path: Path, **columns) -> str:
    rows = len(next(iter(columns.values())))
    columns.setdefault("loglik", [[-1.0 - i for i in range(N)]] * rows)
    pl.DataFrame(columns).write_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """An atlas with text set 'eval', a run fam-s/s0 (4 steps), fam-s/s1@step10, and a run that
    exists only quantized (fbm-1m/s0+int8); plus the bad files of the table beside it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    keys = ([f"fam-s/s0@step{s}" for s in STEPS] + ["fam-s/s1@step10"]
            + [f"fbm-1m/s0+int8@step{s}" for s in STEPS])
    vectors = _parquet(root / "vectors.parquet", key=keys,
                       loglik=[rng.normal(-50, 5, N).tolist() for _ in keys])
    with atlas.open(root / "atlas.duckdb") as handle:
        handle.import_textset(TextSet([f"text {i} " * (i + 1) for i in range(N)]), "eval")
        handle.import_vectors(vectors, "eval")
    files = {"empty.jsonl": b"", "notjson.jsonl": b"hello\n", "mixed.json": b'["a", 3]',
             "object.json": b'{"texts": ["a"]}', "notext.jsonl": b'{"text": "a"}\n{"body": "b"}\n',
             "latin1.jsonl": b'{"text": "caf\xe9"}\n', "ok.jsonl": b'{"text": "fine"}\n',
             "x.json": b'{"a": 1}', "evil.pkl": pickle.dumps({"m-1b": [0.0] * N,
                                                             "x": _Exploit(root / "pwned")})}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "txt").mkdir()
    _parquet(root / "short.parquet", key=["a-1b"], loglik=[[-1.0] * 3])
    _parquet(root / "nan.parquet", key=["a-1b"], loglik=[[-1.0] * (N - 1) + [float("nan")]])
    _parquet(root / "ok.parquet", key=["a-1b"])
    _parquet(root / "notjson.parquet", key=["a-1b"], provenance=["{dtype: bf16"])
    _parquet(root / "list.parquet", key=["a-1b"], provenance=['["bf16"]'])
    _parquet(root / "lots.parquet", key=["a-1b"], n_params=["lots"])
    _parquet(root / "seed.parquet", family=["a"], size=["1b"], seed=[1.5])
    _parquet(root / "twice.parquet", key=["a-1b", "a-1b"])
    _parquet(root / "orphan.parquet", key=["ft-1b"], parent=["nosuch-1m"])
    _parquet(root / "badkey.parquet", key=["not a key"])
    _parquet(root / "restored.parquet", key=["fam-s/s0@step0"], loglik=[[-2.0] * N])
    last = [[-1.0 - r] * N for r in range(7)]
    last[6][5] = float("nan")
    pq.write_table(pa.table({"key": [f"new-1b/s{r}" for r in range(7)], "loglik": last}),
                   root / "lastgroup.parquet", row_group_size=3)
    return root / "atlas.duckdb"


def _at(world: Path, name: str) -> str:
    return str(world.parent / name)


# (id, args with {dir} for the folder of the files, what, where, fix)
CASES = [
    # atlas textset import
    ("missing file", ["textset", "import", "{dir}/nope.jsonl", "--name", "x"],
     "no such file", "nope.jsonl", "give the path of"),
    ("empty file", ["textset", "import", "{dir}/empty.jsonl", "--name", "x"],
     "the file is empty", "empty.jsonl", "give it texts"),
    ("not JSON", ["textset", "import", "{dir}/notjson.jsonl", "--name", "x"],
     "invalid JSON", "notjson.jsonl:1", 'one JSON object such as {"text"'),
    ("JSON list with a number", ["textset", "import", "{dir}/mixed.json", "--name", "x"],
     "expected a string, got int", "item 1", "every text must be a string"),
    ("JSON object, not a list", ["textset", "import", "{dir}/object.json", "--name", "x"],
     'expected an object with a "text" field', "object.json:1", 'give each line as {"text"'),
    ("JSONL line without text", ["textset", "import", "{dir}/notext.jsonl", "--name", "x"],
     'expected an object with a "text" field', "notext.jsonl:2", 'give each line as {"text"'),
    ("not UTF-8", ["textset", "import", "{dir}/latin1.jsonl", "--name", "x"],
     "invalid UTF-8 at byte 13", "latin1.jsonl", "re-encode the file as UTF-8"),
    ("folder without .txt", ["textset", "import", "{dir}/txt", "--name", "x"],
     "no .txt files", "txt", "in this folder"),
    ("empty name", ["textset", "import", "{dir}/ok.jsonl", "--name", ""],
     "text set name ''", "--name", "use 1-64 letters, digits"),
    ("name breaking SQL", ["textset", "import", "{dir}/ok.jsonl", "--name", "a b'; --"],
     "text set name", "a b'; --", "starting with a letter or digit"),
    ("name taken by other texts", ["textset", "import", "{dir}/ok.jsonl", "--name", "eval"],
     "already exists with other texts", "'eval'", "choose another name"),
    # atlas import vectors
    ("vector of the wrong length",
     ["import", "vectors", "{dir}/short.parquet", "--textset", "eval"],
     "3 values, but the text set has 6", "short.parquet: row 0", "the text set it was scored on"),
    ("NaN in a vector", ["import", "vectors", "{dir}/nan.parquet", "--textset", "eval"],
     "NaN or inf at index 5", "nan.parquet: row 0", "re-score that text"),
    ("unknown text set", ["import", "vectors", "{dir}/ok.parquet", "--textset", "nope"],
     "no text set named 'nope'", "(have: eval)", "atlas textset import"),
    ("provenance not JSON", ["import", "vectors", "{dir}/notjson.parquet", "--textset", "eval"],
     "column 'provenance' is not valid JSON", "notjson.parquet: row 0 (a-1b)", "JSON object"),
    ("provenance a JSON list", ["import", "vectors", "{dir}/list.parquet", "--textset", "eval"],
     "column 'provenance' must be a JSON object", "list.parquet: row 0 (a-1b)",
     "fix it or leave it empty"),
    ('n_params "lots"', ["import", "vectors", "{dir}/lots.parquet", "--textset", "eval"],
     "column 'n_params' is 'lots'", "lots.parquet: row 0 (a-1b)", "fix the value"),
    ("seed 1.5", ["import", "vectors", "{dir}/seed.parquet", "--textset", "eval"],
     "column 'seed' is 1.5, not a non-negative integer", "seed.parquet: row 0", "fix the value"),
    ("duplicate keys", ["import", "vectors", "{dir}/twice.parquet", "--textset", "eval"],
     "the same key appears twice", "a-1b", "keep one row per key"),
    ("unknown parent", ["import", "vectors", "{dir}/orphan.parquet", "--textset", "eval"],
     "parent 'nosuch-1m' of ft-1b is not a model of the atlas", "orphan.parquet: ft-1b",
     "import the parent first"),
    ("unparseable key", ["import", "vectors", "{dir}/badkey.parquet", "--textset", "eval"],
     "cannot parse model key 'not a key'", "badkey.parquet: row 0", "FAMILY-SIZE"),
    ("malicious pickle", ["import", "vectors", "{dir}/evil.pkl", "--textset", "eval"],
     "asks for", "evil.pkl", "re-save it as {name: [floats]} or as parquet"),
    ("neither Parquet nor pickle", ["import", "vectors", "{dir}/x.json", "--textset", "eval"],
     "not a readable pickle", "x.json", "give a .parquet file"),
    ("missing vectors file", ["import", "vectors", "{dir}/gone.parquet", "--textset", "eval"],
     "no such file", "gone.parquet", "give the path of a .parquet file"),
    ("other values under a stored key",
     ["import", "vectors", "{dir}/restored.parquet", "--textset", "eval"],
     "already scored on this text set with another scoring config", "fam-s/s0@step0", "--force"),
    # atlas ingest --parent: refused before the (here missing) model is loaded
    ("ingest with an unknown parent",
     ["ingest", "{dir}/no-model", "--family", "ft", "--size", "1m", "--textset", "eval",
      "--parent", "nosuch-1m"],
     "parent 'nosuch-1m' of ft-1m is not a model of the atlas", "ft-1m",
     "ingest or import the parent first, or drop --parent"),
    # reading by key
    ("kl of an unknown key", ["kl", "nosuch-1m", "fam-s/s0@step0"],
     "unknown model key", "'nosuch-1m'", "SELECT key FROM model_variants"),
    ("kl of an ambiguous shorthand", ["kl", "fam-s", "fam-s/s0@step0"],
     "ambiguous model key", "'fam-s'", "give more of the key"),
    ("kl on an unknown text set", ["kl", "fam-s/s0@step0", "fam-s/s0@step10", "--textset", "nope"],
     "no text set named 'nope'", "(have: eval)", "atlas textset import"),
    ("nearest of an unparseable key", ["nearest", "not a key"],
     "unknown model key", "'not a key'", "SELECT key FROM model_variants"),
    ("nearest on an unknown text set", ["nearest", "fam-s/s0@step0", "--textset", "nope"],
     "no text set named 'nope'", "(have: eval)", "atlas textset import"),
    ("trajectory of an unknown run", ["trajectory", "nope", "--size", "1m"],
     "no checkpoints of nope-1m", "runs with checkpoints: fam-s/s0, fam-s/s1, fbm-1m/s0+int8",
     "runs with checkpoints"),
    ("diffusion of a run stored only quantized",
     ["diffusion", "fbm", "--size", "1m", "--seed", "0"],
     "no checkpoints of fbm-1m/s0 in the atlas", "fbm-1m/s0+int8", "--quant int8"),
    ("diffusion with a t0 that is no step",
     ["diffusion", "fam", "--size", "s", "--seed", "0", "--t0", "5"],
     "t0 = 5.0 is not a checkpoint step", "steps run 0 … 30", "nearest: 0"),
    ("diffusion with too long a window",
     ["diffusion", "fam", "--size", "s", "--seed", "0", "--window", "10"],
     "has a full window", "4 checkpoints", "use --window 3 or less"),
    ("trajectory on an unknown text set",
     ["trajectory", "fam", "--size", "s", "--seed", "0", "--textset", "nope"],
     "no text set named 'nope'", "(have: eval)", "atlas textset import"),
    ("scale with a bad --where", ["scale", "--where", "nosuch = 1"],
     "bad where clause", "nosuch = 1", "candidate bindings"),
    ("map of no models", ["map", "--where", "family = 'zzz'"],
     "a map needs at least 3 models", "family = 'zzz'", "0 model variant(s)"),
]


@pytest.mark.parametrize(("args", "what", "where", "fix"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_refused(world, args, what, where, fix):
    folder = str(world.parent)
    refused(world, [arg.replace("{dir}", folder) for arg in args], what=what,
            where=where.replace("{dir}", folder), fix=fix)
    assert not (world.parent / "pwned").exists()


def test_a_bad_vector_in_the_last_row_group_leaves_no_batch_written(world, monkeypatch):
    """A Parquet file is read a batch at a time, yet validated whole before its first batch
    is written: a NaN in its last row group (row 6 of 7, batches of 2) writes nothing, and the
    row is counted from the start of the file, not of its row group or batch."""
    monkeypatch.setattr(imports, "IMPORT_BATCH", 2)
    refused(world, ["import", "vectors", _at(world, "lastgroup.parquet"), "--textset", "eval"],
            what="NaN or inf at index 5", where="lastgroup.parquet: row 6",
            fix="re-score that text")


def test_run_stored_only_quantized_is_fitted_with_quant(world):
    """The fix the refusal above names works: --quant picks the quantized run."""
    with atlas.open(world, read_only=True) as handle:
        frame = handle.trajectory(handle.run("fbm", "1m", 0, quant="int8")).value
    assert frame["key"].to_list() == [f"fbm-1m/s0+int8@step{s}" for s in STEPS[:-1]]


def test_ingest_parent_shorthand_is_stored_as_its_key(tmp_path, db, model_dirs):
    """A parent given as a shorthand is stored as the canonical key it resolves to."""
    kwargs = dict(textset="eval", dtype="float32", progress=False, sketch_dim=0)
    db.ingest(str(model_dirs["gpt_neox"]), family="base", size="s", seed=1,
              checkpoint="step9", **kwargs)
    db.ingest(str(model_dirs["gpt2"]), family="ft", size="s", parent="base-s@step9", **kwargs)
    assert db.sql("SELECT parent FROM models WHERE key = 'ft-s'")["parent"][0] == "base-s/s1@step9"


def test_diffusion_of_a_quantized_run_is_stored_with_its_quant(tmp_path, world):
    from click.testing import CliRunner

    from atlas.cli import main

    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(world.read_bytes())
    result = CliRunner().invoke(main, ["--db", str(copy), "diffusion", "fbm", "--size", "1m",
                                       "--seed", "0", "--quant", "int8", "--window", "3",
                                       "--boot", "0", "--format", "json"])
    assert result.exit_code == 0, result.output
    with atlas.open(copy, read_only=True) as handle:
        rows = handle.sql("SELECT family, seed, quant, lags FROM diffusion_fits").rows()
    assert rows == [("fbm", 0, "int8", 3)]
