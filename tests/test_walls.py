"""Walls between the layers, as tests: readers (the API, the store, the TUI) start without torch
or transformers; the scoring side starts without DuckDB; the TUI reaches the atlas only through
its public API (atlas, atlas.api, atlas.errors) — never DuckDB, atlas.analysis, atlas.kl or
atlas.store directly."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUI_FORBIDDEN = ("duckdb", "atlas.analysis", "atlas.kl", "atlas.store")


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
    loaded = modules_after("atlas", "atlas.api", "atlas.store", "tui.app")
    assert not {"torch", "transformers"} & loaded


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


def forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in TUI_FORBIDDEN)


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
