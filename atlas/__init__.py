"""LM Atlas: language models as log-likelihood vectors in a DuckDB atlas.

    import atlas
    db = atlas.open("atlas.duckdb")
    db.nearest("pythia-410m@step143000", k=10)
"""

__version__ = "0.1.0"

from atlas.api import Atlas, default_db_path, open

__all__ = ["Atlas", "__version__", "default_db_path", "open"]
