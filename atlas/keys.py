"""Model keys: one canonical, parseable, typable string per model variant.

Grammar (fields in this order; optional parts are omitted exactly when unset)::

    key        = family "-" size [ "/s" seed ] [ "+" quant ] [ "#" layer ] [ "@" checkpoint ]
    family     = [A-Za-z0-9_.-]+     may contain "-": the LAST "-" of the name splits off the size
    size       = [A-Za-z0-9_.]+      no "-"
    seed       = [0-9]+
    quant      = [A-Za-z0-9_.-]+     e.g. bnb-int8, gptq-4bit-g128, gguf-q4_1
    layer      = [0-9]+              hidden-state index for logit-lens vectors; unset = model output
    checkpoint = [A-Za-z0-9_.-]+     e.g. step143000, main; its numeric step is parsed for ordering

Examples: ``pythia-410m@step143000``, ``pythia-410m/s3@step1000``, ``llama-2-7b+bnb-nf4``,
``smollm2-135m#12``.

Unquantized: a quant of None, "" or "none" (any case) means the model as loaded, with no quant
part, in every path that makes a key (parsing, ``--quant``, imports, bulk manifests):
``quant_label`` is that rule, and ``ModelKey`` applies it, so ``pythia-70m+none`` is
``pythia-70m``.

Shorthands: a key that is not stored verbatim resolves to the single stored variant whose set
fields match it (its unset fields act as wildcards); several matches are an error that lists them.
The rule lives in SQL only (``key_fields_match`` in ``sql/macros.sql``: ``resolve_key`` for
stored variants, ``listed_key_matches`` for keys written in the same operation), so plain
DuckDB clients and Python agree; SQL's ``parse_key`` is ``KEY_PATTERN`` itself, written into
the macro when the SQL is applied (``atlas.store.read_sql``), so the grammar has one copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atlas.errors import InvalidKeyError

KEY_PATTERN = (
    r"^(?P<family>[A-Za-z0-9_.-]+)-(?P<size>[A-Za-z0-9_.]+)"
    r"(?:/s(?P<seed>[0-9]+))?(?:\+(?P<quant>[A-Za-z0-9_.-]+))?"
    r"(?:#(?P<layer>[0-9]+))?(?:@(?P<checkpoint>[A-Za-z0-9_.-]+))?$"
)
_KEY_RE = re.compile(KEY_PATTERN)
KEY_FIELDS = tuple(_KEY_RE.groupindex)  # family, size, seed, quant, layer, checkpoint
_FIELD_RES = {
    "family": re.compile(r"^[A-Za-z0-9_.-]+$"),
    "size": re.compile(r"^[A-Za-z0-9_.]+$"),
    "quant": re.compile(r"^[A-Za-z0-9_.-]+$"),
    "checkpoint": re.compile(r"^[A-Za-z0-9_.-]+$"),
}
_STEP_RE = re.compile(r"^(?:step|ckpt|checkpoint|iter)?[-_]?([0-9]+)$", re.IGNORECASE)
UNQUANTIZED = ("", "none")  # quant labels that mean "as loaded", compared in lower case


def quant_label(value: str | None) -> str | None:
    """The quant of a key: None for an unquantized model (None, "" or "none"), else the label.

    The one place the rule lives: a manifest's ``quantizations = ["none"]``, ``--quant none`` and
    an imported ``quant`` column of "none" all mean the same unquantized variant."""
    if isinstance(value, str) and value.strip().lower() in UNQUANTIZED:
        return None
    return value


SIZE_UNITS = "kmbt"  # a size's unit: 1000 to the power of its place here (70m → 70 · 1000²)
SIZE_PATTERN = rf"([0-9]+(?:\.[0-9]+)?)([{SIZE_UNITS}])"  # a whole size label, in lower case
_SIZE_RE = re.compile(SIZE_PATTERN)


def run_label(family: str, size: str, seed: int | None, quant: str | None = None) -> str:
    """A training run's name, ``family-size[/sSEED][+QUANT]``: the start of its checkpoints'
    keys (``quant``: the run of a quantized variant).

    SQL has the same rule (``run_label`` in sql/analysis.sql, pinned equal by a test): queries
    carry it in their results, and Python code labels what it computed itself with this one.
    """
    label = f"{family}-{size}" + ("" if seed is None else f"/s{seed}")
    return label if quant is None else f"{label}+{quant}"


def size_value(size: str) -> float | None:
    """Parameter count a size label names (``70m`` → 7e7, ``1.4b`` → 1.4e9), None if it names none.

    It orders sizes small → large without needing n_params. SQL's ``size_value``
    (sql/queries.sql) reads ``SIZE_PATTERN`` and ``SIZE_UNITS`` from here (``read_sql``).
    """
    match = _SIZE_RE.fullmatch(size.strip().lower())
    if match is None:
        return None
    return float(match.group(1)) * 1e3 ** (SIZE_UNITS.index(match.group(2)) + 1)


def step_of(checkpoint: str | None) -> int | None:
    """Numeric training step of a checkpoint label (``step1000`` → 1000, ``main`` → None)."""
    if checkpoint is None:
        return None
    match = _STEP_RE.match(checkpoint)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ModelKey:
    """The key fields of one model variant."""

    family: str
    size: str
    seed: int | None = None
    quant: str | None = None
    layer: int | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quant", quant_label(self.quant))
        for name, pattern in _FIELD_RES.items():
            value = getattr(self, name)
            if value is None and name in ("quant", "checkpoint"):
                continue
            if not isinstance(value, str) or not pattern.match(value):
                allowed = pattern.pattern.strip("^$")
                raise InvalidKeyError(
                    f"invalid {name} {value!r}: use the characters {allowed}"
                    + (" (no '-' in a size: put it in the family)" if name == "size" else "")
                )
        for name in ("seed", "layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidKeyError(f"invalid {name} {value!r}: a non-negative integer")

    @property
    def step(self) -> int | None:
        return step_of(self.checkpoint)

    def __str__(self) -> str:
        parts = [run_label(self.family, self.size, self.seed)]
        if self.quant is not None:
            parts.append(f"+{self.quant}")
        if self.layer is not None:
            parts.append(f"#{self.layer}")
        if self.checkpoint is not None:
            parts.append(f"@{self.checkpoint}")
        return "".join(parts)

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        """Parse a key string; raises ``InvalidKeyError`` with the grammar when it does not fit."""
        match = _KEY_RE.match(text.strip())
        if not match:
            raise InvalidKeyError(
                f"cannot parse model key {text!r}: expected "
                "FAMILY-SIZE[/sSEED][+QUANT][#LAYER][@CHECKPOINT], e.g. pythia-410m/s1@step1000"
            )
        fields = match.groupdict()
        return cls(
            family=fields["family"],
            size=fields["size"],
            seed=int(fields["seed"]) if fields["seed"] is not None else None,
            quant=fields["quant"],
            layer=int(fields["layer"]) if fields["layer"] is not None else None,
            checkpoint=fields["checkpoint"],
        )


def safe_name(text: str) -> str:
    """``text`` (a key, a text-set name, a host) as a file name: every other character → ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
