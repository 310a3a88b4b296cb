"""The published release of the reference papers (their ``1000models/`` folder), imported whole
or in part, and the reference scorer's per-model JSONL files.

What each file becomes:

- ``texts-*.jsonl``: the text set (default name ``pile-10k``; domains from ``pile_set_name``).
- ``raw_log-likelihood_*.pkl``: one vector per hub model (the source of truth for KL).
- ``model-data-*.pkl``: each model's key fields (family from ``model_type``, size from
  ``model_size``), its hub metadata (``hub_models``), lineage from its ``base_model:`` tags
  (``model_lineage``; the single ``base_model:finetune:`` base, when stored, is its ``parent``)
  and its Open LLM Leaderboard v1 scores (``model_metrics``, source
  ``open-llm-leaderboard-v1``); its ``log-likelihood-10k`` vectors stand in for the raw file.
- ``name_type_color_*.pkl``: the figure type, colour and table type of each model.
- ``clipped_log-likelihood_*.pkl``: checked to equal max(raw, floor) exactly and recorded as a
  ``clip`` view (threshold, q), not as more models.

Keys: ``TYPE-SIZE@ORG--NAME`` — family the model type, size the published billions (3
significant digits, ``b``; ``na`` when unknown), checkpoint the hub id with ``/`` written ``--``
(the scorer's file names). Hub ids use only ``[A-Za-z0-9_.-]`` and never ``--``, so the rule is
one-to-one; other characters become ``_`` and the key gains ``.`` and 8 hex digits of the id's
SHA-256. A hub id the atlas holds already (``models.source``) keeps its stored key.

Everything is read and checked before anything is written; the vectors are then written in
batches (``Store.write_vectors``), each one transaction, so a killed import leaves whole
batches only and re-running it completes it; re-importing is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas.errors import ImportFormatError
from atlas.imports import as_vector, load_pickle
from atlas.keys import ModelKey
from atlas.store import Store, StoredTextSet, VectorRecord
from atlas.textsets import load_textset

DEFAULT_TEXTSET = "pile-10k"
LEADERBOARD = "open-llm-leaderboard-v1"
SCORE_PREFIX = "score_v1_"
BATCH = 128  # vectors per transaction
FILES = {  # what each release file is called (any N), searched for under the folder
    "texts": "texts-*.jsonl", "raw": "raw_log-likelihood_*.pkl",
    "clipped": "clipped_log-likelihood_*.pkl", "metadata": "model-data-*.pkl",
    "colors": "name_type_color_*.pkl"}
LINEAGE = ("finetune", "merge", "adapter", "quantized")
_NOT_KEY = re.compile(r"[^A-Za-z0-9_.-]")
SCORER_DTYPES = ("float16", "bfloat16", "float32", "float64")


def size_label(model_size) -> str:
    """``7.241`` (billions) → ``7.24b``; unknown → ``na``."""
    try:
        value = float(model_size)
    except (TypeError, ValueError):
        return "na"
    if not math.isfinite(value) or value <= 0:
        return "na"
    return np.format_float_positional(value, precision=3, fractional=False, trim="-") + "b"


def hub_key(hub_id: str, model_type: str | None = None, model_size=None) -> ModelKey:
    """The key rule of the module docstring."""
    family = _NOT_KEY.sub("_", str(model_type or "")).strip("-") or "hub"
    name = hub_id.replace("/", "--")
    cleaned = _NOT_KEY.sub("_", name)
    if cleaned != name:
        cleaned += "." + hashlib.sha256(hub_id.encode()).hexdigest()[:8]
    return ModelKey(family=family, size=size_label(model_size), checkpoint=cleaned)


def lineage(tags) -> list[tuple[str, str]]:
    """(relation, base hub id) of every ``base_model:`` tag, in order, without repeats."""
    found: list[tuple[str, str]] = []
    for tag in tags or ():
        if not isinstance(tag, str) or not tag.startswith("base_model:"):
            continue
        rest = tag.removeprefix("base_model:")
        kind, _, base = rest.partition(":")
        item = (kind, base) if kind in LINEAGE and base else ("base", rest)
        if item not in found:
            found.append(item)
    return found


def single_finetune_base(tags) -> str | None:
    """The hub id of the one ``base_model:finetune:`` base (None for none or several)."""
    bases = [base for relation, base in lineage(tags) if relation == "finetune"]
    return bases[0] if len(bases) == 1 else None


@dataclass
class ReleaseModel:
    """One hub model of the release: its vector, metadata and figure entry."""

    hub_id: str
    loglik: np.ndarray
    file: Path
    meta: dict = field(default_factory=dict)
    figure: tuple | None = None
    key: ModelKey | None = None


@dataclass
class ReleaseReport:
    textset: str
    textset_new: bool
    written: int
    skipped: int
    parents: int
    metrics: int
    clip: dict | None
    files: dict[str, str]


def find_files(folder: Path) -> dict[str, Path]:
    """The release files under ``folder`` (the release or its ``data/``), by role."""
    if not folder.is_dir():
        raise ImportFormatError(f"{folder}: not a folder; give the release folder (1000models/) "
                                "or its data/ folder")
    found = {}
    for role, pattern in FILES.items():
        matches = sorted(folder.rglob(pattern))
        if len(matches) > 1:
            names = ", ".join(map(str, matches))
            raise ImportFormatError(f"{folder}: several {pattern} files ({names}); keep one "
                                    "per release folder")
        if matches:
            found[role] = matches[0]
    if not ({"raw", "metadata"} & found.keys()):
        raise ImportFormatError(
            f"{folder}: no raw_log-likelihood_*.pkl or model-data-*.pkl under it; give the "
            "release folder (1000models/) or its data/ folder")
    return found


def _name_vectors(path: Path, n_texts: int) -> dict[str, np.ndarray]:
    data = load_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ImportFormatError(f"{path}: expected a dict of hub name → log-likelihoods")
    return {name: as_vector(values, f"{path}: {name}", n_texts)
            for name, values in data.items()}


def _metadata(path: Path) -> list[dict]:
    data = load_pickle(path)
    if not isinstance(data, list) or not all(
            isinstance(d, dict) and isinstance(d.get("model_name"), str) for d in data):
        raise ImportFormatError(f"{path}: expected a list of dicts with a 'model_name' (the "
                                "release's model-data pickle)")
    return data


def _figures(path: Path) -> dict[str, tuple]:
    data = load_pickle(path)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, tuple | list) and len(r) == 4
                                             for r in rows):
        raise ImportFormatError(f"{path}: expected {{'data': [(model_name, modeltype_fig1, "
                                "color, modeltype_table7), …]}} (the release's colour pickle)")
    return {str(row[0]): tuple(row) for row in rows}


def read_release(files: dict[str, Path], n_texts: int) -> list[ReleaseModel]:
    """Every model of the release with its vector (raw file, else the metadata's)."""
    raw = _name_vectors(files["raw"], n_texts) if "raw" in files else {}
    metas = _metadata(files["metadata"]) if "metadata" in files else []
    figures = _figures(files["colors"]) if "colors" in files else {}
    models: dict[str, ReleaseModel] = {}
    for meta in metas:
        name = meta["model_name"]
        if name in models:
            raise ImportFormatError(f"{files['metadata']}: {name} is listed twice; keep one")
        if name in raw:
            models[name] = ReleaseModel(name, raw[name], files["raw"], meta)
            continue
        where = f"{files['metadata']}: {name}: log-likelihood-10k"
        if meta.get("log-likelihood-10k") is None:
            raise ImportFormatError(f"{where} is missing and the raw file does not hold the "
                                    "model; give raw_log-likelihood_*.pkl too")
        models[name] = ReleaseModel(name, as_vector(meta["log-likelihood-10k"], where, n_texts),
                                    files["metadata"], meta)
    for name, vector in raw.items():
        models.setdefault(name, ReleaseModel(name, vector, files["raw"]))
    for model in models.values():
        model.figure = figures.get(model.hub_id)
    return list(models.values())


def check_clip(files: dict[str, Path], models: list[ReleaseModel], n_texts: int) -> dict:
    """The clipped file as a view of the raw one: clipped == max(raw, floor) exactly, floor the
    smallest clipped value; returns the view's params (threshold, q, fraction clipped)."""
    path = files["clipped"]
    if "raw" not in files:
        raise ImportFormatError(f"{path}: the clipped vectors are a view of the raw ones; give "
                                "raw_log-likelihood_*.pkl with it (clipping loses what KL needs)")
    clipped = _name_vectors(path, n_texts)
    raw = {m.hub_id: m.loglik for m in models}
    missing = sorted(set(clipped) - set(raw))
    if missing:
        raise ImportFormatError(f"{path}: {len(missing)} models are not in the raw file (e.g. "
                                f"{missing[0]}); use the clipped file of the same release")
    threshold = min(float(v.min()) for v in clipped.values())
    for name, values in clipped.items():
        expected = np.maximum(raw[name], threshold)
        if not np.array_equal(values, expected):
            i = int(np.flatnonzero(values != expected)[0])
            raise ImportFormatError(
                f"{path}: {name}, text {i}: {values[i]!r} is not max(raw {raw[name][i]!r}, "
                f"{threshold!r}); this is not the clipped view of {files['raw'].name}")
    everything = np.concatenate([raw[name] for name in sorted(clipped)])
    quantile = float(np.quantile(everything, 0.02))
    return {"threshold": threshold,
            "q": 0.02 if math.isclose(quantile, threshold, rel_tol=1e-6) else None,
            "fraction_clipped": float(np.mean(everything < threshold)),
            "file": str(path.resolve()), "models": sorted(clipped)}


def model_set_hash(keys) -> str:
    return hashlib.sha256("".join(f"{k}\n" for k in sorted(keys)).encode()).hexdigest()


def assign_keys(models: list[ReleaseModel], stored: dict[str, str]) -> None:
    """Each model's key (a stored hub id keeps its key); two models on one key are refused."""
    owners: dict[str, str] = {}
    for model in models:
        meta = model.meta
        model.key = (ModelKey.parse(stored[model.hub_id]) if model.hub_id in stored
                     else hub_key(model.hub_id, meta.get("model_type"), meta.get("model_size")))
        other = owners.setdefault(str(model.key), model.hub_id)
        if other != model.hub_id:
            raise ImportFormatError(f"{model.hub_id} and {other} both get the key {model.key}; "
                                    "rename one in the release files")


def _parent_first(models: list[ReleaseModel]) -> list[ReleaseModel]:
    """Models ordered so that a parent in the release comes before its fine-tunes."""
    by_id = {m.hub_id: m for m in models}
    ordered: dict[str, ReleaseModel] = {}

    def place(model: ReleaseModel, chain: tuple[str, ...]) -> None:
        if model.hub_id in ordered or model.hub_id in chain:  # a tag cycle: break it here
            return
        base = by_id.get(single_finetune_base(model.meta.get("tags")) or "")
        if base is not None and base is not model:
            place(base, (*chain, model.hub_id))
        ordered.setdefault(model.hub_id, model)

    for model in models:
        place(model, ())
    return list(ordered.values())


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _rows(models: list[ReleaseModel], keys: dict[str, str]) -> dict[str, pa.Table]:
    """hub_models, model_lineage and metric_values rows of ``models``."""
    hub, lines, metrics = [], [], []
    for m in models:
        meta, key = m.meta, str(m.key)
        figure = m.figure or (None, None, None, None)
        color = None if figure[2] is None else [float(c) for c in figure[2]]
        hub.append({"key": key, "hub_id": m.hub_id, "model_type": _str(meta.get("model_type")),
                    "model_size": _number(meta.get("model_size")),
                    "created_at": _str(meta.get("created_at")),
                    "downloads": None if _number(meta.get("downloads")) is None
                    else int(meta["downloads"]),
                    "tags": [str(t) for t in meta.get("tags") or []],
                    "figure_type": _str(figure[1]), "figure_color": color,
                    "table_type": _str(figure[3]), "release_file": str(m.file.resolve())})
        for relation, base in lineage(meta.get("tags")):
            lines.append({"key": key, "relation": relation, "base_source": base,
                          "base_key": keys.get(base)})
        for name, value in meta.items():
            if name.startswith(SCORE_PREFIX) and _number(value) is not None:
                metrics.append({"key": key, "metric": name.removeprefix(SCORE_PREFIX),
                                "value": _number(value), "source": LEADERBOARD})
    schemas = {
        "hub_models": pa.schema([("key", pa.string()), ("hub_id", pa.string()),
                                 ("model_type", pa.string()), ("model_size", pa.float64()),
                                 ("created_at", pa.string()), ("downloads", pa.int64()),
                                 ("tags", pa.list_(pa.string())), ("figure_type", pa.string()),
                                 ("figure_color", pa.list_(pa.float64())),
                                 ("table_type", pa.string()), ("release_file", pa.string())]),
        "model_lineage": pa.schema([("key", pa.string()), ("relation", pa.string()),
                                    ("base_source", pa.string()), ("base_key", pa.string())]),
        "metric_values": pa.schema([("key", pa.string()), ("metric", pa.string()),
                                    ("value", pa.float64()), ("source", pa.string())])}
    tables = {"hub_models": hub, "model_lineage": lines, "metric_values": metrics}
    return {name: pa.Table.from_pylist(rows, schema=schemas[name])
            for name, rows in tables.items() if rows}


def _str(value) -> str | None:
    return None if value is None else str(value)


def config_id(values: np.ndarray) -> str:
    """What makes two imports of a vector the same (``atlas.imports``' rule)."""
    stored = np.asarray(values, dtype=np.float64).astype(np.float32)
    return "import-" + hashlib.sha256(stored.tobytes()).hexdigest()[:16]


def _record(model: ReleaseModel, keys: dict[str, str]) -> VectorRecord:
    base = single_finetune_base(model.meta.get("tags"))
    meta = model.meta
    provenance = {"imported_from": str(model.file.resolve()), "format": "modelmap-release",
                  "hub_id": model.hub_id, "created_at": _str(meta.get("created_at")),
                  "downloads": _number(meta.get("downloads")),
                  "tags": [str(t) for t in meta.get("tags") or []]}
    return VectorRecord(model.key, model.loglik, config_id(model.loglik), provenance,
                        parent=keys.get(base) if base else None, source=model.hub_id)


def _stored_sources(store: Store) -> dict[str, str]:
    with store.connect() as con:
        rows = con.execute("SELECT source, key FROM models WHERE source IS NOT NULL").fetchall()
    return dict(rows)


def _textset(store: Store, files: dict[str, Path], name: str | None):
    """The text set: the release's JSONL (read, stored later), or a stored set named."""
    if "texts" in files:
        return load_textset(files["texts"]), name or DEFAULT_TEXTSET
    if name is None:
        raise ImportFormatError("the release folder holds no texts-*.jsonl: name the stored text "
                                "set its vectors were scored on with --textset")
    return store.textset(name), name


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def import_release(store: Store, folder: str | Path, textset: str | None = None,
                   force: bool = False, batch: int = BATCH) -> ReleaseReport:
    """Import a release folder (any subset of its files); see the module docstring."""
    folder = Path(folder)
    files = find_files(folder)
    texts, name = _textset(store, files, textset)
    n_texts = texts.n_texts if isinstance(texts, StoredTextSet) else len(texts)
    models = read_release(files, n_texts)
    clip = check_clip(files, models, n_texts) if "clipped" in files else None
    stored_sources = _stored_sources(store)
    assign_keys(models, stored_sources)
    keys = {**stored_sources, **{m.hub_id: str(m.key) for m in models}}
    if isinstance(texts, StoredTextSet):
        stored, new = texts, False
    else:
        stored, new = store.add_textset(texts, name)
    written = []
    ordered = _parent_first(models)
    for chunk in batches(ordered, batch):
        also = _rows(chunk, keys)
        if clip is not None and chunk[-1] is ordered[-1]:  # the view with the last batch
            also.update(_clip_view(clip, name, keys))
        written += store.write_vectors([_record(m, keys) for m in chunk],
                                       textset_id=stored.textset_id, force=force, also=also)
    parents = sum(1 for m in models if keys.get(single_finetune_base(m.meta.get("tags")) or ""))
    metrics = sum(1 for m in models for k, v in m.meta.items()
                  if k.startswith(SCORE_PREFIX) and _number(v) is not None)
    return ReleaseReport(name, new, sum(written), len(written) - sum(written), parents, metrics,
                         clip and {k: v for k, v in clip.items() if k != "models"},
                         {role: str(path) for role, path in files.items()})


def _clip_view(clip: dict, textset: str, keys: dict[str, str]) -> dict[str, pa.Table]:
    params = {k: v for k, v in clip.items() if k != "models"}
    return {"views": pa.Table.from_pylist([{
        "name": f"{textset}-clipped", "kind": "clip", "params": json.dumps(params, sort_keys=True),
        "textset": textset,
        "model_set_hash": model_set_hash(keys[name] for name in clip["models"])}])}


# the reference scorer's per-model files ----------------------------------------------------------
def scorer_name(path: Path) -> tuple[str, str | None]:
    """``ORG--NAME_float16.jsonl`` → (``ORG/NAME``, ``float16``)."""
    stem, dtype = path.stem, None
    head, _, tail = stem.rpartition("_")
    if head and tail in SCORER_DTYPES:
        stem, dtype = head, tail
    return stem.replace("--", "/", 1), dtype


def read_scorer_file(path: Path, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihoods, token counts) in text order from lines {index, num-tokens,
    log-likelihood, …}; every index 0 … N−1 exactly once."""
    loglik = np.full(n_texts, np.nan)
    tokens = np.zeros(n_texts, dtype=np.int64)
    seen = np.zeros(n_texts, dtype=bool)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
                index, value = int(row["index"]), float(row["log-likelihood"])
                count = int(row.get("num-tokens") or 0)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ImportFormatError(f"{where}: not a scorer line ({exc}); each line is "
                                        '{"index", "num-tokens", "log-likelihood", …}') from None
            if not 0 <= index < n_texts or seen[index]:
                raise ImportFormatError(f"{where}: index {index} is "
                                        + ("repeated" if 0 <= index < n_texts else
                                           f"outside the text set's 0…{n_texts - 1}")
                                        + "; import it into the text set it was scored on")
            loglik[index], tokens[index], seen[index] = value, count, True
    if not seen.all():
        raise ImportFormatError(f"{path}: no line for text {int(np.flatnonzero(~seen)[0])} "
                                f"({int((~seen).sum())} of {n_texts} missing); score every text "
                                "of the set (--textset names the set it was scored on)")
    return as_vector(loglik, str(path), n_texts), tokens


def import_scorer_files(store: Store, path: Path, textset: str, force: bool = False
                        ) -> list[tuple[str, bool]]:
    """Import ``ORG--NAME_DTYPE.jsonl`` files (a folder of them, or one): each read and checked
    before anything is written, then written in batches; a hub id the atlas holds keeps its key
    (e.g. after the release's metadata), others get ``hub-na@ORG--NAME``."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ImportFormatError(f"{path}: no scorer files (ORG--NAME_float16.jsonl) there")
    stored = store.textset(textset)
    sources = _stored_sources(store)
    records = []
    for file in files:
        hub_id, dtype = scorer_name(file)
        loglik, tokens = read_scorer_file(file, stored.n_texts)
        key = ModelKey.parse(sources[hub_id]) if hub_id in sources else hub_key(hub_id)
        provenance = {"imported_from": str(file.resolve()), "format": "scorer-jsonl",
                      "hub_id": hub_id, "dtype": dtype}
        records.append(VectorRecord(key, loglik, config_id(loglik), provenance, source=hub_id,
                                    n_tokens=tokens))
    keys = [str(r.key) for r in records]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ImportFormatError(f"{path}: several files give the key {twice[0]}; keep one file "
                                "per model")
    written = []
    for chunk in batches(records, BATCH):
        written += store.write_vectors(chunk, textset_id=stored.textset_id, force=force)
    return list(zip(keys, written, strict=True))
