"""How far the atlas's KL estimator is from a Monte-Carlo KL, setting by setting.

For one pair per setting of the demo suite (`atlas demo --quick` builds it: consecutive
checkpoints early and late, seeds, sizes, fine-tune, random pair, and int8 / int4-g16 / bnb-nf4
quantizations of a final model, ingested here), and with ``--real`` for SmolLM2-135M (its Q4_1
GGUF dequantized to float32) against its int8 and int4-g32 re-quantizations and against
Gemma-3-270M (different tokenizers: sequence-level KL), it runs `atlas calibrate` (stored in the
atlas's ``calibrations`` table), prints the table, fits ln(estimator) = a + b ln(MC) and draws
the figure `atlas plot calibration` draws.

    atlas --db demo.duckdb demo --quick
    python bench/bench_calibration.py --db demo.duckdb --samples 32 --length 64 [--real] \
        [--figure calibration.png] [--json calibration.json]

Adjacent logit-lens layers are not measured: a lens layer is a read-out of hidden states, not a
model one can sample from. Not part of the default tests (minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl

import atlas
from atlas.analysis import figures
from atlas.analysis.calibration import fit_loglog

M, L, S = "minipythia-m/s1", "minipythia-l/s1", "minipythia-s"
DEMO_PAIRS = [
    ("consecutive-early", f"{M}@step4", f"{M}@step8"),
    ("consecutive-late", f"{M}@step160", f"{M}@step200"),
    ("fine-tune", f"{M}@step200", "minipythia-bible-m/s1@step30"),
    ("seeds", f"{M}@step200", "minipythia-m/s2@step200"),
    ("sizes", f"{S}/s1@step200", f"{L}@step200"),
    ("random", f"{S}/s2@step200", "minipythia-l/s3@step200"),
]
DEMO_QUANTS = ("int8", "int4-g16", "bnb-nf4")
REAL_QUANTS = ("int8", "int4-g32")
REAL_TEXTS = 40


def quantized_pairs(db: atlas.Atlas, key: str, textset: str) -> list[tuple[str, str, str]]:
    """Ingest ``key`` quantized (skipped when stored); the (setting, float, quantized) pairs."""
    record = db.sql("SELECT source, family, size, seed, checkpoint, quant FROM models "
                    "WHERE key = ?", [key]).row(0, named=True)
    pairs = []
    quants = DEMO_QUANTS if record["quant"] is None else REAL_QUANTS
    for label in quants:
        result = db.ingest(record["source"], family=record["family"], size=record["size"],
                           seed=record["seed"], checkpoint=record["checkpoint"],
                           textset=textset, quantize=label, device="cpu", dtype="float32",
                           sketch_dim=0, progress=False)
        pairs.append((f"quantization:{label}", key, result.key))
    return pairs


def real_pairs(db: atlas.Atlas, source_textset: str) -> list[tuple[str, str, str]]:
    """SmolLM2 and Gemma-3 (PyPI packages, data/real-models.txt) on the first REAL_TEXTS texts."""
    from atlas.caching import cache_root
    from atlas.realmodels import PACKAGED, locate
    from atlas.textsets import TextSet

    name = f"{source_textset}-{REAL_TEXTS}"
    texts = db.store.texts(db.store.textset(source_textset).textset_id)[:REAL_TEXTS]
    db.import_textset(TextSet(texts, source=f"first {REAL_TEXTS} of {source_textset}"), name)
    keys = []
    for model in PACKAGED:
        path = locate(model, cache_root() / "real")
        result = db.ingest(str(path), family=model.family, size=model.size, textset=name,
                           device="cpu", dtype="float32", sketch_dim=0, progress=False)
        keys.append(result.key)
    smollm2, gemma = keys
    return [*quantized_pairs(db, smollm2, name), ("random (tokenizers differ)", smollm2, gemma)]


def measure(db: atlas.Atlas, pairs, samples: int, length: int) -> pl.DataFrame:
    rows = []
    for setting, key_a, key_b in pairs:
        started, cpu = time.perf_counter(), time.process_time()
        found = db.calibrate(key_a, key_b, samples=samples, length=length, device="cpu",
                             dtype="float32", progress=False)
        est, ab, ba = found["estimator"], found["mc_ab"], found["mc_ba"]
        rows.append({"setting": setting, "key_a": key_a, "key_b": key_b,
                     "method": found["method"], "estimator": est["bits_per_byte"],
                     "estimator_se": est["se"], "mc_ab": ab["bits_per_byte"],
                     "mc_ab_se": ab["se_bits_per_byte"], "mc_ba": ba["bits_per_byte"],
                     "mc_ba_se": ba["se_bits_per_byte"], "ratio": found["ratio"],
                     "mc_ab_nats_per_token": ab["nats_per_token"],
                     "seconds": time.perf_counter() - started,
                     "cpu_seconds": time.process_time() - cpu})
        print(f"{setting:28s} est {est['bits_per_byte']:.4g}  MC {ab['bits_per_byte']:.4g} / "
              f"{ba['bits_per_byte']:.4g}  ratio {found['ratio']:.3g}  "
              f"({rows[-1]['seconds']:.0f} s, {rows[-1]['cpu_seconds']:.0f} s CPU)", flush=True)
    return pl.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="an atlas built by atlas demo")
    parser.add_argument("--textset", default="default-100")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--real", action="store_true", help="also SmolLM2-135M and Gemma-3")
    parser.add_argument("--skip-demo", action="store_true", help="only the real models")
    parser.add_argument("--figure", type=Path, default=Path("calibration.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    db = atlas.open(args.db)
    pairs = [] if args.skip_demo else [
        *DEMO_PAIRS, *quantized_pairs(db, f"{L}@step200", args.textset)]
    if args.real:
        pairs += real_pairs(db, args.textset)
    table = measure(db, pairs, args.samples, args.length)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=40, float_precision=4):
        print(table.drop("mc_ab_nats_per_token"))
    stored = db.calibrations()
    fit = fit_loglog(stored)
    print(f"fit over all {fit.n} stored calibrations: {fit.describe()}")
    print(f"wrote {figures.plot_calibration(stored, args.figure, fit)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"samples": args.samples, "length": args.length,
                                         "rows": table.to_dicts(),
                                         "fit": fit.__dict__}, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
