"""Bad input to `atlas ingest`: each case is one clear `error:` line (what, where, how to fix),
no traceback, and the atlas byte-for-byte as it was (tests/badinput.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from badinput import refused

import atlas


@pytest.fixture
def atlas_path(tmp_path, textset) -> Path:
    """An atlas file holding the test text set as 'eval' (and nothing else)."""
    path = tmp_path / "atlas.duckdb"
    with atlas.open(path) as handle:
        handle.import_textset(textset, "eval")
    return path


def ingest_args(source, *options: str) -> list[str]:
    return ["ingest", str(source), "--family", "bad", "--size", "s", "--textset", "eval",
            *options]


def broken_copy(model_dir: Path, tmp_path: Path, case: str) -> Path:
    """A copy of a saved tiny model, broken as ``case`` says."""
    target = shutil.copytree(model_dir, tmp_path / case)
    weights, config = target / "model.safetensors", target / "config.json"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "no-weights":
        weights.unlink()
    elif case == "bad-json":
        config.write_text(config.read_text()[:-20])
    elif case == "no-config":
        config.unlink()
    elif case == "unknown-architecture":
        values = json.loads(config.read_text())
        config.write_text(json.dumps({**values, "model_type": "frobnicator"}))
    return target


SOURCES = {  # case: (what, where, fix); where is the file or folder, filled in below
    "truncated": ("unreadable safetensors file", "model.safetensors", "save the model again"),
    "no-weights": ("no weights file", "", "save_pretrained"),
    "bad-json": ("not valid JSON (line", "config.json", "save the config again"),
    "no-config": ("no config.json", "", "save_pretrained"),
    "unknown-architecture": ("model_type 'frobnicator' is not an architecture transformers",
                             "config.json", "upgrade transformers"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_broken_model_directories(atlas_path, model_dirs, tmp_path, case):
    source = broken_copy(model_dirs["gpt_neox"], tmp_path, case)
    what, where, fix = SOURCES[case]
    refused(atlas_path, ingest_args(source), what=what, where=str(source / where).rstrip("/"),
            fix=fix)


def test_garbage_gguf_file(atlas_path, tmp_path):
    garbage = tmp_path / "model.gguf"
    garbage.write_bytes(bytes(range(256)) * 16)
    refused(atlas_path, ingest_args(garbage), what="not a GGUF file", where=str(garbage),
            fix="download or convert it again")


def test_a_file_that_is_not_a_model(atlas_path, model_dirs):
    config = model_dirs["gpt2"] / "config.json"
    refused(atlas_path, ingest_args(config), what="not a .gguf file", where=str(config),
            fix="directory of a saved model")


@pytest.mark.parametrize("missing", ["/no/such/model", "./no-such-model", "models/a/b",
                                     "~/no-such.gguf"])
def test_missing_local_path_is_not_a_hub_problem(atlas_path, missing):
    output = refused(atlas_path, ingest_args(missing), what="no such file or directory",
                     where=missing, fix="a directory with config.json")
    assert "hub" not in output.split(";")[0] and "tokenizer" not in output


OPTIONS = [  # (options, what, where, fix)
    (["--dtype", "int3"], "'int3' is not one of", "--dtype", "'float32'"),
    (["--max-length", "0"], "0 is not in the range", "--max-length", "x>=2"),
    (["--max-length", "-5"], "-5 is not in the range", "--max-length", "x>=2"),
    (["--batch-size", "0"], "0 is not in the range", "--batch-size", "x>=1"),
    (["--layers", "99"], "has 2 blocks", "--layers 99", "hidden states are 0..2"),
    (["--layers", "3-1"], "give 'all' or hidden-state indices", "--layers '3-1'", "0-4"),
    (["--layers", "all", "--lens-norm", "gpt_neox.nope"], "'gpt_neox.nope' does not exist",
     "module path", "gpt_neox.final_layer_norm"),
    (["--lens-norm", "gpt_neox.final_layer_norm"], "describe the logit lens", "--lens-norm",
     "need --layers"),
    (["--allow-missing", " "], "give a glob of weight names", "--allow-missing", "lm_head"),
    (["--sketch-dim", "-1"], "-1 is not in the range", "--sketch-dim", "x>=0"),
]


@pytest.mark.parametrize(("options", "what", "where", "fix"), OPTIONS,
                         ids=[" ".join(case[0]) for case in OPTIONS])
def test_bad_options(atlas_path, model_dirs, options, what, where, fix):
    refused(atlas_path, ingest_args(model_dirs["gpt_neox"], *options), what=what, where=where,
            fix=fix)


def test_cuda_where_there_is_none(atlas_path, model_dirs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(atlas_path, ingest_args(model_dirs["gpt_neox"], "--device", "cuda"),
            what="CUDA is not available", where="--device cuda", fix="--device cpu")


def test_unknown_text_set(atlas_path, model_dirs):
    refused(atlas_path, ["ingest", str(model_dirs["gpt_neox"]), "--family", "bad", "--size", "s",
                         "--textset", "nope"],
            what="no text set named 'nope'", where=str(atlas_path),
            fix="atlas textset import")
