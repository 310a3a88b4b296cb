"""The papers' protocol (method.md §8): P1's settings exactly, as an alternative to the general
registry of atlas.analysis.scale.

    db.scale(protocol="kishino2026")              # P1's ten settings, each with P1's view
    db.scale_pairs(protocol="kishino2026")        # every pair: setting, key_a, key_b, kl, se
    protocol.kishino2026_pairs(models, Kishino2026(seeds=(1, 2, 3)))   # other parameters

The registry (``protocol=None``, the default) derives settings from any atlas's keys; a protocol
reproduces one paper's choices on the atlas that holds its models. Everything here is frames in,
frames out; ``Atlas.scale_pairs`` reads the models, lineage and provenance it needs.

P1 (Kishino et al. 2026), with its parameters in ``Kishino2026``:

* ``early`` / ``later``: per pretraining run (the unseeded run of each size; ``exclude`` drops
  anomalous checkpoints, P1's (pythia, 1b, 116,000)), the intervals between consecutive
  available checkpoints exactly ``interval`` steps apart whose end step is > ``after``: the
  first ``n_intervals`` are early (Pythia: ends 3k … 52k), the last ``n_intervals`` later (ends
  94k … 143k; 1b lacks the intervals ending at 116k and 117k, so its window starts at 92k).
* ``seeds``: the runs of ``seeds`` (P1: PolyPythia 410m seeds 1–9 without 3 and 4; the unseeded
  default run is never one of them) pairwise, per (family, size), at their common final step.
* ``sizes``: per family, the smallest size against each larger one at the common final step of
  the unseeded runs.
* ``quant-8bit`` / ``quant-4bit``: a quantized variant (labels ``quant_8bit`` / ``quant_4bit``)
  against the same key unquantized; refused when their provenance names different dtypes or
  tokenizer fingerprints (vectors without those fields, e.g. imported ones, are not checked).
* ``fine-tune``: a model against its single parent (its ``parent``, or its one base model in
  model_lineage); models with several base models are dropped.
* ``intra-type`` / ``random``: pairs of the fine-tune candidate pool (every child and parent of
  ``fine-tune``) of the same model type (hub_models.model_type, else the family) / any pairs,
  at most ``RANDOM_PAIRS`` each drawn with ``RANDOM_SEED`` as in the registry.
* ``layers``: adjacent logit-lens layers of one model, pooled.

P1 measured early, later, seeds and sizes on clipped vectors with outlier texts dropped and the
others on raw vectors: ``VIEWS`` says which setting takes which view.

``REFERENCES`` holds the papers' numbers (method.md §4) per P1 setting, each with the models it
was measured on, and ``ORDERINGS`` their expected order of settings; ``atlas report`` shows them
beside the protocol's rows (and nowhere else: the general registry's settings are other rules
on other vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from atlas.analysis import scale
from atlas.analysis.scale import ScaleError
from atlas.keys import ModelKey, size_value

PRETRAINING = ("early", "later", "seeds", "sizes")  # the settings P1 measures on its view
SETTINGS = (*PRETRAINING, "quant-8bit", "quant-4bit", "fine-tune", "intra-type", "random",
            "layers")
LINEAGE_SCHEMA = {"key": pl.String, "base_source": pl.String, "base_key": pl.String}
PROVENANCE_SCHEMA = {"key": pl.String, "dtype": pl.String, "tokenizer_fingerprint": pl.String}
TYPE_SCHEMA = {"key": pl.String, "model_type": pl.String}


@dataclass(frozen=True)
class Kishino2026:
    """P1's parameters; each default is the paper's choice."""

    interval: int = 1_000
    after: int = 2_000  # an interval counts when its end step is > after
    n_intervals: int = 50
    exclude: tuple[tuple[str, str, int], ...] = (("pythia", "1b", 116_000),)
    seeds: tuple[int, ...] | None = (1, 2, 5, 6, 7, 8, 9)  # None: every seeded run
    quant_8bit: tuple[str, ...] = ("bnb-int8",)
    quant_4bit: tuple[str, ...] = ("bnb-nf4", "bnb-fp4")


@dataclass(frozen=True)
class Context:
    """What the protocol reads beyond the models frame (empty frames when the atlas lacks it)."""

    lineage: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LINEAGE_SCHEMA))
    provenance: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=PROVENANCE_SCHEMA))
    types: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TYPE_SCHEMA))


PROTOCOLS = {"kishino2026": Kishino2026}


@dataclass(frozen=True)
class Reference:
    """A number the papers report for a setting (bits/byte, the median over its pairs unless
    ``what`` says otherwise), with the models it was measured on: a pair of ours stands beside
    it only when its keys name the same models (``family``; ``size``, against ``other`` for
    sizes; the unseeded run's ``steps`` for one interval)."""

    setting: str
    value: float
    what: str
    family: str | None = None
    size: str | None = None
    other: str | None = None
    steps: tuple[int, int] | None = None

    def matches(self, key_a: str, key_b: str) -> bool:
        """Whether the pair (key_a, key_b) of this setting is one the paper measured."""
        a, b = ModelKey.parse(key_a), ModelKey.parse(key_b)
        wanted = [(self.family, a.family), (self.family, b.family), (self.size, a.size),
                  (self.other or self.size, b.size)]
        if any(want is not None and want != got for want, got in wanted):
            return False
        return self.steps is None or (a.seed is None and (a.step, b.step) == self.steps)


REFERENCES = (  # method.md §4; the early/later intervals are Pythia-410M's (issue #15)
    Reference("early", 0.069, "Pythia-410M, the one interval 10k→11k", "pythia", "410m", None,
              (10_000, 11_000)),
    Reference("early", 0.053, "Pythia-410M, the one interval 50k→51k", "pythia", "410m", None,
              (50_000, 51_000)),
    Reference("later", 0.023, "Pythia-410M, the one interval 100k→101k", "pythia", "410m", None,
              (100_000, 101_000)),
    Reference("seeds", 0.11, "PolyPythia-410M seeds at the final step", "pythia", "410m"),
    *(Reference("sizes", value, f"Pythia-410M vs {other.upper()} at step 143,000", "pythia",
                "410m", other)
      for value, other in ((0.28, "1b"), (0.52, "1.4b"), (1.0, "2.8b"), (1.7, "6.9b"))),
    Reference("fine-tune", 0.40, "hub fine-tunes (any model) vs their single base_model parent"),
    Reference("random", 2.1, "random pairs of the fine-tune pool (any model)"),
)
# the papers' ordering of settings (method.md §4): (lower, higher), by median
ORDERINGS = (("later", "early"), ("seeds", "sizes"), ("fine-tune", "random"),
             ("quant-8bit", "quant-4bit"))


def references(pairs: pl.DataFrame) -> pl.DataFrame:
    """Each reference beside ours: (setting, paper, what, ours, pairs): ``ours`` the median KL
    of the pairs of ``pairs`` (setting, key_a, key_b, kl) it matches, null when none does."""
    rows = []
    for ref in REFERENCES:
        own = pairs.filter(pl.col("setting") == ref.setting)
        found = own.filter(pl.Series([ref.matches(a, b) for a, b in
                                      own.select("key_a", "key_b").iter_rows()],
                                     dtype=pl.Boolean))
        rows.append({"setting": ref.setting, "paper": ref.value, "what": ref.what,
                     "ours": found["kl"].median(), "pairs": found.height})
    return pl.DataFrame(rows, schema={"setting": pl.String, "paper": pl.Float64,
                                      "what": pl.String, "ours": pl.Float64,
                                      "pairs": pl.Int64})


def protocol_params(name: str) -> Kishino2026:
    """The default parameters of the protocol ``name``; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise ScaleError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)} (or leave "
                         "--protocol out for the general registry)")
    return PROTOCOLS[name]()


# pretraining ---------------------------------------------------------------------------------
def _runs(models: pl.DataFrame, params: Kishino2026) -> pl.DataFrame:
    """Output checkpoints with a step, less the excluded ones."""
    out = scale._outputs(models).filter(pl.col("step").is_not_null())
    for family, size, step in params.exclude:
        out = out.filter(~((pl.col("family") == family) & (pl.col("size") == size)
                           & (pl.col("step") == step)))
    return out


def intervals(models: pl.DataFrame, params: Kishino2026) -> pl.DataFrame:
    """Per unseeded run: its eligible intervals (key_a, key_b, rank, from_end), from one sort of
    every run's distinct steps (not a frame per run: 10⁵ variants)."""
    run = ["family", "size"]
    default = _runs(models, params).filter(pl.col("seed").is_null())
    steps = default.sort([*run, "step", "key"]).unique([*run, "step"], keep="first",
                                                       maintain_order=True)
    following = steps.with_columns(key_b=pl.col("key").shift(-1).over(run),
                                   step_b=pl.col("step").shift(-1).over(run))
    eligible = following.filter(pl.col("step_b") - pl.col("step") == params.interval,
                                pl.col("step_b") > params.after)
    rank = pl.int_range(pl.len(), dtype=pl.Int64).over(run)
    return eligible.select(key_a="key", key_b="key_b", rank=rank,
                           from_end=pl.len().over(run).cast(pl.Int64) - 1 - rank)


def _early(models: pl.DataFrame, params: Kishino2026, _: Context) -> pl.DataFrame:
    return intervals(models, params).filter(pl.col("rank") < params.n_intervals)


def _later(models: pl.DataFrame, params: Kishino2026, _: Context) -> pl.DataFrame:
    return intervals(models, params).filter(pl.col("from_end") < params.n_intervals)


def _at_common_final(runs: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    """Each run's checkpoint at the largest step every run of its ``group`` holds (none if
    none), for every group at once."""
    run = pl.struct("family", "size", "seed")
    shared = runs.filter(run.n_unique().over([*group, "step"]) == run.n_unique().over(group))
    final = shared.filter(pl.col("step") == pl.col("step").max().over(group))
    return final.sort("step", "key").unique(["family", "size", "seed"], keep="first")


def _seeds(models: pl.DataFrame, params: Kishino2026, _: Context) -> pl.DataFrame:
    seeded = _runs(models, params).filter(pl.col("seed").is_not_null())
    if params.seeds is not None:
        seeded = seeded.filter(pl.col("seed").is_in(list(params.seeds)))
    return scale._pairs_within(_at_common_final(seeded, ["family", "size"]), ("family", "size"),
                               "seed")


def _sizes(models: pl.DataFrame, params: Kishino2026, _: Context) -> pl.DataFrame:
    """Per family, the smallest size's common final against each other size's."""
    default = _runs(models, params).filter(pl.col("seed").is_null())
    finals = _at_common_final(default, ["family"]).with_columns(
        value=pl.col("size").map_elements(size_value, return_dtype=pl.Float64)
    ).sort("family", "value", "key", nulls_last=True)
    paired = finals.with_columns(key_a=pl.col("key").first().over("family"))
    return paired.filter(pl.col("key") != pl.col("key_a")).select("key_a", key_b="key")


# quantization, fine-tuning, layers -------------------------------------------------------------
def _quant(labels: tuple[str, ...]) -> Callable[[pl.DataFrame, Kishino2026, Context],
                                                 pl.DataFrame]:
    def select(models: pl.DataFrame, params: Kishino2026, context: Context) -> pl.DataFrame:
        found = scale._quantization(models).filter(pl.col("variant").is_in(list(labels)))
        _check_same_base(found.select("key_a", "key_b"), context.provenance)
        return found.select("key_a", "key_b")
    return select


def _check_same_base(found: pl.DataFrame, provenance: pl.DataFrame) -> None:
    """Refuse a quantized model whose float base was scored in another dtype or tokenizer."""
    known = {row["key"]: row for row in provenance.iter_rows(named=True)}
    for a, b in found.iter_rows():
        for name in ("dtype", "tokenizer_fingerprint"):
            va, vb = (known.get(a) or {}).get(name), (known.get(b) or {}).get(name)
            if va is not None and vb is not None and va != vb:
                raise ScaleError(
                    f"quantized {b} and its base {a} differ in {name} ({vb} vs {va}): P1 "
                    "compares a quantized model with its float base in the same dtype and "
                    "tokenizer; re-ingest the base with --dtype to match, or leave the pair out "
                    "with --where")


def parents(models: pl.DataFrame, context: Context) -> pl.DataFrame:
    """(key_a = parent, key_b = child) for every model with exactly one base model stored."""
    lineage = context.lineage.group_by("key").agg(
        n=pl.col("base_source").n_unique(), base=pl.col("base_key").first())
    declared = models.filter(pl.col("parent").is_not_null()).select("key", "parent")
    joined = declared.join(lineage, on="key", how="full", coalesce=True)
    single = joined.filter(pl.col("n").is_null() | (pl.col("n") == 1))
    found = single.select(key_a=pl.coalesce("parent", "base"), key_b="key").filter(
        pl.col("key_a").is_not_null() & (pl.col("key_a") != pl.col("key_b"))
        & pl.col("key_a").is_in(models["key"].implode())
        & pl.col("key_b").is_in(models["key"].implode()))
    return found.unique().sort("key_a", "key_b")


def _fine_tune(models: pl.DataFrame, params: Kishino2026, context: Context) -> pl.DataFrame:
    return parents(models, context)


def _pool_pairs(models: pl.DataFrame, context: Context, same_type: bool) -> pl.DataFrame:
    """Pairs of the fine-tune candidates (every child and parent of ``fine-tune``), of one
    model type (hub_models.model_type, else the family) or any, drawn as the registry draws."""
    found = parents(models, context)
    keys = sorted(set(found["key_a"].to_list()) | set(found["key_b"].to_list()))
    pool = models.filter(pl.col("key").is_in(keys)).join(context.types, on="key", how="left")
    pool = pool.sort("key").with_columns(kind=pl.coalesce("model_type", "family"))
    kinds = pool["kind"].to_list() if same_type else ["pool"] * pool.height
    _, codes = np.unique(np.asarray(kinds, dtype=object).astype(str), return_inverse=True)
    i, j = scale._candidate_pairs(codes, True, np.random.default_rng(scale.RANDOM_SEED))
    return pl.DataFrame({"key_a": pool["key"].gather(i), "key_b": pool["key"].gather(j)},
                        schema=scale._empty().schema)


def _intra_type(models: pl.DataFrame, params: Kishino2026, context: Context) -> pl.DataFrame:
    return _pool_pairs(models, context, same_type=True)


def _random(models: pl.DataFrame, params: Kishino2026, context: Context) -> pl.DataFrame:
    return _pool_pairs(models, context, same_type=False)


def _layers(models: pl.DataFrame, params: Kishino2026, _: Context) -> pl.DataFrame:
    return scale._layers_adjacent(models)


def _selector(name: str, params: Kishino2026):
    """The selection function of one setting (the quant ones take their labels from params)."""
    return {"early": _early, "later": _later, "seeds": _seeds, "sizes": _sizes,
            "quant-8bit": _quant(params.quant_8bit), "quant-4bit": _quant(params.quant_4bit),
            "fine-tune": _fine_tune, "intra-type": _intra_type, "random": _random,
            "layers": _layers}[name]


def kishino2026_pairs(models: pl.DataFrame, params: Kishino2026 | None = None,
                      context: Context | None = None) -> pl.DataFrame:
    """(setting, key_a, key_b) of P1's settings, in ``SETTINGS`` order (pairs sorted within)."""
    params, context = params or Kishino2026(), context or Context()
    frame = scale._normalised(models)
    found = [_selector(name, params)(frame, params, context).select(
                 setting=pl.lit(name), key_a="key_a", key_b="key_b")
             .unique().sort("key_a", "key_b") for name in SETTINGS]
    return pl.concat(found)


def pretraining_keys(models: pl.DataFrame, params: Kishino2026 | None = None) -> pl.DataFrame:
    """The checkpoints of the runs P1's pretraining view is computed over: every checkpoint
    (warm-up included) of the unseeded runs and the chosen seeded runs, less the excluded."""
    params = params or Kishino2026()
    runs = _runs(scale._normalised(models), params)
    keep = pl.col("seed").is_null()
    if params.seeds is None:
        keep = keep | pl.col("seed").is_not_null()
    else:
        keep = keep | pl.col("seed").is_in(list(params.seeds))
    return runs.filter(keep).select("key", "family", "size", "seed", "step").sort(
        "family", "size", "seed", "step", "key")


def runs_of(models: pl.DataFrame) -> list[tuple[list[str], list[int]]]:
    """(keys, steps) of each output run (family, size, seed) among ``models``, in step order:
    the runs a drop-texts view takes its |Δℓ| over."""
    stepped = scale._outputs(scale._normalised(models)).filter(pl.col("step").is_not_null())
    return [(group["key"].to_list(), group["step"].to_list())
            for group in stepped.sort("step", "key").partition_by(
                list(scale.TRAJECTORY), maintain_order=True)]


def orderings(summary: pl.DataFrame) -> pl.DataFrame:
    """The papers' orderings checked on ``summary`` (setting, median): (lower, higher, their
    medians, holds); null where a setting has no pair."""
    median = dict(summary.select("setting", "median").iter_rows())
    rows = [{"lower": low, "higher": high, "lower_median": median.get(low),
             "higher_median": median.get(high),
             "holds": None if median.get(low) is None or median.get(high) is None
             else median[low] < median[high]} for low, high in ORDERINGS]
    return pl.DataFrame(rows, schema={"lower": pl.String, "higher": pl.String,
                                      "lower_median": pl.Float64, "higher_median": pl.Float64,
                                      "holds": pl.Boolean})
