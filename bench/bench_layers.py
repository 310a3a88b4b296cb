"""Benchmark: logit-lens scoring of all layers against its FLOP lower bound, in one run.

Scoring every hidden state of an L-block model cannot cost less than one forward pass plus one
unembedding (+ logsumexp) per extra layer. This script measures, on the same model, texts,
batches and machine:

  (a) plain      ``Scorer(...).score(texts)``: forward + the model's own unembedding;
  (b) layers     ``Scorer(..., layers=0..L).score_layers(texts)``: one forward with all hidden
                 states, then L + 1 unembeddings (the last is the model's own output);
  (u) unembed    one unembedding + gather − logsumexp over the same packed tokens and batches,
                 with the hidden states computed beforehand (untimed): the chunked head alone;
  (c) bound      (a) + L × (u), the lower-bound estimate; the ratio (b) / (c) is the overhead
                 of the lens beyond the unavoidable work (target ≤ 1.3).

It also reports (b) / (a), the agreement of the final layer of (b) with (a) (they are the same
computation), tokens/s, peak GPU memory of (a) and (b) and, on CUDA, the host syncs inside one
layered batch (torch's sync debug mode). Each timing is the median of ``--repeats`` runs after a
warm-up.

The model is a GPT-NeoX built from its config with random weights (speed does not depend on the
values; nothing is downloaded), with a byte-level BPE tokenizer trained here on chunks of
Python's standard library source; the scored texts are other chunks of ~1000 UTF-8 bytes
(≥ 900, ≤ 1024, cut like the reference set). Presets: ``small`` (CPU smoke run) and
``pythia-410m`` (1024 wide, 24 blocks, 16 heads, a 50,304-wide unembedding); any size flag
overrides the preset.

Run::

    .venv/bin/python bench/bench_layers.py --out /tmp/bench_layers.json            # CPU, small
    python bench/bench_layers.py --preset pythia-410m --device cuda --dtype bfloat16 \\
        --n-texts 256 --batch-size 32 --out bench_layers_cuda.json                   # one GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, installed or not
from gpu_check import count_syncs, stdlib_texts  # bench/ is on sys.path: this script's folder

from atlas import tiny
from atlas.loading import LoadedModel, resolve_device, resolve_dtype
from atlas.scoring import (
    Scorer,
    length_sorted_batches,
    packed_target_logprob_sums,
    tokenize,
)

PRESETS = {
    "small": {"hidden": 128, "layers": 4, "heads": 4, "vocab": 8192, "tokenizer_vocab": 1024,
              "n_texts": 24},
    "pythia-410m": {"hidden": 1024, "layers": 24, "heads": 16, "vocab": 50304,
                    "tokenizer_vocab": 8192, "n_texts": 256},
}
TARGET_RATIO = 1.3


def texts_and_training(n_texts: int) -> tuple[list[str], list[str]]:
    """``n_texts`` chunks of 900–1024 bytes to score; other chunks to train the tokenizer on."""
    chunks = stdlib_texts(4 * n_texts + 2000)
    long = [c for c in chunks if len(c.encode("utf-8")) >= 900]
    if len(long) < n_texts:
        raise SystemExit(f"only {len(long)} stdlib chunks of ≥ 900 bytes; ask for fewer texts")
    chosen = set(long[:n_texts])
    return long[:n_texts], [c for c in chunks if c not in chosen][:2000]


def build(args, device: torch.device, dtype: torch.dtype, training: list[str]) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny.train_tokenizer(training, vocab_size=args.tokenizer_vocab)
    config = tiny.tiny_config("gpt_neox", tokenizer, hidden=args.hidden, layers=args.layers,
                              heads=args.heads)
    config.vocab_size = max(args.vocab, len(tokenizer))
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs (fast on a GPU)
        model = AutoModelForCausalLM.from_config(config)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                       n_params=sum(p.numel() for p in model.parameters()))


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> tuple[object, dict, float | None]:
    """(last result, {"wall": [...], "cpu": [...]} seconds of each repeat, peak GPU MiB) after
    one untimed warm-up call. CPU time (this process) is the steadier measure on a shared CPU."""
    fn()
    seconds, result = {"wall": [], "cpu": []}, None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        synced(device)
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        synced(device)
        seconds["wall"].append(time.perf_counter() - start)
        seconds["cpu"].append(time.process_time() - cpu)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return result, seconds, peak


def unembedding_seconds(scorer: Scorer, texts: list[str], head, repeats: int) -> dict:
    """Time of ``head`` + gather − logsumexp over the scorer's own batches and packed tokens,
    the hidden states computed beforehand and left out of the timing."""
    ids = tokenize(scorer.tokenizer, texts, scorer.max_length).ids
    lengths = [len(row) for row in ids]
    chunk = scorer._chunk_positions()
    prepared = []
    with torch.inference_mode():
        for batch in length_sorted_batches(lengths, scorer.batch_size):
            input_ids, packed = scorer._batch_tensors([ids[i] for i in batch])
            prepared.append((scorer.hidden(input_ids=input_ids), packed))
        packed_target_logprob_sums(*prepared[0], head, chunk)  # warm-up
        runs: dict = {"wall": [], "cpu": []}
        for _ in range(repeats):
            wall = cpu = 0.0
            for hidden, packed in prepared:
                synced(scorer.device)
                start, cpu_start = time.perf_counter(), time.process_time()
                packed_target_logprob_sums(hidden, packed, head, chunk).cpu()  # as a batch syncs
                wall += time.perf_counter() - start
                cpu += time.process_time() - cpu_start
            runs["wall"].append(wall)
            runs["cpu"].append(cpu)
    return runs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    for name in ("hidden", "layers", "heads", "vocab", "tokenizer-vocab", "n-texts"):
        parser.add_argument(f"--{name}", type=int, default=None, help="overrides the preset")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="texts per batch (default: the scorer's, 1 on CPU, 32 on CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args()
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    texts, training = texts_and_training(args.n_texts)
    loaded = build(args, device, dtype, training)
    n_layers = args.layers
    plain = Scorer(loaded, batch_size=args.batch_size)
    layered = Scorer(loaded, batch_size=args.batch_size, layers=range(n_layers + 1))
    set_up = time.perf_counter() - started

    plain_scores, plain_runs, plain_peak = timed(
        lambda: plain.score(texts, progress=False), device, args.repeats)
    layer_scores, layer_runs, layer_peak = timed(
        lambda: layered.score_layers(texts, progress=False), device, args.repeats)
    unembed_runs = unembedding_seconds(plain, texts, plain.head, args.repeats)
    lens_runs = unembedding_seconds(plain, texts, layered.lens_head, args.repeats)

    runs = {"a": plain_runs, "b": layer_runs, "u": unembed_runs, "u_lens": lens_runs}
    median = {clock: {name: statistics.median(run[clock]) for name, run in runs.items()}
              for clock in ("wall", "cpu")}
    a, b, u, u_lens = (median["wall"][name] for name in ("a", "b", "u", "u_lens"))
    bound = a + n_layers * u
    cpu = median["cpu"]
    cpu_ratio = cpu["b"] / (cpu["a"] + n_layers * cpu["u"])
    tokens = int(plain_scores.n_tokens.sum())
    predicted = int(sum(n - 1 for n in plain_scores.n_tokens))
    final_gap = float(np.max(np.abs(layer_scores[n_layers].loglik - plain_scores.loglik)))
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
             "threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "model": {"preset": args.preset, "hidden": args.hidden, "blocks": n_layers,
                  "heads": args.heads, "vocab": loaded.model.config.vocab_size,
                  "n_params": loaded.n_params},
        "texts": len(texts), "mean_bytes": float(np.mean([len(t.encode()) for t in texts])),
        "tokens": tokens, "predicted_tokens": predicted, "batch_size": plain.batch_size,
        "repeats": args.repeats,
        "seconds": {
            "a_plain": a, "b_all_layers": b, "u_one_unembedding": u,
            "u_one_lens_unembedding_with_norm": u_lens, "c_lower_bound": bound,
            "runs": runs,
        },
        "cpu_seconds_median": cpu,
        "ratio_b_over_c": b / bound, "target_ratio": TARGET_RATIO,
        "meets_target": b / bound <= TARGET_RATIO,
        "ratio_b_over_c_cpu_time": cpu_ratio if device.type == "cpu" else None,
        "ratio_b_over_a": b / a,
        "tokens_per_s": {"plain": tokens / a, "all_layers": tokens / b},
        "layer_vectors": len(layer_scores),
        "final_layer_vs_plain_max_abs_nats": final_gap,
        "peak_gpu_mib": {"plain": plain_peak, "all_layers": layer_peak},
        "host_syncs_in_one_layered_batch": count_syncs(layered, texts[: layered.batch_size]),
        "setup_seconds": set_up, "total_seconds": time.perf_counter() - started,
    }
    text = json.dumps(report, indent=1)
    print(text)
    print(f"\n{report['device']}, {report['dtype']}: plain {a:.3f} s, all {n_layers + 1} layers "
          f"{b:.3f} s, one unembedding {u:.3f} s → bound {bound:.3f} s; "
          f"(b)/(c) = {b / bound:.2f} (target ≤ {TARGET_RATIO}), (b)/(a) = {b / a:.2f}"
          + (f"; in CPU time (b)/(c) = {cpu_ratio:.2f}" if device.type == "cpu" else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
