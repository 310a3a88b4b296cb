"""LM Atlas: language models as log-likelihood vectors in a DuckDB atlas.

    import atlas
    db = atlas.open("atlas.duckdb")
    db.nearest("pythia-410m@step143000", k=10)

The API is imported lazily, so ``atlas.scoring`` and ``atlas.loading`` work without the store's
dependencies (DuckDB, polars), e.g. on a GPU worker that only scores.
"""

from __future__ import annotations

import logging

# transformers imports torchao whenever it is installed (the quantization extra): on a CPU-only
# torch its CUDA kernels fail to load with a warning, and it registers enums in a way torch now
# warns about. Neither concerns us, and both would print in every process that loads a model
# (ingest, demo and bulk workers), so it is said here, before any of them imports transformers.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["Atlas", "__version__", "default_db_path", "open"]


def __getattr__(name: str):
    if name in ("Atlas", "default_db_path", "open"):
        from atlas import api

        return getattr(api, name)
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
