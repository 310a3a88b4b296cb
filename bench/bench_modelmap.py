"""Import of the reference release at its real shape (1,018 models × 10,000 texts, synthetic
data in the published formats: tests/release.py) through `Atlas.import_release`, against the
per-vector path (`Store.write_vector`, one transaction and one list insert per vector) that
`atlas import vectors` used before, timed on the first 100 vectors and extrapolated.

    python bench/bench_modelmap.py [--models 1018] [--texts 10000] [--baseline 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from release import write_release

import atlas
from atlas.modelmap import config_id, hub_key


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1018)
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100, help="vectors the baseline writes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        release = write_release(Path(tmp) / "1000models", args.models, args.texts)
        print(f"synthetic release written: {time.perf_counter() - started:.1f} s")
        db = atlas.open(Path(tmp) / "batched.duckdb")
        started = time.perf_counter()
        report = db.import_release(release.folder)
        batched = time.perf_counter() - started
        print(f"atlas import modelmap: {report.written} vectors in {batched:.1f} s "
              f"(text set, metadata, lineage, {report.metrics} scores, clip check and view)")
        started = time.perf_counter()
        again = db.import_release(release.folder)
        print(f"re-import (no-op, {again.skipped} skipped): {time.perf_counter() - started:.1f} s")
        stored = db.store.textset("pile-10k")
        db.close()
        base = atlas.open(Path(tmp) / "per-vector.duckdb")
        base.import_textset(release.folder / "data/text/texts-10k-pile.jsonl", "pile-10k")
        textset_id = base.store.textset("pile-10k").textset_id
        assert base.store.textset("pile-10k").n_texts == stored.n_texts
        started = time.perf_counter()
        for name, values in zip(release.names[:args.baseline], release.raw, strict=False):
            base.store.write_vector(hub_key(name), textset_id=textset_id, loglik=values,
                                    n_tokens=None, n_truncated=0, config_id=config_id(values),
                                    provenance={}, source=name)
        per_vector = (time.perf_counter() - started) / args.baseline
        base.close()
        print(f"baseline, per-vector writes: {per_vector * 1000:.0f} ms a vector → "
              f"{per_vector * args.models:.1f} s for {args.models} (vectors alone)")
        print(f"batched import {per_vector * args.models / batched:.1f}× faster")


if __name__ == "__main__":
    main()
