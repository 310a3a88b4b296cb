"""`atlas map` at scale: wall time and peak RSS of each method, one fresh process at a time, on a
synthetic atlas built through the real Parquet import (bench_scale.build: low-rank structure,
per-model noise, close copies), and what a map on the top principal components instead of q̃
itself would lose (the variance they keep and how their k-nearest-neighbour sets agree with
the exact ones, the neighbours t-SNE and UMAP see above maps.DIRECT_MAX models).

    python bench/bench_maps.py --models 10000 --texts 10000 [--atlas FILE] [--methods pca tsne]
                               [--pcs 2 22 50] [--neighbours 15]

--atlas FILE is copied to a temporary folder first (never written); without it the atlas is built
there. The machine's load average is printed before each run: on a shared machine, compare runs
made at similar load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import build

import atlas
from atlas.analysis.maps import nearest_neighbours, top_components
from atlas.kl import scaled_coordinates

CLI = "from atlas.cli import main; main()"


def run_map(db: Path, method: str) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MB) of `atlas map --method METHOD` in a fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CLI, "--db", str(db), "map", "--method",
                              method, "--name", f"bench-{method}", "--format", "csv"],
                             stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"atlas map --method {method} failed (status {status})")
    return (time.perf_counter() - started, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss // 1024)


def geometry(db_path: Path, pcs: list[int], k: int) -> None:
    """Variance kept by the top d principal components of q̃ and recall@k of their neighbours."""
    db = atlas.open(db_path, read_only=True)
    keys, loglik, mean_bytes = db.store.matrix(None, "bench")
    db.close()
    q = scaled_coordinates(loglik, mean_bytes, overwrite=True)
    total = float(np.vdot(q, q))
    started = time.perf_counter()
    exact, _ = nearest_neighbours(q, k)
    print(f"exact {k}-NN of q̃ ({len(keys)} models), blockwise: "
          f"{time.perf_counter() - started:.1f} s")
    u, s, _ = top_components(q, max(pcs) + 20)
    for d in pcs:
        found, _ = nearest_neighbours(np.ascontiguousarray(u[:, :d] * s[:d]), k)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found, strict=True)])
        print(f"top {d:>3} PCs: {np.sum(s[:d] ** 2) / total:6.1%} of the variance, "
              f"recall@{k} of the exact neighbours {recall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--atlas", type=Path, help="an atlas of that shape (text set 'bench')")
    parser.add_argument("--methods", nargs="*", default=["pca", "tsne", "umap"])
    parser.add_argument("--pcs", nargs="*", type=int, default=[],
                        help="also compare the k-NN on this many top PCs with the exact ones")
    parser.add_argument("--neighbours", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "scale.duckdb"
        if args.atlas:
            shutil.copyfile(args.atlas, db)
        else:
            seconds = build(Path(tmp), args.models, args.texts)["import_s"]
            print(f"built {args.models} × {args.texts} in {seconds:.0f} s")
        for method in args.methods:
            load = os.getloadavg()[0]
            wall, cpu, rss = run_map(db, method)
            print(f"atlas map --method {method}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"peak RSS {rss} MB (load {load:.1f} before)")
        if args.pcs:
            geometry(db, args.pcs, args.neighbours)


if __name__ == "__main__":
    main()
