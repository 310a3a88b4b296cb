"""GPU check of the scorer: throughput, memory, host syncs and bf16 accuracy, in one short run.

Builds a Pythia-410m-shaped GPT-NeoX from its config (random weights: speed does not depend on
the values) with a tokenizer trained here on Python's stdlib source, saves it and loads it back
through the real loading code, then measures in the same process:
- our Scorer (length-sorted batches, chunked gather − logsumexp, one host sync per batch);
- the reference loop re-created (batch 1, full logits, per-token ``.item()``), on fewer texts;
- bf16 scores against a float32 batch-1 computation, and bf16 batch-size (padding) invariance;
- host synchronisations inside one scoring batch (torch's sync debug mode);
- peak GPU memory of ours against materialising full float32 log-softmax.
Prints one JSON object. Run: ``python bench/gpu_check.py [--small]`` (``--small`` for a CPU smoke).
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from atlas import tiny
from atlas.loading import load_model
from atlas.scoring import Scorer, tokenize
from atlas.specs import ModelSpec
from atlas.textsets import chunk_document


def stdlib_texts(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for path in sorted(root.glob("*.py")):
        chunks.extend(chunk_document(path.read_text(encoding="utf-8", errors="replace")))
        if len(chunks) >= limit:
            break
    return chunks[:limit]


def reference_loop(model, tokenizer, texts: list[str], device) -> np.ndarray:
    """The reference's structure: one text at a time, full logits, a Python float per token."""
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        total = 0.0
        for t in range(1, ids.shape[1]):
            total += logprobs[0, t - 1, ids[0, t]].item()
        out.append(total)
    return np.asarray(out)


def fp32_batch1(model, tokenizer, texts: list[str], device) -> np.ndarray:
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits.float().log_softmax(-1)
        out.append(float(logprobs[0, :-1].gather(-1, ids[0, 1:, None]).sum()))
    return np.asarray(out)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return result, time.perf_counter() - start, peak


def count_syncs(scorer: Scorer, texts: list[str]) -> dict | None:
    """Host syncs torch reports while scoring one batch (ours has one: the .cpu() of the sums)."""
    if scorer.device.type != "cuda":
        return None
    ids = tokenize(scorer.tokenizer, texts, scorer.max_length).ids
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            scorer._finite_batch(ids, list(range(len(ids))))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sources = [f"{Path(w.filename).name}:{w.lineno}" for w in caught
               if "synchroniz" in str(w.message).lower()
               and "prototype feature" not in str(w.message)]  # the mode's own notice
    return {"count": len(sources), "where": sorted(set(sources))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    parser.add_argument("--n-texts", type=int, default=1024)
    parser.add_argument("--n-reference", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_texts = 64 if args.small else args.n_texts
    n_reference = 8 if args.small else args.n_reference
    texts = stdlib_texts(n_texts + 2000)
    train, texts = texts[n_texts:], texts[:n_texts]
    tokenizer = tiny.train_tokenizer(train, vocab_size=1024 if args.small else 8192)
    hidden, layers, heads = (64, 2, 4) if args.small else (1024, 24, 16)
    config = tiny.tiny_config("gpt_neox", tokenizer, hidden=hidden, layers=layers, heads=heads)
    config.vocab_size = 50304  # Pythia's unembedding width, whatever our tokenizer uses
    workdir = Path(tempfile.mkdtemp())
    tiny.save(tiny.build_model(config, seed=0), tokenizer, workdir / "model")
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "n_params": None}

    loaded = load_model(ModelSpec(str(workdir / "model"), device=device.type, dtype="auto"))
    report["n_params"], report["dtype"] = loaded.n_params, str(loaded.dtype)
    scorer = Scorer(loaded, batch_size=args.batch_size)
    scorer.score(texts[: args.batch_size], progress=False)  # warm-up (kernels, allocator)
    scores, seconds, peak = timed(lambda: scorer.score(texts, progress=False), device)
    tokens = int(scores.n_tokens.sum())
    report["ours"] = {"texts": n_texts, "tokens": tokens, "seconds": seconds,
                      "tokens_per_s": tokens / seconds, "peak_mib": peak}

    subset = texts[:n_reference]
    ref, ref_seconds, ref_peak = timed(
        lambda: reference_loop(loaded.model, loaded.tokenizer, subset, device), device)
    ref_tokens = int(scores.n_tokens[:n_reference].sum())
    report["reference_loop"] = {"texts": n_reference, "tokens": ref_tokens,
                                "seconds": ref_seconds, "tokens_per_s": ref_tokens / ref_seconds,
                                "peak_mib": ref_peak}
    report["speedup_vs_reference"] = report["ours"]["tokens_per_s"] / (ref_tokens / ref_seconds)
    report["ours_vs_reference_same_dtype_max_rel"] = float(
        np.max(np.abs(scores.loglik[:n_reference] - ref) / np.abs(ref)))

    small_batch = Scorer(loaded, batch_size=1).score(subset, progress=False).loglik
    report["bf16_batch1_vs_batchN_max_abs_nats"] = float(
        np.max(np.abs(small_batch - scores.loglik[:n_reference])))
    report["host_syncs_in_one_batch"] = count_syncs(scorer, texts[: args.batch_size])

    loaded.model.float()
    exact = fp32_batch1(loaded.model, loaded.tokenizer, subset, device)
    difference = scores.loglik[:n_reference] - exact
    mean_bytes = float(np.mean([len(t.encode("utf-8")) for t in subset]))
    report["model_dtype_vs_fp32"] = {
        "max_abs_nats": float(np.max(np.abs(difference))),
        "max_rel": float(np.max(np.abs(difference) / np.abs(exact))),
        "kl_bpb_between_dtypes": float(np.var(difference) / (2 * mean_bytes * np.log(2))),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
