"""The scorer against an independent batch-1 float32 computation, on real saved models."""

import numpy as np
import pytest
import torch

from atlas import scoring, tiny
from atlas.errors import ScoringError
from atlas.loading import load_model
from atlas.scoring import Scorer, special_token_policy
from atlas.specs import ModelSpec


def reference_loglik(model, tokenizer, text: str, max_length: int | None = None) -> float:
    """ℓ(x) the plain way: one text, full logits, float32 log-softmax, first token not predicted."""
    ids = torch.tensor([tokenizer(text)["input_ids"][:max_length]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits.float().log_softmax(-1)
    return float(logprobs[0, :-1].gather(-1, ids[0, 1:, None]).sum())


@pytest.fixture(scope="module", params=["gpt_neox", "gpt2", "llama"])
def loaded(request, model_dirs):
    return load_model(ModelSpec(str(model_dirs[request.param]), device="cpu"))


def test_matches_independent_batch1_computation(loaded, texts):
    scores = Scorer(loaded, batch_size=4).score(texts, progress=False)
    expected = [reference_loglik(loaded.model, loaded.tokenizer, t) for t in texts]
    assert np.allclose(scores.loglik, expected, rtol=1e-5, atol=1e-3)
    assert scores.loglik.dtype == np.float64
    assert np.all(scores.loglik < 0)
    assert scores.provenance["head"] == "chunked"
    assert scores.n_truncated == 0


def test_independent_of_batch_size_and_padding(loaded, texts):
    by_size = [Scorer(loaded, batch_size=b).score(texts, progress=False).loglik for b in (1, 3, 8)]
    for other in by_size[1:]:
        assert np.allclose(other, by_size[0], rtol=1e-5, atol=1e-4)


def test_sequence_chunking_changes_nothing(loaded, texts, monkeypatch):
    whole = Scorer(loaded, batch_size=4).score(texts, progress=False).loglik
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setitem(scoring.LOGIT_CHUNK_BYTES, "cpu", vocab * 4 * 7)  # 7 positions
    chunked = Scorer(loaded, batch_size=4)
    assert chunked._chunk_positions() == 7
    assert np.allclose(chunked.score(texts, progress=False).loglik, whole, rtol=1e-6, atol=1e-5)


def test_token_counts_and_truncation(loaded, texts):
    scores = Scorer(loaded, batch_size=4, max_length=16).score(texts, progress=False)
    full = [len(loaded.tokenizer(t)["input_ids"]) for t in texts]
    assert scores.n_tokens.tolist() == [min(n, 16) for n in full]
    assert scores.n_truncated == sum(n > 16 for n in full)
    assert scores.provenance["max_length"] == 16
    expected = [reference_loglik(loaded.model, loaded.tokenizer, t, 16) for t in texts]
    assert np.allclose(scores.loglik, expected, rtol=1e-5, atol=1e-3)


def test_bos_tokenizer_is_recorded_and_bos_not_predicted(tmp_path, bos_tokenizer, texts):
    model = tiny.build_model(tiny.tiny_config("llama", bos_tokenizer), seed=5)
    loaded = load_model(ModelSpec(str(tiny.save(model, bos_tokenizer, tmp_path / "m")),
                                  device="cpu"))
    assert special_token_policy(loaded.tokenizer) == "bos"
    scores = Scorer(loaded, batch_size=3).score(texts, progress=False)
    assert scores.provenance["special_tokens"] == "bos"
    expected = [reference_loglik(loaded.model, loaded.tokenizer, t) for t in texts]
    assert np.allclose(scores.loglik, expected, rtol=1e-5, atol=1e-3)


def test_unknown_output_transform_falls_back_to_full_logits(tmp_path, tokenizer, texts):
    """A head the scorer would get wrong (a logit scale the model ignores) is caught at load."""
    model = tiny.build_model(tiny.tiny_config("llama", tokenizer), seed=6)
    loaded = load_model(ModelSpec(str(tiny.save(model, tokenizer, tmp_path / "m")),
                                  device="cpu"))
    loaded.model.config.logit_scale = 3.0  # LlamaForCausalLM does not apply it
    scorer = Scorer(loaded, batch_size=4)
    assert scorer.head_path == "full-logits"
    expected = [reference_loglik(loaded.model, loaded.tokenizer, t) for t in texts]
    assert np.allclose(scorer.score(texts, progress=False).loglik, expected, rtol=1e-5, atol=1e-3)


def test_non_finite_scores_raise_and_name_the_texts(model_dirs, texts):
    loaded = load_model(ModelSpec(str(model_dirs["gpt2"]), device="cpu"))
    with torch.no_grad():
        loaded.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(ScoringError, match=r"non-finite.*nothing was stored"):
        Scorer(loaded, batch_size=4).score(texts, progress=False)


def test_length_sorted_batches_cover_every_text_once():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = list(scoring.length_sorted_batches(lengths, 3))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)
    assert all(len(batch) <= 3 for batch in batches)


def test_partial_scores_resume_and_round_trip(model_dirs, texts, tmp_path):
    loaded = load_model(ModelSpec(str(model_dirs["gpt2"]), device="cpu"))
    full = Scorer(loaded).score(texts, progress=False)
    path = tmp_path / "v.partial.npy"
    partial = scoring.PartialScores(path, len(texts))
    partial.record([0, 3], np.array([-1.0, -2.0]))
    partial.flush()
    resumed = scoring.PartialScores(path, len(texts))
    scores = Scorer(loaded).score(texts, progress=False, partial=resumed)
    assert scores.n_resumed == 2 and scores.loglik[0] == -1.0 and scores.loglik[3] == -2.0
    rest = [i for i in range(len(texts)) if i not in (0, 3)]
    assert np.allclose(scores.loglik[rest], full.loglik[rest], rtol=1e-6)
    assert scores.scored_tokens == int(full.n_tokens[rest].sum())
    assert np.isnan(scoring.PartialScores(path, len(texts) + 1).loglik).all()  # other set size
    resumed.discard()
    assert not path.exists()


def test_partial_side_file_survives_a_kill_while_saving_and_a_full_disk(tmp_path):
    """A run killed between writing the temporary file and renaming it leaves the temporary
    behind, possibly empty; the next run removes it and ignores an unreadable side file. A save
    that fails (disk full) warns once and scoring goes on."""
    path = tmp_path / "pending" / "m.partial.npy"
    path.parent.mkdir()
    path.with_suffix(".tmp.npy").write_bytes(b"")  # killed mid-save
    path.write_bytes(b"\x93NUMPY truncated")
    partial = scoring.PartialScores(path, 4)
    assert np.isnan(partial.loglik).all() and not path.with_suffix(".tmp.npy").exists()
    partial.record([0, 1], np.array([-1.0, -2.0]))
    partial.flush()
    assert np.load(path)[:2].tolist() == [-1.0, -2.0]
    partial.discard()
    assert not list(path.parent.iterdir())
    blocked = scoring.PartialScores(tmp_path / "a-file" / "m.partial.npy", 4)
    (tmp_path / "a-file").write_text("not a folder")  # every save now fails with an OSError
    blocked.record([0], np.array([-1.0]))
    with pytest.warns(UserWarning, match="cannot save the scores so far"):
        blocked.flush()
    blocked.flush()  # warned once


def test_truncation_warning_says_how_to_score_texts_whole(loaded):
    assert Scorer(loaded).truncation_warning(0, 10) is None
    below = Scorer(loaded, max_length=100).truncation_warning(1, 10)
    assert below == ("1 of 10 texts was longer than 100 tokens and was truncated (their "
                     "log-likelihood covers the first 100 tokens); raise --max-length (up to "
                     "the model's 2,048) to score them whole")
    at_limit = Scorer(loaded).truncation_warning(3, 10)
    assert at_limit.startswith("3 of 10 texts were longer than 2,048 tokens")
    assert at_limit.endswith("that is the model's limit (2,048 positions), so split longer "
                             "texts to score them whole")
