"""The Parquet form of a vector record (atlas.store.VectorRecord).

The same one-row Parquet is a bulk shard and a pending file (a vector the atlas could not take,
kept beside it): ``atlas import vectors`` reads its key, loglik, n_params, parent, source,
revision and provenance columns and ignores the rest.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from atlas.keys import ModelKey, safe_name
from atlas.store import VectorRecord
from atlas.weights import WeightSketch


def to_parquet(record: VectorRecord) -> bytes:
    """One row: the vector in float64 (the store rounds it as every writer does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sketch = record.sketch
    sketch_meta = None if sketch is None else json.dumps(
        {f.name: getattr(sketch, f.name) for f in fields(sketch) if f.name != "sketch"})
    table = pa.table({
        "key": [str(record.key)], "textset": [record.textset], "config_id": [record.config_id],
        "loglik": pa.array([np.asarray(record.loglik).tolist()], pa.list_(pa.float64())),
        "n_tokens": pa.array([None if record.n_tokens is None else record.n_tokens.tolist()],
                             pa.list_(pa.int64())),
        "n_truncated": [int(record.n_truncated)],
        "n_params": pa.array([record.n_params], pa.int64()),
        "parent": pa.array([record.parent], pa.string()),
        "source": pa.array([record.source], pa.string()),
        "revision": pa.array([record.revision], pa.string()),
        "provenance": [json.dumps(record.provenance)],
        "sketch": pa.array([None if sketch is None else sketch.sketch.tolist()],
                           pa.list_(pa.float64())),
        "sketch_meta": pa.array([sketch_meta], pa.string()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_parquet(path: Path) -> VectorRecord:
    """The record of a shard or pending file (``to_parquet``)."""
    import pyarrow.parquet as pq

    row = pq.read_table(path).to_pylist()[0]
    sketch = None if row["sketch"] is None else WeightSketch(
        sketch=np.asarray(row["sketch"]), **json.loads(row["sketch_meta"]))
    return VectorRecord(
        ModelKey.parse(row["key"]), np.asarray(row["loglik"]), row["config_id"],
        json.loads(row["provenance"]),
        None if row["n_tokens"] is None else np.asarray(row["n_tokens"]), row["n_truncated"],
        row["n_params"], row["parent"], row["source"], row["revision"], textset=row["textset"],
        sketch=sketch)


def pending_path(db_path: Path, key: ModelKey, suffix: str) -> Path:
    """Files of work in progress sit beside the atlas, in ``ATLAS.duckdb.pending/``."""
    return db_path.parent / f"{db_path.name}.pending" / f"{safe_name(str(key))}{suffix}"


def save_pending(db_path: Path, record: VectorRecord) -> Path:
    """Keep a scored vector the atlas could not take, as a Parquet file ``atlas import`` reads."""
    path = pending_path(db_path, record.key, ".parquet")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(to_parquet(record))
    return path
