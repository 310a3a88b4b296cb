"""Bulk ingestion throughput: `atlas bulk run` with 1 and 2 workers against sequential ingests of
the same variants, and the amortisation of one model load over many lens layers.

    .venv/bin/python bench/bench_bulk.py [--models 8] [--texts 100] [--layers 4]

Everything is built here (tiny GPT-NeoX checkpoints from configs, a text set of Python's own
stdlib source); no network. The baseline is `Atlas.ingest` called in a loop in one process (what
a script over `atlas ingest` does at best: no interpreter start-up per model).
"""

from __future__ import annotations

import argparse
import os
import platform
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import atlas
from atlas import tiny
from atlas.bulk.run import run_bulk
from atlas.textsets import TextSet, chunk_document

SETTINGS = dict(textset="eval", dtype="float32", batch_size=8, progress=False)


def corpus() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [chunk for name in ("textwrap", "shlex", "bisect", "heapq", "fractions", "calendar",
                               "argparse", "difflib")
            for chunk in chunk_document((root / f"{name}.py").read_text(encoding="utf-8"))]


def build(root: Path, n_models: int, n_layers: int, texts: list[str]) -> Path:
    tokenizer = tiny.train_tokenizer(texts, vocab_size=512)
    config = tiny.tiny_config("gpt_neox", tokenizer, hidden=64, layers=n_layers, heads=4)
    for step in range(n_models):
        tiny.save(tiny.build_model(config, seed=step), tokenizer, root / "run" / f"step{step}")
    return root / "run"


def fresh(path: Path, textset: TextSet) -> Path:
    with atlas.open(path) as handle:
        handle.import_textset(textset, "eval")
    return path


def manifest(path: Path, models: Path, n_models: int, layers: str | None) -> Path:
    steps = ", ".join(str(s) for s in range(n_models))
    path.write_text(f'[defaults]\ntextset = "eval"\ndtype = "float32"\nbatch_size = 8\n\n'
                    f'[[family]]\nname = "bench"\nsource = "{models}/step{{step}}"\n'
                    f'sizes = ["s"]\nsteps = [{steps}]\n'
                    + (f'layers = "{layers}"\n' if layers else ""))
    return path


def timed(label: str, action) -> float:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"  {label:<52} {seconds:7.1f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--layers", type=int, default=4, help="blocks per model")
    args = parser.parse_args()
    texts = corpus()
    textset = TextSet(texts[: args.texts], source="bench")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.models} GPT-NeoX models (hidden 64, "
          f"{args.layers} blocks), {len(textset)} texts")
    with tempfile.TemporaryDirectory(prefix="bulk_bench_") as tmp:
        root = Path(tmp)
        models = build(root, args.models, args.layers, texts[args.texts:])
        plain = manifest(root / "plain.toml", models, args.models, None)

        def ingest_all(path: Path, layers: str | None = None) -> None:
            with atlas.open(path) as handle:
                for step in range(args.models):
                    handle.ingest(str(models / f"step{step}"), family="bench", size="s",
                                  checkpoint=f"step{step}", layers=layers, **SETTINGS)

        print("throughput (one vector per model):")
        sequential = timed("sequential Atlas.ingest, one process",
                           lambda: ingest_all(fresh(root / "seq.duckdb", textset)))
        for workers in (1, 2):
            bulk = timed(f"atlas bulk run --workers {workers}", lambda w=workers: run_bulk(
                plain, fresh(root / f"bulk{w}.duckdb", textset), workers=w, progress=False))
            print(f"  {'':<52} {sequential / bulk:7.2f}× sequential")

        every = ",".join(str(layer) for layer in range(args.layers + 1))
        n_vectors = args.models * (args.layers + 2)
        print(f"load amortisation ({args.layers + 1} lens layers + the output per model, "
              f"{n_vectors} vectors):")
        separate_db = fresh(root / "sep.duckdb", textset)

        def separately() -> None:
            ingest_all(separate_db)
            for layer in range(args.layers + 1):
                ingest_all(separate_db, str(layer))

        apart = timed("one Atlas.ingest per vector (a load each)", separately)
        layered = manifest(root / "layers.toml", models, args.models, every)
        once = timed("atlas bulk run --workers 0 (one load per model)", lambda: run_bulk(
            layered, fresh(root / "once.duckdb", textset), workers=0, progress=False))
        print(f"  {'':<52} {apart / once:7.2f}× faster")


if __name__ == "__main__":
    main()
