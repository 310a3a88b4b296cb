"""A self-contained example that needs no download: ``atlas example``.

Texts: the Python standard library's own source files on this machine, cut by the reference
chunker (a code-domain text set; it differs between Python versions, so its hash does too).
Models: a tokenizer trained on a disjoint training split, and two seeds of a tiny GPT-NeoX
trained for a few steps, saved at several checkpoints; each checkpoint is ingested through the
same path as a hub model. Then it asks the atlas which models are nearest.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path

from atlas import tiny
from atlas.api import Atlas
from atlas.textsets import TextSet, chunk_document

FAMILY, SIZE, TEXTSET = "example", "tiny", "example-stdlib"
MODULES = ("json", "csv", "textwrap", "argparse", "string", "heapq", "bisect", "fractions",
           "statistics", "shlex", "difflib", "pprint", "calendar", "configparser", "glob")
SEEDS = (0, 1)
STEPS = (0, 10, 20, 40, 80)
N_EVAL = 200


def stdlib_chunks() -> list[str]:
    """Chunks of the listed stdlib modules' source, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for module in MODULES:
        path = root / f"{module}.py"
        if path.is_file():
            chunks.extend(chunk_document(path.read_text(encoding="utf-8")))
    return chunks


def build_checkpoints(workdir: Path, train_texts: list[str]) -> dict[tuple[int, int], Path]:
    """Train each seed, saving the model at every step of ``STEPS`` (cached on disk)."""
    tokenizer = tiny.train_tokenizer(train_texts, vocab_size=512)
    config = tiny.tiny_config("gpt_neox", tokenizer, hidden=64, layers=2, heads=4)
    paths = {}
    for seed in SEEDS:
        directories = {step: workdir / f"seed{seed}" / f"step{step}" for step in STEPS}
        paths.update({(seed, step): path for step, path in directories.items()})
        if all((path / "config.json").exists() for path in directories.values()):
            continue
        model = tiny.build_model(config, seed=seed)
        done = 0
        for step in STEPS:
            tiny.train_steps(model, tokenizer, train_texts, step - done, seed=seed * 1000 + done)
            done = step
            tiny.save(model, tokenizer, directories[step])
    return paths


def run_example(atlas: Atlas, workdir: Path, echo: Callable[[str], None] = print,
                show: Callable | None = None) -> None:
    chunks = stdlib_chunks()
    eval_texts, train_texts = chunks[::4][:N_EVAL], [c for i, c in enumerate(chunks) if i % 4]
    stored, _ = atlas.import_textset(TextSet(eval_texts, source="python stdlib"), TEXTSET)
    echo(f"text set '{stored.name}': N={stored.n_texts}, mean bytes={stored.mean_bytes:.1f}")
    echo(f"training {len(SEEDS)} seeds × {len(STEPS)} checkpoints of a tiny GPT-NeoX in {workdir}")
    checkpoints = build_checkpoints(workdir, train_texts)
    for (seed, step), path in checkpoints.items():
        result = atlas.ingest(str(path), family=FAMILY, size=SIZE, seed=seed,
                              checkpoint=f"step{step}", textset=TEXTSET, progress=False)
        echo(f"  {result.key}: {result.status}")
    final = f"{FAMILY}-{SIZE}/s0@step{STEPS[-1]}"
    frame = atlas.nearest(final, k=5)
    if show is not None:
        show(frame, title=f"nearest to {final} (KL, bits/byte)")
    else:
        echo(str(frame))
    other = atlas.kl(final, f"{FAMILY}-{SIZE}/s1@step{STEPS[-1]}")
    echo(f"KL between seeds at step {STEPS[-1]}: {other.value:.4g} ± {other.se:.2g} bits/byte")
    echo(f'try: atlas --db {atlas.path} sql "SELECT * FROM nearest(\'{final}\', 3)"')
