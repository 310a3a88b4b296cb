"""All-pairs KL streamed to Parquet (atlas.pairs, ``atlas kl-pairs``): the same numbers as
``Atlas.kl_matrix`` whatever the tile size, written whole or not at all."""

from __future__ import annotations

import tracemalloc

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import atlas
from atlas.cli import main
from atlas.kl import TARGET, kl_blocks, kl_bpb, kl_matrix, kl_se_bpb, pair_kl, tile_pairs
from atlas.pairs import PairsError
from atlas.textsets import TextSet

N = 60
KEYS = [f"toy-{s}/s{seed}@step{step}" for s in ("s", "m") for seed in (0, 1)
        for step in (0, 1, 2)] + ["odd-s"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Vectors sharing one heavy text (so some close pairs are recomputed directly) and a view."""
    root = tmp_path_factory.mktemp("kl-pairs")
    rng = np.random.default_rng(3)
    base = rng.normal(-300, 60, N) - rng.exponential(200, N) * (rng.random(N) < 0.1)
    base[0] = -20_000.0
    loglik = base + rng.normal(0, 4, (len(KEYS), N)) * np.linspace(1, 3, len(KEYS))[:, None]
    path = root / "atlas.duckdb"
    with atlas.open(path) as handle:
        handle.import_textset(TextSet([f"text {i} " * (1 + i % 9) for i in range(N)]), "eval")
        pl.DataFrame({"key": KEYS, "loglik": loglik.tolist()}).write_parquet(root / "v.parquet")
        handle.import_vectors(root / "v.parquet", "eval")
        handle.create_view("clip", ["clip"], textset="eval", warmup=1_000, fraction=0.05)
    return path


def _upper(matrix) -> pl.DataFrame:
    """The pairs i < j of a ``KLMatrix`` in the file's order (row by row)."""
    i, j = np.triu_indices(len(matrix.keys), k=1)
    keys = np.array(matrix.keys)
    return pl.DataFrame({"key_a": keys[i], "key_b": keys[j], "kl": matrix.kl[i, j],
                         "se": matrix.se[i, j]})


def _assert_same(pairs: pl.DataFrame, expected: pl.DataFrame) -> None:
    pairs = pairs.sort("key_a", "key_b")
    expected = expected.sort("key_a", "key_b")
    assert pairs.select("key_a", "key_b").equals(expected.select("key_a", "key_b"))
    for column in ("kl", "se"):
        np.testing.assert_allclose(pairs[column], expected[column], rtol=1e-12, atol=0)


@pytest.mark.parametrize("view", [None, "clip"])
@pytest.mark.parametrize("block", [1, 3, 5, 1024])
def test_streamed_pairs_equal_kl_matrix(db, tmp_path, view, block):
    out = tmp_path / "pairs.parquet"
    with atlas.open(db, read_only=True) as handle:
        written = handle.kl_pairs(out, view=view, block=block)
        expected = _upper(handle.kl_matrix(view=view))
    assert written == len(KEYS) * (len(KEYS) - 1) // 2 == pl.read_parquet(out).height
    _assert_same(pl.read_parquet(out), expected)
    assert pl.read_parquet(out).schema["key_a"] == pl.String  # keys read as text, everywhere
    assert duckdb.sql(f"SELECT typeof(key_b) FROM '{out}' LIMIT 1").fetchall() == [("VARCHAR",)]


def test_tiles_hold_kl_matrix_entries_beside_a_shared_heavy_text():
    """Close pairs beside a −20,000-nat text are recomputed from their difference in a tile as
    in the whole matrix (``_recompute_imprecise`` on the tile's upper pairs)."""
    rng = np.random.default_rng(1)
    loglik = rng.normal(-50, 1e-6, (9, 200)) + rng.normal(-50, 5, 200)
    loglik[:, 0] = -20_000 + rng.normal(0, 30, 9)
    whole = kl_matrix(loglik, 3.0)
    seen = np.zeros((9, 9), bool)
    for rows, cols, kl, se in kl_blocks(loglik, 3.0, block=2):
        i, j = tile_pairs(rows, cols)
        np.testing.assert_allclose(kl[i, j], whole.kl[i + rows.start, j + cols.start], rtol=1e-12)
        np.testing.assert_allclose(se[i, j], whole.se[i + rows.start, j + cols.start], rtol=1e-12)
        seen[i + rows.start, j + cols.start] = True
    assert (seen == np.triu(np.ones((9, 9), bool), k=1)).all()


def test_tiles_keep_the_pairwise_precision_on_ill_conditioned_vectors():
    """Models whose noise spans 10⁻³…3 nats: tiles and the whole matrix round differently,
    but every pair stays within TARGET of its direct ``kl_bpb``/``kl_se_bpb``."""
    rng = np.random.default_rng(3)
    loglik = rng.normal(-300, 60, 80) + rng.normal(0, 4, (12, 80)) * np.geomspace(1e-3, 3, 12)[
        :, None]
    for rows, cols, kl, se in kl_blocks(loglik, 3.0, block=5):
        for i, j in zip(*tile_pairs(rows, cols), strict=True):
            a, b = loglik[rows.start + i], loglik[cols.start + j]
            assert kl[i, j] == pytest.approx(kl_bpb(a, b, 3.0), rel=TARGET)
            assert se[i, j] == pytest.approx(kl_se_bpb(a, b, 3.0), rel=TARGET)


def test_pair_kl_equals_the_direct_estimates_block_by_block():
    """Chosen pairs, in blocks of three, on ill-conditioned float32 vectors: each is
    ``kl_bpb``/``kl_se_bpb`` of its two rows and ``kl_matrix``'s entry within TARGET."""
    rng = np.random.default_rng(4)
    loglik = (rng.normal(-300, 60, 80) + rng.normal(0, 4, (12, 80))
              * np.geomspace(1e-3, 3, 12)[:, None]).astype(np.float32)
    a, b = rng.integers(12, size=(2, 40))
    kl, se = pair_kl(loglik, a, b, 3.0, block=3 * 80)
    whole = kl_matrix(loglik, 3.0)
    for p, (i, j) in enumerate(zip(a, b, strict=True)):
        assert kl[p] == pytest.approx(kl_bpb(loglik[i], loglik[j], 3.0), rel=1e-12)
        assert se[p] == pytest.approx(kl_se_bpb(loglik[i], loglik[j], 3.0), rel=1e-12)
        assert kl[p] == pytest.approx(whole.kl[i, j], rel=TARGET, abs=1e-300)
        assert se[p] == pytest.approx(whole.se[i, j], rel=TARGET, abs=1e-300)


def test_tiles_never_hold_the_whole_matrix():
    """Memory is the K × N vectors plus tiles: far below one K × K float64 matrix."""
    loglik = np.random.default_rng(2).normal(-50, 5, (1000, 20))
    tracemalloc.start()
    try:
        pairs = sum(tile_pairs(rows, cols)[0].size for rows, cols, *_ in
                    kl_blocks(loglik, 3.0, block=50))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pairs == 1000 * 999 // 2
    assert peak < 1000 * 1000 * 8 / 10


def test_cli_writes_the_chosen_models_pairs(db, tmp_path):
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(main, ["--db", str(db), "kl-pairs", "-o", str(out), "--where",
                                       "family = 'toy' AND size = 'm'", "--block", "2",
                                       "--no-se"])
    assert result.exit_code == 0, result.output
    chosen = [k for k in KEYS if k.startswith("toy-m")]
    assert f"wrote {len(chosen) * (len(chosen) - 1) // 2} pairs" in result.output
    with atlas.open(db, read_only=True) as handle:
        expected = _upper(handle.kl_matrix(chosen)).drop("se")
    pairs = pl.read_parquet(out)
    assert pairs.columns == ["key_a", "key_b", "kl"]
    _assert_same(pairs.with_columns(se=0.0), expected.with_columns(se=0.0))


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(db, tmp_path, monkeypatch):
    out = tmp_path / "pairs.parquet"
    out.write_bytes(b"the earlier file")

    def broken(*args, **kwargs):
        yield from kl_blocks(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("atlas.pairs.kl_blocks", broken)
    with atlas.open(db, read_only=True) as handle, pytest.raises(PairsError, match="No space"):
        handle.kl_pairs(out, block=2)
    assert out.read_bytes() == b"the earlier file"
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.parquet"]
