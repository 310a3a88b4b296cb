"""The KL scale across settings (method.md §4): how far apart are models that differ in one way?

A *setting* is a rule that picks pairs of model variants from the models frame using the key
columns alone (family, size, seed, quant, layer, checkpoint/step, parent): no hand labelling, so
the scale of a new atlas follows from how its models were keyed. Each setting is one ``Setting``
in the registry; a new one joins by registering one more (``@setting(name, description)``).

    db.scale()                                   # one row per setting: count, median, …
    db.scale_pairs(where="family = 'pythia'")    # every pair with its KL and SE
    scale.pairs(scale.models_from_keys([...]))   # the pairs alone, for keys not yet stored

The pairs and their statistics are computed here from frames; ``Atlas.scale`` reads the models
and the vectors of the keys they involve. Only the pairs are measured (``atlas.kl.pair_kl``), so
memory is those vectors plus a bounded block, never a K × K matrix.

Pairs are oriented "from → to": key_a is the earlier checkpoint, the lower seed (none first), the
smaller size, the unquantized model, the parent, layer l; random pairs go by key. The KL estimate
is symmetric to second order, so the orientation is only a label.

Decisions (the reference leaves these implicit):

* **Early, mid and late checkpoints.** Per trajectory (family, size, seed, quant, layer), the
  distinct steps in order give consecutive pairs. The schedule's *spacing* is its most frequent
  gap (it must occur at least twice; ties go to the larger gap); the *evenly spaced tail* is the
  longest run of final gaps that are whole multiples of it (so a missing checkpoint does not end
  the tail). Pairs before the tail (the log-spaced head, including the jump into the tail, e.g.
  Pythia 512→1000) are ``consecutive-early``; tail pairs that start before the midpoint of the
  tail's span are ``consecutive-mid``, the others ``consecutive-late``: for Pythia, 1k→2k …
  71k→72k and 72k→73k … 142k→143k, so the reference's 10k→11k (0.069) and 50k→51k (0.053) are
  mid and its 100k→101k (0.023) late. When there is no such tail (no repeated gap, a tail of
  fewer than two gaps, or a tail that is the whole schedule) the tail starts at the median step.
* **Seeds.** ``seeds`` compares trained models: the final variants of each seed's trajectory,
  where their steps agree (trained models, as for ``sizes``);
  ``seeds-all-steps`` pairs seeds at every shared checkpoint, initialisations included, whose
  near-uniform predictions are all close. A variant without a seed counts as one more seed (the
  default run), so the original Pythia pairs with the PolyPythias; checkpoints match by step (or
  by label when unnumbered).
* **Model outputs only** for consecutive checkpoints, seeds and sizes: quantized copies and
  logit-lens layers are compared by their own settings (``quantization``, ``layers-adjacent``).
* **Final variant** of a trajectory (``sizes`` and the random pools): its largest step; a
  trajectory without numbered checkpoints uses its single variant, or its unlabelled one; one with
  several unnumbered labels has no defined final and is left out.
* **Random pairs**, like the reference's baseline for fine-tuning: the pool is one variant per
  model, the final variant of each (family, size, seed) output trajectory (no quant, no layer),
  so checkpoints, quantizations and logit-lens layers do not crowd it. ``random-within-family``
  draws pairs of the same family, ``random-across-families`` of different ones: all of them when
  there are at most ``RANDOM_PAIRS``, else that many drawn without replacement with
  ``RANDOM_SEED`` from the pool sorted by key (so the draw does not depend on row order, but does
  on which models the ``where`` clause keeps).

Statistics are over pairs: ``sd`` is the sample standard deviation (ddof=1, null for one pair),
``q1``/``q3`` linearly interpolated quantiles (numpy's default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import polars as pl

from atlas.errors import AtlasError
from atlas.keys import ModelKey, size_value, step_of
from atlas.kl import pair_kl

RANDOM_PAIRS = 500  # cap on pairs per random setting
RANDOM_SEED = 0
ENUMERATE_LIMIT = 2_000_000  # above this many candidate pairs, sample instead of enumerating
TRAJECTORY = ("family", "size", "seed", "quant", "layer")
MODEL_COLUMNS = {"key": pl.String, "family": pl.String, "size": pl.String, "seed": pl.Int64,
                 "quant": pl.String, "layer": pl.Int64, "checkpoint": pl.String,
                 "step": pl.Int64, "parent": pl.String}
# how a vector was scored (its provenance, passed in as data; null when unknown): quantization
# pairs must agree on these
PROVENANCE = ("dtype", "tokenizer_fingerprint", "special_tokens")
MODEL_COLUMNS |= dict.fromkeys(PROVENANCE, pl.String)
PAIR_SCHEMA = {"setting": pl.String, "key_a": pl.String, "key_b": pl.String}


class ScaleError(AtlasError):
    """The KL scale cannot be computed as asked (no vectors, no pairs, a bad WHERE clause)."""


@dataclass(frozen=True)
class Setting:
    """One way two models can differ: ``select`` maps the models frame to its pairs.

    ``select`` returns ``key_a``, ``key_b`` and optionally ``variant``: rows with a variant are
    reported as ``name:variant`` (e.g. ``quantization:bnb-int8``), one statistic each.
    """

    name: str
    description: str
    select: Callable[[pl.DataFrame], pl.DataFrame]


SETTINGS: dict[str, Setting] = {}


def register(entry: Setting) -> Setting:
    """Add (or replace) a setting; ``scale`` reports settings in registration order."""
    SETTINGS[entry.name] = entry
    return entry


def setting(name: str, description: str):
    """Decorator form of ``register`` for a selection function."""
    def wrap(select: Callable[[pl.DataFrame], pl.DataFrame]):
        register(Setting(name, description, select))
        return select
    return wrap


# the models frame ----------------------------------------------------------------------------
def models_from_keys(keys: Iterable[str], parents: dict[str, str] | None = None) -> pl.DataFrame:
    """A models frame for keys not (yet) in an atlas: to plan which pairs some ingests give."""
    rows = []
    for text in keys:
        key = ModelKey.parse(text)
        rows.append({"key": str(key), "family": key.family, "size": key.size, "seed": key.seed,
                     "quant": key.quant, "layer": key.layer, "checkpoint": key.checkpoint,
                     "step": key.step, "parent": (parents or {}).get(text)})
    return pl.DataFrame(rows, schema=MODEL_COLUMNS)


def _normalised(models: pl.DataFrame) -> pl.DataFrame:
    """The key columns with fixed types, so hand-made and all-null columns join like stored ones."""
    missing = [c for c in ("key", "family", "size") if c not in models.columns]
    if missing:
        raise ScaleError(f"the models frame lacks {', '.join(missing)}: pass atlas.models() "
                         "or scale.models_from_keys([...])")
    frame = models
    for name in MODEL_COLUMNS:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None).alias(name))
    if "step" not in models.columns:
        steps = pl.col("checkpoint").cast(pl.String).map_elements(step_of, return_dtype=pl.Int64)
        frame = frame.with_columns(steps.alias("step"))
    return frame.select([pl.col(n).cast(t) for n, t in MODEL_COLUMNS.items()])


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={"key_a": pl.String, "key_b": pl.String})


def _outputs(models: pl.DataFrame) -> pl.DataFrame:
    """Model-output variants: checkpoints, seeds and sizes compare models, not their quantized
    copies or logit-lens layers (those have settings of their own)."""
    return models.filter(pl.col("quant").is_null() & pl.col("layer").is_null())


def _pairs_within(models: pl.DataFrame, by: Sequence[str], differ: str,
                  order: pl.Expr | None = None) -> pl.DataFrame:
    """Every unordered pair that agrees on ``by`` (nulls equal) and differs in ``differ``.

    key_a is the lower of the two by ``order`` (default ``differ``; nulls first), then by key.
    """
    ranked = (models.with_columns(_order=pl.col(differ) if order is None else order)
              .sort("_order", "key", nulls_last=False).with_row_index("_rank"))
    left = ranked.select([*by, differ, "key", "_rank"])
    joined = left.join(left, on=list(by), nulls_equal=True, suffix="_b")
    keep = ((pl.col("_rank") < pl.col("_rank_b"))
            & pl.col(differ).ne_missing(pl.col(f"{differ}_b")))
    return joined.filter(keep).select(key_a="key", key_b="key_b")


def final_variants(models: pl.DataFrame) -> pl.DataFrame:
    """One row per trajectory (in order of first appearance): its largest step, else its single
    or unlabelled variant. Window expressions, not a loop over trajectories (10⁵ variants)."""
    by, stepped = list(TRAJECTORY), pl.col("step").is_not_null()
    unlabelled = pl.col("checkpoint").is_null()
    frame = models.with_row_index("_row").with_columns(
        _first=pl.col("_row").min().over(by), _stepped=stepped.any().over(by),
        _single=pl.len().over(by) == 1, _unlabelled=unlabelled.sum().over(by) == 1)
    largest = frame.filter(stepped).sort("step", "key").unique(by, keep="last")
    alone = frame.filter(~pl.col("_stepped")
                         & (pl.col("_single") | (pl.col("_unlabelled") & unlabelled)))
    return pl.concat([largest, alone]).sort("_first").select(models.columns)


# early / late checkpoints ----------------------------------------------------------------------
def even_tail_start(steps: np.ndarray) -> int | None:
    """Index of the first step of the evenly spaced tail, or None when there is none to use."""
    gaps = np.diff(steps)
    values, counts = np.unique(gaps, return_counts=True)
    if counts.size == 0 or counts.max() < 2:
        return None
    spacing = values[counts == counts.max()].max()
    start = gaps.size
    while start > 0 and gaps[start - 1] % spacing == 0:
        start -= 1
    if start == 0 or gaps.size - start < 2:
        return None
    return start


def split_schedule(steps: Sequence[int]) -> tuple[int, int]:
    """(tail, late): consecutive pair i (steps[i] → steps[i+1]) is early when i < tail, late
    when i ≥ late, mid in between.

    ``steps`` are distinct and increasing; see the module docstring for the rule.
    """
    values = np.asarray(steps, dtype=np.int64)
    if values.size < 2:
        return 0, 0
    tail = even_tail_start(values)
    if tail is None:
        tail = int(np.sum(values[1:] <= np.median(values)))
    midpoint = (values[tail] + values[-1]) / 2
    return tail, tail + int(np.sum(values[tail:-1] < midpoint))


def consecutive_pairs(models: pl.DataFrame) -> pl.DataFrame:
    """Consecutive checkpoints of each trajectory with their phase: early, mid or late.

    One sort of every trajectory's distinct steps; only ``split_schedule`` runs per trajectory,
    on a slice of one array."""
    by = list(TRAJECTORY)
    stepped = _outputs(models).filter(pl.col("step").is_not_null())
    ordered = stepped.sort([*by, "step", "key"], nulls_last=False).unique(
        [*by, "step"], keep="first", maintain_order=True)
    starts = ordered.select(pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by])).to_series().to_numpy()
    starts[:1] = True
    bounds = [*np.flatnonzero(starts), ordered.height]
    steps, phase = ordered["step"].to_numpy(), np.full(ordered.height, "", dtype=object)
    for start, stop in pairwise(bounds):  # pair i (start + i → start + i + 1) gets a phase
        tail, late = split_schedule(steps[start:stop])
        phase[start:stop - 1] = ["early"] * tail + ["mid"] * (late - tail) + [
            "late"] * (stop - 1 - start - late)
    keys = ordered["key"]
    pairs_from = np.flatnonzero(~starts) - 1  # no pair runs into a new trajectory
    return pl.DataFrame({"key_a": keys.gather(pairs_from), "key_b": keys.gather(pairs_from + 1),
                         "phase": pl.Series(phase[pairs_from], dtype=pl.String)})


def _phase(models: pl.DataFrame, phase: str) -> pl.DataFrame:
    return consecutive_pairs(models).filter(pl.col("phase") == phase).select("key_a", "key_b")


@setting("consecutive-early", "consecutive checkpoints before the evenly spaced tail")
def _consecutive_early(models: pl.DataFrame) -> pl.DataFrame:
    return _phase(models, "early")


@setting("consecutive-mid", "consecutive checkpoints in the first half of the evenly spaced tail")
def _consecutive_mid(models: pl.DataFrame) -> pl.DataFrame:
    return _phase(models, "mid")


@setting("consecutive-late", "consecutive checkpoints in the second half of the tail")
def _consecutive_late(models: pl.DataFrame) -> pl.DataFrame:
    return _phase(models, "late")


# seeds, sizes, quantization, fine-tuning, layers -----------------------------------------------
def _staged(models: pl.DataFrame) -> pl.DataFrame:
    return models.with_columns(stage=pl.coalesce(pl.col("step").cast(pl.String), "checkpoint"))


@setting("seeds", "same family and size at their (shared) final step; different seed")
def _seeds(models: pl.DataFrame) -> pl.DataFrame:
    return _pairs_within(_staged(final_variants(_outputs(models))),
                         ("family", "size", "stage"), "seed")


@setting("seeds-all-steps", "same family, size and checkpoint; different seed")
def _seeds_all_steps(models: pl.DataFrame) -> pl.DataFrame:
    return _pairs_within(_staged(_outputs(models)), ("family", "size", "stage"), "seed")


@setting("sizes", "same family and seed; different size, each at its final step")
def _sizes(models: pl.DataFrame) -> pl.DataFrame:
    by_size = pl.col("size").map_elements(size_value, return_dtype=pl.Float64)
    return _pairs_within(final_variants(_outputs(models)), ("family", "seed"), "size", by_size)


@setting("quantization", "quantized variant vs the model it was quantized from (the same key "
                         "unquantized; for gguf-q4_1.int8 the GGUF variant), scored in the same "
                         "dtype with the same tokenizer and BOS policy, per quant type")
def _quantization(models: pl.DataFrame) -> pl.DataFrame:
    on = ["family", "size", "seed", "layer", "checkpoint", "reference"]
    from_label = pl.col("quant").str.extract(r"^(.*)\.[^.]+$", 1)  # a chained label's source
    base = models.with_columns(reference=pl.col("quant")).select([*on, "key", *PROVENANCE])
    quantized = models.filter(pl.col("quant").is_not_null()).with_columns(
        reference=from_label).select([*on, "key", "quant", *PROVENANCE])
    joined = base.join(quantized, on=on, nulls_equal=True, suffix="_b")
    return joined.filter(_comparable(PROVENANCE)).select(key_a="key", key_b="key_b",
                                                         variant="quant")


def _comparable(columns: Sequence[str]) -> pl.Expr:
    """Pairs whose recorded provenance agrees in ``columns`` (unknown, null, agrees with all):
    a dtype or a tokenizer that differs would be measured along with the quantization."""
    agree = [pl.col(c).is_null() | pl.col(f"{c}_b").is_null() | (pl.col(c) == pl.col(f"{c}_b"))
             for c in columns]
    return pl.all_horizontal(agree)


def _find_parent(models: pl.DataFrame, stored: set[str], parent: str) -> str | None:
    """The stored key of a parent: verbatim (one of ``stored``, the keys of ``models``), else
    the one variant its set fields match.

    Output variants win over quantized or layer variants (a parent key rarely names them).
    """
    if parent in stored:
        return parent
    try:
        wanted = ModelKey.parse(parent)
    except AtlasError:
        return None
    matches = models.filter(pl.col("family") == wanted.family, pl.col("size") == wanted.size)
    for name in ("seed", "quant", "layer", "checkpoint"):
        if getattr(wanted, name) is not None:
            matches = matches.filter(pl.col(name) == getattr(wanted, name))
    if matches.height > 1:
        matches = matches.filter(pl.col("quant").is_null(), pl.col("layer").is_null())
    return matches["key"][0] if matches.height == 1 else None


@setting("fine-tune", "a fine-tuned model vs its parent")
def _fine_tune(models: pl.DataFrame) -> pl.DataFrame:
    children = models.filter(pl.col("parent").is_not_null())
    stored = set(models["key"].to_list())  # once: a set per child was quadratic in the models
    rows = [{"key_a": found, "key_b": key}
            for key, parent in children.select("key", "parent").iter_rows()
            if (found := _find_parent(models, stored, parent)) is not None and found != key]
    return pl.DataFrame(rows, schema=_empty().schema)


@setting("layers-adjacent", "logit-lens layer l vs layer l+1 of the same model")
def _layers_adjacent(models: pl.DataFrame) -> pl.DataFrame:
    on = ["family", "size", "seed", "quant", "checkpoint"]
    layered = models.filter(pl.col("layer").is_not_null()).select([*on, "layer", "key"])
    following = layered.with_columns(pl.col("layer") - 1)
    joined = layered.join(following, on=[*on, "layer"], nulls_equal=True, suffix="_b")
    return joined.select(key_a="key", key_b="key_b")


# random pairs -----------------------------------------------------------------------------------
def _candidate_pairs(codes: np.ndarray, same: bool,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j whose family codes agree (``same``) or not, at most RANDOM_PAIRS."""
    n = codes.size
    if n * (n - 1) // 2 <= ENUMERATE_LIMIT:
        i, j = np.triu_indices(n, k=1)
        keep = (codes[i] == codes[j]) == same
        i, j = i[keep], j[keep]
        if i.size > RANDOM_PAIRS:
            pick = np.sort(rng.choice(i.size, RANDOM_PAIRS, replace=False))
            i, j = i[pick], j[pick]
        return i, j
    chosen: set[tuple[int, int]] = set()
    for _ in range(100):  # a huge pool: draw, reject, deduplicate (rare families may fall short)
        a, b = rng.integers(n, size=(2, 4 * RANDOM_PAIRS))
        for x, y in zip(np.minimum(a, b), np.maximum(a, b), strict=True):
            if x != y and (codes[x] == codes[y]) == same and len(chosen) < RANDOM_PAIRS:
                chosen.add((int(x), int(y)))
        if len(chosen) >= RANDOM_PAIRS:
            break
    ordered = sorted(chosen)
    return (np.array([p[0] for p in ordered], dtype=np.int64),
            np.array([p[1] for p in ordered], dtype=np.int64))


def random_pairs(models: pl.DataFrame, same_family: bool) -> pl.DataFrame:
    """Random pairs of distinct models (final output variants), drawn reproducibly."""
    output = models.filter(pl.col("quant").is_null(), pl.col("layer").is_null())
    pool = final_variants(output).sort("key")
    _, codes = np.unique(np.asarray(pool["family"].to_list(), dtype=object).astype(str),
                         return_inverse=True)
    i, j = _candidate_pairs(codes, same_family, np.random.default_rng(RANDOM_SEED))
    keys = pool["key"]
    return pl.DataFrame({"key_a": keys.gather(i), "key_b": keys.gather(j)},
                        schema=_empty().schema)


@setting("random-within-family", f"random pairs of models of one family (≤ {RANDOM_PAIRS})")
def _random_within(models: pl.DataFrame) -> pl.DataFrame:
    return random_pairs(models, same_family=True)


@setting("random-across-families", f"random pairs of models of two families (≤ {RANDOM_PAIRS})")
def _random_across(models: pl.DataFrame) -> pl.DataFrame:
    return random_pairs(models, same_family=False)


# pairs, KLs and the scale ----------------------------------------------------------------------
def _chosen_settings(settings: Iterable[str | Setting] | None) -> list[Setting]:
    if settings is None:
        return list(SETTINGS.values())
    chosen = []
    for entry in settings:
        if isinstance(entry, Setting):
            chosen.append(entry)
        elif entry in SETTINGS:
            chosen.append(SETTINGS[entry])
        else:
            raise ScaleError(f"unknown setting {entry!r}; known: {', '.join(SETTINGS)}")
    return chosen


def pairs(models: pl.DataFrame,
          settings: Iterable[str | Setting] | None = None) -> pl.DataFrame:
    """(setting, key_a, key_b) for every registered setting (or ``settings``), in that order."""
    frame = _normalised(models)
    found = []
    for entry in _chosen_settings(settings):
        chosen = entry.select(frame)
        name = (pl.lit(entry.name + ":") + pl.col("variant") if "variant" in chosen.columns
                else pl.lit(entry.name))
        found.append(chosen.select(setting=name, key_a="key_a", key_b="key_b")
                     .unique().sort("setting", "key_a", "key_b"))
    return pl.concat(found) if found else pl.DataFrame(schema=PAIR_SCHEMA)


def describe_settings() -> pl.DataFrame:
    """The registered settings and what each compares."""
    return pl.DataFrame({"setting": list(SETTINGS),
                         "description": [s.description for s in SETTINGS.values()]})


def measured_pairs(models: pl.DataFrame, scope: str,
                   settings: Iterable[str | Setting] | None = None) -> pl.DataFrame:
    """The pairs to measure among ``models`` (the selection ``scope`` describes, e.g. "on text
    set 'eval'"); an error says why there are none."""
    if models.height == 0:
        raise ScaleError(f"no model variant {scope}")
    chosen = pairs(models, settings)
    if chosen.height == 0:
        raise ScaleError(
            f"the {models.height} model variants {scope} form no pair in any setting: the "
            "settings need checkpoints of one run, seeds, sizes, quant or layer variants, "
            "parents, or several models")
    return chosen


def pair_keys(chosen: pl.DataFrame) -> list[str]:
    """The keys the pairs involve, sorted: the rows of the matrix ``with_kl`` reads."""
    return sorted(set(chosen["key_a"].to_list()) | set(chosen["key_b"].to_list()))


def with_kl(chosen: pl.DataFrame, keys: list[str], loglik: np.ndarray,
            mean_bytes: float) -> pl.DataFrame:
    """Every pair with its KL and SE (bits/byte), computed for those pairs alone from the
    vectors of ``keys`` (``pair_kl``: a block of differences at a time, no K × K matrix):
    (setting, key_a, key_b, kl, se)."""
    index = {"old": keys, "new": range(len(keys)), "return_dtype": pl.Int64}
    rows = chosen.select(a=pl.col("key_a").replace_strict(**index),
                         b=pl.col("key_b").replace_strict(**index))
    kl, se = pair_kl(loglik, rows["a"].to_numpy(), rows["b"].to_numpy(), mean_bytes)
    return chosen.with_columns(kl=pl.Series(kl), se=pl.Series(se))


def summarise(scaled: pl.DataFrame) -> pl.DataFrame:
    """Per setting (first-seen order): count, median, mean, sd, q1, q3 of the pair KLs; where
    the pairs carry them, ``within_floor`` (how many pairs are) and ``calibrated`` (how many
    have an ``est_over_mc``) with the median ``est_over_mc``."""
    kl = pl.col("kl")
    columns = {"count": pl.len(), "median": kl.median(), "mean": kl.mean(),
               "sd": kl.std(ddof=1), "q1": kl.quantile(0.25, interpolation="linear"),
               "q3": kl.quantile(0.75, interpolation="linear")}
    if "within_floor" in scaled.columns:
        columns["within_floor"] = pl.col("within_floor").sum()
    if "est_over_mc" in scaled.columns:
        columns |= {"calibrated": pl.col("est_over_mc").count(),
                    "est_over_mc": pl.col("est_over_mc").median()}
    return scaled.group_by("setting", maintain_order=True).agg(**columns)

