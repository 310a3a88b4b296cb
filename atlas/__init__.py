"""LM Atlas: language models as log-likelihood vectors in a DuckDB atlas.

    import atlas
    db = atlas.open("atlas.duckdb")
    db.nearest("pythia-410m@step143000", k=10)

The API is imported lazily, so ``atlas.scoring`` and ``atlas.loading`` work without the store's
dependencies (DuckDB, polars), e.g. on a GPU worker that only scores.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Atlas", "__version__", "default_db_path", "open"]


def __getattr__(name: str):
    if name in ("Atlas", "default_db_path", "open"):
        from atlas import api

        return getattr(api, name)
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
