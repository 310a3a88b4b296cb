"""The merger: the one writer that folds finished shards into the atlas.

Each vector goes in through the pipeline's writer (atlas.pipeline.writer: one transaction for
the whole vector and its variant row, or nothing; then its weight sketch), and only then does
the shard move to ``merged/``. A crash in between leaves the shard in ``ready/``; merging it
again finds the same vector and config stored (a no-op) and writes the sketch, so merging is
idempotent. The file is released after every round, so readers (SQL, TUI) get in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atlas.bulk.shards import Shard, ShardDir, ShardError
from atlas.errors import LockedError, StoreError, UnknownParentError
from atlas.pipeline.records import VectorRecord
from atlas.pipeline.writer import write_record
from atlas.store import Store


@dataclass
class MergeReport:
    stored: int = 0  # new vectors in the atlas
    present: int = 0  # already there with the same config (a re-merge, or ingest was first)
    rejected: list[str] = field(default_factory=list)  # "NAME: reason"
    locked: str | None = None  # another process held the atlas: the rest waits for next time
    waiting: list[str] = field(default_factory=list)  # shards whose parent is not stored yet

    def add(self, other: MergeReport) -> None:
        self.stored += other.stored
        self.present += other.present
        self.rejected += other.rejected
        self.locked = other.locked
        self.waiting = other.waiting


def merge_ready(store: Store, shards: ShardDir) -> MergeReport:
    """Fold every finished shard into the atlas; a shard the atlas refuses is set aside."""
    report = MergeReport()
    with shards.merge_lock():
        _merge_all(store, shards, report)
    return report


def _merge_all(store: Store, shards: ShardDir, report: MergeReport) -> None:
    """Rounds over the ready shards until one merges nothing more: a fine-tune whose parent
    is not stored yet waits in ``ready/`` for the round (or the merge) after its parent's."""
    shards.tidy()
    try:
        todo, waiting = shards.ready_shards(), []
        while todo:
            waiting = _merge_round(store, shards, todo, report) or []
            if len(waiting) in (0, len(todo)) or report.locked:
                break
            todo = waiting
        report.waiting = [shard.name for shard in waiting]
    finally:
        store.release()


def _merge_round(store: Store, shards: ShardDir, todo: list[Shard],
                 report: MergeReport) -> list[Shard] | None:
    """Merge ``todo``; the shards whose parent is not stored yet (None: the atlas is locked)."""
    waiting = []
    for shard in todo:
        try:
            written = merge_one(store, shards, shard)
        except LockedError as exc:
            report.locked = str(exc)
            return None
        except UnknownParentError:
            waiting.append(shard)
            continue
        except (ShardError, StoreError) as exc:
            shards.reject(shard, str(exc))
            report.rejected.append(f"{shard.name}: {exc}")
            continue
        shards.mark_merged(shard)
        if written:
            report.stored += 1
        else:
            report.present += 1
    return waiting


def merge_one(store: Store, shards: ShardDir, shard: Shard) -> bool:
    """Write one shard's vector (and sketch); False if the same vector was stored already."""
    record = VectorRecord.read_parquet(shards.verified_parquet(shard))
    stored = store.textset(record.textset)
    if stored.content_hash != shard.meta["textset_hash"]:
        raise StoreError(f"{record.key}: scored on other texts than the atlas's text set "
                         f"'{record.textset}' (hash {shard.meta['textset_hash'][:12]} vs "
                         f"{stored.content_hash[:12]})")
    return write_record(store, record, stored.textset_id)
