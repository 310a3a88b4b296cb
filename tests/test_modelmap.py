"""The published release (atlas import modelmap) on a synthetic release in its exact formats,
the scorer's JSONL files, metrics and benchmark prediction (P2)."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from release import TASKS, write_release

import atlas
from atlas.cli import main
from atlas.kl import LN2
from atlas.modelmap import hub_key


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release") / "1000models")


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    db = atlas.open(tmp_path_factory.mktemp("atlas") / "a.duckdb")
    report = db.import_release(release.folder)
    yield db, report
    db.close()


def keys_by_hub(db) -> dict[str, str]:
    return dict(db.sql("SELECT source, key FROM model_variants").iter_rows())


def test_every_model_with_hub_id_family_size_and_single_parent(release, imported):
    db, report = imported
    assert (report.written, report.skipped, report.textset) == (len(release.names), 0,
                                                                 "pile-10k")
    models = {row["source"]: row for row in db.models().iter_rows(named=True)}
    assert sorted(models) == sorted(release.names)
    first = models["org1/model-1"]
    assert (first["key"], first["family"], first["size"]) == (
        "mistral-7.24b@org1--model-1", "mistral", "7.24b")
    keys = keys_by_hub(db)
    parents = {hub: row["parent"] for hub, row in models.items() if row["parent"]}
    assert parents == {child: keys[parent] for child, parent in release.parents.items()}
    lineage = db.sql("SELECT relation, count(*) AS n FROM model_lineage GROUP BY 1")
    assert set(lineage["relation"]) == {"base", "finetune", "merge", "adapter"}
    hub = db.sql("SELECT * FROM hub_models WHERE hub_id = 'org1/model-1'").row(0, named=True)
    assert hub["figure_type"] == "mistral" and len(hub["figure_color"]) == 4
    assert hub["created_at"].startswith("2024-01-02") and "license:apache-2.0" in hub["tags"]


def test_keys_are_readable_distinct_and_stable():
    assert str(hub_key("meta-llama/Llama-2-7b-hf", "llama", 6.738)) == (
        "llama-6.74b@meta-llama--Llama-2-7b-hf")
    odd = hub_key("weird/model+plus", None, None)
    assert str(odd).startswith("hub-na@weird--model_plus.") and odd == hub_key(
        "weird/model+plus")
    assert hub_key("a/b_c") != hub_key("a/b+c") and odd.step is None


def test_kl_equals_numpy_on_raw_vectors(release, imported):
    db, _ = imported
    keys = keys_by_hub(db)
    texts = [json.loads(line)["text"] for line in
             (release.folder / "data/text/texts-10k-pile.jsonl").read_text().splitlines()]
    mean_bytes = np.mean([len(t.encode()) for t in texts])
    for i, j in ((0, 1), (10, 0), (5, 77)):
        a, b = release.names[i], release.names[j]
        expected = np.var(release.raw[i] - release.raw[j]) / (2 * mean_bytes * LN2)
        assert db.kl(keys[a], keys[b]).value == pytest.approx(expected, rel=1e-6)


def test_clipped_file_is_a_view(release, imported):
    db, _ = imported
    view = db.sql("SELECT * FROM views").row(0, named=True)
    params = json.loads(view["params"])
    assert (view["kind"], view["textset"], params["q"]) == ("clip", "pile-10k", 0.02)
    assert params["threshold"] == pytest.approx(release.threshold)
    assert db.models().height == len(release.names)  # not 2 × the models


def test_the_release_clip_view_measures_like_the_clipped_file(release, imported):
    db, _ = imported
    keys = keys_by_hub(db)
    name = db.views()["name"][0]
    a, b = release.names[3], release.names[7]
    clipped = np.maximum(release.raw[3], release.threshold) - np.maximum(release.raw[7],
                                                                         release.threshold)
    raw = db.kl(keys[a], keys[b])
    expected = raw.value * np.var(clipped) / np.var(release.raw[3] - release.raw[7])
    assert db.kl(keys[a], keys[b], view=name).value == pytest.approx(expected, rel=1e-6)


def test_model_metrics_hold_every_score_and_join(release, imported):
    db, _ = imported
    keys = keys_by_hub(db)
    stored = {(k, m): v for k, m, v in db.sql(
        "SELECT key, metric, value FROM model_metrics").iter_rows()}
    for hub, scores in release.scores.items():
        for task, value in scores.items():
            assert stored[(keys[hub], task)] == pytest.approx(value)
    joined = db.sql("SELECT n.key, n.kl, m.value AS mmlu FROM nearest(?, 5) n LEFT JOIN "
                    "model_metrics m ON m.key = n.key AND m.metric = 'MMLU' ORDER BY n.kl",
                    [keys[release.names[0]]])
    assert joined.height == 5 and joined["mmlu"].null_count() < 5


def test_reimport_is_a_no_op(release, imported):
    db, _ = imported
    before = db.sql("SELECT count(*) FROM vectors").item()
    again = db.import_release(release.folder)
    assert (again.written, again.skipped) == (0, len(release.names))
    assert db.sql("SELECT count(*) FROM vectors").item() == before


def test_predict_agrees_with_scikit_learn(release, imported):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    db, _ = imported
    result = db.predict("MMLU")
    assert result.r2 >= 0.9 and result.n_models == len(release.scores)
    keys, loglik, _ = db.store.matrix(result.keys, "pile-10k")
    clipped = np.maximum(loglik, np.quantile(loglik, 0.02))
    q = clipped - clipped.mean(axis=1, keepdims=True)
    q = q - q.mean(axis=0, keepdims=True)
    known = result.out_of_fold
    y = result.observed[known]
    direct = cross_val_predict(RidgeCV(alphas=np.logspace(1, 9, 9)), q[known], y,
                               cv=KFold(5, shuffle=True, random_state=0))
    assert np.allclose(result.predicted[known], np.clip(direct, 0, 100), atol=1e-6)
    stored = db.sql("SELECT count(*) FILTER (WHERE out_of_fold) AS oof, count(*) FILTER (WHERE "
                    "NOT out_of_fold) AS missing FROM metric_predictions WHERE metric = 'MMLU'")
    assert stored.row(0) == (len(release.scores), len(release.names) - len(release.scores))
    detail = db.model_detail(keys[int(np.flatnonzero(~known)[0])])
    assert detail.predictions["metric"].to_list() == ["MMLU"]
    assert "hub_id" in detail.nearest.columns and detail.nearest["hub_id"].null_count() == 0


def test_cli_predict_json_and_import_metrics(release, imported, tmp_path):
    db, _ = imported
    db.close()
    keys = keys_by_hub(db)
    path = tmp_path / "extra.csv"
    path.write_text("hub_id,latency\n" + "".join(f"{hub},{i}\n" for i, hub in
                                                 enumerate(release.names)))
    runner = CliRunner()
    out = runner.invoke(main, ["--db", str(db.path), "import", "metrics", str(path)])
    assert out.exit_code == 0, out.output
    assert db.sql("SELECT value FROM model_metrics WHERE metric = 'latency' AND key = ?",
                  [keys[release.names[3]]]).item() == 3
    db.close()
    out = runner.invoke(main, ["--db", str(db.path), "predict", TASKS[0], "--format", "json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["r2"] >= 0.9 and summary["n_models"] == len(release.scores)
    assert set(summary) >= {"r2", "pearson", "n_models", "alpha"}


def test_partial_release_and_scorer_jsonl(release, tmp_path):
    """Texts and metadata only; then the scorer's per-model files keep the metadata's keys."""
    db = atlas.open(tmp_path / "b.duckdb")
    data = release.folder / "data"
    part = tmp_path / "part"
    (part / "text").mkdir(parents=True)
    (part / "text" / "texts-10k-pile.jsonl").write_bytes(
        (data / "text/texts-10k-pile.jsonl").read_bytes())
    (part / "m.pkl").write_bytes(next((data / "model-metadata").glob("*.pkl")).read_bytes())
    (part / "m.pkl").rename(part / "model-data-120.pkl")
    report = db.import_release(part)
    assert report.written == len(release.names)
    jsonl = tmp_path / "scored"
    jsonl.mkdir()
    for i in (0, 1):
        lines = [{"index": s, "num-tokens": 7, "log-likelihood": float(release.raw[i, s]) + 0.5,
                  "token-log-probs": [-1.0] * 7} for s in range(release.raw.shape[1])][::-1]
        name = release.names[i].replace("/", "--") + "_float16.jsonl"
        (jsonl / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = db.import_vectors(jsonl, "pile-10k", force=True)
    assert [k for k, written in results if written] == [
        keys_by_hub(db)[release.names[0]], keys_by_hub(db)[release.names[1]]]
    kl = db.kl(*[k for k, _ in results]).value
    assert math.isfinite(kl) and db.models().height == len(release.names)
    db.close()


def test_tui_detail_shows_hub_ids_scores_and_predictions(release, imported):
    from test_tui import settle
    from textual.widgets import DataTable, Static

    from tui.app import AtlasApp

    db, _ = imported
    db.predict("MMLU")
    keys = keys_by_hub(db)
    unscored = next(name for name in release.names if name not in release.scores)
    db.close()

    async def scenario() -> tuple[str, list]:
        app = AtlasApp(db.path)
        async with app.run_test(size=(140, 40)) as pilot:
            await settle(pilot)
            app.open_model(keys[unscored])
            await settle(pilot)
            table = app.screen.query_one("#nearest", DataTable)
            text = str(app.screen.query_one("#provenance", Static).render())
            return text, [str(v) for v in table.get_row_at(0)]

    text, first = asyncio.run(scenario())
    predicted = next(line for line in text.splitlines() if line.startswith("predicted"))
    assert "MMLU" in predicted and unscored in text
    assert first[-1] in release.names  # the hub id column


def test_domain_losses_are_metrics_prediction_works_on(release, imported):
    db, _ = imported
    assert db.add_domain_losses() == 4 * len(release.names)
    keys = keys_by_hub(db)
    rows = [json.loads(line) for line in
            (release.folder / "data/text/texts-10k-pile.jsonl").read_text().splitlines()]
    mask = np.array([r["pile_set_name"] == "Github" for r in rows])
    size = sum(len(r["text"].encode()) for r, m in zip(rows, mask, strict=True) if m)
    expected = -release.raw[0, mask].sum() / (math.log(2) * size)
    stored = db.sql("SELECT value FROM model_metrics WHERE metric = 'loss/Github' AND key = ?",
                    [keys[release.names[0]]]).item()
    assert stored == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(db.predict("loss/Github", save=False).r2)
