"""The data layer a reader uses (atlas.queries behind Atlas's reading methods, sql/queries.sql),
on the atlas of tests/tui_world.py, opened read-only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest
from tui_world import FINE_TUNE, N_MODELS, PARENT, TINY, build_world

from atlas import queries
from atlas.analysis import scale
from atlas.api import Atlas, FilterError, ModelQuery, Run
from atlas.errors import AtlasError
from atlas.keys import size_value
from atlas.queries import one_select, where_query


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("queries"))


@pytest.fixture(scope="module")
def reader(world):
    handle = Atlas(world, read_only=True)
    yield handle
    handle.close()


def keys(page) -> list[str]:
    return page.rows["key"].to_list()


# filters -----------------------------------------------------------------------------------------
def test_where_query_is_one_select():
    assert ModelQuery.where_clause("where step > 3") == "step > 3"
    assert ModelQuery.where_clause("WHERE  family = 'x'") == "family = 'x'"
    assert ModelQuery.where_clause("wherever") is None
    assert where_query("step > 3") == "SELECT key FROM model_variants WHERE (step > 3)"
    for bad in ("step > 3; DROP TABLE models", "", "step >"):
        with pytest.raises(FilterError):
            where_query(bad)


def test_one_select_refuses_everything_but_one_select():
    assert one_select("SELECT 1", ValueError, "no").type.name == "SELECT"
    for bad in ("SELECT 1; SELECT 2", "DELETE FROM models", "COPY models TO 'x.csv'",
                "ATTACH 'other.duckdb'", "SELEC 1"):
        with pytest.raises(ValueError):
            one_select(bad, ValueError, "one SELECT only")


def test_a_where_filter_cannot_smuggle_a_statement(reader, world):
    before = hashlib.sha256(world.read_bytes()).hexdigest()
    for clause in ("1=1); DROP TABLE models; SELECT (1", "1=1; DELETE FROM models"):
        with pytest.raises(FilterError):
            reader.model_page(ModelQuery(where=clause), 0, 10)
    reader.close()
    assert hashlib.sha256(world.read_bytes()).hexdigest() == before


def test_sort_columns_come_from_a_whitelist(reader):
    for bad in ("key; DROP TABLE models", "random()", "variants"):
        with pytest.raises(FilterError, match="sort by one of"):
            reader.model_page(ModelQuery(sort=bad), 0, 10)


def test_text_filter_is_a_parameter(reader):
    """A quote in the typed text is text to find, not SQL."""
    assert reader.model_page(ModelQuery(text="x' OR '1'='1"), 0, 10).matching == 0
    assert keys(reader.model_page(ModelQuery(text="S2@STEP6"), 0, 10)) == [
        "toy-m/s2@step64", "toy-s/s2@step64"]


# models ------------------------------------------------------------------------------------------
def test_natural_sort(reader):
    """The key sorts in the atlas's order (steps numerically), sizes by the number they name,
    checkpoints by step."""
    ordered = keys(reader.model_page(ModelQuery(), 0, 100))
    assert ordered == reader.models()["key"].to_list()
    assert ordered.index("toy-m/s1@step4") < ordered.index("toy-m/s1@step16")  # by step
    by_checkpoint = reader.model_page(ModelQuery(sort="checkpoint", descending=True), 0, 100)
    assert by_checkpoint.rows["checkpoint"][0] == "step64"
    by_size = reader.model_page(ModelQuery(sort="size"), 0, 100).rows["size"].to_list()
    assert by_size[0] == "1b"  # 1b names a number; m and s do not (nulls last)


def test_pages_counts_and_groups(reader):
    first, second = (reader.model_page(ModelQuery(), offset, 10) for offset in (0, 10))
    assert (first.matching, first.variants, first.total, first.end) == (N_MODELS,) * 3 + (10,)
    assert keys(first) + keys(second) == keys(reader.model_page(ModelQuery(), 0, 20))
    page = reader.model_page(ModelQuery(text="s1", grouped=True, sort="family"), 0, 10)
    assert page.rows.rows() == [("toy", 16, 2, 1, 8, 0, 0), ("toyft", 1, 1, 1, 1, 0, 0)]
    assert (page.matching, page.variants, page.total) == (2, 17, N_MODELS)
    rows = reader.model_page(ModelQuery(where="textsets LIKE '%tiny%'"), 0, 10).rows
    assert sorted(rows["key"].to_list()) == sorted(TINY)
    assert rows.filter(pl.col("key") == PARENT)["textsets"].item() == "eval, tiny"


def test_page_and_detail_read_no_loglik_they_do_not_use(reader, monkeypatch):
    """Text sets and provenance come from vector_rows: the vectors view (and loglik_vectors)
    joins every vector's ℓ back from its parts: at 10⁶ variants half of a page's time, and
    ~0.5 s of every model's detail (its nearest models' precision floors)."""
    issued = []
    sql = reader.sql
    monkeypatch.setattr(reader, "sql", lambda query, params=None: (
        issued.append((query, params)), sql(query, params))[1])
    for spec in (ModelQuery(), ModelQuery(sort="textsets"), ModelQuery(where="textsets > ''")):
        reader.model_page(spec, 0, 10)
    reader.model_detail(PARENT)
    queries.selection(reader, None, "eval"), queries.protocol_context(reader, "eval")
    no_loglik = [(query, params) for query, params in issued
                 if "nearest(" not in query and "shared_vectors(" not in query]
    plans = {query: sql("EXPLAIN " + query, params)["explain_value"].str.join("").item()
             for query, params in no_loglik}
    assert len(plans) > 6 and [q for q, plan in plans.items() if "vector_parts" in plan] == []


def test_for_family_keeps_the_filter():
    assert ModelQuery(text=" S2@ ").for_family("toy").where == (
        "family = 'toy' and contains(lower(key), 's2@')")
    assert ModelQuery(where="step > 3").for_family("o'k").where == (
        "family = 'o''k' and (step > 3)")


def test_matching_keys(reader):
    assert reader.matching_keys("ftm/s1") == [FINE_TUNE]
    assert reader.matching_keys("   ") == []
    assert reader.matching_keys("%_") == []  # LIKE's wildcards are literal characters


# one model ---------------------------------------------------------------------------------------
def test_related_variants(reader):
    assert reader.related_variants("toy-m/s1@step4").rows() == [
        ("previous checkpoint", "toy-m/s1@step2"), ("next checkpoint", "toy-m/s1@step8"),
        ("other seed", "toy-m/s2@step4"), ("other size", "toy-s/s1@step4")]
    assert ("fine-tune", FINE_TUNE) in reader.related_variants(PARENT).rows()
    assert reader.related_variants(FINE_TUNE).rows()[0] == ("parent", PARENT)
    assert reader.related_variants("other-1b").is_empty()


def test_related_variants_reads_the_variants_once_and_sorts_no_whole_group(reader):
    """At 10⁶ variants of one family the detail screen waited on related_variants: five scans of
    model_variants and a window sorting each whole group. Its plan now scans models only as
    often as model_variants and resolve_key themselves do, and ranks only top-N rows."""
    def plan(sql: str) -> str:
        return "\n".join(reader.sql(f"EXPLAIN {sql}")["explain_value"].to_list())

    related = plan(f"SELECT * FROM related_variants('{PARENT}')")
    parts = (plan("SELECT * FROM model_variants")
             + plan(f"SELECT resolve_key('{PARENT}')"))
    assert related.count("main.models") <= parts.count("main.models")
    assert related.count("WINDOW") <= related.count("TOP_N")


def test_size_value_macro_agrees_with_python():
    """One rule, two runtimes: the SQL macro, which takes its pattern and units from atlas.keys,
    orders sizes as atlas.keys does."""
    labels = ["70m", "1.4b", " 7B ", "160M", "2.5k", "1t", "s", "m", "1.b", "b", "12", "7bb"]
    with _memory_atlas() as con:
        got = [con.execute("SELECT size_value(?)", [label]).fetchone()[0] for label in labels]
    expected = [size_value(label) for label in labels]
    assert got == [pytest.approx(v) if v is not None else None for v in expected]


def _memory_atlas():
    """An in-memory DuckDB with the atlas's SQL applied (as a new atlas file gets it)."""
    import duckdb

    from atlas.store import read_sql, sql_files

    con = duckdb.connect()
    for name in sql_files():
        con.execute(read_sql(name))
    return con


def test_model_detail(reader):
    detail = reader.model_detail("toy-m/s1@step64")
    assert detail.key == PARENT and detail.textset == "eval"
    assert detail.info["revision"] is None and detail.info["created_at"] is not None
    assert [s["name"] for s in detail.textsets] == ["eval", "tiny"]
    assert detail.nearest["key"].to_list() == reader.nearest(PARENT, 10, "eval")["key"].to_list()
    related = {(r.relation, r.key): r for r in detail.related}
    assert related[("other seed", "toy-m/s2@step64")].kl == pytest.approx(
        reader.kl(PARENT, "toy-m/s2@step64", "eval").value)
    on_tiny = {r.key: r for r in reader.model_detail(PARENT, textset="tiny").related}
    assert on_tiny["toy-m/s2@step64"].kl is None and on_tiny["toy-m/s2@step64"].error


# runs --------------------------------------------------------------------------------------------
def test_runs(reader):
    runs = reader.runs()
    assert [r.label for r in runs] == ["toy-m/s1", "toy-m/s2", "toy-s/s1", "toy-s/s2"]
    assert {r.n_checkpoints for r in runs} == {8}
    assert runs[0].ident == Run.ident_of("toy", "m", 1) and runs[0].default_window == 3


def test_trajectory_and_diffusion_without_sketches(reader):
    """Runs without weight sketches (imported vectors) go through Atlas.trajectory and
    Atlas.diffusion like any other: KLs from the vectors, a fit of c_q alone."""
    run = next(r for r in reader.runs() if r.label == "toy-s/s2")
    result = reader.trajectory(run)
    assert (result.textset, result.textsets) == ("eval", ["eval"])
    assert result.value["kl"][0] == pytest.approx(
        reader.kl("toy-s/s2@step0", "toy-s/s2@step1").value)
    assert result.value["weight_sq"].null_count() == result.value.height
    fit = reader.diffusion(run, window=3, n_boot=20).value
    assert fit.c_w.value is None and fit.c_q.value is not None
    sketched = next(r for r in reader.runs() if r.label == "toy-m/s1")
    expected = reader.diffusion(reader.run("toy", "m", 1), window=3, n_boot=20).value
    assert reader.diffusion(sketched, 3, n_boot=20).value.c_w.value == expected.c_w.value


# scale, maps, SQL --------------------------------------------------------------------------------
def test_scale_maps_and_text_sets(reader):
    assert reader.vector_textsets() == ["eval", "tiny"]
    models = reader.sql("SELECT * FROM model_variants WHERE key IN "
                        "(SELECT key FROM loglik_vectors WHERE textset = 'eval')")
    pairs = scale.pairs(models)  # the scale from its parts: the pure maths on what SQL gives
    measured = scale.with_kl(pairs, *reader.viewed_matrix(scale.pair_keys(pairs), "eval"))
    assert reader.scale(textset="eval").equals(scale.summarise(measured))
    assert reader.maps()["name"].to_list() == ["pca-eval"]
    assert reader.map_points("pca-eval").equals(reader.sql("SELECT * FROM map_points('pca-eval')"))


def test_export_refuses_more_than_one_select(reader, tmp_path):
    assert reader.export("SELECT key FROM model_variants", tmp_path / "k.csv") == N_MODELS
    with pytest.raises(AtlasError, match="one SELECT"):
        reader.export("SELECT 1; SELECT 2", tmp_path / "two.csv")
    with pytest.raises(AtlasError, match=r"\.csv or \.parquet"):
        reader.export("SELECT 1", tmp_path / "one.txt")
    assert not (tmp_path / "two.csv").exists()
