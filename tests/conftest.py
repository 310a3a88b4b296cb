"""Shared fixtures: tiny real models saved to disk and loaded by from_pretrained; no network."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub in tests
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from atlas import tiny
from atlas.textsets import TextSet, chunk_document

ARCHS = ("gpt_neox", "gpt2", "llama")


def _source_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks = []
    for module in ("textwrap", "shlex", "bisect", "heapq", "fractions", "calendar"):
        chunks.extend(chunk_document((root / f"{module}.py").read_text(encoding="utf-8")))
    return chunks


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """Deterministic code texts (Python's own stdlib source), chunked like the reference."""
    return _source_texts()


@pytest.fixture(scope="session")
def texts(corpus) -> list[str]:
    """A small evaluation set of varied lengths (short ones exercise padding)."""
    picked = corpus[:12]
    return picked + [t[: 40 + 13 * i] for i, t in enumerate(corpus[12:18])] + ["ünïcødé 🙂 text"]


@pytest.fixture(scope="session")
def textset(texts) -> TextSet:
    return TextSet(texts, source="tests")


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return tiny.train_tokenizer(corpus[18:], vocab_size=384)


@pytest.fixture(scope="session")
def bos_tokenizer(corpus):
    return tiny.train_tokenizer(corpus[18:], vocab_size=384, bos=True)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """One saved model directory per architecture (safetensors + tokenizer files)."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ARCHS:
        model = tiny.build_model(tiny.tiny_config(arch, tokenizer), seed=0)
        dirs[arch] = tiny.save(model, tokenizer, root / arch)
    return dirs


@pytest.fixture(scope="session")
def seed_dirs(tmp_path_factory, tokenizer) -> dict[int, Path]:
    """GPT-NeoX models of three seeds (different random weights, same architecture)."""
    root = tmp_path_factory.mktemp("seeds")
    config = tiny.tiny_config("gpt_neox", tokenizer)
    return {seed: tiny.save(tiny.build_model(config, seed=seed), tokenizer, root / f"s{seed}")
            for seed in (1, 2, 3)}


@pytest.fixture
def db(tmp_path, textset):
    """A fresh atlas with the test text set stored as 'eval'."""
    import atlas

    handle = atlas.open(tmp_path / "atlas.duckdb")
    handle.import_textset(textset, "eval")
    return handle
