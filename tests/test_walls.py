"""Walls between the layers, as tests: readers (the API, the store, the TUI) start without torch
or transformers; the scoring side starts without DuckDB; the TUI reaches the atlas only through
its public API (atlas, atlas.api, atlas.errors) — never DuckDB, atlas.analysis, atlas.kl or
atlas.store directly; the analyses (atlas/analysis) are maths on arrays and frames, which Atlas
feeds from the store: they import no data layer and no function of theirs takes an atlas; the
one ingest pipeline (atlas/pipeline) sits below its drivers (bulk, the demo) and imports none of
them; the report (atlas/report.py) is assembled from the Atlas API alone."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUI_FORBIDDEN = ("duckdb", "atlas.analysis", "atlas.kl", "atlas.store")
ANALYSIS_FORBIDDEN = ("duckdb", "atlas.api", "atlas.store", "atlas.queries")
PIPELINE_FORBIDDEN = ("atlas.bulk", "atlas.demo", "atlas.api", "atlas.cli")
DATA_LAYER = re.compile(r"\b(Atlas|Store|DuckDBPyConnection)\b")  # annotations naming one


def modules_after(*imports: str) -> set[str]:
    """The names in sys.modules of a fresh interpreter after importing ``imports``."""
    code = "import sys\n" + "".join(f"import {name}\n" for name in imports) + (
        "print('\\n'.join(sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env)
    return set(out.stdout.split())


def test_readers_start_without_torch_or_transformers():
    loaded = modules_after("atlas", "atlas.api", "atlas.store", "tui.app", "atlas.report")
    assert not {"torch", "transformers", "matplotlib"} & loaded


def test_scoring_starts_without_duckdb():
    loaded = modules_after("atlas.scoring", "atlas.lens")
    assert "duckdb" not in loaded


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, ``from a import b`` counted as a and a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def forbidden(module: str, names: tuple[str, ...] = TUI_FORBIDDEN) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def data_parameters(path: Path) -> list[tuple[int, str]]:
    """(line, parameter) of every function parameter in a file that is an atlas or a store: by
    its name (atlas, store) or its annotation (Atlas, Store, a DuckDB connection)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg,
                        args.kwarg]:
                if arg is None:
                    continue
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg in ("atlas", "store") or DATA_LAYER.search(note):
                    found.append((node.lineno, arg.arg + (f": {note}" if note else "")))
    return found


def analysis_offences(folder: Path) -> list[str]:
    """What in ``folder`` reaches past arrays and frames into the data layer."""
    offences = []
    for path in sorted(folder.rglob("*.py")):
        offences += [f"{path.name}:{line}: imports {module}"
                     for line, module in imported_modules(path)
                     if forbidden(module, ANALYSIS_FORBIDDEN)]
        offences += [f"{path.name}:{line}: takes {param}"
                     for line, param in data_parameters(path)]
    return offences


@pytest.mark.parametrize("source", [
    "import duckdb", "from atlas import store", "from atlas.analysis import scale",
    "import atlas.kl", "from atlas.store import Store"])
def test_the_static_check_sees_each_kind_of_import(tmp_path, source):
    path = tmp_path / "module.py"
    path.write_text(source + "\n")
    assert any(forbidden(module) for _, module in imported_modules(path))


def test_tui_uses_only_the_public_atlas_api():
    files = sorted((ROOT / "tui").rglob("*.py"))
    assert files
    offences = [f"{path.relative_to(ROOT)}:{line}: {module}"
                for path in files for line, module in imported_modules(path)
                if forbidden(module)]
    assert not offences, "tui/ imports past the atlas API:\n" + "\n".join(offences)


@pytest.mark.parametrize("source", [
    "import duckdb", "from atlas.api import Atlas", "from atlas import store",
    "from atlas.queries import one_select", "def scale(atlas, where=None): ...",
    "def fit(db: 'Atlas'): ...", "def load(x, *, store): ...",
    "def rows(con: duckdb.DuckDBPyConnection): ...", "f = lambda atlas: atlas"])
def test_the_analysis_check_sees_each_kind_of_reach(tmp_path, source):
    (tmp_path / "module.py").write_text(source + "\n")
    assert analysis_offences(tmp_path)


def test_the_report_reads_the_atlas_through_its_api():
    """atlas.report assembles what Atlas returns: no DuckDB, store, queries or torch of its
    own (matplotlib only inside the figures it draws)."""
    names = ("duckdb", "torch", "transformers", "matplotlib", "atlas.store", "atlas.queries")
    offences = [f"report.py:{line}: {module}"
                for line, module in imported_modules(ROOT / "atlas" / "report.py")
                if forbidden(module, names)]
    assert not offences, "atlas/report.py reaches past the Atlas API:\n" + "\n".join(offences)


def test_analysis_is_maths_on_arrays_and_frames():
    folder = ROOT / "atlas" / "analysis"
    assert sorted(folder.glob("*.py"))
    offences = analysis_offences(folder)
    assert not offences, "atlas/analysis reaches into the data layer:\n" + "\n".join(offences)


def test_the_pipeline_imports_none_of_its_drivers():
    files = sorted((ROOT / "atlas" / "pipeline").rglob("*.py"))
    assert files
    offences = [f"{path.name}:{line}: {module}"
                for path in files for line, module in imported_modules(path)
                if forbidden(module, PIPELINE_FORBIDDEN)]
    assert not offences, "atlas/pipeline imports a driver of it:\n" + "\n".join(offences)
