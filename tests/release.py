"""A synthetic release in the exact formats of the reference papers' ``1000models/`` folder
(numpy pickles, metadata with hub tags and leaderboard scores, colours, texts JSONL), with the
truth it was built from: used by tests/test_modelmap.py and bench/bench_modelmap.py."""

from __future__ import annotations

import datetime
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TYPES = ("llama-3", "mistral", "qwen2")
SIZES = (0.494, 7.24, 13.0)
TASKS = ("ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K")
DOMAINS = ("Pile-CC", "Github", "ArXiv", "PubMed Central")


@dataclass
class Release:
    folder: Path
    names: list[str]
    raw: np.ndarray  # K × N float64
    parents: dict[str, str]  # hub id → hub id of its single fine-tune parent in the release
    scores: dict[str, dict[str, float]]  # hub id → task → score (missing: not in the dict)
    threshold: float


def texts(n: int, rng: np.random.Generator) -> list[dict]:
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "model", "atlas", "ünï", "x"]
    return [{"index": i, "text": " ".join(rng.choice(words, size=int(rng.integers(5, 60)))),
             "pile_set_name": DOMAINS[i % len(DOMAINS)], "pile_idx": int(rng.integers(1e6))}
            for i in range(n)]


def write_release(folder: Path, n_models: int = 120, n_texts: int = 300, seed: int = 0,
                  dtype=np.float32) -> Release:
    """Write the release under ``folder/data`` (and ``folder/models``) and return its truth."""
    rng = np.random.default_rng(seed)
    names = [f"org{i % 7}/model-{i}" for i in range(n_models)]
    names[-1] = "weird/model+plus"  # a character keys cannot hold
    factors = rng.normal(size=(n_models, 3))
    directions = rng.normal(size=(3, n_texts)) * 3.0
    base = -rng.uniform(20, 400, size=n_texts)
    base[0] = -20_000.0  # the release's very long outlier text
    raw = base + factors @ directions + rng.normal(scale=0.5, size=(n_models, n_texts))
    parents = {}
    for child in range(10, n_models - 1, 9):  # fine-tunes: their parent plus a small change
        parent = child - 10
        raw[child] = raw[parent] + rng.normal(scale=0.3, size=n_texts)
        factors[child] = factors[parent]
        parents[names[child]] = names[parent]
    weights = np.array([[8.0, -5.0, 3.0]]) * rng.uniform(0.5, 1.5, size=(len(TASKS), 1))
    scores = {}
    for i, name in enumerate(names):
        if i % 11 == 5:
            continue  # no scores: predicted by the atlas
        values = 50 + weights @ factors[i] + rng.normal(scale=0.3, size=len(TASKS))
        scores[name] = dict(zip(TASKS, np.clip(values, 0, 100).tolist(), strict=True))
    data = folder / "data"
    for sub in ("log-likelihood", "model-metadata", "modeltype-color", "text"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    vectors = {name: raw[i].astype(dtype) for i, name in enumerate(names)}
    threshold = float(np.quantile(raw.astype(dtype), 0.02))
    clipped = {name: np.maximum(v, dtype(threshold)) for name, v in vectors.items()}
    _dump(data / "log-likelihood" / f"raw_log-likelihood_{n_models}.pkl", vectors)
    _dump(data / "log-likelihood" / f"clipped_log-likelihood_{n_models}.pkl", clipped)
    metadata = [_meta(i, name, names, parents, scores, vectors, rng)
                for i, name in enumerate(names)]
    _dump(data / "model-metadata" / f"model-data-{n_models}.pkl", metadata)
    colors = [(name, TYPES[i % 3], (np.float64(i / n_models), np.float64(0.5), np.float64(0.2),
                                    np.float64(1.0)), TYPES[i % 3].upper())
              for i, name in enumerate(names)]
    _dump(data / "modeltype-color" / f"name_type_color_{n_models}.pkl",
          {"data_info": "(model_name, modeltype_fig1, color, modeltype_table7)", "data": colors})
    (data / "text" / "texts-10k-pile.jsonl").write_text(
        "".join(json.dumps(t) + "\n" for t in texts(n_texts, rng)), encoding="utf-8")
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / f"models_{n_models}.yaml").write_text(
        "".join(f"- {name}\n" for name in names), encoding="utf-8")
    return Release(folder, names, raw.astype(dtype).astype(np.float64), parents, scores,
                   threshold)


def _meta(i: int, name: str, names: list[str], parents: dict, scores: dict, vectors: dict,
          rng: np.random.Generator) -> dict:
    tags = ["transformers", "license:apache-2.0"]
    if name in parents:
        tags += [f"base_model:{parents[name]}", f"base_model:finetune:{parents[name]}"]
    elif i % 9 == 3:  # a merge of two models: lineage, never a single parent
        tags += [f"base_model:merge:{names[0]}", f"base_model:merge:{names[1]}"]
    elif i % 9 == 4:  # an adapter, and a fine-tune of a model outside the release
        tags += [f"base_model:adapter:{names[2]}", "base_model:finetune:elsewhere/base"]
    elif i % 9 == 6:  # two fine-tune bases: no single parent
        tags += [f"base_model:finetune:{names[0]}", f"base_model:finetune:{names[1]}"]
    meta = {"model_name": name, "model_type": TYPES[i % 3], "model_size": SIZES[i % 3],
            "created_at": datetime.datetime(2024, 1, 1 + i % 28, tzinfo=datetime.UTC),
            "downloads": np.int64(rng.integers(0, 10**6)), "tags": tags,
            "log-likelihood-10k": vectors[name], "mean_logp": np.float64(vectors[name].mean())}
    for task in (*TASKS, "6-taskmean"):
        value = scores.get(name, {}).get(task)
        if task == "6-taskmean" and name in scores:
            value = float(np.mean(list(scores[name].values())))
        meta[f"score_v1_{task}"] = np.float64(np.nan if value is None else value)
    return meta


def _dump(path: Path, data) -> None:
    path.write_bytes(pickle.dumps(data, protocol=4))
