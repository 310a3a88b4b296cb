"""Ingest end to end through from_pretrained: idempotence, conflicts, crashes, bad input."""

import json
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

import atlas
from atlas import store as store_module
from atlas.errors import AtlasError, LoadError, StoreError
from atlas.keys import ModelKey
from atlas.loading import load_model
from atlas.pipeline import score as score_module
from atlas.pipeline.units import scoring_config_id
from atlas.scoring import Scorer
from atlas.specs import ModelSpec
from atlas.textsets import TextSet


def vector_count(db) -> int:
    return db.sql("SELECT count(*) AS n FROM vectors")["n"][0]


def test_ingest_stores_vector_with_provenance(db, model_dirs, texts):
    result = db.ingest(str(model_dirs["gpt_neox"]), family="tiny", size="s", seed=0,
                       checkpoint="step10", textset="eval", progress=False)
    assert (result.key, result.status) == ("tiny-s/s0@step10", "stored")
    assert result.tokens > 0 and result.n_params > 0
    row = db.sql("SELECT * FROM model_variants").row(0, named=True)
    assert row["step"] == 10 and row["n_params"] == result.n_params
    vector = db.sql("SELECT loglik, provenance FROM vectors").row(0, named=True)
    assert len(vector["loglik"]) == len(texts)
    provenance = json.loads(vector["provenance"])
    for field in ("tokenizer_fingerprint", "special_tokens", "dtype", "max_length", "versions"):
        assert field in provenance
    assert provenance["dtype"] == "float32"
    runs = db.sql("SELECT status, tokens FROM ingest_runs").rows()
    assert runs == [("done", result.tokens)]


def test_reingest_is_a_noop_without_loading_the_model(db, model_dirs, monkeypatch):
    kwargs = dict(family="tiny", size="s", textset="eval", progress=False)
    db.ingest(str(model_dirs["gpt2"]), **kwargs)
    before = db.sql("SELECT loglik, scored_at FROM vectors").rows()

    def no_loading(spec):
        raise AssertionError("the model must not be loaded for a no-op")

    monkeypatch.setattr(score_module, "load_model", no_loading)
    assert db.ingest(str(model_dirs["gpt2"]), **kwargs).status == "skipped"
    assert db.sql("SELECT loglik, scored_at FROM vectors").rows() == before


def test_force_rescores_in_place(db, model_dirs):
    kwargs = dict(family="tiny", size="s", textset="eval", progress=False)
    db.ingest(str(model_dirs["gpt2"]), **kwargs)
    first = db.sql("SELECT scored_at FROM vectors")["scored_at"][0]
    assert db.ingest(str(model_dirs["gpt2"]), force=True, **kwargs).status == "stored"
    assert vector_count(db) == 1
    assert db.sql("SELECT scored_at FROM vectors")["scored_at"][0] > first


def test_same_key_other_source_is_refused_and_keeps_the_old_vector(db, model_dirs):
    kwargs = dict(family="tiny", size="s", textset="eval", progress=False)
    db.ingest(str(model_dirs["gpt2"]), **kwargs)
    before = db.sql("SELECT loglik FROM vectors").rows()
    with pytest.raises(AtlasError, match="already taken by a model loaded from"):
        db.ingest(str(model_dirs["llama"]), **kwargs)
    assert db.sql("SELECT loglik FROM vectors").rows() == before


def test_other_dtype_for_the_same_key_needs_force(db, model_dirs):
    kwargs = dict(family="tiny", size="s", textset="eval", progress=False)
    db.ingest(str(model_dirs["gpt2"]), **kwargs)
    with pytest.raises(AtlasError, match="another scoring config"):
        db.ingest(str(model_dirs["gpt2"]), dtype="bfloat16", **kwargs)


def test_identical_weights_give_exactly_zero_kl(db, model_dirs, tmp_path, seed_dirs):
    copy = shutil.copytree(model_dirs["gpt_neox"], tmp_path / "copy")
    db.ingest(str(model_dirs["gpt_neox"]), family="a", size="s", textset="eval", progress=False)
    db.ingest(str(copy), family="b", size="s", textset="eval", progress=False)
    db.ingest(str(seed_dirs[1]), family="c", size="s", textset="eval", progress=False)
    assert db.kl("a-s", "b-s").value == 0.0
    assert db.kl("a-s", "c-s").value > 0.0
    assert db.nearest("a-s", k=1)["key"].to_list() == ["b-s"]


def test_missing_textset_is_explained(db, model_dirs):
    with pytest.raises(StoreError, match=r"no text set named .nope.*have: eval"):
        db.ingest(str(model_dirs["gpt2"]), family="t", size="s", textset="nope")


def _save_config_only(directory, config):
    directory.mkdir()
    config.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("case", ["missing", "encoder", "bidirectional", "no_tokenizer"])
def test_bad_models_fail_clearly_and_store_nothing(db, model_dirs, tmp_path, case):
    from transformers import BertConfig, DistilBertConfig

    if case == "missing":
        source, message = "no-such-org/no-such-model", "no local copy .* hub cannot be reached"
    elif case in ("encoder", "bidirectional"):
        source = shutil.copytree(model_dirs["gpt2"], tmp_path / case)
        config = DistilBertConfig if case == "encoder" else BertConfig
        config(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, dim=32, hidden_dim=64, n_layers=1, n_heads=2
               ).save_pretrained(source)
        message = "not a causal language model"
    else:
        source = shutil.copytree(model_dirs["gpt2"], tmp_path / "bare")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (source / name).unlink(missing_ok=True)
        message = "no usable tokenizer"
    with pytest.raises(LoadError, match=message):
        db.ingest(str(source), family="bad", size="s", textset="eval", progress=False)
    assert vector_count(db) == 0
    assert db.sql("SELECT status FROM ingest_runs")["status"].to_list() == ["failed"]


INGEST_SCRIPT = """
import sys, atlas, atlas.scoring
atlas.scoring.PARTIAL_FLUSH_SECONDS = 0  # save progress after every batch
db = atlas.open(sys.argv[1])
db.ingest(sys.argv[2], family="slow", size="s", textset="big", batch_size=1, progress=False)
"""


def test_killed_ingest_leaves_nothing_and_rerun_completes(tmp_path, model_dirs, corpus):
    path = tmp_path / "kill.duckdb"
    db = atlas.open(path)
    db.import_textset(TextSet(corpus * 3), "big")
    db.close()
    process = subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, str(path),
                                str(model_dirs["llama"])])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until it is scoring (store released)
            try:
                con = duckdb.connect(str(path), read_only=True)
                running = con.execute("SELECT count(*) FROM ingest_runs WHERE status = "
                                      "'running'").fetchall()[0][0]
                con.close()
            except duckdb.IOException:
                running = 0
            if running:
                break
            time.sleep(0.2)
        assert process.poll() is None, "ingest finished before it could be killed"
        partials = path.parent / f"{path.name}.pending"
        while time.monotonic() < deadline and not list(partials.glob("*.partial.npy")):
            time.sleep(0.05)  # wait for some progress to be saved, then kill at once
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    db = atlas.open(path)
    assert vector_count(db) == 0 and db.models().height == 0
    result = db.ingest(str(model_dirs["llama"]), family="slow", size="s", textset="big",
                       progress=False)
    assert result.status == "stored" and vector_count(db) == 1
    assert 0 < result.resumed <= len(corpus) * 3  # picked up where the killed run stopped
    assert not list(partials.glob("*"))  # the side file is gone once the vector is stored
    statuses = sorted(db.sql("SELECT status FROM ingest_runs")["status"].to_list())
    assert statuses == ["done", "interrupted"]
    uninterrupted = Scorer(load_model(ModelSpec(str(model_dirs["llama"]), device="cpu"))).score(
        corpus * 3, progress=False).loglik
    stored = db.sql("SELECT loglik FROM vectors")["loglik"][0].to_numpy()
    assert np.allclose(stored, uninterrupted, rtol=1e-5, atol=1e-3)


LOCKER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_locked_database_gives_a_clear_error_and_loses_nothing(db, monkeypatch, textset):
    db.close()
    monkeypatch.setattr(store_module, "LOCK_RETRY_SECONDS", 0.5)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=r"locked by another process \(PID \d+"):
            atlas.open(db.path).textsets()
    finally:
        locker.kill()
        locker.wait()
    assert atlas.open(db.path).textsets()["n_texts"].to_list() == [len(textset)]


def test_nan_model_stores_nothing(db, tokenizer, tmp_path):
    import torch

    from atlas import tiny
    from atlas.errors import ScoringError

    model = tiny.build_model(tiny.tiny_config("gpt_neox", tokenizer), seed=9)
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.fill_(float("nan"))
    path = tiny.save(model, tokenizer, tmp_path / "nan")
    with pytest.raises(ScoringError, match="non-finite"):
        db.ingest(str(path), family="nan", size="s", textset="eval", progress=False)
    assert vector_count(db) == 0 and db.models().height == 0
    assert db.sql("SELECT status FROM ingest_runs")["status"].to_list() == ["failed"]


def test_vector_scored_while_the_atlas_is_locked_is_kept_and_importable(db, model_dirs,
                                                                      monkeypatch):
    """Another process takes the file while we score: the write fails, the work is not lost."""
    from atlas import scoring

    monkeypatch.setattr(store_module, "LOCK_RETRY_SECONDS", 0.5)
    real_score = scoring.Scorer.score
    lockers = []

    def score_then_lock(self, texts, progress=True, partial=None):
        result = real_score(self, texts, progress, partial)
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db.path)],
                                  stdout=subprocess.PIPE, text=True)
        lockers.append(locker)
        assert locker.stdout.readline().strip() == "locked"
        return result

    monkeypatch.setattr(scoring.Scorer, "score", score_then_lock)
    try:
        with pytest.raises(StoreError, match=r"locked by another process.*kept in (\S+)"):
            db.ingest(str(model_dirs["gpt2"]), family="held", size="s", textset="eval",
                      progress=False)
    finally:
        for locker in lockers:
            locker.kill()
            locker.wait()
    pending = next((db.path.parent / f"{db.path.name}.pending").glob("*.parquet"))
    assert db.import_vectors(pending, "eval") == [("held-s", True)]
    provenance = json.loads(db.sql("SELECT provenance FROM vectors")["provenance"][0])
    assert provenance["special_tokens"] == "none" and provenance["imported_from"]


def _edit_weights(model_dir, target, edit):
    """A copy of a saved model whose model.safetensors ``edit`` changed (a dict of tensors)."""
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(model_dir, target)
    tensors = load_file(copy / "model.safetensors")
    edit(tensors)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def test_checkpoint_without_a_weight_is_refused_unless_allowed(db, model_dirs, tmp_path):
    """Without embed_out, transformers initialises the head randomly: refused, nothing stored;
    allowed by name, it is scored and the allowance is in the provenance and the config id."""
    source = _edit_weights(model_dirs["gpt_neox"], tmp_path / "headless",
                           lambda tensors: tensors.pop("embed_out.weight"))
    kwargs = dict(family="headless", size="s", textset="eval", progress=False)
    with pytest.raises(LoadError, match=r"headless: the checkpoint lacks 1 weight\(s\) that "
                                        r"GPTNeoXForCausalLM needs \(lm_head.weight\).*"
                                        r"--allow-missing 'lm_head.weight'"):
        db.ingest(str(source), **kwargs)
    assert vector_count(db) == 0
    with pytest.raises(LoadError, match="lacks 1 weight"):  # a pattern that does not match
        db.ingest(str(source), allow_missing=["gpt_neox.*"], **kwargs)
    assert db.ingest(str(source), allow_missing=["lm_head.*"], **kwargs).status == "stored"
    provenance = json.loads(db.sql("SELECT provenance FROM vectors")["provenance"][0])
    assert provenance["allow_missing"] == {"patterns": ["lm_head.*"],
                                           "missing": ["lm_head.weight"]}
    spec = ModelSpec(str(model_dirs["gpt_neox"]))
    key = ModelKey("a", "s")
    assert scoring_config_id(spec, key, None) != scoring_config_id(
        ModelSpec(spec.source, allow_missing=("lm_head.*",)), key, None)


def test_checkpoint_with_unused_or_misshapen_weights_is_refused(db, model_dirs, tmp_path):
    import torch

    extra = _edit_weights(model_dirs["gpt2"], tmp_path / "extra",
                          lambda tensors: tensors.update({"adapter.weight": torch.zeros(4)}))
    with pytest.raises(LoadError, match=r"holds 1 weight\(s\) that GPT2LMHeadModel does not use "
                                        r"\(adapter.weight\).*--allow-missing"):
        db.ingest(str(extra), family="extra", size="s", textset="eval", progress=False)

    def narrow(tensors):
        tensors["embed_out.weight"] = tensors["embed_out.weight"][:, :16].contiguous()

    misshapen = _edit_weights(model_dirs["gpt_neox"], tmp_path / "narrow", narrow)
    with pytest.raises(LoadError, match=r"weight lm_head.weight has shape \[\d+, 16\] in the "
                                        r"checkpoint but \[\d+, 32\].*fix its sizes"):
        db.ingest(str(misshapen), family="narrow", size="s", textset="eval", progress=False)
    assert vector_count(db) == 0


def test_tied_weights_are_not_missing(model_dirs, tokenizer, tmp_path):
    """GPT-2's head is tied to wte, a tied Llama saves no lm_head: neither is a missing weight."""
    from atlas import tiny

    config = tiny.tiny_config("llama", tokenizer)
    config.tie_word_embeddings = True
    tied = tiny.save(tiny.build_model(config), tokenizer, tmp_path / "tied")
    for source in [*model_dirs.values(), tied]:
        assert load_model(ModelSpec(str(source), device="cpu")).allowed_weights == {}


def test_truncated_texts_are_reported(db, model_dirs, texts):
    from click.testing import CliRunner

    from atlas.cli import main

    tokenizer = load_model(ModelSpec(str(model_dirs["gpt2"]), device="cpu")).tokenizer
    longer = sum(len(tokenizer(t)["input_ids"]) > 64 for t in texts)
    result = db.ingest(str(model_dirs["gpt2"]), family="short", size="s", textset="eval",
                       max_length=64, progress=False)
    assert 0 < longer < len(texts) and result.n_truncated == longer
    assert result.warnings == [
        f"{longer} of {len(texts)} texts were longer than 64 tokens and were truncated (their "
        "log-likelihood covers the first 64 tokens); raise --max-length (up to the model's "
        "2,048) to score them whole"]
    provenance = json.loads(db.sql("SELECT provenance FROM vectors")["provenance"][0])
    assert provenance["n_truncated"] == longer
    db.close()
    output = CliRunner().invoke(main, ["--db", str(db.path), "ingest", str(model_dirs["llama"]),
                                       "--family", "cut", "--size", "s", "--textset", "eval",
                                       "--max-length", "64"]).output
    assert f"warning: {longer} of {len(texts)} texts were longer than 64 tokens" in output
    output = CliRunner().invoke(main, ["--db", str(db.path), "ingest", str(model_dirs["llama"]),
                                       "--family", "whole", "--size", "s", "--textset",
                                       "eval"]).output
    assert "stored on 'eval'" in output and "warning" not in output


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"batch_size": -2}, {"max_length": 0},
                                     {"max_length": 1}, {"max_length": -5},
                                     {"max_length": 0, "layers": "all"}])
def test_api_lengths_that_cannot_score_are_refused_before_anything(db, model_dirs, options):
    """0 used to mean the default and -5 'all but the last 5 tokens', silently."""
    name = next(iter(options)).replace("_", "-")
    with pytest.raises(AtlasError, match=f"--{name} {options[name.replace('-', '_')]}: give "
                                         "at least"):
        db.ingest(str(model_dirs["gpt2"]), family="t", size="s", textset="eval",
                  progress=False, **options)
    assert vector_count(db) == 0
    assert db.sql("SELECT count(*) AS n FROM ingest_runs")["n"][0] == 0
