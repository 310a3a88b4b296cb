"""Text sets: the fixed texts every model is scored on.

A text set is identified by its content (method.md §1): the same texts in the same order hash the
same, whatever the file they came from or the name they are stored under. Metadata (domain,
``pile_idx`` …) rides along but is not part of the identity.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from atlas.errors import TextSetError

MAX_CHUNK_BYTES = 1024
MIN_CHUNK_BYTES = 256  # chunks must be strictly longer than this
DOMAIN_FIELDS = ("domain", "pile_set_name")
TEXT_FORMATS = 'a JSON list of strings, JSONL lines with a "text" field, or a folder of .txt files'
# Characters str.splitlines() breaks on that JSON allows raw inside a string: written escaped.
_RAW_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
# A name is typed in commands, SQL strings and shard file names: the characters of a key part.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class TextSet:
    """Texts in order, with optional per-text domain and metadata."""

    texts: list[str]
    domains: list[str | None] = field(default_factory=list)
    metas: list[dict | None] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        self.domains = self.domains or [None] * n
        self.metas = self.metas or [None] * n
        if not (len(self.domains) == len(self.metas) == n):
            raise ValueError("texts, domains and metas must have the same length")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_bytes(self) -> list[int]:
        return [len(t.encode("utf-8")) for t in self.texts]

    @property
    def mean_bytes(self) -> float:
        """B̄, the mean UTF-8 length: the bits/byte scale of every KL on this set."""
        sizes = self.n_bytes
        return sum(sizes) / len(sizes)

    @property
    def content_hash(self) -> str:
        return content_hash(self.texts)


def check_name(name: str) -> str:
    """A text-set name: 1–64 letters, digits, '_', '.' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TextSetError(
            f"text set name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with "
            "a letter or digit (e.g. --name pile-2k)")
    return name


def content_hash(texts: Iterable[str]) -> str:
    """SHA-256 over the length-framed UTF-8 texts: order-sensitive, metadata-blind."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def chunk_bytes(data: bytes, max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[bytes]:
    """Cut greedily into pieces of at most ``max_bytes``, moving each cut back to a character start.

    This is the reference chunker: chunks are not word-aligned, only UTF-8 aligned.
    """
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # continuation byte
            end -= 1
        yield data[start:end]
        start = end


def chunk_document(text: str, max_bytes: int = MAX_CHUNK_BYTES,
                   min_bytes: int = MIN_CHUNK_BYTES) -> list[str]:
    """Chunks of one document that the reference keeps (more than ``min_bytes`` bytes)."""
    return [
        piece.decode("utf-8")
        for piece in chunk_bytes(text.encode("utf-8"), max_bytes)
        if len(piece) > min_bytes
    ]


def _check_text(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise TextSetError(f"{where}: expected a string, got {type(text).__name__}; every text "
                           "must be a string")
    if not text.strip():
        raise TextSetError(f"{where}: empty text; remove it or give it content")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextSetError(
            f"{where}: not valid Unicode ({exc.reason} at character {exc.start}); "
            "fix the encoding of the source file"
        ) from None
    return text


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TextSetError(
            f"{path}: invalid UTF-8 at byte {exc.start} (line {line}); re-encode the file as UTF-8"
        ) from None


def _domain_of(record: dict) -> str | None:
    for name in DOMAIN_FIELDS:
        if isinstance(record.get(name), str):
            return record[name]
    meta = record.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("pile_set_name"), str):
        return meta["pile_set_name"]
    return None


def _load_json_list(path: Path, content: str) -> TextSet:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise TextSetError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}; fix it, or "
                           "give one JSON object per line (JSONL)") from None
    if not isinstance(data, list):
        raise TextSetError(f"{path}: expected a JSON list of strings, got {type(data).__name__}"
                           "; give [\"text\", …]")
    texts = [_check_text(t, f"{path}: item {i}") for i, t in enumerate(data)]
    return TextSet(texts=texts, source=str(path))


def _jsonl_lines(content: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSONL: lines end at "\\n" (or "\\r\\n") only. ``splitlines`` would
    also cut at U+2028, U+0085, \\x1c … which JSON allows raw inside a string."""
    for lineno, line in enumerate(content.split("\n"), start=1):
        yield lineno, line.removesuffix("\r")


def _load_jsonl(path: Path, content: str) -> TextSet:
    texts, domains, metas = [], [], []
    for lineno, line in _jsonl_lines(content):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSetError(f"{path}:{lineno}: invalid JSON: {exc.msg}; each line must be "
                               'one JSON object such as {"text": "…"}') from None
        if not isinstance(record, dict) or "text" not in record:
            raise TextSetError(f'{path}:{lineno}: expected an object with a "text" field; give '
                               'each line as {"text": "…"} (other fields are kept)')
        texts.append(_check_text(record["text"], f"{path}:{lineno}"))
        domains.append(_domain_of(record))
        extra = {k: v for k, v in record.items() if k != "text"}
        metas.append(extra or None)
    return TextSet(texts=texts, domains=domains, metas=metas, source=str(path))


def _load_folder(path: Path) -> TextSet:
    """Each ``.txt`` file is a document cut by the reference chunker; its folder is its domain."""
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise TextSetError(f"{path}: no .txt files in this folder")
    texts, domains, metas = [], [], []
    for file in files:
        relative = file.relative_to(path)
        domain = relative.parent.as_posix() if relative.parent != Path(".") else None
        for chunk_idx, chunk in enumerate(chunk_document(_read_utf8(file))):
            texts.append(chunk)
            domains.append(domain)
            metas.append({"file": relative.as_posix(), "chunk_idx": chunk_idx})
    return TextSet(texts=texts, domains=domains, metas=metas, source=str(path))


def load_textset(path: str | Path) -> TextSet:
    """Read a JSON list of strings, a JSONL file with a ``text`` field, or a folder of ``.txt``."""
    path = Path(path)
    if not path.exists():
        raise TextSetError(f"{path}: no such file or folder; give the path of {TEXT_FORMATS}")
    if path.is_dir():
        textset = _load_folder(path)
    else:
        content = _read_utf8(path)
        if not content.strip():
            raise TextSetError(f"{path}: the file is empty; give it texts ({TEXT_FORMATS})")
        is_list = content.lstrip().startswith("[")  # by content: suffixes are unreliable
        textset = (_load_json_list if is_list else _load_jsonl)(path, content)
    if not textset.texts:
        raise TextSetError(f"{path}: no texts found (folders keep only chunks over 256 bytes)")
    return textset


def write_jsonl(textset: TextSet, path: str | Path) -> Path:
    """Write ``{"text", "domain", **meta}`` lines: what ``load_textset`` reads back unchanged.

    U+0085, U+2028 and U+2029 are escaped, so readers that split lines on them read it too."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        for text, domain, meta in zip(textset.texts, textset.domains, textset.metas, strict=True):
            record = {"text": text, **({"domain": domain} if domain is not None else {}),
                      **(meta or {})}
            line = json.dumps(record, ensure_ascii=False)
            for raw, escaped in _RAW_LINE_BREAKS.items():
                line = line.replace(raw, escaped)
            out.write(line + "\n")
    return path
