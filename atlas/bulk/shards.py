"""The shard directory: what workers write instead of the atlas, and what the merger reads.

Layout (a shared folder when workers run on several machines)::

    SHARDS/textsets/HASH.json        the texts workers score (exported once; no DB access)
    SHARDS/ready/NAME.parquet        one finished vector (+ weight sketch), then NAME.json:
    SHARDS/ready/NAME.json           its manifest with the Parquet's sha256 — written last, so
                                     a shard without one is unfinished and never merged.
                                     NAME is VARIANT~TAG, TAG unique per run and attempt: two
                                     attempts (a killed run's orphan and its re-run) never
                                     write one file, and a second shard of a vector already
                                     stored merges as "present"
    SHARDS/merged/NAME.{parquet,json}    folded into the atlas (merge is idempotent)
    SHARDS/rejected/NAME.{parquet,json}  refused by the atlas or corrupt; the reason is in .json
    SHARDS/log/HOST-PID.jsonl        one line per attempt event (start, done, failed) per
                                     process, so appends never interleave, even over NFS
    SHARDS/run.json                  the current run: its units and variants, for status/ETA

Every file appears by an atomic rename, so a killed worker leaves at most a hidden
``.NAME.HOST-PID.tmp`` file, which ``tidy`` deletes once that process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from atlas.errors import AtlasError
from atlas.files import remove_stale, write_atomically, writer
from atlas.textsets import content_hash


class ShardError(AtlasError):
    """A shard that cannot be read as written (missing file, checksum mismatch)."""


def default_shard_dir(db_path: Path) -> Path:
    """Beside the atlas: ``ATLAS.duckdb.shards/``."""
    return db_path.parent / f"{db_path.name}.shards"


TAG_SEPARATOR = "~"  # between a variant's name and its attempt's tag (never in a safe name)


def variant_name(shard_name: str) -> str:
    """The variant a shard (VARIANT~TAG) holds."""
    return shard_name.split(TAG_SEPARATOR)[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Shard:
    """A finished shard: its manifest (what it holds) and where its Parquet is."""

    manifest_path: Path
    meta: dict

    @property
    def parquet_path(self) -> Path:
        return self.manifest_path.with_suffix(".parquet")

    @property
    def name(self) -> str:
        return self.manifest_path.stem


class ShardDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ready = self.path / "ready"
        self.merged = self.path / "merged"
        self.rejected = self.path / "rejected"
        self.logs = self.path / "log"
        self.texts = self.path / "textsets"

    def create(self) -> ShardDir:
        for folder in (self.ready, self.merged, self.rejected, self.logs, self.texts):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    # text sets ---------------------------------------------------------------------------------
    def export_texts(self, digest: str, texts: list[str]) -> None:
        path = self.texts / f"{digest}.json"
        if not path.exists():
            write_atomically(path, json.dumps(texts, ensure_ascii=False).encode("utf-8"))

    def load_texts(self, digest: str) -> list[str]:
        """The texts of a text set, checked against its content hash."""
        path = self.texts / f"{digest}.json"
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read the exported text set ({exc}); re-run "
                             "`atlas bulk run` to export it again") from None
        if content_hash(texts) != digest:
            raise ShardError(f"{path}: the texts do not match their hash; delete the file and "
                             "re-run `atlas bulk run`")
        return texts

    # shards ------------------------------------------------------------------------------------
    def write(self, variant: str, tag: str, parquet: bytes, meta: dict) -> Shard:
        """Parquet first, manifest (with its checksum) last: the manifest marks it finished."""
        name = f"{variant}{TAG_SEPARATOR}{tag}"
        parquet_path = self.ready / f"{name}.parquet"
        write_atomically(parquet_path, parquet)
        meta = {**meta, "sha256": hashlib.sha256(parquet).hexdigest(), "bytes": len(parquet),
                "written_at": time.time()}
        manifest_path = self.ready / f"{name}.json"
        write_atomically(manifest_path, json.dumps(meta, indent=1).encode())
        return Shard(manifest_path, meta)

    def ready_shards(self) -> list[Shard]:
        shards = []
        for path in sorted(self.ready.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):  # moved by a merger meanwhile
                meta = json.loads(path.read_text())
                shards.append(Shard(path, meta if isinstance(meta, dict) else {}))
        return shards

    def ready_variants(self) -> set[str]:
        """The variants with a finished shard waiting to be merged."""
        return {variant_name(path.stem) for path in self.ready.glob("*.json")}

    def verified_parquet(self, shard: Shard) -> Path:
        """The shard's Parquet, after checking it is the one its manifest describes."""
        path = shard.parquet_path
        if not path.is_file():
            raise ShardError(f"{shard.name}: the Parquet file is missing")
        if sha256_file(path) != shard.meta.get("sha256"):
            raise ShardError(f"{shard.name}: checksum mismatch (the Parquet file is corrupt or "
                             "was changed after it was written)")
        return path

    def mark_merged(self, shard: Shard) -> None:
        """Manifest first: from then on the shard is merged; ``tidy`` moves a Parquet a crash
        left behind."""
        os.replace(shard.manifest_path, self.merged / shard.manifest_path.name)
        with contextlib.suppress(FileNotFoundError):
            os.replace(shard.parquet_path, self.merged / shard.parquet_path.name)

    def reject(self, shard: Shard, reason: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(shard.parquet_path, self.rejected / shard.parquet_path.name)
        write_atomically(self.rejected / shard.manifest_path.name,
                      json.dumps({**shard.meta, "rejected": reason}, indent=1).encode())
        shard.manifest_path.unlink(missing_ok=True)

    def tidy(self) -> None:
        """Move Parquet files whose manifest is already merged (a merger killed mid-move);
        delete the temporary files of writers on this host that were killed."""
        for path in self.ready.glob("*.parquet"):
            if (self.merged / f"{path.stem}.json").exists():
                os.replace(path, self.merged / path.name)
        remove_stale(self.path)

    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[None]:
        """One merger at a time per shard dir (a run's merger and ``atlas bulk merge``)."""
        import fcntl

        with open(self.path / ".merge.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def count(self, folder: Path) -> int:
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0

    # attempt log and run description -----------------------------------------------------------
    def log(self, event: str, **fields) -> None:
        """Append one event line to this process's own log file."""
        self.logs.mkdir(parents=True, exist_ok=True)
        record = {"event": event, "time": time.time(), "host": socket.gethostname(),
                  "pid": os.getpid(), **fields}
        path = self.logs / f"{writer()}.jsonl"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def events(self) -> Iterator[dict]:
        """Every logged event, oldest first per file; a torn last line (a kill) is skipped."""
        if not self.logs.is_dir():
            return
        records = []
        for path in self.logs.glob("*.jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        yield from sorted(records, key=lambda record: record.get("time", 0))

    def write_run(self, info: dict) -> None:
        write_atomically(self.path / "run.json", json.dumps(info, indent=1).encode())

    def read_run(self) -> dict | None:
        path = self.path / "run.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
