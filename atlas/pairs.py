"""All-pairs KL streamed to Parquet tile by tile (``atlas kl-pairs``): at 10⁴ models the K × K
matrices of ``kl_matrix`` (and its temporaries) would take gigabytes, the tiles take megabytes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas.errors import AtlasError
from atlas.files import replacing
from atlas.kl import kl_blocks, tile_pairs


class PairsError(AtlasError, ValueError):
    """A pairs file that cannot be written where it was asked for."""


def check_output(path: Path) -> None:
    """Refuse a path the pairs cannot be written to before anything is computed."""
    folder = path.parent
    problem = ("is a folder" if path.is_dir() else f"{folder} does not exist"
               if not folder.exists() else f"{folder} is not a folder" if not folder.is_dir()
               else f"{folder} is not writable" if not os.access(folder, os.W_OK | os.X_OK)
               else None)
    if problem:
        raise PairsError(f"cannot write the pairs to {path} (-o): {problem}; name a file in a "
                         "folder you can write to, e.g. pairs.parquet")


def write_pairs(path: Path, keys: list[str], loglik: np.ndarray, mean_bytes: float,
                block: int = 1024, with_se: bool = True) -> int:
    """Write (key_a, key_b, kl[, se]) for every pair i < j to ``path``; return the pair count.

    The file appears whole or not at all: it is written beside ``path`` under a temporary name
    and renamed, so an interrupted run leaves any earlier file as it was.
    """
    names = pa.array(keys, pa.string())
    key = pa.dictionary(pa.int32(), pa.string())
    fields = [("key_a", key), ("key_b", key), ("kl", pa.float64())]
    schema = pa.schema(fields + [("se", pa.float64())] * with_se)
    written = 0
    try:
        # keys as indices into one dictionary: written as Parquet's dictionary pages without
        # copying a string per pair (1.6× faster); without the Arrow schema, readers see strings
        with (replacing(path) as temporary,
              pq.ParquetWriter(temporary, schema, store_schema=False) as writer):
            for rows, cols, kl, se in kl_blocks(loglik, mean_bytes, block, with_se):
                i, j = tile_pairs(rows, cols)
                columns = [_keys(names, i + rows.start), _keys(names, j + cols.start), kl[i, j]]
                writer.write_table(pa.table(columns + [se[i, j]] * with_se, schema=schema))
                written += i.size
    except OSError as exc:
        raise PairsError(f"cannot write the pairs to {path} (-o): {exc.strerror or exc}; "
                         "choose a folder you can write to with room for the file") from None
    return written


def _keys(names: pa.Array, index: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), names)
