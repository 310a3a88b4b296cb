"""The logit lens (atlas.lens) on tiny config-built models of every described architecture.

Norm weights and biases are perturbed away from their (1, 0) initialisation so that a norm applied
twice, or skipped, changes the numbers: with the default init LayerNorm(LayerNorm(x)) ≈ LayerNorm(x)
and such a bug would pass unseen.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas import scoring, tiny
from atlas.cli import main
from atlas.layers import LENSES, LensError, LensOverride, format_layers, parse_layers
from atlas.lens import Lens
from atlas.loading import LoadedModel
from atlas.pipeline import score as score_module
from atlas.scoring import Scorer

ARCHS = ("gpt_neox", "gpt2", "llama", "mistral", "qwen2", "opt", "opt-postln", "gemma3")


def config_of(arch: str, tokenizer, layers: int = 2):
    """A tiny config; OPT with a projection (word_embed_proj_dim < hidden), Gemma-3 softcapped."""
    from transformers import BloomConfig, Gemma3TextConfig, MistralConfig, OPTConfig, Qwen2Config

    special = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    small = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                 intermediate_size=64, **special)
    if arch in tiny.ARCHITECTURES:
        return tiny.tiny_config(arch, tokenizer, layers=layers)
    if arch == "mistral":
        return MistralConfig(num_key_value_heads=1, sliding_window=None, **small)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=1, **small)
    if arch.startswith("opt"):
        return OPTConfig(hidden_size=32, num_hidden_layers=layers, ffn_dim=64,
                         num_attention_heads=2, word_embed_proj_dim=16,
                         do_layer_norm_before=arch == "opt", **special)
    if arch == "gemma3":
        return Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=8,
                                final_logit_softcapping=5.0, **small)
    if arch == "bloom":  # no built-in lens: the override path
        return BloomConfig(hidden_size=32, n_layer=layers, n_head=2, **special)
    raise ValueError(arch)


def perturbed_model(arch: str, tokenizer, seed: int = 0, layers: int = 2):
    model = tiny.build_model(config_of(arch, tokenizer, layers), seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # norm weights and biases (and linear biases)
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


def loaded_of(model, tokenizer) -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                       dtype=torch.float32, n_params=sum(p.numel() for p in model.parameters()))


@pytest.fixture(scope="module")
def models(tokenizer):
    return {arch: perturbed_model(arch, tokenizer, layers=3 if arch == "llama" else 2)
            for arch in ARCHS}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """Saved (from_pretrained) models: a built-in lens, a softcapped one, one without a lens."""
    root = tmp_path_factory.mktemp("lens-models")
    return {arch: tiny.save(perturbed_model(arch, tokenizer, seed=3), tokenizer, root / arch)
            for arch in ("gpt_neox", "gemma3", "bloom")}


def probe(model) -> torch.Tensor:
    return (torch.arange(3, 40, 3) % model.config.vocab_size).unsqueeze(0)


def reference_layer_loglik(model, tokenizer, text: str, layer: int) -> float:
    """ℓ through the lens the plain way: one text, full logits, norms called by hand."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        output = model(input_ids=ids, output_hidden_states=True)
        if layer == model.config.num_hidden_layers:
            logits = output.logits.float()
        else:
            hidden = output.hidden_states[layer]
            spec = LENSES[model.config.model_type]
            for path in spec.norm:
                module = model.get_submodule(path) if path not in spec.optional else getattr(
                    model.get_submodule(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1])
                hidden = hidden if module is None else module(hidden)
            logits = model.get_output_embeddings()(hidden).float()
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:
                logits = cap * torch.tanh(logits / cap)
        logprobs = logits.log_softmax(-1)
    return float(logprobs[0, :-1].gather(-1, ids[0, 1:, None]).sum())


@pytest.mark.parametrize("arch", ARCHS)
def test_lens_on_the_last_blocks_pre_norm_state_reproduces_the_logits(models, arch):
    model = models[arch]
    lens = Lens.of(model)
    spec = LENSES[model.config.model_type]
    captured = {}
    handle = model.get_submodule(spec.blocks)[-1].register_forward_hook(
        lambda m, a, out: captured.setdefault("out", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        output = model(input_ids=probe(model), output_hidden_states=True)
        handle.remove()
        expected = output.logits.float().log_softmax(-1)
        ours = lens.head()(captured["out"]).log_softmax(-1)
        assert torch.allclose(ours, expected, atol=1e-5)
        assert lens.n_layers == model.config.num_hidden_layers
        assert len(output.hidden_states) == lens.n_layers + 1
        if arch not in ("opt", "opt-postln"):  # (OPT's last state is already projected)
            twice = lens.head()(output.hidden_states[-1]).log_softmax(-1)
            assert not torch.allclose(twice, expected, atol=1e-3)  # the test sees a double norm
    assert lens.verify(model, torch.device("cpu"))["max_abs_logprob_gap"] < 1e-5
    if arch == "gemma3":
        assert lens.transform_name == "softcap 5"
    if arch == "opt-postln":  # no final norm in a post-LN OPT; project_out still runs
        assert lens.norm_paths == ("model.decoder.project_out",)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_matches_an_independent_computation(models, tokenizer, texts, arch):
    model = models[arch]
    scorer = Scorer(loaded_of(model, tokenizer), batch_size=4,
                    layers=range(model.config.num_hidden_layers + 1))
    by_layer = scorer.score_layers(texts[::2], progress=False)
    assert list(by_layer) == list(range(model.config.num_hidden_layers + 1))
    for layer, scores in by_layer.items():
        expected = [reference_layer_loglik(model, tokenizer, t, layer) for t in texts[::2]]
        assert np.allclose(scores.loglik, expected, rtol=1e-5, atol=1e-3), layer
    plain = Scorer(loaded_of(model, tokenizer), batch_size=4).score(texts[::2], progress=False)
    final = by_layer[model.config.num_hidden_layers]
    assert np.allclose(final.loglik, plain.loglik, rtol=1e-6, atol=1e-5)
    assert final.provenance["lens"]["final"] and final.provenance["lens"]["norm"] == []
    assert not by_layer[0].provenance["lens"]["final"]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_layers_are_independent_of_batch_size_and_chunking(models, tokenizer, texts, arch,
                                                            monkeypatch):
    loaded = loaded_of(models[arch], tokenizer)
    runs = [Scorer(loaded, batch_size=b, layers=[0, 1, 2]).score_layers(texts, progress=False)
            for b in (1, 3, 8)]
    vocab = models[arch].get_output_embeddings().weight.shape[0]
    monkeypatch.setitem(scoring.LOGIT_CHUNK_BYTES, "cpu", vocab * 4 * 7)  # 7 positions a chunk
    runs.append(Scorer(loaded, batch_size=4, layers=[0, 1, 2]).score_layers(texts,
                                                                            progress=False))
    for other in runs[1:]:
        for layer in (0, 1, 2):
            assert np.allclose(other[layer].loglik, runs[0][layer].loglik, rtol=1e-5, atol=1e-4)


def test_bf16_softcapped_model_passes_the_check_and_final_equals_plain(tokenizer, texts):
    """Gemma softcaps its bf16 logits; we do it in float32: the check allows that rounding."""
    model = perturbed_model("gemma3", tokenizer, seed=4).to(torch.bfloat16)
    loaded = LoadedModel(model, tokenizer, torch.device("cpu"), torch.bfloat16, 0)
    scorer = Scorer(loaded, batch_size=4, layers=[1, 2])
    assert 0 < scorer.lens_check["max_abs_logprob_gap"] < 0.05
    layers = scorer.score_layers(texts[:6], progress=False)
    plain = Scorer(loaded, batch_size=4).score(texts[:6], progress=False)
    assert np.array_equal(layers[2].loglik, plain.loglik)
    assert layers[1].provenance["dtype"] == "bfloat16"


def test_layers_resume_from_a_partial_run(models, tokenizer, texts, tmp_path):
    scorer = Scorer(loaded_of(models["llama"], tokenizer), batch_size=4, layers=[0, 3])
    full = scorer.score_layers(texts, progress=False)
    path = tmp_path / "layers.partial.npy"
    partial = scoring.PartialScores(path, len(texts), rows=2)
    partial.record([0, 3], np.array([[-1.0, -2.0], [-3.0, -4.0]]))
    partial.flush()
    resumed = scorer.score_layers(texts, progress=False,
                                  partial=scoring.PartialScores(path, len(texts), rows=2))
    assert resumed[0].n_resumed == 2 and resumed[0].loglik[3] == -2.0
    assert resumed[3].loglik[0] == -3.0
    rest = [i for i in range(len(texts)) if i not in (0, 3)]
    for layer in (0, 3):
        assert np.allclose(resumed[layer].loglik[rest], full[layer].loglik[rest], rtol=1e-6)
    assert np.isnan(scoring.PartialScores(path, len(texts), rows=3).loglik).all()  # other layers
    with pytest.raises(LensError, match=r"3 blocks, so its hidden states are 0\.\.3"):
        Scorer(loaded_of(models["llama"], tokenizer), layers=[4])


def vectors(db) -> dict[str, np.ndarray]:
    frame = db.sql("SELECT key, loglik FROM vectors ORDER BY key")
    return {key: np.asarray(v) for key, v in zip(frame["key"], frame["loglik"], strict=True)}


@pytest.mark.parametrize("arch", ["gpt_neox", "gemma3"])
def test_ingest_all_layers_one_variant_each_final_equals_plain(db, saved, arch, monkeypatch):
    kwargs = dict(family="tiny", size="s", checkpoint="step5", textset="eval", progress=False)
    db.ingest(str(saved[arch]), **kwargs)
    result = db.ingest(str(saved[arch]), layers="all", **kwargs)
    assert result.status == "stored" and result.layers == {0: "stored", 1: "stored", 2: "stored"}
    stored = vectors(db)
    assert sorted(stored) == ["tiny-s#0@step5", "tiny-s#1@step5", "tiny-s#2@step5",
                              "tiny-s@step5"]
    assert np.allclose(stored["tiny-s#2@step5"], stored["tiny-s@step5"], rtol=1e-6, atol=1e-5)
    assert not np.allclose(stored["tiny-s#1@step5"], stored["tiny-s@step5"], rtol=1e-3)
    rows = db.sql("SELECT key, layer FROM model_variants ORDER BY key").rows()
    assert rows == [("tiny-s#0@step5", 0), ("tiny-s#1@step5", 1), ("tiny-s#2@step5", 2),
                    ("tiny-s@step5", None)]
    lens = {key: json.loads(p)["lens"] for key, p in db.sql(
        "SELECT key, provenance FROM vectors WHERE key LIKE '%#%'").rows()}
    assert lens["tiny-s#2@step5"]["final"] and not lens["tiny-s#1@step5"]["final"]
    assert lens["tiny-s#0@step5"]["path"].startswith("embeddings → ")
    assert lens["tiny-s#1@step5"]["unembedding"] == "lm_head"
    if arch == "gemma3":
        assert lens["tiny-s#1@step5"]["norm"] == ["model.norm"]
        assert lens["tiny-s#1@step5"]["transform"] == "softcap 5"

    def no_loading(spec):
        raise AssertionError("every layer is stored: nothing may be loaded")

    monkeypatch.setattr(score_module, "load_model", no_loading)
    again = db.ingest(str(saved[arch]), layers="0,2", **kwargs)
    assert again.status == "skipped" and again.layers == {0: "skipped", 2: "skipped"}


def test_only_missing_layers_are_scored(db, saved, monkeypatch):
    kwargs = dict(family="tiny", size="s", textset="eval", progress=False)
    db.ingest(str(saved["gpt_neox"]), layers=[1], **kwargs)
    scored = []
    real = score_module.Scorer

    def spy(*args, **options):
        scored.append(options.get("layers"))
        return real(*args, **options)

    monkeypatch.setattr(score_module, "Scorer", spy)
    result = db.ingest(str(saved["gpt_neox"]), layers="all", **kwargs)
    assert scored == [[0, 2]]
    assert result.layers == {0: "stored", 1: "skipped", 2: "stored"}
    assert sorted(vectors(db)) == ["tiny-s#0", "tiny-s#1", "tiny-s#2"]


def test_layer_beyond_the_model_is_an_error_and_stores_nothing(db, saved, monkeypatch):
    def no_loading(spec):
        raise AssertionError("the layer check needs only the config")

    monkeypatch.setattr(score_module, "load_model", no_loading)
    with pytest.raises(LensError, match=r"--layers 99: .* has 2 blocks, so its hidden states "
                                        r"are 0\.\.2"):
        db.ingest(str(saved["gpt_neox"]), family="t", size="s", textset="eval", layers="99",
                  progress=False)
    assert vectors(db) == {} and db.models().height == 0
    assert db.sql("SELECT count(*) AS n FROM ingest_runs")["n"][0] == 0


def test_unknown_architecture_needs_user_paths(db, saved, monkeypatch):
    kwargs = dict(family="bloom", size="s", textset="eval", progress=False)
    real_load = score_module.load_model
    monkeypatch.setattr(score_module, "load_model", lambda spec: pytest.fail("loaded"))
    with pytest.raises(LensError, match="architecture bloom has no lens description; pass "
                                        "--lens-norm/--lens-head"):
        db.ingest(str(saved["bloom"]), layers="all", **kwargs)
    assert vectors(db) == {}
    monkeypatch.setattr(score_module, "load_model", real_load)
    with pytest.raises(LensError, match="does not reproduce the model's logits"):
        db.ingest(str(saved["bloom"]), layers="all", lens_norm="transformer.h.0.input_layernorm",
                  **kwargs)
    with pytest.raises(LensError, match=r"'transformer.nope' does not exist; candidates .*"
                                        r"transformer\.ln_f"):
        db.ingest(str(saved["bloom"]), layers="all", lens_norm="transformer.nope", **kwargs)
    assert vectors(db) == {}
    db.ingest(str(saved["bloom"]), **kwargs)
    result = db.ingest(str(saved["bloom"]), layers="all", lens_norm="transformer.ln_f",
                       lens_head="lm_head", **kwargs)
    assert result.layers == {0: "stored", 1: "stored", 2: "stored"}
    stored = vectors(db)
    assert np.allclose(stored["bloom-s#2"], stored["bloom-s"], rtol=1e-6, atol=1e-5)
    provenance = json.loads(db.sql("SELECT provenance FROM vectors WHERE key = 'bloom-s#1'")
                            ["provenance"][0])
    assert provenance["lens"]["description"] == "override"
    assert provenance["lens"]["norm"] == ["transformer.ln_f"]


def test_lens_paths_without_layers_are_refused(db, saved):
    with pytest.raises(LensError, match="need --layers"):
        db.ingest(str(saved["gpt_neox"]), family="t", size="s", textset="eval",
                  lens_norm="gpt_neox.final_layer_norm", progress=False)


def test_cli_layers(tmp_path, saved, texts):
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(texts))
    db = tmp_path / "cli.duckdb"

    def run(*args, ok=True):
        result = CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    run("textset", "import", str(path), "--name", "eval")
    base = ["ingest", str(saved["gpt_neox"]), "--family", "tiny", "--size", "s", "--textset",
            "eval"]
    out = run(*base, "--layers", "0,2")
    assert "tiny-s: lens layers 0,2 stored on 'eval' as tiny-s#0 … tiny-s#2" in out
    out = run(*base, "--layers", "all")
    assert "lens layers 1 stored" in out and "already stored, skipped: layers 0,2" in out
    assert "lens layers 0-2 already stored" in run(*base, "--layers", "all")
    out = run(*base, "--layers", "99", ok=False)
    assert out.startswith("error: --layers 99:") and "Traceback" not in out
    assert "error: --layers 'x'" in run(*base, "--layers", "x", ok=False)


def test_parse_and_format_layers():
    assert parse_layers("all") == parse_layers(" ALL ") == "all"
    assert parse_layers("12,0,6,6") == [0, 6, 12]
    assert parse_layers("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_layers([3, 1]) == [1, 3]
    for bad in ("", "x", "-1", "3-1", "1,,2"):
        with pytest.raises(LensError):
            parse_layers(bad)
    assert format_layers([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(LensError, match="module paths"):
        LensOverride(norm="model.norm; rm -rf")
    assert LensOverride(norm="none").norm_paths() == ()
    assert LensOverride(norm="a.b, c").norm_paths() == ("a.b", "c")
