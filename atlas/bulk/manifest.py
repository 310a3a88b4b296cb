"""The bulk manifest: a TOML file naming model families (grids of sizes × seeds × checkpoints)
and single models (fine-tunes with parents) to put in the atlas.

The whole file is checked before anything is planned, and every problem is reported at once with
its line, because a release manifest is long and a run is expensive. ``tomllib`` keeps no
positions, so ``_Lines`` finds each table header and ``key =`` line by scanning the text.
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from atlas.errors import AtlasError, InvalidKeyError
from atlas.keys import ModelKey, quant_label
from atlas.layers import LensError, parse_layers
from atlas.specs import DTYPE_NAMES, QuantizeError, QuantSpec, Settings

DEVICES = ("auto", "cpu", "cuda", "mps")
SETTING_FIELDS = ("textset", "textsets", "dtype", "device", "batch_size", "max_length",
                  "sketch_dim", "layers", "quantizations", "trust_remote_code")
FAMILY_FIELDS = ("name", "source", "revision", "sizes", "seeds", "steps", "checkpoint", "quant",
                 "parent", *SETTING_FIELDS)
MODEL_FIELDS = ("key", "source", "revision", "parent", *SETTING_FIELDS)
TABLES = {"defaults": SETTING_FIELDS, "family": FAMILY_FIELDS, "model": MODEL_FIELDS}
PLACEHOLDERS = ("size", "seed", "step", "checkpoint")
# Pythia's 154 checkpoints: 0, 1, 2, 4, …, 512, then every 1,000 steps to 143,000.
PYTHIA = {"log_until": 512, "every": 1000, "stop": 143000}
SCHEDULE_FIELDS = ("start", "stop", "every", "log_until")
NO_QUANTIZATION = "none"  # or "": atlas.keys.quant_label
MAX_LOADS = 20_000  # model loads a manifest may plan (--max-loads): a typo in a schedule
# (every = 1 for every = 1000) would otherwise plan for minutes and gigabytes


class ManifestError(AtlasError, ValueError):
    """A manifest that cannot be planned: every problem, each with its line."""


@dataclass(frozen=True)
class Family:
    """``[[family]]``: one model per point of the grid sizes × seeds × steps."""

    name: str
    source: str  # template: {size} {seed} {step} {checkpoint}
    revision: str | None
    sizes: tuple[str, ...]
    seeds: tuple[int | None, ...]
    steps: tuple[int, ...] | str | None  # a list, "available" (listed at plan time) or None
    checkpoint: str | None  # label template, "step{step}" by default
    quant: str | None  # label of weights that come quantized (GGUF …)
    parent: str | None  # key template, or "auto" (the model card's base_model)
    settings: Settings
    line: int


@dataclass(frozen=True)
class SingleModel:
    """``[[model]]``: one model under one key, e.g. a fine-tune with its parent."""

    key: ModelKey
    source: str
    revision: str | None
    parent: str | None
    settings: Settings
    line: int


@dataclass
class Manifest:
    path: Path
    families: list[Family] = field(default_factory=list)
    models: list[SingleModel] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """Relative local sources are relative to the manifest's folder."""
        return self.path.parent


class _Lines:
    """Where each table header and ``key =`` line is (1-based); a heuristic scan of the text."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: Counter[str] = Counter()
        current = ("", 0)
        for number, line in enumerate(text.splitlines(), 1):
            if match := re.match(r"\s*\[\[\s*([\w.-]+)\s*\]\]", line):
                current = (match[1], counts[match[1]])
                counts[match[1]] += 1
                self.tables[current] = number
            elif match := re.match(r"\s*\[\s*([\w.-]+)\s*\]", line):
                current = (match[1], 0)
                self.tables[current] = number
            elif match := re.match(r"\s*([\w-]+|\"[^\"]*\")\s*=", line):
                self.keys.setdefault((*current, match[1].strip('"')), number)

    def of(self, table: str, index: int, key: str | None = None) -> int:
        found = self.keys.get((table, index, key)) if key else None
        return found or self.tables.get((table, index), 1)


class _Checker:
    """Collects every error of one table with its line."""

    def __init__(self, path: Path, lines: _Lines, table: str, index: int, where: str,
                 errors: list[str], max_loads: int = MAX_LOADS) -> None:
        self.path, self.lines, self.table, self.index = path, lines, table, index
        self.where, self.errors, self.max_loads = where, errors, max_loads

    def line(self, key: str | None = None) -> int:
        return self.lines.of(self.table, self.index, key)

    def error(self, key: str | None, message: str) -> None:
        self.errors.append(f"{self.path.name} line {self.line(key)}: {self.where}: {message}")

    def unknown(self, data: dict, allowed: tuple[str, ...]) -> None:
        for name in data:
            if name not in allowed:
                near = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else (
                    f"; allowed: {', '.join(allowed)}")
                self.error(name, f"unknown field '{name}'{hint}")

    def typed(self, data: dict, key: str, kind: type | tuple[type, ...], what: str):
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.error(key, f"'{key}' must be {what}, not {value!r}")
            return None
        return value

    def string_list(self, data: dict, key: str) -> tuple[str, ...] | None:
        value = data.get(key)
        if value is None:
            return None
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v for v in value)):
            self.error(key, f"'{key}' must be a non-empty list of strings, not {value!r}")
            return None
        return self.unique(key, value)

    def unique(self, key: str, values: list) -> tuple | None:
        repeated = sorted(str(v) for v, n in Counter(values).items() if n > 1)
        if repeated:
            self.error(key, f"'{key}' lists {', '.join(repeated)} more than once")
            return None
        return tuple(values)

    def int_list(self, data: dict, key: str) -> tuple[int, ...] | None:
        value = data.get(key)
        if value is None:
            return None
        if (not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            self.error(key, f"'{key}' must be a non-empty list of non-negative integers, "
                            f"not {value!r}")
            return None
        return self.unique(key, value)


def read_manifest(path: str | Path, max_loads: int = MAX_LOADS) -> Manifest:
    """Parse and validate a manifest; raises ``ManifestError`` listing every problem.
    ``max_loads`` bounds the model loads (grid points and models) it may expand to."""
    path = Path(path)
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path.name}: not valid TOML: {exc}") from None
    lines = _Lines(text)
    errors: list[str] = []
    manifest = Manifest(path.resolve())
    top = _Checker(path, lines, "", 0, "top level", errors)
    top.unknown(data, tuple(TABLES))
    defaults_data = data.get("defaults", {})
    if not isinstance(defaults_data, dict):
        top.error("defaults", "[defaults] must be a table")
        defaults_data = {}
    defaults = _settings(_Checker(path, lines, "defaults", 0, "[defaults]", errors),
                         defaults_data, Settings())
    for table, reader, into in (("family", _family, manifest.families),
                                ("model", _model, manifest.models)):
        entries = data.get(table, [])
        if not isinstance(entries, list):
            top.error(table, f"write each {table} as a [[{table}]] table")
            continue
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                top.error(table, f"{table} entry #{index + 1} is {entry!r}: write each {table} "
                                 f"as a [[{table}]] table")
                continue
            name = entry.get("name") or entry.get("key") or ""
            where = f"[[{table}]] #{index + 1}" + (f" '{name}'" if name else "")
            checker = _Checker(path, lines, table, index, where, errors, max_loads)
            checker.unknown(entry, TABLES[table])
            parsed = reader(checker, entry, defaults)
            if parsed is not None:
                into.append(parsed)
    if not manifest.families and not manifest.models and not errors:
        errors.append(f"{path.name}: no [[family]] or [[model]] entries: nothing to do")
    _check_duplicates(manifest, path, errors)
    errors.extend(_missing_textsets(manifest))
    if not errors and (loads := _loads(manifest)) > max_loads:
        errors.append(f"{path.name}: {loads:,} model loads (sizes × seeds × steps of every "
                      f"family, and the models), more than the limit of {max_loads:,}; "
                      + TOO_MANY)
    if errors:
        raise ManifestError(f"{len(errors)} problem(s) in {path}:\n  " + "\n  ".join(errors))
    return manifest


def _read_text(path: Path) -> str:
    """The manifest's text; a file that is not UTF-8 is named with the line of its first bad
    byte (TOML is UTF-8 by definition)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror}); check the "
                            "path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ManifestError(f"{path} line {line}: not UTF-8 (byte {data[exc.start]:#04x} at "
                            f"offset {exc.start}); save the manifest as UTF-8") from None


def _settings(check: _Checker, data: dict, base: Settings) -> Settings:
    """The entry's settings over ``base``; invalid fields are reported and keep the base."""
    values: dict = {}
    if "textset" in data and "textsets" in data:
        check.error("textsets", "give 'textset' or 'textsets', not both")
    if (one := check.typed(data, "textset", str, "a text set name")) is not None:
        values["textsets"] = (one,)
    if (many := check.string_list(data, "textsets")) is not None:
        values["textsets"] = many
    for key, choices in (("dtype", ("auto", *DTYPE_NAMES)), ("device", DEVICES)):
        value = check.typed(data, key, str, "a string")
        if value is not None and value not in choices:
            check.error(key, f"{key} {value!r}: choose one of {', '.join(choices)}")
        elif value is not None:
            values[key] = value
    for key, low in (("batch_size", 1), ("max_length", 2), ("sketch_dim", 0)):
        value = check.typed(data, key, int, "an integer")
        if value is not None and value < low:
            check.error(key, f"'{key}' must be at least {low}, not {value}")
        elif value is not None:
            values[key] = value
    if (trust := check.typed(data, "trust_remote_code", bool, "true or false")) is not None:
        values["trust_remote_code"] = trust
    if "layers" in data:
        values["layers"] = _layers(check, data["layers"])
    if (labels := check.string_list(data, "quantizations")) is not None:
        values["quantizations"] = _quantizations(check, labels)
    return Settings(**{**base.__dict__, **values})


def _quantizations(check: _Checker, labels: tuple[str, ...]) -> tuple[str | None, ...]:
    """Labels of quantizations applied after loading (atlas.quantize); "none": as loaded."""
    for label in labels:
        if quant_label(label) is not None:
            try:
                QuantSpec.parse(label)
            except QuantizeError as exc:
                check.error("quantizations", f"{exc} (or \"{NO_QUANTIZATION}\": the weights as "
                                             "loaded)")
    return tuple(quant_label(label) for label in labels)


def _layers(check: _Checker, value) -> str | tuple[int, ...] | None:
    try:
        parsed = parse_layers(value if isinstance(value, (str, list)) else [value])
    except LensError as exc:
        check.error("layers", f"layers {value!r}: give \"all\", \"0-4,8\" or a list of "
                              f"hidden-state indices ({exc})")
        return None
    return parsed if parsed == "all" else tuple(parsed)


def _template(check: _Checker, data: dict, key: str, allowed: tuple[str, ...],
              required: bool = False) -> str | None:
    value = check.typed(data, key, str, "a string")
    if value is None:
        if required and key not in data:
            check.error(None, f"missing '{key}' (where the model is: a hub id, a local folder "
                              "or a .gguf file, e.g. \"EleutherAI/pythia-{size}\")")
        return None
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        check.error(key, f"'{key}' {value!r}: {exc}")
        return None
    for name in sorted(names - set(allowed)):
        check.error(key, f"'{key}' uses {{{name}}}: "
                    + (f"placeholders here are {', '.join('{' + a + '}' for a in allowed)}"
                       if allowed else "a single model's fields have no placeholders"))
    return None if names - set(allowed) else value


def _steps(check: _Checker, value) -> tuple[int, ...] | str | None:
    if value is None:
        return None
    if value == "pythia":
        return schedule(**PYTHIA)
    if value == "available":
        return "available"
    if isinstance(value, dict):
        unknown = [k for k in value if k not in SCHEDULE_FIELDS]
        numbers = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                      for v in value.values())
        if unknown or not numbers or "stop" not in value or "every" not in value:
            check.error("steps", f"steps schedule {value!r}: give non-negative integers "
                                 "{every = N, stop = M [, start = S, log_until = L]}")
            return None
        if value["every"] < 1:
            check.error("steps", "steps schedule: 'every' must be at least 1")
            return None
        if (length := schedule_length(**value)) > check.max_loads:
            check.error("steps", f"steps schedule {value!r} has {length:,} steps, more than "
                                 f"the limit of {check.max_loads:,} model loads; " + TOO_MANY)
            return None
        return schedule(**value)
    if isinstance(value, list):
        return check.int_list({"steps": value}, "steps")
    check.error("steps", f"steps {value!r}: give a list of steps, \"pythia\", \"available\" "
                         "(the revisions or folders that exist) or a schedule table "
                         "{every = N, stop = M, log_until = L}")
    return None


TOO_MANY = ("check the steps, or raise the limit with `--max-loads N` "
            "(atlas bulk plan/run)")


def schedule_length(stop: int, every: int, start: int = 0, log_until: int = 0) -> int:
    """How many steps ``schedule`` gives, counted without making them."""
    regular = range(start, stop + 1, every)
    early = {0} | {2**k for k in range(64) if 2**k <= log_until}
    return len(regular) + sum(step not in regular for step in early)


def _loads(manifest: Manifest) -> int:
    """Model loads of the manifest ("available" steps count once: they are listed later)."""
    return len(manifest.models) + sum(
        len(f.sizes) * len(f.seeds) * (len(f.steps) if isinstance(f.steps, tuple) else 1)
        for f in manifest.families)


def schedule(stop: int, every: int, start: int = 0, log_until: int = 0) -> tuple[int, ...]:
    """Pythia-like checkpoints: 0 and the powers of two up to ``log_until``, then every
    ``every`` steps from ``start`` to ``stop`` (inclusive)."""
    steps = {0} | {2**k for k in range(64) if 2**k <= log_until}
    steps |= set(range(start, stop + 1, every))
    return tuple(sorted(steps))


def _family(check: _Checker, data: dict, defaults: Settings) -> Family | None:
    """One ``[[family]]`` entry, with its grid checked against the placeholders it uses."""
    name = check.typed(data, "name", str, "a family name")
    if name is None and "name" not in data:
        check.error(None, "missing 'name' (the family in the model keys, e.g. \"pythia\")")
    source = _template(check, data, "source", PLACEHOLDERS, required=True)
    revision = _template(check, data, "revision", PLACEHOLDERS)
    checkpoint = _template(check, data, "checkpoint", ("size", "seed", "step"))
    sizes = check.string_list(data, "sizes")
    if sizes is None and "sizes" not in data:
        check.error(None, "missing 'sizes' (e.g. sizes = [\"70m\", \"160m\"])")
    seeds = check.int_list(data, "seeds")
    steps = _steps(check, data.get("steps"))
    quant = check.typed(data, "quant", str, "a quantization label")
    parent = _template(check, data, "parent", ("size", "seed", "step", "checkpoint"))
    settings = _settings(check, data, defaults)
    if None in (name, source, sizes) or any(k in data and v is None for k, v in (
            ("revision", revision), ("checkpoint", checkpoint), ("seeds", seeds),
            ("steps", steps), ("quant", quant), ("parent", parent))):
        return None
    if checkpoint is None and steps is not None:
        checkpoint = "step{step}"
    family = Family(name, source, revision, sizes, seeds or (None,), steps, checkpoint,
                    quant_label(quant), parent, settings, check.line())
    return family if (_grid_fits(check, family) and _key_fields_valid(check, family)
                      and _templates_format(check, family)) else None


def _names(template: str | None) -> set[str]:
    return {n for _, n, _, _ in string.Formatter().parse(template or "") if n}


def _grid_fits(check: _Checker, family: Family) -> bool:
    """Placeholders need their grid, and every grid of several values must reach the source
    or the revision, or several keys would load the same model."""
    given = {"size": True, "seed": family.seeds != (None,), "step": family.steps is not None,
             "checkpoint": family.checkpoint is not None}
    ok = True
    for key in ("source", "revision", "checkpoint", "parent"):
        for name in sorted(n for n in _names(getattr(family, key)) if not given[n]):
            check.error(key, f"'{key}' uses {{{name}}} but the entry has no "
                             f"{'steps' if name == 'checkpoint' else name + 's'}")
            ok = False
    used = _names(family.source) | _names(family.revision)
    if "checkpoint" in used:
        used |= _names(family.checkpoint)
    for grid, values, name in (("sizes", family.sizes, "size"), ("seeds", family.seeds, "seed"),
                               ("steps", family.steps, "step")):
        several = values == "available" or (values is not None and len(values) > 1)
        if several and name not in used:
            check.error(grid, f"'{grid}' has several values but neither source nor revision "
                              f"uses {{{name}}}: every point would load the same model")
            ok = False
    if family.quant is not None and family.settings.quantizations != (None,):
        check.error("quantizations", "'quant' labels weights that come quantized; they cannot "
                                     "be quantized again (drop 'quantizations')")
        ok = False
    return ok


def _templates_format(check: _Checker, family: Family) -> bool:
    """Each template formats with the grid's first point (a format spec such as {size:d} fails
    on a string): found here, not while planning."""
    step = family.steps[0] if isinstance(family.steps, tuple) else 0
    point = {"size": family.sizes[0], "seed": family.seeds[0], "step": step}
    point["checkpoint"] = family.checkpoint.format(**point) if family.checkpoint else None
    for key in ("checkpoint", "source", "revision", "parent"):
        template = getattr(family, key)
        try:
            template.format(**point) if template else None
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            check.error(key, f"'{key}' {template!r} does not format with size "
                             f"{point['size']!r}, seed {point['seed']!r}, step {step!r} ({exc}); "
                             "use plain placeholders such as {size}")
            return False
    return True


def _key_fields_valid(check: _Checker, family: Family) -> bool:
    """Grid values must make valid keys (a size may not contain '-', …)."""
    try:
        for size in family.sizes:
            ModelKey(family=family.name, size=size, quant=family.quant)
    except InvalidKeyError as exc:
        check.error("sizes", str(exc))
        return False
    return True


def _model(check: _Checker, data: dict, defaults: Settings) -> SingleModel | None:
    """One ``[[model]]`` entry: its key is given whole (FAMILY-SIZE[/sSEED][+QUANT][@CKPT])."""
    text = check.typed(data, "key", str, "a model key")
    key = None
    if text is None and "key" not in data:
        check.error(None, "missing 'key' (e.g. key = \"pythia-ft-70m/s1@step100\")")
    elif text is not None:
        try:
            key = ModelKey.parse(text)
        except InvalidKeyError as exc:
            check.error("key", str(exc))
    if key is not None and key.layer is not None:
        check.error("key", f"key {text!r} has a #LAYER: ask for lens layers with 'layers'")
        key = None
    source = _template(check, data, "source", (), required=True)
    revision = _template(check, data, "revision", ())
    parent = check.typed(data, "parent", str, "a model key or \"auto\"")
    if parent not in (None, "auto"):
        try:
            parent = str(ModelKey.parse(parent))
        except InvalidKeyError as exc:
            check.error("parent", str(exc))
            parent = None
    settings = _settings(check, data, defaults)
    if None in (key, source) or ("parent" in data and parent is None):
        return None
    return SingleModel(key, source, revision, parent, settings, check.line())


def _check_duplicates(manifest: Manifest, path: Path, errors: list[str]) -> None:
    """Two single models under one key would overwrite each other."""
    seen: dict[str, int] = {}
    for model in manifest.models:
        if str(model.key) in seen:
            errors.append(f"{path.name} line {model.line}: key {model.key} is also given at "
                          f"line {seen[str(model.key)]}")
        seen.setdefault(str(model.key), model.line)


def _missing_textsets(manifest: Manifest) -> list[str]:
    """Entries with no text set at all (neither their own nor [defaults])."""
    return [f"{manifest.path.name} line {entry.line}: no text set: add textset = \"NAME\" here "
            "or under [defaults]"
            for entry in (*manifest.families, *manifest.models) if not entry.settings.textsets]
