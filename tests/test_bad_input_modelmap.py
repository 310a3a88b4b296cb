"""Bad input to the release import, metrics import and prediction: refused with what, where and
how to fix it, the atlas unchanged (tests/badinput.py)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from badinput import refused
from release import write_release

import atlas


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("bad-release") / "1000models", 20, 40)


@pytest.fixture
def db_text(release, tmp_path):
    path = tmp_path / "atlas.duckdb"
    atlas.open(path).close()
    return path


def copy(release, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(release.folder, target)
    return target


def test_a_folder_without_vectors(release, db_text):
    refused(db_text, ["import", "modelmap", str(release.folder / "models")],
            what="no raw_log-likelihood_*.pkl", where="models", fix="release folder")


def test_a_malicious_metadata_pickle_runs_nothing(release, db_text, tmp_path):
    folder = copy(release, tmp_path)
    marker = tmp_path / "pwned"
    meta = next((folder / "data" / "model-metadata").glob("*.pkl"))
    meta.write_bytes(pickle.dumps([{"model_name": "a/b", "x": _Exploit(marker)}]))
    refused(db_text, ["import", "modelmap", str(folder)], what="asks for", where=meta.name,
            fix="only plain dicts")
    assert not marker.exists()


def test_a_clipped_file_that_is_not_the_raw_clipped(release, db_text, tmp_path):
    folder = copy(release, tmp_path)
    clipped = next((folder / "data" / "log-likelihood").glob("clipped_*.pkl"))
    data = pickle.loads(clipped.read_bytes())
    data[release.names[3]] = data[release.names[3]] + np.float32(1)
    clipped.write_bytes(pickle.dumps(data))
    refused(db_text, ["import", "modelmap", str(folder)], what="is not max(raw",
            where=release.names[3], fix="not the clipped view")


def test_vectors_of_another_text_set(release, db_text, tmp_path):
    folder = copy(release, tmp_path)
    (folder / "data" / "text" / "texts-10k-pile.jsonl").unlink()
    with atlas.open(db_text) as handle:
        handle.import_textset(release.folder / "data/text/texts-10k-pile.jsonl", "other")
    shorter = tmp_path / "short.jsonl"
    shorter.write_text("".join(f'{{"text": "t{i}"}}\n' for i in range(5)))
    with atlas.open(db_text) as handle:
        handle.import_textset(shorter, "short")
    refused(db_text, ["import", "modelmap", str(folder), "--textset", "short"],
            what="40 values, but the text set has 5", where=release.names[0],
            fix="--textset")


def test_metrics_of_unknown_models_and_unknown_metric(release, db_text, tmp_path):
    with atlas.open(db_text) as handle:
        handle.import_release(release.folder)
    path = tmp_path / "m.csv"
    path.write_text("hub_id,score\nnobody/none,3\n")
    refused(db_text, ["import", "metrics", str(path)], what="'nobody/none' is not a model",
            where="m.csv: line 2", fix="import its vector first")
    refused(db_text, ["predict", "NoSuchBench"], what="no metric 'NoSuchBench'",
            where="metrics: 6-taskmean", fix="atlas import metrics")
    refused(db_text, ["predict", "MMLU", "--where", "family = 'none'"], what="0 of the 0",
            where="MMLU", fix="widen --where")
