"""The planner: a manifest expanded to units of work, each compared with the atlas and the shards.

A *unit* is one model load; its variants (text sets × quantizations × the output and any lens
layers) are all scored from that load, so a model is loaded once however many vectors it gives.
A variant is decided exactly as ``atlas ingest`` decides it (same key, config id and conflict
rules, atlas.pipeline.units), so the plan skips what ingest stored and the reverse.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from atlas.bulk.manifest import Family, Manifest, SingleModel
from atlas.bulk.shards import ShardDir
from atlas.bulk.sources import SourceError, available_steps, base_model, looks_local, resolve_source
from atlas.errors import AtlasError, InvalidKeyError, StoreError
from atlas.keys import ModelKey
from atlas.layers import LensError
from atlas.pipeline.score import lens_layers
from atlas.pipeline.units import Unit, Variant, variants_of
from atlas.presentation import duration
from atlas.quantize import key_quant, source_label
from atlas.specs import QuantizeError, Settings
from atlas.store import Store, StoredStates, StoredTextSet, needs_writing

BYTES_PER_TOKEN = 4.0  # a rough BPE average, for the token estimate before anything is scored
STATES = ("new", "retry", "scored", "done", "failed", "missing", "conflict")
TODO = ("new", "retry")


class PlanError(AtlasError):
    """A manifest entry that cannot be expanded (no checkpoints found, unknown parent …)."""


@dataclass
class PlannedVariant:
    unit: Unit
    variant: Variant
    state: str = "new"
    note: str = ""


@dataclass
class Plan:
    rows: list[PlannedVariant]
    textsets: dict[str, StoredTextSet]
    history_rate: float | None = None  # tokens/s measured in this shard dir, if any
    failures: dict[str, int] = field(default_factory=dict)  # unit id → failed attempts so far

    def counts(self) -> Counter:
        return Counter(row.state for row in self.rows)

    def work(self, retry_failed: bool = False) -> list[tuple[Unit, list[Variant]]]:
        """Units with variants to score, in manifest order, each with only those variants."""
        states = (*TODO, "failed") if retry_failed else TODO
        todo: dict[str, tuple[Unit, list[Variant]]] = {}
        for row in self.rows:
            if row.state in states:
                todo.setdefault(row.unit.id, (row.unit, []))[1].append(row.variant)
        return list(todo.values())

    def estimated_tokens(self, retry_failed: bool = False) -> int:
        """Tokens to score: each (quantization, text set) pass; lens layers share a pass."""
        total = 0
        for _, variants in self.work(retry_failed):
            passes = {(v.quantize, v.textset) for v in variants}
            total += sum(self._textset_tokens(textset) for _, textset in passes)
        return int(total)

    def _textset_tokens(self, name: str) -> float:
        stored = self.textsets[name]
        return stored.n_texts * stored.mean_bytes / BYTES_PER_TOKEN

    def table(self, show_all: bool = False) -> pl.DataFrame:
        """One row per unit (model load): its variants by state, and the first note."""
        rows: dict[str, dict] = {}
        for row in self.rows:
            entry = rows.setdefault(row.unit.id, {
                "model": str(row.unit.base), "source": row.unit.source,
                "revision": row.unit.revision, "states": Counter(), "note": ""})
            entry["states"][row.state] += 1
            entry["note"] = entry["note"] or row.note
        shown = [r for r in rows.values() if show_all or set(r["states"]) - {"done"}]
        return pl.DataFrame([{**r, "states": ", ".join(f"{n} {s}" for s, n in sorted(
            r["states"].items(), key=lambda item: STATES.index(item[0])))} for r in shown],
            schema={"model": pl.String, "source": pl.String, "revision": pl.String,
                    "states": pl.String, "note": pl.String})

    def summary(self) -> list[str]:
        """What the plan holds and what scoring it would take, as lines to print."""
        counts = self.counts()
        lines = ["vectors: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
                 + f" ({sum(counts.values())} in the manifest)"]
        todo = sum(counts[s] for s in TODO)
        if not todo:
            lines.append("nothing to score")
            return lines
        tokens, rate = self.estimated_tokens(), self.history_rate
        time_note = (f"~{duration(tokens / rate)} for one worker at the {rate:,.0f} tok/s "
                     "measured in this shard dir" if rate else
                     "time: measured once the first models finish (`atlas bulk status`)")
        lines.append(f"to score: {todo} vectors from {len(self.work())} model loads, "
                     f"~{tokens:,} tokens (estimated at 4 bytes/token); {time_note}")
        return lines


def expand(manifest: Manifest) -> list[Unit]:
    """Every unit of the manifest, in its order; sources and parents resolved."""
    units = [unit for family in manifest.families for unit in _family_units(manifest, family)]
    units += [_model_unit(manifest, model) for model in manifest.models]
    by_source = {(u.source, u.revision): u.base for u in units}
    return [_with_parent(manifest, unit, by_source) for unit in units]


def _family_units(manifest: Manifest, family: Family) -> Iterator[Unit]:
    for size, seed in itertools.product(family.sizes, family.seeds):
        values = {"size": size, "seed": seed}
        steps = family.steps
        if steps == "available":
            try:
                steps = available_steps(family.source, family.revision, values, manifest.root)
            except SourceError as exc:
                raise PlanError(f"{manifest.path.name} line {family.line}: {exc}") from None
        for step in steps if steps is not None else (None,):
            point = {**values, "step": step}
            checkpoint = family.checkpoint.format(**point) if family.checkpoint else None
            point["checkpoint"] = checkpoint
            key = ModelKey(family.name, size, seed, family.quant, checkpoint=checkpoint)
            yield _unit(manifest, key, family.source.format(**point),
                        family.revision.format(**point) if family.revision else None,
                        family.parent.format(**point) if family.parent else None,
                        family.settings, family.line)


def _model_unit(manifest: Manifest, model: SingleModel) -> Unit:
    return _unit(manifest, model.key, model.source, model.revision, model.parent,
                 model.settings, model.line)


def _unit(manifest: Manifest, key: ModelKey, source: str, revision: str | None,
          parent: str | None, settings: Settings, line: int) -> Unit:
    """The key's quant is what ``atlas ingest`` would give: the source's own label (a GGUF
    file's type, a GPTQ checkpoint's config), which a manifest ``quant`` must agree with."""
    unit = Unit(key, resolve_source(source, manifest.root), revision, parent, settings, line)
    spec = unit.spec()
    try:
        quant = key_quant(spec, key.quant)
    except QuantizeError as exc:
        raise PlanError(f"{manifest.path.name} line {line}: {key}: {exc}") from None
    quantizing = settings.quantizations != (None,)
    return replace(unit, base=replace(key, quant=quant),
                   source_quant=source_label(spec) if quantizing else None)


def _with_parent(manifest: Manifest, unit: Unit, by_source: dict) -> Unit:
    """``parent = "auto"``: the model card's base_model, which must be a model of this manifest
    (or already a key); a templated parent must form a key."""
    where = f"{manifest.path.name} line {unit.line}: {unit.base}"
    if unit.parent is None:
        return unit
    if unit.parent != "auto":
        try:
            return replace(unit, parent=str(ModelKey.parse(unit.parent)))
        except InvalidKeyError as exc:
            raise PlanError(f"{where}: parent: {exc}") from None
    try:
        base = base_model(unit.source, unit.revision)
    except SourceError as exc:
        raise PlanError(f"{where}: {exc}") from None
    found = by_source.get((resolve_source(base, manifest.root), None))
    if found is None:
        try:
            found = ModelKey.parse(base)
        except InvalidKeyError:
            raise PlanError(f"{where}: its base model {base!r} is not a model of this manifest; "
                            "add it, or set parent = KEY") from None
    return replace(unit, parent=str(found))


def _resolve_layers(unit: Unit) -> tuple[Unit, str]:
    """The lens layers from the model's config (read without the weights); a note if it
    cannot be read."""
    if unit.settings.layers is None:
        return unit, ""
    try:
        layers = lens_layers(unit.spec(), unit.settings.layers)
    except LensError as exc:
        return unit, str(exc)
    if layers is None:
        return unit, "its config cannot be read without loading (lens layers unknown)"
    return replace(unit, layers=tuple(layers)), ""


def make_plan(manifest: Manifest, store: Store, shards: ShardDir, *,
              max_attempts: int = 3) -> Plan:
    """Expand the manifest and state every variant (see ``STATES``)."""
    units = _parents_checked(manifest, store, expand(manifest))
    textsets = _textsets(manifest, store, units)
    failures = _failures(shards)
    ready = shards.ready_variants()
    expanded = []
    for unit in units:
        missing = "" if Path(unit.source).exists() or not looks_local(unit.source) else (
            f"no such path: {unit.source}")
        unit, note = _resolve_layers(unit) if not missing else (unit, missing)
        expanded += [(unit, variant, note) for variant in variants_of(unit)]
    stored = _stored_states(store, textsets, [v for _, v, note in expanded if not note])
    rows = [PlannedVariant(unit, variant, "missing", note) if note else
            _state(unit, variant, stored[variant.textset], ready, failures.get(unit.id, []),
                   max_attempts)
            for unit, variant, note in expanded]
    store.release()
    return Plan(rows, textsets, _history_rate(shards),
                {unit: len(errors) for unit, errors in failures.items()})


def _parents_checked(manifest: Manifest, store: Store, units: list[Unit]) -> list[Unit]:
    """Every parent a key of the atlas or of the manifest (the merger writes parents first),
    as the canonical key it resolves to."""
    produced = {str(key) for unit in units for key, _ in unit.variant_keys()}
    checked = []
    for unit in units:
        if unit.parent is not None:
            try:
                unit = replace(unit, parent=store.resolve_parent(
                    unit.parent, unit.base, pending=produced,
                    fix="add the parent to the manifest or store it first (atlas ingest), or "
                        "drop 'parent'"))
            except StoreError as exc:
                raise PlanError(f"{manifest.path.name} line {unit.line}: {unit.base}: {exc}"
                                ) from None
        checked.append(unit)
    return checked


def _textsets(manifest: Manifest, store: Store, units: list[Unit]) -> dict[str, StoredTextSet]:
    found = {}
    for unit in units:
        for name in unit.settings.textsets:
            if name not in found:
                try:
                    found[name] = store.textset(name)
                except StoreError as exc:
                    raise PlanError(f"{manifest.path.name} line {unit.line}: {exc}") from None
    return found


def _stored_states(store: Store, textsets: dict[str, StoredTextSet],
                   variants: list[Variant]) -> dict[str, StoredStates]:
    """What the atlas holds of the planned variants, one query per text set."""
    keys: dict[str, list[str]] = {name: [] for name in textsets}
    for variant in variants:
        keys[variant.textset].append(str(variant.key))
    return {name: store.stored_states(keys[name], textsets[name].textset_id)
            for name in textsets}


def _state(unit: Unit, variant: Variant, stored: StoredStates, ready: set[str],
           failures: list[str], max_attempts: int) -> PlannedVariant:
    try:
        needed = needs_writing(str(variant.key), unit.source, variant.config_id, stored)
    except StoreError as exc:
        return PlannedVariant(unit, variant, "conflict", str(exc))
    if not needed:
        return PlannedVariant(unit, variant, "done")
    if variant.shard_name in ready:
        return PlannedVariant(unit, variant, "scored", "waiting to be merged")
    if failures:
        state = "failed" if len(failures) >= max_attempts else "retry"
        return PlannedVariant(unit, variant, state,
                              f"{len(failures)} failed attempt(s); last: {failures[-1]}")
    return PlannedVariant(unit, variant)


def _failures(shards: ShardDir) -> dict[str, list[str]]:
    """Errors of the failed attempts per unit since its last success."""
    failures: dict[str, list[str]] = {}
    for event in shards.events():
        if event["event"] == "failed":
            failures.setdefault(event["unit"], []).append(event.get("error", ""))
        elif event["event"] == "done":
            failures.pop(event["unit"], None)
    return failures


def _history_rate(shards: ShardDir) -> float | None:
    """Tokens per second of one worker, loading included, over the finished attempts logged."""
    done = [e for e in shards.events() if e["event"] == "done" and e.get("seconds")]
    seconds = sum(e["seconds"] for e in done)
    return sum(e.get("tokens", 0) for e in done) / seconds if seconds else None
