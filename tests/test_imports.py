"""Importing precomputed vectors: Parquet, the reference pickle, and hostile files."""

import os
import pickle

import numpy as np
import polars as pl
import pytest

from atlas.errors import ImportFormatError
from atlas.imports import key_from_name


@pytest.fixture
def n(textset):
    return len(textset)


def test_parquet_with_key_columns(db, tmp_path, n):
    path = tmp_path / "v.parquet"
    pl.DataFrame({
        "family": ["pythia", "pythia"], "size": ["70m", "70m"], "seed": [0, 1],
        "checkpoint": ["step1000", "step1000"], "n_params": [70_000_000, 70_000_000],
        "loglik": [[-10.0 - i for i in range(n)], [-11.0 - 2 * i for i in range(n)]],
    }).write_parquet(path)
    results = db.import_vectors(path, "eval")
    assert results == [("pythia-70m/s0@step1000", True), ("pythia-70m/s1@step1000", True)]
    assert db.models()["n_params"].to_list() == [70_000_000] * 2
    assert db.import_vectors(path, "eval") == [(k, False) for k, _ in results]  # idempotent
    assert db.kl("pythia-70m/s0", "pythia-70m/s1").value > 0


def test_reference_pickle_round_trip(db, tmp_path, n):
    data = {"EleutherAI/pythia-70m": [-5.0 * (i + 1) for i in range(n)],
            "gpt2": [float(-i) for i in range(n)]}
    path = tmp_path / "loglik.pkl"
    path.write_bytes(pickle.dumps(data))
    keys = [k for k, _ in db.import_vectors(path, "eval")]
    assert keys == ["EleutherAI_pythia-70m", "gpt2-na"]
    stored = db.sql("SELECT loglik FROM loglik_vectors WHERE key = 'gpt2-na'")["loglik"][0]
    assert np.allclose(stored.to_list(), data["gpt2"])
    assert db.sql("SELECT source FROM models ORDER BY key")["source"].to_list() == list(data)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_code(db, tmp_path, n):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"m-1b": [0.0] * n, "x": _Exploit(marker)}))
    with pytest.raises(ImportFormatError, match=r"asks for (posix|os)\.system"):
        db.import_vectors(path, "eval")
    assert not marker.exists()
    assert db.models().height == 0


def test_numpy_pickles_are_refused_too(db, tmp_path, n):
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps({"m-1b": np.zeros(n)}))
    with pytest.raises(ImportFormatError, match="only plain dicts, lists and numbers"):
        db.import_vectors(path, "eval")


@pytest.mark.parametrize(("payload", "message"), [
    (["not", "a", "dict"], "expected a dict"),
    ({"m-1b": [0.0, 1.0]}, "2 values, but the text set has"),
    ({"m-1b": "text"}, "expected a list of numbers"),
    ({"m-1b": ["a"]}, "values must all be numbers"),
])
def test_bad_pickles_are_explained(db, tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ImportFormatError, match=message):
        db.import_vectors(path, "eval")


def test_one_bad_row_writes_nothing(db, tmp_path, n):
    path = tmp_path / "v.parquet"
    good, bad = [-1.0] * n, [-1.0] * (n - 1) + [float("nan")]
    pl.DataFrame({"key": ["a-1b", "b-1b"], "loglik": [good, bad]}).write_parquet(path)
    with pytest.raises(ImportFormatError, match=r"row 1: contains NaN or inf at index \d+"):
        db.import_vectors(path, "eval")
    assert db.models().height == 0


def test_parquet_needs_loglik_and_unique_keys(db, tmp_path, n):
    path = tmp_path / "v.parquet"
    pl.DataFrame({"key": ["a-1b"], "values": [[0.0] * n]}).write_parquet(path)
    with pytest.raises(ImportFormatError, match="needs a 'loglik' column"):
        db.import_vectors(path, "eval")
    pl.DataFrame({"key": ["a-1b", "a-1b"], "loglik": [[0.0] * n] * 2}).write_parquet(path)
    with pytest.raises(ImportFormatError, match="same key appears twice: a-1b"):
        db.import_vectors(path, "eval")


def test_key_from_name():
    assert str(key_from_name("pythia-410m@step3000")) == "pythia-410m@step3000"
    assert str(key_from_name("meta-llama/Llama-2-7b-hf")) == "meta-llama_Llama-2-7b-hf"
    assert str(key_from_name("gpt2")) == "gpt2-na"
