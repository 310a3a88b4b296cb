"""The writer: the one way a scored vector enters the atlas.

The vector, its variant row and its weight sketch go in one transaction (``Store.write_vectors``):
a writer killed at any moment leaves all three or none. A sketch is written even when the same
vector was stored already: it is of the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from atlas.errors import LockedError, NoSpaceError
from atlas.pipeline.records import save_pending
from atlas.store import Store, VectorRecord


def write_records(store: Store, records: Sequence[VectorRecord], textset_id: int,
                  force: bool = False) -> list[bool]:
    """Write records of one text set and their weight sketches in one transaction; per record,
    False if the same vector was stored already."""
    return store.write_vectors(list(records), textset_id=textset_id, force=force,
                               weight_sketches={str(r.key): r.sketch for r in records})


def write_or_keep(store: Store, records: Sequence[VectorRecord], textset_id: int,
                  force: bool = False) -> list[bool]:
    """Write each record; if another process takes the atlas or the disk fills, the records
    not yet stored are kept as pending files, and the error says how to import them."""
    written: list[bool] = []
    for index, record in enumerate(records):
        try:
            written += write_records(store, [record], textset_id, force)
        except (LockedError, NoSpaceError) as exc:
            kept = [save_pending(store.path, rest) for rest in records[index:]]
            raise type(exc)(f"{exc} {_import_hint(kept, record.textset)}") from exc
    return written


def _import_hint(kept: list[Path], textset: str) -> str:
    if len(kept) == 1:
        return (f"The scored vector is kept in {kept[0]}: once the file can be written, run "
                f"`atlas import vectors {kept[0]} --textset {textset}`.")
    return (f"The {len(kept)} vectors not yet stored are kept in {kept[0].parent}: once the "
            f"file can be written, run `atlas import vectors FILE --textset {textset}` for each "
            f"of {', '.join(p.name for p in kept)}.")
