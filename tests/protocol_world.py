"""A synthetic atlas with Pythia's exact schedule and P1's other settings (PolyPythia seeds,
bnb quantizations, logit-lens layers, fine-tunes with hub types and a merge): the world of
tests/test_protocol.py and tests/test_report.py."""

import json

import numpy as np
import polars as pl

import atlas
from atlas.textsets import TextSet

SIZES = ("410m", "1b", "1.4b", "2.8b", "6.9b")
STEPS = [0, 1, *(2 ** i for i in range(1, 10)), *range(1_000, 143_001, 1_000)]
SEED_STEPS = (1_000, 2_000, 3_000, 143_000)
N_TEXTS = 200
TYPES = {"llama-7b": "llama", "vicuna-7b": "llama", "alpaca-7b": "llama", "mistral-7b": "mistral",
         "zephyr-7b": "mistral"}
PARENTS = {"vicuna-7b": "llama-7b", "alpaca-7b": "llama-7b", "zephyr-7b": "mistral-7b",
           "merged-7b": "llama-7b"}


def schedule(size: str) -> list[int]:
    return [s for s in STEPS if not (size == "1b" and s == 116_000)]


def _keys() -> list[tuple[str, str | None]]:
    """(key, parent) of every model of the synthetic atlas."""
    rows = [(f"pythia-{size}@step{step}", None) for size in SIZES for step in schedule(size)]
    rows += [(f"pythia-410m/s{seed}@step{step}", None) for seed in range(1, 10)
             for step in SEED_STEPS]
    rows += [("pythia-410m+bnb-int8@step143000", None), ("pythia-410m+bnb-nf4@step143000", None)]
    rows += [(f"pythia-410m#{layer}", None) for layer in range(3)]
    rows += [(key, PARENTS.get(key)) for key in [*TYPES, "merged-7b"]]
    return rows


def build(root):
    """The atlas at ``root/atlas.duckdb`` (open), its float32 vectors by key (as float64), and
    the texts' byte lengths."""
    texts = [f"text {i} " + "abc " * (1 + i % 7) for i in range(N_TEXTS)]
    db = atlas.open(root / "atlas.duckdb")
    db.import_textset(TextSet(texts, source="tests"), "eval")
    rng = np.random.default_rng(0)
    base = -rng.gamma(2.0, 50.0, N_TEXTS)
    rows = _keys()
    vectors = {}
    for key, _ in rows:
        values = base + rng.normal(0, 2.0, N_TEXTS)
        values[:10] += rng.normal(0, 40.0, 10)  # the outlier texts
        vectors[key] = values.astype(np.float32)
    provenance = json.dumps({"dtype": "float16", "tokenizer_fingerprint": "abc"})
    pl.DataFrame({"key": [k for k, _ in rows], "parent": [p for _, p in rows],
                  "loglik": [vectors[k].tolist() for k, _ in rows],
                  "provenance": [provenance] * len(rows)}).write_parquet(root / "v.parquet")
    db.import_vectors(root / "v.parquet", "eval")
    db.sql("INSERT INTO model_lineage VALUES ('merged-7b', 'merge', 'llama', 'llama-7b'), "
           "('merged-7b', 'merge', 'mistral', 'mistral-7b')")
    db.sql("INSERT INTO hub_models (key, hub_id, model_type) SELECT * FROM (VALUES "
           + ", ".join(f"('{k}', 'org/{k}', '{t}')" for k, t in TYPES.items()) + ")")
    n_bytes = np.array([len(t.encode()) for t in texts], dtype=np.float64)
    return db, {k: v.astype(np.float64) for k, v in vectors.items()}, n_bytes
