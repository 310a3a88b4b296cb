"""Quantized variants on tiny real models: labels, the quantizations table, the expected science
(8-bit closer to the original than 4-bit), GPTQ quantize-and-score on the CPU, loading a
pre-quantized GPTQ checkpoint, and bad input that stores nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from atlas import tiny
from atlas.cli import main
from atlas.errors import AtlasError
from atlas.specs import QuantizeError, QuantSpec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("label, expected", [
    ("int8", QuantSpec("torchao", 8)),
    ("int4-g32", QuantSpec("torchao", 4, 32)),
    ("bnb-int8", QuantSpec("bnb", 8)),
    ("bnb-nf4", QuantSpec("bnb", 4, None, "nf4")),
    ("bnb-fp4", QuantSpec("bnb", 4, None, "fp4")),
    ("gptq-4bit-g128", QuantSpec("gptq", 4, 128)),
    ("gptq-8bit", QuantSpec("gptq", 8)),
])
def test_labels_parse_and_round_trip(label, expected):
    assert QuantSpec.parse(label) == expected
    assert expected.label == label


def test_options_name_the_same_quantizations_as_labels():
    assert QuantSpec.from_options("gptq").label == "gptq-4bit-g128"
    assert QuantSpec.from_options("gptq", group_size=0).label == "gptq-4bit"
    assert QuantSpec.from_options("torchao", bits=4, group_size=64).label == "int4-g64"
    assert QuantSpec.from_options("bnb", bits=4).label == "bnb-nf4"
    assert QuantSpec.from_options("bnb") == QuantSpec("bnb", 8)
    assert QuantSpec.from_options("bnb-fp4") == QuantSpec("bnb", 4, None, "fp4")
    assert QuantSpec("torchao", 8).on("gguf-q4_1").label == "gguf-q4_1.int8"


@pytest.mark.parametrize("call, message", [
    (lambda: QuantSpec.parse("int9"), "unknown quantization 'int9'"),
    (lambda: QuantSpec.parse("awq-4bit"), "unknown quantization"),
    (lambda: QuantSpec.parse("gptq-5bit-g128"), "GPTQ quantizes to (2, 3, 4, 8) bits"),
    (lambda: QuantSpec.parse("gptq-4bit-g16"), "GPTQ group sizes are (32, 64, 128, 256)"),
    (lambda: QuantSpec.from_options("bnb", bits=3), "bitsandbytes quantizes to 8 bits"),
    (lambda: QuantSpec.from_options("bnb", group_size=64), "drop --group-size"),
    (lambda: QuantSpec.from_options("torchao", qtype="nf4"), "--quant-type is for bitsandbytes"),
    (lambda: QuantSpec.from_options("int8", bits=4), "a label says it all"),
])
def test_bad_quantizations_say_what_to_use(call, message):
    with pytest.raises(QuantizeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory, corpus, tokenizer):
    """A tiny Llama trained a little, so that its predictions are not uniform."""
    model = tiny.build_model(tiny.tiny_config("llama", tokenizer, hidden=64), seed=0)
    tiny.train_steps(model, tokenizer, corpus[18:], steps=30)
    return tiny.save(model, tokenizer, tmp_path_factory.mktemp("trained") / "llama")


def _kl_to(db, reference: str) -> dict[str, float]:
    frame = db.sql("SELECT b.key, kl_bpb(a.loglik, b.loglik, a.mean_bytes) AS kl "
                   "FROM loglik_vectors a, loglik_vectors b WHERE a.key = ? AND b.key <> ?",
                   [reference, reference])
    return dict(zip(frame["key"], frame["kl"], strict=True))


def test_eight_bits_stay_closer_to_the_original_than_four(db, trained_llama):
    """The reference papers' ordering, for torchao and for bitsandbytes, with each variant's
    quantization recorded as columns and the float model's parameter count kept."""
    db.ingest(str(trained_llama), family="tl", size="s", textset="eval", progress=False)
    for label in ("int8", "int4-g16", "bnb-int8", "bnb-nf4"):
        result = db.ingest(str(trained_llama), family="tl", size="s", textset="eval",
                           quantize=label, progress=False)
        assert result.key == f"tl-s+{label}" and result.status == "stored"
        assert not result.sketched and "quantized weights" in result.sketch_note
    kl = _kl_to(db, "tl-s")
    assert 0 < kl["tl-s+int8"] < kl["tl-s+int4-g16"]
    assert 0 < kl["tl-s+bnb-int8"] < kl["tl-s+bnb-nf4"]
    rows = db.sql("SELECT key, method, bits, group_size, qtype, compute_dtype, library, "
                  "library_version FROM quantizations ORDER BY key").to_dicts()
    assert [(r["key"], r["method"], r["bits"], r["group_size"], r["qtype"]) for r in rows] == [
        ("tl-s+bnb-int8", "bnb", 8, None, None), ("tl-s+bnb-nf4", "bnb", 4, None, "nf4"),
        ("tl-s+int4-g16", "torchao", 4, 16, None), ("tl-s+int8", "torchao", 8, None, None)]
    assert {r["key"]: r["compute_dtype"] for r in rows}["tl-s+bnb-int8"] == "float16"
    assert all(r["library_version"] for r in rows)
    n_params = db.sql("SELECT DISTINCT n_params FROM models")["n_params"].to_list()
    assert len(n_params) == 1  # packed 4-bit weights do not shrink the count
    again = db.ingest(str(trained_llama), family="tl", size="s", textset="eval",
                      quantize="int8", progress=False)
    assert again.status == "skipped"


def test_gptq_quantizes_on_the_cpu_and_its_checkpoint_loads_back(db, trained_llama, corpus,
                                                                 tmp_path, monkeypatch):
    """GPTQModel quantizes with calibration texts that are not scored texts; the cached GPTQ
    checkpoint is then an ordinary pre-quantized source whose label comes from its config."""
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    calibration = tmp_path / "calibration.jsonl"
    scored = set(db.store.texts(db.store.textset("eval").textset_id))
    calibration.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus[18:60]
                                   if text not in scored))
    db.ingest(str(trained_llama), family="tl", size="s", textset="eval", progress=False)
    result = db.ingest(str(trained_llama), family="tl", size="s", textset="eval",
                       quantize="gptq", bits=4, group_size=32, calibration=calibration,
                       progress=False)
    assert result.key == "tl-s+gptq-4bit-g32"
    row = db.sql("SELECT method, bits, group_size, library FROM quantizations").to_dicts()
    assert row == [{"method": "gptq", "bits": 4, "group_size": 32, "library": "gptqmodel"}]
    assert 0 < _kl_to(db, "tl-s")["tl-s+gptq-4bit-g32"] < 0.05
    (checkpoint,) = [p for p in (tmp_path / "cache" / "quantized").iterdir()
                     if (p / "config.json").is_file()]
    assert json.loads((checkpoint / "config.json").read_text())["quantization_config"][
        "quant_method"] == "gptq"
    loaded = db.ingest(str(checkpoint), family="gq", size="s", textset="eval", progress=False)
    assert loaded.key == "gq-s+gptq-4bit-g32"  # the label read from the checkpoint's config
    vectors = db.sql("SELECT key, loglik FROM loglik_vectors WHERE key LIKE '%gptq%' "
                     "ORDER BY key")["loglik"].to_list()
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-4)


def test_quantized_lens_layers_are_keys_of_their_own(db, model_dirs):
    result = db.ingest(str(model_dirs["gpt_neox"]), family="nx", size="s", textset="eval",
                       quantize="int8", layers="all", progress=False)
    keys = db.sql("SELECT key FROM quantizations ORDER BY key")["key"].to_list()
    assert keys == [f"nx-s+int8#{layer}" for layer in sorted(result.layers)]


def _bad(db, source, **options):
    with pytest.raises(AtlasError) as caught:
        db.ingest(str(source), family="bad", size="s", textset="eval", progress=False, **options)
    assert db.sql("SELECT count(*) AS n FROM models")["n"][0] == 0  # nothing stored
    return str(caught.value)


def test_bad_quantization_input_is_refused_before_anything_is_stored(db, model_dirs, tmp_path,
                                                                     tokenizer):
    config = __import__("transformers").XGLMConfig(
        vocab_size=len(tokenizer), d_model=32, num_layers=2, attention_heads=2, ffn_dim=64)
    xglm = tiny.save(tiny.build_model(config), tokenizer, tmp_path / "xglm")
    assert "does not support the xglm architecture" in _bad(db, xglm, quantize="gptq")
    assert "does not run on mps" in _bad(db, model_dirs["llama"], quantize="bnb-nf4",
                                         device="mps")
    assert "does not divide" in _bad(db, model_dirs["llama"], quantize="int4-g48")
    assert "drop --quant or give --quant int8" in _bad(db, model_dirs["llama"], quantize="int8",
                                                       quant="fp16")
    assert "they need --quantize" in _bad(db, model_dirs["llama"], bits=4)


def test_cli_quantize_options(tmp_path, textset, model_dirs):
    import atlas

    path = tmp_path / "cli.duckdb"
    atlas.open(path).import_textset(textset, "eval")
    runner = CliRunner()
    result = runner.invoke(main, ["--db", str(path), "ingest", str(model_dirs["gpt2"]),
                                  "--family", "g2", "--size", "s", "--textset", "eval",
                                  "--quantize", "bnb", "--bits", "4", "--quant-type", "fp4"])
    assert result.exit_code == 0, result.output
    assert "g2-s+bnb-fp4: stored" in result.output
    bad = runner.invoke(main, ["--db", str(path), "ingest", str(model_dirs["gpt2"]),
                               "--family", "g2", "--size", "s", "--textset", "eval",
                               "--quantize", "awq"])
    assert bad.exit_code != 0 and "unknown quantization 'awq'" in bad.output


def test_bnb_4bit_scores_the_same_on_every_x86_cpu(db, model_dirs, monkeypatch):
    """bitsandbytes repacks 4-bit weights for a bf16 kernel on AVX512-BF16 CPUs only, which
    crashed on GPT-2's 32-wide layers there (and scores in bf16 elsewhere). Pretend this CPU
    has AVX512-BF16: the ingest must still take the portable path and store the same vector."""
    import bitsandbytes.nn.modules as bnb_modules

    db.ingest(str(model_dirs["gpt2"]), family="g2", size="s", textset="eval",
              quantize="bnb-fp4", progress=False)
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    result = db.ingest(str(model_dirs["gpt2"]), family="g2b", size="s", textset="eval",
                       quantize="bnb-fp4", progress=False)
    assert result.status == "stored"
    portable, forced = db.sql("SELECT loglik FROM loglik_vectors WHERE key IN "
                              "('g2-s+bnb-fp4', 'g2b-s+bnb-fp4') ORDER BY key")["loglik"]
    np.testing.assert_array_equal(portable.to_numpy(), forced.to_numpy())
