"""Diffusion exponents of a training trajectory (method.md §5), in pure numpy.

A trajectory is K checkpoints at steps t_0 < … < t_{K−1} with log-likelihood vectors L (K × N
texts, nats) and, optionally, squared weight distances (K × K). For a start t0 = t_i and a later
checkpoint t = t_j:

- D_q(t0, t) = KL_bpb(p_t0, p_t) = Var_s(ℓ_t − ℓ_t0) / (2 B̄ ln 2), a squared distance in q̃;
- D_w(t0, t) = ‖θ_t − θ_t0‖² = ``weight_sq[i, j]`` (row = the start, column = the later one).

Over the next ``window`` checkpoints, the exponent c is the least-squares slope of ln D on ln Δt
(D ∝ Δt^c). Pythia gives c_q ≈ 0.2 against c_w ≈ 1, and α = c_q / c_w is the Hölder exponent of
W ↦ q(W). The reference reports one slope (with R²) per start and no interval; this module adds
an overall value with a bootstrap interval, and fractional Brownian motion (MSD ∝ Δt^{2H}) to
check that the fitter recovers a known exponent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atlas.analysis.scale import even_tail_start
from atlas.errors import AtlasError
from atlas.kl import bpb_scale

MIN_POINTS = 3  # a line through two points always fits: its slope and R² say nothing
CHUNK = 1 << 21  # values of L-differences held at once by the bootstrap (16 MiB of float64)


class DiffusionError(AtlasError, ValueError):
    """A trajectory (or a set of distances) from which no exponent can be fitted."""


@dataclass(frozen=True)
class Fit:
    """OLS of ln(value) on ln(lag): ``n`` points used, ``dropped`` non-positive/non-finite ones."""

    slope: float
    intercept: float
    r2: float
    n: int
    dropped: int = 0


@dataclass(frozen=True)
class Estimate:
    """A value with a percentile-bootstrap interval; None wherever it cannot be computed."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class StartFit:
    """The exponents from one start t0; None where a side has fewer than 3 positive distances."""

    t0: int | float
    c_q: float | None
    r2_q: float | None
    c_w: float | None
    r2_w: float | None
    alpha: float | None
    dropped_q: int
    dropped_w: int | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DiffusionResult:
    """Per-start fits, overall c_q, c_w, α with intervals, and the window they were fitted on.

    ``lags``, ``d_q`` and ``d_w`` (starts × window) are the points behind the fits, for plots.
    """

    window: int
    c_q: Estimate
    c_w: Estimate
    alpha: Estimate
    per_t0: list[StartFit]
    n_texts: int
    n_boot: int
    ci_level: float
    seed: int
    min_t0: float | None = None  # the first step a start may have (see ``diffusion``)
    notes: list[str] = field(default_factory=list)
    lags: np.ndarray | None = None
    d_q: np.ndarray | None = None
    d_w: np.ndarray | None = None

    def to_dict(self) -> dict:
        """JSON-ready: plain floats and ints, null where not computable; no arrays."""
        return {
            "window": self.window,
            "min_t0": None if self.min_t0 is None else _step(self.min_t0),
            "c_q": self.c_q.to_dict(), "c_w": self.c_w.to_dict(), "alpha": self.alpha.to_dict(),
            "per_t0": [row.to_dict() for row in self.per_t0],
            "n_texts": self.n_texts, "n_boot": self.n_boot, "ci_level": self.ci_level,
            "seed": self.seed, "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Least squares on a log-log scale


def _ols(x: np.ndarray, y: np.ndarray, ok: np.ndarray):
    """Masked least squares of y on x along the last axis, for any leading shape at once.

    Returns (slope, intercept, r2, n); slope, intercept and r2 are NaN where fewer than 3 points
    are usable or all their x are equal. Vectorised so that the bootstrap fits every draw and
    every start in one pass.
    """
    w = ok.astype(np.float64)
    n = w.sum(axis=-1)
    x = np.where(ok, x, 0.0)
    y = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(axis=-1) / n
        y_mean = (w * y).sum(axis=-1) / n
        dx = (x - x_mean[..., None]) * w
        dy = (y - y_mean[..., None]) * w
        sxx = (dx * dx).sum(axis=-1)
        slope = (dx * dy).sum(axis=-1) / sxx
        intercept = y_mean - slope * x_mean
        residual = (y - intercept[..., None] - slope[..., None] * x) * w
        ss_res = (residual * residual).sum(axis=-1)
        ss_tot = (dy * dy).sum(axis=-1)
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 1.0)  # a flat line fitted exactly
    bad = (n < MIN_POINTS) | ~(sxx > 0)
    nan = np.nan
    return np.where(bad, nan, slope), np.where(bad, nan, intercept), np.where(bad, nan, r2), n


def _log_positive(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln of the values that are positive and finite, and the mask of those values."""
    ok = np.isfinite(values) & (values > 0)
    return np.log(np.where(ok, values, 1.0)), ok


def fit_loglog(lags, values) -> Fit:
    """Slope of ln(values) on ln(lags) by least squares, with R².

    Non-positive or non-finite values cannot be logged: they are dropped and counted in
    ``Fit.dropped`` rather than silently fitted around.
    """
    lags = np.asarray(lags, dtype=np.float64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    if lags.shape != values.shape:
        raise DiffusionError(f"{lags.size} lags but {values.size} values: pass one value per lag")
    if not np.all(np.isfinite(lags) & (lags > 0)):
        raise DiffusionError("lags must be positive and finite (they are step differences)")
    y, ok = _log_positive(values)
    n = int(ok.sum())
    if n < MIN_POINTS:
        raise DiffusionError(
            f"only {n} of {values.size} values are positive ({values.size - n} non-positive or "
            f"non-finite dropped): a log-log fit needs at least {MIN_POINTS}")
    if np.ptp(lags[ok]) == 0:
        raise DiffusionError("all lags are equal: a slope needs at least two distinct lags")
    slope, intercept, r2, _ = _ols(np.log(lags), y, ok)
    return Fit(float(slope), float(intercept), float(r2), n, values.size - n)


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_trajectory(steps, loglik, mean_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps strictly increasing, one finite row of L per step, at least 4 checkpoints."""
    try:
        steps = np.asarray(steps, dtype=np.float64)
        loglik = np.asarray(loglik, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffusionError("steps and loglik must be numeric arrays") from None
    if steps.ndim != 1 or not np.isfinite(steps).all():
        raise DiffusionError("steps must be a 1-D array of finite checkpoint steps")
    if steps.size < MIN_POINTS + 1:  # a start and 3 later checkpoints
        raise DiffusionError(
            f"a trajectory needs at least {MIN_POINTS + 1} checkpoints (a start and "
            f"{MIN_POINTS} lags) to fit an exponent; got {steps.size}")
    bad = np.flatnonzero(np.diff(steps) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise DiffusionError(
            f"steps must be strictly increasing: steps[{i}] = {_step(steps[i])} follows "
            f"steps[{i - 1}] = {_step(steps[i - 1])}; sort the checkpoints and drop duplicates")
    if loglik.ndim != 2 or loglik.shape[0] != steps.size:
        raise DiffusionError(
            f"loglik has shape {loglik.shape} but there are {steps.size} steps: pass a "
            "K × N matrix, one row per checkpoint in step order")
    if loglik.shape[1] < 2:
        raise DiffusionError("loglik needs at least 2 texts (columns) for a variance")
    nonfinite = np.flatnonzero(~np.isfinite(loglik).all(axis=1))
    if nonfinite.size:
        raise DiffusionError(
            f"loglik has NaN or inf in the row of step {_step(steps[nonfinite[0]])}: "
            "rescore that checkpoint or leave it out")
    if not (np.isfinite(mean_bytes) and mean_bytes > 0):
        raise DiffusionError(f"mean_bytes must be a positive number, got {mean_bytes}")
    return steps, loglik


def _check_options(window: int, n_boot: int, ci: float) -> None:
    if int(window) != window or window < MIN_POINTS:
        raise DiffusionError(
            f"window must be an integer of at least {MIN_POINTS} lags, got {window}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise DiffusionError(f"n_boot must be a non-negative integer, got {n_boot}")
    if not 0 < ci < 1:
        raise DiffusionError(f"ci must be a level strictly between 0 and 1 (e.g. 0.95), got {ci}")


def _check_weights(weight_sq, n_checkpoints: int) -> np.ndarray | None:
    if weight_sq is None:
        return None
    weight_sq = np.asarray(weight_sq, dtype=np.float64)
    if weight_sq.shape != (n_checkpoints, n_checkpoints):
        raise DiffusionError(
            f"weight_sq has shape {weight_sq.shape}; it must be {n_checkpoints} × "
            f"{n_checkpoints}, one row and column per checkpoint in step order")
    return weight_sq


def _window_hint(later: int) -> str:
    if later >= MIN_POINTS:
        return f"use --window {later} or less"
    return f"a fit needs at least {MIN_POINTS + 1} checkpoints from the start"


def default_min_t0(steps: np.ndarray, window: int) -> tuple[float, list[str]]:
    """The first step of the evenly spaced tail (Pythia: 1,000; P1's first start), or the first
    step with a note when the schedule has no such tail or the tail has no full window."""
    tail = even_tail_start(steps)
    if tail is None:
        return float(steps[0]), []
    if steps.size - 1 - tail < window:
        return float(steps[0]), [
            f"the evenly spaced tail (from step {_step(steps[tail])}) has no full window of "
            f"{window} lags: starts from step {_step(steps[0])} instead; pass --min-t0 to "
            "choose the first start"]
    return float(steps[tail]), []


def _start_indices(steps: np.ndarray, window: int, t0, min_t0: float) -> np.ndarray:
    """Indices of the starts at or after ``min_t0`` that have ``window`` later checkpoints
    (only t0's, if given)."""
    k = steps.size
    if t0 is None:
        first = int(np.searchsorted(steps, min_t0))
        if k - 1 - first < window:
            raise DiffusionError(
                f"no start at step ≥ {_step(min_t0)} has a full window: the trajectory has "
                f"{k - first} checkpoints from there, and a window of {window} lags needs "
                f"{window + 1}; {_window_hint(k - 1 - first)} or a smaller --min-t0")
        return np.arange(first, k - window)
    matches = np.flatnonzero(steps == t0)
    if not matches.size:
        nearest = steps[np.argmin(np.abs(steps - float(t0)))]
        raise DiffusionError(
            f"t0 = {t0} is not a checkpoint step of this trajectory (nearest: {_step(nearest)}; "
            f"steps run {_step(steps[0])} … {_step(steps[-1])})")
    i = int(matches[0])
    later = k - 1 - i
    if later < window:
        raise DiffusionError(
            f"t0 = {t0} has {later} later checkpoints but the window needs {window}; choose an "
            f"earlier t0 or {_window_hint(later)}")
    return np.array([i])


def _block_picks(rng: np.random.Generator, n_starts: int, block: int,
                 n_boot: int) -> np.ndarray:
    """Moving-block bootstrap of the starts (n_boot × n_starts indices): runs of ``block``
    consecutive starts from random positions, concatenated and cut to n_starts. Neighbouring
    starts share block − 1 of their block checkpoints, so they are resampled together rather
    than as if independent."""
    block = max(1, min(block, n_starts))
    n_blocks = -(-n_starts // block)
    first = rng.integers(0, n_starts - block + 1, size=(n_boot, n_blocks))
    picks = (first[:, :, None] + np.arange(block)).reshape(n_boot, -1)
    return picks[:, :n_starts]


# ---------------------------------------------------------------------------------------------
# Distances and the bootstrap


def _text_counts(rng: np.random.Generator, n_texts: int, n_boot: int) -> np.ndarray:
    """How often each text appears in each bootstrap resample (n_boot × N), as floats.

    A resample's moments are then count-weighted sums, one matrix product for all draws.
    """
    draws = rng.integers(0, n_texts, size=(n_boot, n_texts))
    flat = (draws + np.arange(n_boot)[:, None] * n_texts).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_texts)
    return counts.reshape(n_boot, n_texts).astype(np.float64)


def _loglik_distances(loglik: np.ndarray, starts: np.ndarray, window: int, scale: float,
                      counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """D_q for every start and lag (S × W), and for every text resample (B × S × W).

    All (start, lag) pairs go through one matrix product with the resample counts, in chunks of
    about ``CHUNK`` values: BLAS is fast on a tall block and slow on many thin ones. The rows of
    differences are centred first: the variance does not change, and the resampled m2 − m1²
    then does not cancel a large mean.
    """
    n_texts = loglik.shape[1]
    first = np.repeat(starts, window)
    later = first + np.tile(np.arange(1, window + 1), starts.size)
    full = np.empty(first.size)
    boot = None if counts is None else np.empty((counts.shape[0], first.size))
    rows = max(1, CHUNK // n_texts)
    for lo in range(0, first.size, rows):
        part = slice(lo, lo + rows)
        diff = loglik[later[part]] - loglik[first[part]]
        diff -= diff.mean(axis=1, keepdims=True)
        squared = diff * diff
        full[part] = squared.mean(axis=1) * scale
        if boot is not None:
            moments = counts @ np.concatenate([diff, squared]).T / n_texts  # (B, 2 × rows)
            m1, m2 = np.split(moments, 2, axis=1)
            boot[:, part] = (m2 - m1 * m1) * scale
    shape = (starts.size, window)
    return full.reshape(shape), None if boot is None else boot.reshape(-1, *shape)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where all are NaN."""
    ok = np.isfinite(values)
    count = ok.sum(axis=-1)
    total = np.where(ok, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _interval(draws: np.ndarray, ci: float) -> tuple[float | None, float | None]:
    finite = draws[np.isfinite(draws)]
    if finite.size < 2:
        return None, None
    low, high = np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _step(value) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# ---------------------------------------------------------------------------------------------
# The fit


def _dropped_notes(name: str, steps: np.ndarray, starts: np.ndarray, n_used: np.ndarray,
                   window: int) -> list[str]:
    """Readable notes on distances that could not be logged, and starts left without a fit."""
    notes = []
    dropped = window - n_used
    hit = np.flatnonzero(dropped > 0)
    if hit.size:
        where = ", ".join(str(_step(steps[i])) for i in starts[hit[:5]])
        more = f" and {hit.size - 5} more" if hit.size > 5 else ""
        notes.append(f"{name}: {int(dropped.sum())} non-positive or non-finite values dropped "
                     f"from the fits at t0 = {where}{more}")
    unfit = np.flatnonzero(n_used < MIN_POINTS)
    if unfit.size:
        where = ", ".join(str(_step(steps[i])) for i in starts[unfit[:5]])
        notes.append(f"{name}: {unfit.size} start(s) with fewer than {MIN_POINTS} positive "
                     f"values, left out of the overall estimate (t0 = {where})")
    return notes


def _weight_side(weight_sq, starts, offsets, x, steps, window):
    """Per-start c_w fits from the weight distances, or Nones when there are none."""
    if weight_sq is None:
        empty = np.full(starts.size, np.nan)
        return None, empty, empty, None, []
    d_w = weight_sq[starts[:, None], starts[:, None] + offsets]
    slope, r2, n_used, notes = _fit_starts(
        "D_w", d_w, x, steps, starts, window,
        "no start has 3 or more positive weight distances in its window: check weight_sq "
        "(row = start, column = later checkpoint), or leave it out to fit c_q alone")
    return d_w, slope, r2, n_used, notes


def _fit_starts(name: str, distances, x, steps, starts, window: int, no_fit: str):
    """Per-start slopes of ln D on ln Δt (with r², points used, notes on what was dropped);
    ``no_fit`` is the error when no start has enough positive distances."""
    slope, _, r2, n_used = _ols(x, *_log_positive(distances))
    if not np.isfinite(slope).any():
        raise DiffusionError(no_fit)
    return slope, r2, n_used, _dropped_notes(name, steps, starts, n_used, window)


def diffusion(steps, loglik, mean_bytes: float, weight_sq=None, window: int = 10, t0=None,
              n_boot: int = 200, seed: int = 0, ci: float = 0.95,
              min_t0: float | None = None) -> DiffusionResult:
    """Fit the diffusion exponents c_q, c_w and α = c_q / c_w of one training trajectory.

    Per start t0 = t_i with a full window, lags are Δt = t_{i+k} − t_i for k = 1 … ``window``,
    and c is the OLS slope of ln D on ln Δt (non-positive D dropped and reported in ``notes``).
    ``t0`` restricts the fit to that one start step. Otherwise the starts are every checkpoint
    at step ≥ ``min_t0`` with a full window; ``min_t0`` defaults to the first step of the evenly
    spaced tail (atlas.analysis.scale.even_tail_start; Pythia: 1,000, so starts 1,000 …
    133,000 with a window of 10, as P1), or to the first step, with a note, when the schedule
    has no such tail or the tail has no full window.

    Overall value: the mean over starts of the per-start slopes. This is the level the reference
    reads off its curve of per-start exponents (its only output), it weights every start equally
    whatever its scatter, and with one start it is that start's slope. Overall α is c_q / c_w,
    the ratio of the two means, not the mean of per-start ratios (which a start with c_w near 0
    would dominate).

    Intervals are percentile intervals at level ``ci`` from ``n_boot`` paired draws. Each draw
    resamples the N texts with replacement (the same resample for every start, since the starts
    share the texts) and recomputes every D_q, and resamples the starts by a moving-block
    bootstrap with blocks of ``window`` consecutive starts (neighbouring windows share
    ``window`` − 1 of their points, so they are drawn together, not as independent starts);
    c_q* is the mean of the redrawn slopes over the redrawn starts, c_w* the mean of the (fixed)
    weight slopes over the same starts, α* = c_q* / c_w*. So the c_q interval covers text
    sampling (the N texts as a sample of texts) and which stretch of training was observed;
    c_w's covers the starts only (the weights have nothing to resample), and is None with fewer
    than 2 fitted starts. They do not cover seed-to-seed variation (one run is one seed), the
    error of the weight sketches behind D_w, or the choice of window and ``min_t0``; with fewer
    starts than one block the start part vanishes. ``n_boot = 0`` gives no intervals.
    """
    steps, loglik = _check_trajectory(steps, loglik, mean_bytes)
    _check_options(window, n_boot, ci)
    weight_sq = _check_weights(weight_sq, steps.size)
    notes: list[str] = []
    if min_t0 is None:
        min_t0, notes = default_min_t0(steps, int(window))
    starts = _start_indices(steps, window, t0, float(min_t0))
    offsets = np.arange(1, window + 1)
    lags = steps[starts[:, None] + offsets] - steps[starts][:, None]
    x = np.log(lags)

    rng = np.random.default_rng(seed)
    counts = _text_counts(rng, loglik.shape[1], n_boot) if n_boot else None
    d_q, d_q_boot = _loglik_distances(loglik, starts, window, bpb_scale(mean_bytes), counts)
    slope_q, r2_q, n_q, fit_notes = _fit_starts(
        "D_q", d_q, x, steps, starts, window,
        "no start has 3 or more positive log-likelihood distances in its window: the "
        "checkpoints' vectors are (nearly) identical; check that they are different models")
    d_w, slope_w, r2_w, n_w, w_notes = _weight_side(weight_sq, starts, offsets, x, steps, window)
    notes += fit_notes + w_notes

    c_q, c_w, alpha = _overall(slope_q, slope_w, x, d_q_boot, rng, ci, weight_sq is not None,
                               notes, int(window))
    rows = [
        StartFit(t0=_step(steps[i]), c_q=_num(slope_q[s]), r2_q=_num(r2_q[s]),
                 c_w=_num(slope_w[s]), r2_w=_num(r2_w[s]),
                 alpha=_ratio(_num(slope_q[s]), _num(slope_w[s])),
                 dropped_q=int(window - n_q[s]),
                 dropped_w=None if n_w is None else int(window - n_w[s]))
        for s, i in enumerate(starts)
    ]
    return DiffusionResult(window=int(window), c_q=c_q, c_w=c_w, alpha=alpha, per_t0=rows,
                           n_texts=loglik.shape[1], n_boot=int(n_boot), ci_level=float(ci),
                           seed=int(seed), min_t0=float(min_t0), notes=notes, lags=lags, d_q=d_q,
                           d_w=d_w)


def _overall(slope_q, slope_w, x, d_q_boot, rng, ci, has_weights, notes, block):
    """Means over starts and their paired bootstrap intervals (see ``diffusion``)."""
    value_q = _num(_nanmean_rows(slope_q))
    value_w = _num(_nanmean_rows(slope_w)) if has_weights else None
    value_a = _ratio(value_q, value_w)
    if d_q_boot is None:
        return Estimate(value_q), Estimate(value_w), Estimate(value_a)
    boot_q, _, _, _ = _ols(x, *_log_positive(d_q_boot))  # (B, S): every draw, every start
    picks = _block_picks(rng, slope_q.size, block, boot_q.shape[0])
    draws_q = _nanmean_rows(np.take_along_axis(boot_q, picks, axis=1))
    draws_w = _nanmean_rows(slope_w[picks])
    lost = int((~np.isfinite(draws_q)).sum())
    if lost:
        notes.append(f"{lost} of {draws_q.size} bootstrap draws had no fittable start and were "
                     "left out of the intervals")
    c_q = Estimate(value_q, *_interval(draws_q, ci))
    if not has_weights:
        return c_q, Estimate(None, None, None), Estimate(None, None, None)
    fitted_w = int(np.isfinite(slope_w).sum())
    c_w = Estimate(value_w, *(_interval(draws_w, ci) if fitted_w >= 2 else (None, None)))
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = Estimate(value_a, *_interval(draws_q / draws_w, ci))
    return c_q, c_w, alpha


# ---------------------------------------------------------------------------------------------
# A synthetic process of known exponent


def fbm_paths(hurst: float, n_steps: int, n_paths: int, seed: int = 0) -> np.ndarray:
    """Exact fractional Brownian motion at t = 0, 1, …, n_steps: shape (n_steps + 1, n_paths).

    Row t holds X_t for every path, row 0 is 0, and Var(X_t − X_s) = |t − s|^{2H}. Used as a fake
    trajectory (rows = checkpoints, paths = texts), it gives E[D_q] ∝ Δt^{2H} for every start,
    a known exponent for the fitter. Davies–Harte: the increments' Toeplitz covariance embeds in
    a circulant of size 2·n_steps whose eigenvalues are non-negative for every H in (0, 1), so
    one FFT per path gives exact samples in O(n log n).
    """
    if not 0 < hurst < 1:
        raise DiffusionError(f"the Hurst exponent must lie strictly between 0 and 1, got {hurst}")
    if n_steps < 1 or n_paths < 1:
        raise DiffusionError(f"need n_steps ≥ 1 and n_paths ≥ 1, got {n_steps} and {n_paths}")
    k = np.arange(n_steps + 1, dtype=np.float64)
    power = 2.0 * hurst
    autocov = 0.5 * ((k + 1) ** power - 2.0 * k**power + np.abs(k - 1) ** power)
    circulant = np.concatenate([autocov, autocov[-2:0:-1]])
    eigen = np.fft.fft(circulant).real
    if eigen.min() < -1e-9 * eigen.max():
        raise DiffusionError(f"circulant embedding failed for H = {hurst}: negative eigenvalue")
    size = circulant.size
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((n_paths, size)) + 1j * rng.standard_normal((n_paths, size))
    noise = np.fft.fft(np.sqrt(np.maximum(eigen, 0.0) / size) * normal, axis=1)[:, :n_steps].real
    paths = np.zeros((n_steps + 1, n_paths))
    paths[1:] = np.cumsum(noise.T, axis=0)
    return paths
