"""The merger: the one writer that folds finished shards into the atlas.

Shards are written MERGE_BATCH at a time through the pipeline's writer (atlas.pipeline.writer):
the vectors of a text set, their variant rows and weight sketches in one transaction (one Arrow
insert), or nothing; only then do the shards move to ``merged/``. A crash in between leaves them
in ``ready/``; merging them again finds the same vectors and configs stored (a no-op) and writes
the sketches, so merging is idempotent. A batch the atlas refuses (a corrupt shard, a conflict,
a parent not stored yet) is merged again shard by shard, so that only the faulty one is set
aside or waits. The file is released after every round, so readers (SQL, TUI) get in between.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from atlas.bulk.shards import Shard, ShardDir, ShardError
from atlas.errors import LockedError, NoSpaceError, StoreError, UnknownParentError
from atlas.pipeline.records import read_parquet
from atlas.pipeline.writer import write_records
from atlas.store import Store, VectorRecord

MERGE_BATCH = 256  # shards (one vector each) per transaction


@dataclass
class MergeReport:
    stored: int = 0  # new vectors in the atlas
    present: int = 0  # already there with the same config (a re-merge, or ingest was first)
    rejected: list[str] = field(default_factory=list)  # "NAME: reason"
    stopped: str | None = None  # why the rest waits for next time: the atlas was locked by
    # another process, or the disk was full (a shard is not at fault: it stays in ready/)
    waiting: list[str] = field(default_factory=list)  # shards whose parent is not stored yet

    def add(self, other: MergeReport) -> None:
        self.stored += other.stored
        self.present += other.present
        self.rejected += other.rejected
        self.stopped = other.stopped
        self.waiting = other.waiting


def merge_ready(store: Store, shards: ShardDir) -> MergeReport:
    """Fold every finished shard into the atlas; a shard the atlas refuses is set aside."""
    report = MergeReport()
    with shards.merge_lock():
        _merge_all(store, shards, report)
    return report


def _merge_all(store: Store, shards: ShardDir, report: MergeReport) -> None:
    """Rounds over the ready shards until one merges nothing more: a fine-tune whose parent
    is not stored yet waits in ``ready/`` for the round (or the merge) after its parent's. A
    locked atlas or a full disk stops the merge: the rest waits for next time."""
    shards.tidy()
    try:
        todo, waiting = shards.ready_shards(), []
        while todo:
            waiting = _merge_round(store, shards, todo, report)
            if len(waiting) in (0, len(todo)):
                break
            todo = waiting
        report.waiting = [shard.name for shard in waiting]
    except (LockedError, NoSpaceError) as exc:
        report.stopped = str(exc)
    finally:
        store.release()


def _merge_round(store: Store, shards: ShardDir, todo: list[Shard],
                 report: MergeReport) -> list[Shard]:
    """Merge ``todo``; the shards whose parent is not stored yet."""
    waiting = []
    for start in range(0, len(todo), MERGE_BATCH):
        batch = todo[start:start + MERGE_BATCH]
        try:
            written = merge_batch(store, shards, batch)
        except (LockedError, NoSpaceError):
            raise
        except (ShardError, StoreError):  # one shard's fault: find it
            waiting += _merge_each(store, shards, batch, report)
            continue
        for shard, stored in zip(batch, written, strict=True):
            _merged(shards, shard, stored, report)
    return waiting


def _merge_each(store: Store, shards: ShardDir, batch: list[Shard],
                report: MergeReport) -> list[Shard]:
    """``_merge_round`` one shard per transaction."""
    waiting = []
    for shard in batch:
        try:
            written = merge_batch(store, shards, [shard])[0]
        except (LockedError, NoSpaceError):
            raise
        except UnknownParentError:
            waiting.append(shard)
            continue
        except (ShardError, StoreError) as exc:
            shards.reject(shard, str(exc))
            report.rejected.append(f"{shard.name}: {exc}")
            continue
        _merged(shards, shard, written, report)
    return waiting


def _merged(shards: ShardDir, shard: Shard, written: bool, report: MergeReport) -> None:
    shards.mark_merged(shard)
    if written:
        report.stored += 1
    else:
        report.present += 1


def merge_batch(store: Store, shards: ShardDir, batch: list[Shard]) -> list[bool]:
    """Write the shards' vectors (and sketches), one transaction per text set; per shard,
    False if the same vector was stored already."""
    records = [_checked_record(store, shards, shard) for shard in batch]
    by_set: dict[int, list[int]] = defaultdict(list)
    for index, (_, textset_id) in enumerate(records):
        by_set[textset_id].append(index)
    written = [False] * len(batch)
    for textset_id, indexes in by_set.items():
        done = write_records(store, [records[i][0] for i in indexes], textset_id)
        for i, stored in zip(indexes, done, strict=True):
            written[i] = stored
    return written


def _checked_record(store: Store, shards: ShardDir, shard: Shard) -> tuple[VectorRecord, int]:
    """A shard's record and its text set's id, once its Parquet and texts are checked."""
    record = read_parquet(shards.verified_parquet(shard))
    expected = shard.meta.get("textset_hash")
    if not isinstance(expected, str):
        raise ShardError(f"{shard.name}: its manifest {shard.manifest_path} gives no textset_hash "
                         "(it was not written by atlas bulk, or was edited); delete the shard "
                         "and run `atlas bulk run` again to re-score it")
    stored = store.textset(record.textset)
    if stored.content_hash != expected:
        raise StoreError(f"{record.key}: scored on other texts than the atlas's text set "
                         f"'{record.textset}' (hash {expected[:12]} vs "
                         f"{stored.content_hash[:12]})")
    return record, stored.textset_id
