"""Weight sketches: accuracy against exact distances, determinism, layouts, memory, storage, SQL."""

import copy
import tracemalloc

import duckdb
import numpy as np
import pytest
import torch

import atlas
from atlas import tiny, weights
from atlas.errors import AtlasError, StoreError, UnknownKeyError
from atlas.store import read_sql
from atlas.weights import (
    WeightError,
    block_bytes,
    exact_distance,
    sketch_distance,
    sketch_distance_matrix,
    sketch_parameters,
)


@pytest.fixture(scope="module")
def neox(tokenizer):
    return tiny.tiny_config("gpt_neox", tokenizer)


@pytest.fixture(scope="module")
def pairs(neox, tokenizer, corpus):
    """Model pairs at different distances: two seeds, a model and its briefly trained copy."""
    base = tiny.build_model(neox, seed=1)
    trained = copy.deepcopy(base)
    tiny.train_steps(trained, tokenizer, corpus[:20], steps=3, batch_size=2, seq_len=32)
    wide = tiny.tiny_config("gpt_neox", tokenizer, hidden=48)
    return {"seeds": (base, tiny.build_model(neox, seed=2)),
            "trained": (base, trained),
            "wide seeds": (tiny.build_model(wide, seed=3), tiny.build_model(wide, seed=4))}


def reference_distance(model_a, model_b) -> float:
    return sum(float(((a.detach().double() - b.detach().double()) ** 2).sum())
               for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True))


@pytest.mark.parametrize("pair", ["seeds", "trained", "wide seeds"])
def test_sketch_distance_is_within_5_percent_of_exact(pairs, pair):
    model_a, model_b = pairs[pair]
    exact = exact_distance(model_a, model_b)
    assert exact == pytest.approx(reference_distance(model_a, model_b), rel=1e-12)
    estimate = sketch_distance(sketch_parameters(model_a), sketch_parameters(model_b))
    assert estimate == pytest.approx(exact, rel=0.05)


def test_distance_matrix_matches_pairwise_distances(pairs):
    models = [*pairs["seeds"], pairs["trained"][1]]
    sketches = [sketch_parameters(model) for model in models]
    matrix = sketch_distance_matrix(sketches)
    assert np.array_equal(matrix, matrix.T) and not matrix.diagonal().any()
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert matrix[i, j] == pytest.approx(sketch_distance(sketches[i], sketches[j]), rel=1e-12)
    assert sketch_distance_matrix([]).shape == (0, 0)


def test_sketch_is_unbiased_over_projection_seeds():
    """E‖S(a) − S(b)‖² = ‖a − b‖², with the CountSketch variance ≤ 2/dim (relative)."""
    rng = np.random.default_rng(0)
    a = {"w": rng.standard_normal((40, 50)), "b": rng.standard_normal(30)}
    b = {name: value + rng.standard_normal(value.shape) * 0.1 for name, value in a.items()}
    exact = exact_distance(a, b)
    ratios = np.array([sketch_distance(sketch_parameters(a, dim=64, seed=s),
                                       sketch_parameters(b, dim=64, seed=s)) / exact
                       for s in range(200)])
    assert ratios.mean() == pytest.approx(1.0, abs=0.05)
    assert ratios.var() < 1.3 * 2 / 64


def test_identical_weights_are_at_distance_exactly_zero(pairs, tokenizer, model_dirs):
    from safetensors.torch import load_file

    model = pairs["seeds"][0]
    twin = copy.deepcopy(model)
    assert sketch_distance(sketch_parameters(model), sketch_parameters(twin)) == 0.0
    assert exact_distance(model, twin) == 0.0
    # a module and its saved safetensors file have the same layout and the same sketch (not so
    # for GPT-NeoX, whose file says embed_out where transformers 5 says lm_head: refused)
    saved = tiny.build_model(tiny.tiny_config("llama", tokenizer), seed=0)  # as in model_dirs
    state = load_file(model_dirs["llama"] / "model.safetensors")
    module_sketch, file_sketch = sketch_parameters(saved), sketch_parameters(state)
    assert np.array_equal(module_sketch.sketch, file_sketch.sketch)
    assert module_sketch.layout_hash == file_sketch.layout_hash


def test_sketches_are_deterministic_and_pinned():
    """Same weights, same bits, today and later: stored sketches stay comparable."""
    state = {"w": np.arange(8, dtype=np.float32), "b": np.array([0.5, -2.0])}
    first, again = sketch_parameters(state, dim=4), sketch_parameters(state, dim=4)
    assert np.array_equal(first.sketch, again.sketch)
    assert first.sketch.tolist() == [9.5, 8.0, -1.0, 10.0]  # the Philox stream of METHOD
    assert sketch_parameters(state, dim=4, seed=1).sketch.tolist() == [-6.0, -2.0, 2.0, -0.5]
    assert (first.sq_norm, first.n_params, first.layout_hash) == (144.25, 10, "09e72cd0c7f13612")
    torch_state = {name: torch.as_tensor(value) for name, value in state.items()}
    assert np.array_equal(sketch_parameters(torch_state, dim=4).sketch, first.sketch)


def test_tied_weights_count_once(tokenizer):
    model = tiny.build_model(tiny.tiny_config("gpt2", tokenizer), seed=0)
    assert model.lm_head.weight is model.transformer.wte.weight
    sketch = sketch_parameters(model)
    assert sketch.n_params == sum(p.numel() for p in model.parameters())
    aliased = {**dict(model.named_parameters()), "lm_head.weight": model.lm_head.weight.detach()}
    assert np.array_equal(sketch_parameters(aliased).sketch, sketch.sketch)


def test_different_layouts_or_settings_are_refused(pairs, model_dirs, tokenizer):
    neox = pairs["seeds"][0]
    gpt2 = tiny.build_model(tiny.tiny_config("gpt2", tokenizer), seed=0)
    with pytest.raises(WeightError, match=r"different parameter layouts.*same architecture"):
        sketch_distance(sketch_parameters(neox), sketch_parameters(gpt2))
    with pytest.raises(WeightError, match=r"different settings.*dim 16384.*dim 512"):
        sketch_distance(sketch_parameters(neox), sketch_parameters(neox, dim=512))
    with pytest.raises(WeightError, match="different parameter layouts"):
        exact_distance(neox, gpt2)
    with pytest.raises(WeightError, match=r"not floating point.*quantized"):
        sketch_parameters({"q": torch.zeros(4, dtype=torch.int8)})
    with pytest.raises(WeightError, match=r"nn\.Module or a dict"):
        sketch_parameters([torch.zeros(3)])


def test_blocks_bound_memory_and_do_not_change_the_sketch(monkeypatch):
    assert block_bytes() <= 64 * 2**20
    chunk = 1 << 14
    state = {"big": np.random.default_rng(1).standard_normal(32 * chunk).astype(np.float32),
             "small": np.ones(5, dtype=np.float32)}
    whole = sketch_parameters(state, dim=256)
    monkeypatch.setattr(weights, "CHUNK", chunk)
    tracemalloc.start()
    try:
        blocked = sketch_parameters(state, dim=256, threads=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < block_bytes(chunk)  # the float64 copy of the tensor alone would be 8× over
    threaded = sketch_parameters(state, dim=256, threads=3)
    assert np.array_equal(threaded.sketch, blocked.sketch)  # bit-identical, any thread count
    assert threaded.sq_norm == blocked.sq_norm
    assert np.allclose(blocked.sketch, whole.sketch, rtol=1e-12, atol=1e-9)
    assert blocked.sq_norm == pytest.approx(whole.sq_norm, rel=1e-12)
    assert blocked.layout_hash == whole.layout_hash


def test_ingest_stores_sketches_and_sql_gives_their_distance(db, seed_dirs, neox, tmp_path):
    import shutil

    copy_dir = shutil.copytree(seed_dirs[1], tmp_path / "copy")
    results = [db.ingest(str(path), family=family, size="s", textset="eval", progress=False)
               for family, path in (("a", seed_dirs[1]), ("b", seed_dirs[2]), ("c", copy_dir))]
    assert all(result.sketched for result in results)
    sketches = db.store.sketches(["a-s", "b-s"])
    assert set(sketches) == {"a-s", "b-s"} and sketches["a-s"].dim == weights.DEFAULT_DIM
    sql = db.sql("SELECT weight_sq_distance('a-s', 'b-s') AS ab, "
                 "weight_sq_distance('a-s', 'c-s') AS ac").row(0, named=True)
    assert sql["ab"] == pytest.approx(sketch_distance(sketches["a-s"], sketches["b-s"]),
                                      rel=1e-12)
    assert sql["ac"] == 0.0
    exact = exact_distance(*(tiny.build_model(neox, seed=s) for s in (1, 2)))  # as saved
    assert sql["ab"] == pytest.approx(exact, rel=0.05)


def test_ingest_without_sketch_and_missing_sketches_are_explained(db, seed_dirs):
    kwargs = dict(family="n", size="s", textset="eval", progress=False)
    assert db.ingest(str(seed_dirs[3]), **kwargs).sketched
    result = db.ingest(str(seed_dirs[3]), force=True, sketch_dim=0, **kwargs)
    assert result.status == "stored" and not result.sketched and "disabled" in result.sketch_note
    assert db.store.sketches() == {}  # a forced re-ingest without a sketch drops the old one
    with pytest.raises(UnknownKeyError, match="no weight sketch stored for: n-s"):
        db.store.sketches(["n-s"])
    with pytest.raises(AtlasError, match=r"no weight sketch stored for n-s.*--force"):
        db.sql("SELECT weight_sq_distance('n-s', 'n-s')")
    with pytest.raises(UnknownKeyError, match="no model variant zz-s"):
        db.store.write_sketch("zz-s", sketch_parameters({"w": np.ones(3)}, dim=4))


def test_a_vector_and_its_sketch_are_written_together(db, monkeypatch):
    """One transaction: a writer that fails (or is killed) while writing the sketch leaves no
    vector either, so the re-run, which skips stored vectors, cannot miss the sketch."""
    import atlas.store as store_module
    from atlas.keys import ModelKey

    def broken(*args):
        raise RuntimeError("killed while writing the sketch")

    monkeypatch.setattr(store_module, "_put_sketch", broken)
    textset = db.store.textset("eval")
    with pytest.raises(RuntimeError, match="killed"):
        db.store.write_vector(ModelKey("n", "s"), textset_id=textset.textset_id,
                              loglik=-np.arange(1.0, textset.n_texts + 1), n_tokens=None,
                              n_truncated=0, config_id="c", provenance={},
                              sketch=sketch_parameters({"w": np.ones(3)}, dim=4))
    assert db.sql("SELECT count(*) AS n FROM vectors")["n"][0] == 0


def test_existing_atlases_get_the_sketch_table(tmp_path):
    """An atlas made before weight sketches (old schema, old macros hash) is upgraded on open."""
    import hashlib

    path = tmp_path / "old.duckdb"
    atlas.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE weight_sketches")
    old_sha = hashlib.sha256(read_sql("macros.sql").encode()).hexdigest()[:16]
    con.execute("UPDATE atlas_meta SET value = ? WHERE name = 'macros_sha'", [old_sha])
    con.close()
    with pytest.raises(StoreError, match="predates weight sketches"):
        atlas.open(path, read_only=True).store.sketches()
    assert atlas.open(path).store.sketches() == {}
