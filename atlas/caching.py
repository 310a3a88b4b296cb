"""The on-disk cache of things that are expensive to make and safe to reuse.

Trained demo weights, dequantized GGUF models and GPTQ-quantized checkpoints live under
``$ATLAS_CACHE`` (default ``~/.cache/lm-atlas``), each in a folder named by a hash of what made
it, and each folder appears only when complete: a crash never leaves a half-written model that a
later run would load.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """$ATLAS_CACHE, else ~/.cache/lm-atlas."""
    return Path(os.environ.get("ATLAS_CACHE", Path.home() / ".cache" / "lm-atlas"))


def atomic_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary sibling folder, then rename it to ``target``."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
