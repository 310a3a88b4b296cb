"""One vector as the store writes it, and its Parquet form.

The same one-row Parquet is a bulk shard and a pending file (a vector the atlas could not take,
kept beside it): ``atlas import vectors`` reads its key, loglik, n_params, parent, source,
revision and provenance columns and ignores the rest.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from atlas.keys import ModelKey, safe_name
from atlas.weights import WeightSketch


@dataclass
class VectorRecord:
    """A complete vector with its provenance and, for a model output, its weight sketch."""

    key: ModelKey
    textset: str
    config_id: str
    loglik: np.ndarray
    n_tokens: np.ndarray | None
    n_truncated: int
    n_params: int | None
    parent: str | None
    source: str | None
    revision: str | None
    provenance: dict
    sketch: WeightSketch | None = None
    sketch_note: str | None = None  # why no sketch (disabled, quantized weights …); not stored

    def to_parquet(self) -> bytes:
        """One row: the vector in float64 (the store rounds it as every writer does)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sketch_meta = None if self.sketch is None else json.dumps(
            {f.name: getattr(self.sketch, f.name) for f in fields(self.sketch)
             if f.name != "sketch"})
        table = pa.table({
            "key": [str(self.key)], "textset": [self.textset], "config_id": [self.config_id],
            "loglik": pa.array([np.asarray(self.loglik).tolist()], pa.list_(pa.float64())),
            "n_tokens": pa.array([None if self.n_tokens is None else self.n_tokens.tolist()],
                                 pa.list_(pa.int64())),
            "n_truncated": [int(self.n_truncated)],
            "n_params": pa.array([self.n_params], pa.int64()),
            "parent": pa.array([self.parent], pa.string()),
            "source": pa.array([self.source], pa.string()),
            "revision": pa.array([self.revision], pa.string()),
            "provenance": [json.dumps(self.provenance)],
            "sketch": pa.array([None if self.sketch is None else self.sketch.sketch.tolist()],
                               pa.list_(pa.float64())),
            "sketch_meta": pa.array([sketch_meta], pa.string()),
        })
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()

    @classmethod
    def read_parquet(cls, path: Path) -> VectorRecord:
        import pyarrow.parquet as pq

        row = pq.read_table(path).to_pylist()[0]
        sketch = None if row["sketch"] is None else WeightSketch(
            sketch=np.asarray(row["sketch"]), **json.loads(row["sketch_meta"]))
        return cls(ModelKey.parse(row["key"]), row["textset"], row["config_id"],
                   np.asarray(row["loglik"]),
                   None if row["n_tokens"] is None else np.asarray(row["n_tokens"]),
                   row["n_truncated"], row["n_params"], row["parent"], row["source"],
                   row["revision"], json.loads(row["provenance"]), sketch)


def pending_path(db_path: Path, key: ModelKey, suffix: str) -> Path:
    """Files of work in progress sit beside the atlas, in ``ATLAS.duckdb.pending/``."""
    return db_path.parent / f"{db_path.name}.pending" / f"{safe_name(str(key))}{suffix}"


def save_pending(db_path: Path, record: VectorRecord) -> Path:
    """Keep a scored vector the atlas could not take, as a Parquet file ``atlas import`` reads."""
    path = pending_path(db_path, record.key, ".parquet")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(record.to_parquet())
    return path
