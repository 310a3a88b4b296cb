"""Store.matrix: the whole-set read behind scale, maps, views and kl_matrix."""

import tracemalloc

import numpy as np

import atlas
from atlas.keys import ModelKey
from atlas.store import LOGLIK_PART, VectorRecord
from atlas.textsets import TextSet

K, N = 150, 3 * LOGLIK_PART + 17  # a last part of padding


def _atlas(tmp_path) -> tuple[atlas.Atlas, np.ndarray]:
    loglik = np.random.default_rng(0).normal(-500, 80, (K, N)).astype(np.float32)
    db = atlas.open(tmp_path / "a.duckdb")
    db.import_textset(TextSet([f"text {i}" for i in range(N)]), "eval")
    db.store.write_vectors([VectorRecord(ModelKey("m", str(i)), row, config_id=f"c{i}",
                                         provenance={}) for i, row in enumerate(loglik)],
                           textset_id=db.store.textset("eval").textset_id)
    return db, loglik


def test_the_read_is_the_stored_float32_values_in_one_float64_array(tmp_path):
    db, loglik = _atlas(tmp_path)
    keys, matrix, _ = db.store.matrix(None, "eval")
    assert matrix.dtype == np.float64 and matrix.flags.c_contiguous
    assert (matrix == loglik[[int(key[2:]) for key in keys]]).all()
    tracemalloc.start()
    db.store.matrix(None, "eval")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.25 * K * N * 8  # the result alone: no float32 gather beside its copy
