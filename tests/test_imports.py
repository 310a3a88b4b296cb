"""Importing precomputed vectors: Parquet, the reference pickle, and hostile files."""

import os
import pickle

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas import imports
from atlas.cli import main
from atlas.errors import ImportFormatError, StoreError
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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_import(db, tmp_path, n, protocol):
    """Pickles written by numpy: float32/float64 arrays, lists of numpy scalars, plain floats."""
    values = -np.arange(1, n + 1, dtype=np.float64) * 1.5
    data = {"a-1b": values, "b-1b": values.astype(np.float32) * 2,
            "c-1b": [np.float64(v) * 3 for v in values], "d-1b": [np.float32(v) for v in values],
            "e-1b": [float(v) for v in values / 2]}
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert [k for k, written in db.import_vectors(path, "eval") if written] == list(data)
    stored = db.sql("SELECT loglik FROM loglik_vectors WHERE key = 'c-1b'")["loglik"][0]
    assert np.allclose(stored.to_list(), values * 3)


def test_numpy_object_reducing_to_a_command_is_refused(db, tmp_path, n):
    """Only the numpy constructors are allowed: a numpy-looking global that is not one is not."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"a-1b": np.zeros(n)}, protocol=2).replace(
        b"cnumpy\ndtype\n", b"cnumpy\nload\n")
    (tmp_path / "np.pkl").write_bytes(payload)
    with pytest.raises(ImportFormatError, match=r"asks for numpy\.load"):
        db.import_vectors(tmp_path / "np.pkl", "eval")
    assert not marker.exists() and db.models().height == 0


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


def _parquet(path, n, **columns):
    rows = len(next(iter(columns.values())))
    pl.DataFrame({**columns, "loglik": [[-1.0 - i - r for i in range(n)] for r in range(rows)]}
                 ).write_parquet(path)
    return path


@pytest.mark.parametrize(("columns", "message"), [
    ({"provenance": ["{not json"]}, r"row 0 \(a-1b\): column 'provenance' is not valid JSON"),
    ({"provenance": ["[1, 2]"]}, r"row 0 \(a-1b\): column 'provenance' must be a JSON object"),
    ({"n_params": ["lots"]}, r"row 0 \(a-1b\): column 'n_params' is 'lots', not a non-negative"),
    ({"n_params": [-5]}, r"column 'n_params' is -5, not a non-negative integer"),
    ({"parent": ["not a key"]}, r"row 0 \(a-1b\): column 'parent': cannot parse model key"),
    ({"source": [3]}, r"column 'source' is 3, not a string"),
])
def test_bad_columns_name_file_row_key_and_column(db, tmp_path, n, columns, message):
    path = _parquet(tmp_path / "v.parquet", n, key=["a-1b"], **columns)
    with pytest.raises(ImportFormatError, match=message) as error:
        db.import_vectors(path, "eval")
    assert str(path) in str(error.value)
    assert db.models().height == 0


def test_non_integer_seed_is_refused_not_rounded(db, tmp_path, n):
    path = _parquet(tmp_path / "v.parquet", n, family=["a"], size=["1b"], seed=[1.5])
    with pytest.raises(ImportFormatError, match=r"row 0: column 'seed' is 1.5, not a non-neg"):
        db.import_vectors(path, "eval")
    assert db.models().height == 0
    _parquet(path, n, family=["a"], size=["1b"], seed=[2.0], layer=[3.0])
    assert db.import_vectors(path, "eval") == [("a-1b/s2#3", True)]


def test_quant_none_or_empty_is_unquantized(db, tmp_path, n):
    path = _parquet(tmp_path / "v.parquet", n, family=["a", "b"], size=["1b", "1b"],
                    quant=["none", ""])
    assert [k for k, _ in db.import_vectors(path, "eval")] == ["a-1b", "b-1b"]
    assert db.models()["quant"].to_list() == [None, None]


def test_unknown_parent_is_refused_before_anything_is_stored(db, tmp_path, n):
    path = _parquet(tmp_path / "v.parquet", n, key=["a-1b", "ft-1b"], parent=[None, "nosuch-1m"])
    with pytest.raises(ImportFormatError, match=r"ft-1b: column 'parent': parent 'nosuch-1m' of "
                                                r"ft-1b is not a model of the atlas"):
        db.import_vectors(path, "eval")
    assert db.models().height == 0


def test_parents_resolve_and_are_written_before_their_children(db, tmp_path, n):
    base = _parquet(tmp_path / "base.parquet", n, key=["base-1b/s1@step9"])
    db.import_vectors(base, "eval")
    path = _parquet(tmp_path / "v.parquet", n, key=["ft2-1b", "ft1-1b"],
                    parent=["ft1-1b", "base-1b@step9"])  # a child first; a shorthand parent
    assert db.import_vectors(path, "eval") == [("ft1-1b", True), ("ft2-1b", True)]
    parents = dict(db.sql("SELECT key, parent FROM model_variants").rows())
    assert parents == {"base-1b/s1@step9": None, "ft1-1b": "base-1b/s1@step9", "ft2-1b": "ft1-1b"}
    assert db.sql("SELECT count(kl(key, parent)) AS n FROM model_variants "
                  "WHERE parent IS NOT NULL")["n"][0] == 2


def test_a_child_before_its_parent_in_the_file_waits_for_it(db, tmp_path, n, monkeypatch):
    """A file is read a batch at a time, so a child whose parent comes in a later row group is
    put off and its row group read again: parents are still written first, in batches."""
    keys = ["c-1b", "x-1b", "y-1b", "z-1b", "b-1b", "a-1b"]  # c → b → a, a and b last
    parents = ["b-1b", None, None, None, "a-1b", None]
    values = [[-1.0 - i - r for i in range(n)] for r in range(len(keys))]
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"key": keys, "parent": parents, "loglik": values}), path,
                   row_group_size=2)
    monkeypatch.setattr(imports, "IMPORT_BATCH", 2)
    results = db.import_vectors(path, "eval")
    assert results == [(key, True) for key in ["x-1b", "y-1b", "z-1b", "a-1b", "b-1b", "c-1b"]]
    assert dict(db.sql("SELECT key, parent FROM model_variants").rows()) == dict(
        zip(keys, parents, strict=True))
    stored, matrix, _ = db.store.matrix(None, "eval")
    assert (matrix == np.array([values[keys.index(key)] for key in stored])).all()
    assert db.import_vectors(path, "eval") == [(key, False) for key, _ in results]


def test_parent_cycles_are_refused(db, tmp_path, n):
    path = _parquet(tmp_path / "v.parquet", n, key=["a-1b", "b-1b"], parent=["b-1b", "a-1b"])
    with pytest.raises(ImportFormatError, match="parents form a cycle"):
        db.import_vectors(path, "eval")
    assert db.models().height == 0


@pytest.mark.parametrize("kind", [pa.list_(pa.float32()), pa.large_list(pa.float64()),
                                  pa.list_(pa.int64())])
def test_loglik_columns_of_any_list_type_are_read_whole(db, tmp_path, n, kind):
    values = [[-1.0 - i - r for i in range(n)] for r in range(3)]
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"key": ["a-1b", "b-1b", "c-1b"], "loglik": pa.array(values, kind)}),
                   path)
    assert [done for _, done in db.import_vectors(path, "eval")] == [True] * 3
    keys, matrix, _ = db.store.matrix(None, "eval")
    assert keys == ["a-1b", "b-1b", "c-1b"] and (matrix == np.array(values)).all()


@pytest.mark.parametrize(("loglik", "message"), [
    ([None], r"row 1: expected a list of numbers, got NoneType"),
    ([[None] * 1], r"row 1: contains NaN or inf at index 0"),  # a null value is not a number
])
def test_null_vectors_and_values_are_refused_with_their_row(db, tmp_path, n, loglik, message):
    rows = [[-1.0] * n] + [row if row is None else row * n for row in loglik]
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"key": ["a-1b", "b-1b"],
                             "loglik": pa.array(rows, pa.list_(pa.float64()))}), path)
    with pytest.raises(ImportFormatError, match=message):
        db.import_vectors(path, "eval")
    assert db.models().height == 0


def test_an_import_stopped_between_batches_resumes(db, tmp_path, n, monkeypatch):
    """Each batch is one transaction: a failure keeps the batches before it, and the re-run
    finds them stored (False) and writes the rest."""
    path = _parquet(tmp_path / "v.parquet", n, key=[f"m-{i}b" for i in range(5)])
    monkeypatch.setattr(imports, "IMPORT_BATCH", 2)
    write = db.store.write_vectors
    calls = []

    def failing(records, **options):
        calls.append(len(records))
        if len(calls) == 2:
            raise StoreError("disk gone")
        return write(records, **options)

    monkeypatch.setattr(db.store, "write_vectors", failing)
    with pytest.raises(StoreError, match="disk gone"):
        db.import_vectors(path, "eval")
    assert db.sql("SELECT key FROM vectors ORDER BY key")["key"].to_list() == ["m-0b", "m-1b"]
    monkeypatch.setattr(db.store, "write_vectors", write)
    results = db.import_vectors(path, "eval")
    assert [done for _, done in results] == [False, False, True, True, True]
    assert db.import_vectors(path, "eval") == [(key, False) for key, _ in results]


def test_the_import_command_prints_only_its_result_on_stdout(db, tmp_path, n):
    """The progress bar goes to stderr: a script reading stdout gets the one result line."""
    path = _parquet(tmp_path / "v.parquet", n, key=["a-1b", "b-1b"])
    db.close()
    result = CliRunner().invoke(main, ["--db", str(db.path), "import", "vectors", str(path),
                                       "--textset", "eval"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 2 vectors (0 already stored) into text set 'eval'\n"



def _import_peak(folder, rows: int, n_texts: int) -> int:
    """The peak that tracemalloc sees (Python objects and numpy arrays; Arrow's own buffers
    are bench/bench_scale.py's peak RSS) while a fresh atlas imports a file of ``rows``
    vectors in row groups of 300."""
    import tracemalloc

    import atlas
    from atlas.textsets import TextSet

    folder.mkdir()
    values = np.random.default_rng(0).normal(-50, 5, (rows, n_texts)).astype(np.float32)
    path = folder / "v.parquet"
    pq.write_table(pa.table({"key": [f"m-{i}" for i in range(rows)],
                             "loglik": pa.FixedSizeListArray.from_arrays(values.ravel(), n_texts)}),
                   path, row_group_size=300)
    with atlas.open(folder / "atlas.duckdb") as db:
        db.import_textset(TextSet([f"text {i}" for i in range(n_texts)]), "big")
        tracemalloc.start()
        try:
            results = db.import_vectors(path, "big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [key for key, _ in results] == [f"m-{i}" for i in range(rows)]
        keys, matrix, _ = db.store.matrix(None, "big")
    order = [int(key.removeprefix("m-")) for key in keys]
    assert sorted(order) == list(range(rows)) and (matrix == values[order]).all()
    return peak


def test_a_parquet_file_is_imported_a_batch_at_a_time(tmp_path, monkeypatch):
    """The import holds about one batch of ℓ, not the file: four times the rows (1,200 × 2,000
    more float64 values, 19 MB) raise the peak by their keys only (< a quarter of their ℓ)."""
    monkeypatch.setattr(imports, "IMPORT_BATCH", 100)
    small = _import_peak(tmp_path / "small", 400, 2000)
    large = _import_peak(tmp_path / "large", 1600, 2000)
    assert large - small < 1200 * 2000 * 8 / 4, (small, large)
