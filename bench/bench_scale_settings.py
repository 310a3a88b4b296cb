"""The KL scale (``atlas scale``) at the size of the Hub: pair selection and pair KLs.

``select`` times ``scale.pairs`` and P1's ``protocol.kishino2026_pairs`` alone on models frames
of realistically keyed variants (``variants``), e.g. 10⁴ and 10⁵ of them. ``build`` makes a
synthetic atlas of such variants (without parents) through the real Parquet import
(``bench_scale.build``) into ``--cache``, once; ``scale`` then runs
``Atlas.scale()`` over the whole atlas and prints its wall time and the process's peak RSS, so
run it in a fresh process (one per measurement), and against another checkout with
``PYTHONPATH=OTHER`` for a before/after.

Run: ``python bench/bench_scale_settings.py select --models 10000 100000`` and
``python bench/bench_scale_settings.py build --models 10000 --texts 10000 --cache /tmp/s`` then
``python bench/bench_scale_settings.py scale --models 10000 --texts 10000 --cache /tmp/s``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from bench_scale import build

import atlas
from atlas.analysis import protocol, scale

SIZES = ("70m", "160m", "410m", "1b")
STEPS = (0, 1, 16, 512, 1000, 2000, 3000, 4000, 5000, 6000)


def variants(n_models: int) -> dict[str, str | None]:
    """``n_models`` keys with their parents, family by family: 200 checkpoints of its runs (the
    default run and seeds 1–4) and per size two quantized and four logit-lens variants of its
    final model and two fine-tunes of it (one naming its parent by a shorthand)."""
    found: dict[str, str | None] = {}
    family = 0
    while len(found) < n_models:
        for size in SIZES:
            run, final = f"fam{family}-{size}", f"@step{STEPS[-1]}"
            found |= dict.fromkeys(f"{run}{seed}@step{step}" for step in STEPS
                                   for seed in ("", "/s1", "/s2", "/s3", "/s4"))
            found |= dict.fromkeys(f"{run}+{quant}{final}" for quant in ("bnb-int8", "gguf-q4_1"))
            found |= dict.fromkeys(f"{run}#{layer}{final}" for layer in range(4))
            found |= {f"fam{family}-chat-{size}": f"{run}{final}",
                      f"fam{family}-code-{size}": f"{run}+bnb-int8"}
        family += 1
    return dict(list(found.items())[:n_models])


def context() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "load": round(os.getloadavg()[0], 2)}


def select(n_models: int) -> dict:
    found = variants(n_models)
    models = scale.models_from_keys(found, {key: p for key, p in found.items() if p})
    start = time.perf_counter()
    chosen = scale.pairs(models)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    kishino = protocol.kishino2026_pairs(models)
    return {"models": n_models, "pairs": chosen.height, "select_s": round(seconds, 2),
            "kishino2026_pairs": kishino.height,
            "kishino2026_s": round(time.perf_counter() - start, 2)}


def atlas_path(cache: Path, n_models: int, n_texts: int) -> Path:
    return cache / f"settings-{n_models}x{n_texts}" / "scale.duckdb"


def build_atlas(cache: Path, n_models: int, n_texts: int) -> dict:
    path = atlas_path(cache, n_models, n_texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = build(path.parent, n_models, n_texts, list(variants(n_models)))
    return {"models": n_models, "texts": n_texts, "import_s": round(built["import_s"], 1)}


def measure_scale(cache: Path, n_models: int, n_texts: int, name: str | None) -> dict:
    db = atlas.open(atlas_path(cache, n_models, n_texts), read_only=True)
    start = time.perf_counter()
    summary = db.scale(protocol=name)
    seconds = time.perf_counter() - start
    db.close()
    return {"models": n_models, "texts": n_texts, "protocol": name,
            "pairs": int(summary["count"].sum()),
            "scale_s": round(seconds, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("select", "build", "scale"))
    parser.add_argument("--models", type=int, nargs="+", default=[10_000])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--protocol", default=None, help="scale: e.g. kishino2026")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-scale-settings"))
    args = parser.parse_args()
    for n_models in args.models:
        if args.what == "select":
            result = select(n_models)
        elif args.what == "build":
            result = build_atlas(args.cache, n_models, args.texts)
        else:
            result = measure_scale(args.cache, n_models, args.texts, args.protocol)
        print(json.dumps(result | context()), flush=True)


if __name__ == "__main__":
    main()
