"""Figures of the analyses (method.md §4–§6): PNG files drawn with matplotlib's Agg canvas.

Every function takes an analysis result (a polars frame or a ``DiffusionResult``), not the
atlas, writes one figure and returns its path:

    from atlas.analysis import figures
    figures.plot_scale(db.scale_pairs(), "scale.png")
    run = db.run("pythia", "410m")
    figures.plot_trajectory(db.trajectory(run).value, "consec.png", run.label)
    figures.plot_diffusion(db.diffusion(run).value, "diffusion.png", run.label)
    figures.plot_map(db.map_points("tsne-default-500"), "map.png", "t-SNE")

The figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through
pyplot: nothing needs a display, no global state changes, and nothing stays open. The format
follows the path's suffix (``.png`` by default; ``.svg`` or ``.pdf`` work too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, NullFormatter, SymmetricalLogLocator

from atlas.analysis.diffusion import DiffusionResult, Estimate
from atlas.errors import AtlasError
from atlas.keys import run_label

DPI = 150
MAX_MAP_LABELS = 16
# Settings of one kind share a hue (consecutive checkpoints blue, seeds green, …).
SETTING_COLOURS = {
    "consecutive-early": "#6baed6", "consecutive-mid": "#3182bd", "consecutive-late": "#08519c",
    "seeds": "#238b45", "seeds-all-steps": "#74c476", "sizes": "#e6550d",
    "fine-tune": "#756bb1", "quantization": "#8c6d31", "layers-adjacent": "#d6616b",
    "random-within-family": "#737373", "random-across-families": "#252525",
}
FALLBACK = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#9467bd", "#8c564b")


class FigureError(AtlasError, ValueError):
    """A figure cannot be drawn from what was passed (empty, missing columns, nothing finite)."""


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attach a canvas: text extents (label placement) need its renderer
    return fig


def _save(fig: Figure, path, tight: bool = False) -> Path:
    """Write the figure (format from the suffix, PNG without one); ``tight`` crops the margins
    (for figures whose layout is frozen, where constrained layout cannot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix[1:].lower() or "png", dpi=DPI,
                **({"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}))
    return path


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str, hint: str) -> None:
    if not isinstance(frame, pl.DataFrame):
        raise FigureError(f"{what} takes a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FigureError(f"{what} needs the column(s) {', '.join(missing)}; the frame has "
                          f"{', '.join(frame.columns) or 'none'} ({hint})")
    if frame.height == 0:
        raise FigureError(f"{what}: the frame is empty, there is nothing to plot ({hint})")


def _finite(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    value = pl.col(column).cast(pl.Float64)
    return frame.with_columns(value).filter(value.is_not_null() & value.is_finite())


def _setting_colour(name: str, index: int) -> str:
    return SETTING_COLOURS.get(name, SETTING_COLOURS.get(name.split(":")[0],
                                                         FALLBACK[index % len(FALLBACK)]))


def _darker(colour, amount: float = 0.35) -> tuple:
    """The colour mixed with black: light hues stay readable as text."""
    r, g, b = to_rgb(colour)
    return (r * (1 - amount), g * (1 - amount), b * (1 - amount))


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.3e}"


def _step(value: float) -> str:
    """A training step as people write it: 143,000, not 1.430e+05."""
    return f"{value:,.0f}" if float(value).is_integer() else _fmt(value)


def _exponent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _estimate(name: str, estimate: Estimate) -> str:
    """``c = 0.98 [0.92, 1.03]``: exponents to two decimals, the interval when there is one."""
    text = f"{name} = {_exponent(estimate.value)}"
    if estimate.ci_low is not None and estimate.ci_high is not None:
        text += f"  [{_exponent(estimate.ci_low)}, {_exponent(estimate.ci_high)}]"
    return text


# ---------------------------------------------------------------------------------------------
# The KL scale across settings


def plot_scale(pairs: pl.DataFrame, path, title: str | None = None) -> Path:
    """The KL of every pair, one row per setting, settings ordered by median (smallest on top).

    ``pairs`` is ``Atlas.scale_pairs(...)`` (columns setting, kl; others ignored). Each row
    shows every pair as a jittered point over a box (quartiles, whiskers to 1.5 IQR); the median
    is the bold tick, its value printed above it; tick labels give the number of pairs. The x
    axis is symlog in bits/byte: logarithmic above the smallest KL's decade, linear below it,
    so a KL of exactly 0 still shows.
    """
    hint = "pass Atlas.scale_pairs(...)"
    _require(pairs, ("setting", "kl"), "plot_scale", hint)
    data = _finite(pairs, "kl")
    if data.height == 0:
        raise FigureError(f"plot_scale: no pair has a finite KL ({hint})")
    groups = {name: np.sort(group["kl"].to_numpy())
              for (name,), group in data.partition_by("setting", as_dict=True,
                                                      maintain_order=True).items()}
    order = sorted(groups, key=lambda name: (float(np.median(groups[name])), name))
    n = len(order)

    values = np.concatenate(list(groups.values()))
    positive = values[values > 0]
    low_decade = math.floor(math.log10(positive.min())) if positive.size else -3
    linthresh = 10.0 ** low_decade
    top = max(float(values.max()), linthresh * 10)

    fig = _figure(8.5, 1.3 + 0.55 * n)
    ax = fig.add_subplot()
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
    rng = np.random.default_rng(0)
    for row, name in enumerate(order):
        kl = groups[name]
        colour = _setting_colour(name, row)
        jitter = rng.uniform(-0.17, 0.17, kl.size)
        size = 14 if kl.size <= 50 else 7 if kl.size <= 300 else 3
        alpha = 0.75 if kl.size <= 50 else 0.45
        ax.scatter(kl, row + jitter, s=size, color=colour, alpha=alpha, linewidths=0, zorder=3)
        ax.boxplot([kl], positions=[row], orientation="horizontal", widths=0.5,
                   showfliers=False, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": colour, "alpha": 0.18, "edgecolor": colour},
                   whiskerprops={"color": colour}, capprops={"color": colour},
                   medianprops={"color": colour, "linewidth": 1.2})
        median = float(np.median(kl))
        ax.plot([median], [row], marker="D", color=colour, markeredgecolor="white",
                markersize=6, zorder=4)
        ax.annotate(f"{median:.3g}", (median, row - 0.27), ha="center", va="bottom",
                    fontsize=8.5, fontweight="bold", color=_darker(colour), zorder=5)

    ax.set_yticks(range(n), [f"{name}  ({groups[name].size} pair"
                             f"{'' if groups[name].size == 1 else 's'})" for name in order])
    ax.set_ylim(n - 0.5, -0.75)  # smallest median on top; room for the top label
    # a little room left of 0 (in the linear part), so pairs with KL = 0 are not on the spine
    left = -0.2 * linthresh if values.min() >= 0 else float(values.min()) * 1.5
    ax.set_xlim(left, top * 2.0)
    ax.xaxis.set_minor_locator(SymmetricalLogLocator(linthresh=linthresh, base=10,
                                                     subs=np.arange(2, 10)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="x", which="major", color="0.85", linewidth=0.8)
    ax.grid(axis="x", which="minor", color="0.93", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.tick_params(axis="y", length=0, labelsize=10)
    ax.set_xlabel(f"KL divergence (bits/byte), symlog: linear below {linthresh:g}")
    ax.set_title(title or "How large is a KL? Pairs of models by setting (◆ = median)",
                 fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Consecutive checkpoints of a run


def plot_trajectory(frame: pl.DataFrame, path, title: str) -> Path:
    """KL between consecutive checkpoints against step, log–log, with ±1 SE bars.

    ``frame`` is ``Atlas.trajectory(...).value`` (columns step, next_step, kl; se optional). A
    pair is plotted at its later step (step 0 has no place on a log axis); with a ``run``
    column each run is its own line. Pairs with KL ≤ 0 cannot be drawn on the log axis and are
    counted in a note.
    """
    hint = "pass Atlas.trajectory(...).value"
    _require(frame, ("step", "next_step", "kl"), "plot_trajectory", hint)
    data = _finite(frame, "kl").filter(pl.col("next_step") > 0)
    dropped = frame.height - data.height
    nonpositive = data.filter(pl.col("kl") <= 0).height
    data = data.filter(pl.col("kl") > 0)
    if data.height == 0:
        raise FigureError(f"plot_trajectory: no pair has a positive, finite KL to plot ({hint})")
    has_se = "se" in data.columns
    runs = (data.partition_by("run", maintain_order=True) if "run" in data.columns
            else [data])

    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    colours = _cycle(len(runs))
    for colour, run in zip(colours, runs, strict=True):
        run = run.sort("next_step")
        x = run["next_step"].to_numpy().astype(float)
        y = run["kl"].to_numpy()
        label = str(run["run"][0]) if "run" in run.columns else None
        if has_se:
            se = run["se"].cast(pl.Float64).fill_null(0.0).fill_nan(0.0).to_numpy()
            se = np.clip(se, 0.0, None)
            yerr = np.vstack([np.minimum(se, 0.9 * y), se])  # a log axis cannot reach 0
            ax.errorbar(x, y, yerr=yerr, color=colour, marker="o", markersize=4, linewidth=1.4,
                        elinewidth=1.0, capsize=2.5, label=label)
        else:
            ax.plot(x, y, color=colour, marker="o", markersize=4, linewidth=1.4, label=label)

    ax.set_xlabel("step t of the later checkpoint (log scale; the pair 0 → 1 is at t = 1)")
    ax.set_ylabel("KL(previous checkpoint ‖ t)  (bits/byte)")
    low, high = float(data["kl"].min()), float(data["kl"].max())
    if high < 3 * low:  # a few similar values: show them within a factor of 2, not magnified
        middle = math.sqrt(low * high)
        ax.set_ylim(middle / 2, middle * 2)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.grid(which="major", color="0.85", linewidth=0.8)
    ax.grid(which="minor", color="0.94", linewidth=0.5)
    ax.set_axisbelow(True)
    notes = []
    gaps = (data["next_step"] - data["step"]).unique().sort().to_list()
    if len(gaps) > 1:
        notes.append(f"gaps between checkpoints {_fmt(gaps[0])} … {_fmt(gaps[-1])} steps: "
                     "KL per pair, not per step")
    if has_se:
        notes.append("bars ±1 SE")
    if dropped or nonpositive:
        notes.append(f"{dropped + nonpositive} pair(s) with KL ≤ 0 or not finite not shown")
    fig.suptitle(title, fontsize=11)
    if notes:
        ax.set_title("; ".join(notes), fontsize=8.5, color="0.35")
    if len(runs) > 1:
        ax.legend(title="run", fontsize=8.5, title_fontsize=9, frameon=False,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, path)


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (0.3, 1, 100)."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks as plain numbers, minor ones labelled when few decades show."""
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))


def _cycle(n: int) -> list:
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return [colormaps["viridis"](v) for v in np.linspace(0.0, 0.9, n)]


# ---------------------------------------------------------------------------------------------
# Diffusion exponents


def plot_diffusion(result: DiffusionResult, path, title: str) -> Path:
    """ln D against ln Δt on log–log axes: D_q (left) and D_w (right, when fitted).

    Faint points: every start's D at each lag of its window. Bold line: the power law with the
    overall exponent (the mean of the per-start slopes), drawn through the centroid of all the
    points in log–log space (the fit keeps slopes, not intercepts); the shaded wedge spans the
    slope's bootstrap interval about the same centroid. The dotted grey line, slope 1 through the
    same centroid, is normal diffusion. α = c_q / c_w is in the weight panel's legend.
    """
    if not isinstance(result, DiffusionResult):
        raise FigureError(f"plot_diffusion takes a DiffusionResult (Atlas.diffusion or "
                          f"diffusion.diffusion), got {type(result).__name__}")
    if result.lags is None or result.d_q is None or np.size(result.lags) == 0:
        raise FigureError("plot_diffusion: the result holds no distances (lags and d_q are "
                          "empty); fit it with Atlas.diffusion or diffusion.diffusion")
    lags = np.asarray(result.lags, dtype=float)
    has_w = result.d_w is not None and np.any(np.asarray(result.d_w, dtype=float) > 0)
    level = f"{result.ci_level:.0%}"

    fig = _figure(11.5 if has_w else 7.0, 5.0)
    axes = fig.subplots(1, 2 if has_w else 1, squeeze=False)[0]
    _diffusion_panel(axes[0], lags, np.asarray(result.d_q, dtype=float), result.c_q, "q",
                     "C0", level, "$D_q$ = KL($p_{t_0}$ ‖ $p_t$)  (bits/byte)",
                     "log-likelihood space")
    if has_w:
        _diffusion_panel(axes[1], lags, np.asarray(result.d_w, dtype=float), result.c_w, "w",
                         "C3", level, "$D_w$ = ‖$θ_t − θ_{t_0}$‖²  (sketch estimate)",
                         "weight space", alpha=result.alpha)
    elif result.d_w is not None:
        axes[0].text(0.99, 0.01, "no positive weight distance: no $c_w$ panel",
                     transform=axes[0].transAxes, ha="right", va="bottom", fontsize=8,
                     color="0.4")
    starts = [row.t0 for row in result.per_t0]
    if not starts:
        span = ""
    elif len(starts) == 1:
        span = f"1 start (t0 = {_step(starts[0])}), "
    else:
        span = f"{len(starts)} starts (t0 = {_step(min(starts))} … {_step(max(starts))}), "
    draws = (f"{result.n_boot} bootstrap draws, {level} intervals" if result.n_boot
             else "no bootstrap, no intervals")
    # three lines: on one panel (no weight sketches) two overran the figure's width
    fig.suptitle(f"{title}\n{span}window of {result.window} checkpoints\n{result.n_texts:,} "
                 f"texts, {draws}", fontsize=10.5)
    return _save(fig, path)


def _diffusion_panel(ax, lags, d, estimate: Estimate, side: str, colour: str, level: str,
                     ylabel: str, name: str, alpha: Estimate | None = None) -> None:
    ok = np.isfinite(d) & (d > 0) & (lags > 0)
    x, y = lags[ok], d[ok]
    ax.set_xscale("log")
    ax.set_yscale("log")
    few = x.size <= 40  # a handful of points: larger, and above the fitted line
    ax.scatter(x, y, s=24 if few else 10, color=colour, alpha=0.6 if few else 0.25,
               linewidths=0, zorder=3 if few else 1.5,
               label=f"every start's $D_{side}$ at each lag")
    handles = []
    if x.size:
        lx, ly = np.log(x), np.log(y)
        cx, cy = float(lx.mean()), float(ly.mean())
        grid = np.linspace(lx.min(), lx.max(), 50)
        ax.plot(np.exp(grid), np.exp(cy + (grid - cx)), color="0.45", linestyle=":",
                linewidth=1.2, label="slope 1 (normal diffusion)")
        if estimate.ci_low is not None and estimate.ci_high is not None:
            lo = cy + estimate.ci_low * (grid - cx)
            hi = cy + estimate.ci_high * (grid - cx)
            ax.fill_between(np.exp(grid), np.exp(np.minimum(lo, hi)), np.exp(np.maximum(lo, hi)),
                            color=colour, alpha=0.15, linewidth=0, label=f"{level} CI of the slope")
        # the y range follows the points (the slope-1 guide may leave it: it is only a guide)
        ax.set_ylim(float(y.min()) / 2.5, float(y.max()) * 2.5)
        if estimate.value is not None:
            ax.plot(np.exp(grid), np.exp(cy + estimate.value * (grid - cx)), color=colour,
                    linewidth=2.4,
                    label=rf"fit $D_{side} \propto \Delta t^{{\,c_{side}}}$:  "
                          + _estimate(f"$c_{side}$", estimate))
    if alpha is not None:
        handles.append(Line2D([], [], linestyle="none",
                              label=_estimate("α = $c_q / c_w$", alpha)))
    ax.set_xlabel("Δt = t − $t_0$  (steps, log scale)")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_ylabel(ylabel)
    ax.set_title(name, fontsize=10)
    ax.grid(which="major", color="0.85", linewidth=0.8)
    ax.grid(which="minor", color="0.94", linewidth=0.5)
    ax.set_axisbelow(True)
    existing, labels = ax.get_legend_handles_labels()
    ax.legend(existing + handles, labels + [h.get_label() for h in handles], fontsize=8,
              loc="best", frameon=True, framealpha=0.9)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)


# ---------------------------------------------------------------------------------------------
# Maps


def plot_map(points: pl.DataFrame, path, title: str) -> Path:
    """A 2-D map of models coloured by family, each training run drawn as a path.

    ``points`` is ``Atlas.map_points(...)`` (key, family, size, seed, step, x, y). Checkpoints of
    one (family, size, seed) with a step are joined in step order by a thin line; ○ marks the
    first checkpoint and a large black-edged ● the final one. Other models are squares. Final
    checkpoints (named by their run) and models outside runs (named by key) are
    labelled where a label fits without covering another; at most ``MAX_MAP_LABELS``.
    """
    hint = "pass Atlas.map_points(...)"
    _require(points, ("key", "family", "x", "y"), "plot_map", hint)
    data = points
    for name, dtype in (("size", pl.String), ("seed", pl.Int64), ("step", pl.Int64)):
        if name not in data.columns:
            data = data.with_columns(pl.lit(None, dtype=dtype).alias(name))
    data = _finite(_finite(data, "x"), "y")
    if data.height == 0:
        raise FigureError(f"plot_map: no point has finite coordinates ({hint})")
    data = data.with_columns(pl.col("family").cast(pl.String).fill_null("(none)"))
    families = sorted(set(data["family"].to_list()))
    colours = dict(zip(families, _cycle(len(families)), strict=True))

    fig = _figure(9.5, 7.0)
    ax = fig.add_subplot()
    runs, singles = _split_runs(data)
    finals: list[tuple[float, float, str, str, str]] = []  # x, y, text, colour, family
    others: list[tuple[float, float, str, str, str]] = []
    for run in runs:
        colour = colours[run["family"][0]]
        x, y = run["x"].to_numpy(), run["y"].to_numpy()
        ax.plot(x, y, color=colour, linewidth=0.9, alpha=0.55, zorder=2)
        ax.scatter(x[1:-1], y[1:-1], s=10, color=colour, alpha=0.6, linewidths=0, zorder=3)
        ax.scatter(x[:1], y[:1], s=28, facecolors="white", edgecolors=colour, linewidths=1.2,
                   zorder=4)
        ax.scatter(x[-1:], y[-1:], s=60, color=colour, edgecolors="black", linewidths=0.8,
                   zorder=5)
        finals.append((float(x[-1]), float(y[-1]), _run_name(run), colour, run["family"][0]))
    if singles.height:
        for family in families:
            part = singles.filter(pl.col("family") == family)
            if part.height:
                ax.scatter(part["x"], part["y"], s=40, color=colours[family], marker="s",
                           edgecolors="black", linewidths=0.6, zorder=5)
        others += [(float(x), float(y), str(key), colours[family], family)
                   for key, family, x, y in singles.select("key", "family", "x", "y").rows()]

    handles = [Patch(color=colours[f], label=f) for f in families]
    if runs:
        handles += [
            Line2D([], [], color="0.4", linewidth=0.9, marker="o", markersize=3,
                   label="training run (by step)"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                   markeredgecolor="0.3", markersize=5, label="first checkpoint"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="0.5",
                   markeredgecolor="black", markersize=7, label="final checkpoint"),
        ]
    if singles.height:
        handles.append(Line2D([], [], linestyle="none", marker="s", markerfacecolor="0.5",
                              markeredgecolor="black", markersize=6, label="model outside a run"))
    ax.legend(handles=handles, title="colour: family", fontsize=8.5, title_fontsize=9,
              frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{title}  ({data.height} model{'' if data.height == 1 else 's'})",
                 fontsize=11)
    ax.set_xlabel("map x")
    ax.set_ylabel("map y")
    ax.grid(color="0.93", linewidth=0.6)
    ax.set_axisbelow(True)
    _frame_map(ax, data)
    xy = data.select("x", "y").to_numpy()
    candidates = _label_order(finals, xy) + _label_order(others, xy)
    _place_labels(fig, ax, candidates, xy)  # last: it freezes the layout
    return _save(fig, path, tight=True)


def _split_runs(data: pl.DataFrame) -> tuple[list[pl.DataFrame], pl.DataFrame]:
    """Runs of ≥ 2 stepped checkpoints (each sorted by step), and every other point."""
    stepped = data.filter(pl.col("step").is_not_null())
    runs, single_keys = [], set(data.filter(pl.col("step").is_null())["key"].to_list())
    for group in stepped.partition_by(["family", "size", "seed"], maintain_order=True):
        if group.height >= 2:
            runs.append(group.sort("step", "key"))
        else:
            single_keys |= set(group["key"].to_list())
    return runs, data.filter(pl.col("key").is_in(sorted(single_keys)))


def _run_name(run: pl.DataFrame) -> str:
    return run_label(run["family"][0], run["size"][0], run["seed"][0])


def _frame_map(ax, data: pl.DataFrame) -> None:
    """Limits with a margin for labels; equal aspect (distances on a map mean something)."""
    x, y = data["x"].to_numpy(), data["y"].to_numpy()
    span = max(float(np.ptp(x)), float(np.ptp(y)))
    if span <= 1e-9 * max(1.0, float(np.abs(x).max()), float(np.abs(y).max())):
        span = 1.0  # one point, or all at one place: a unit frame around it
    pad = 0.12 * span
    ax.set_xlim(float(x.min()) - pad, float(x.max()) + pad)
    ax.set_ylim(float(y.min()) - pad, float(y.max()) + pad)
    ax.set_aspect("equal", adjustable="box")


def _label_order(candidates: list, xy: np.ndarray) -> list[tuple[float, float, str, str]]:
    """Candidates in the order to try: one family after another (so every family gets a label
    before any gets two), within a family the points farthest from the centre first (they
    have room)."""
    centre = xy.mean(axis=0)
    by_family: dict[str, list] = {}
    for x, y, text, colour, family in candidates:
        by_family.setdefault(family, []).append((x, y, text, colour))
    queues = [sorted(items, key=lambda c: -math.hypot(c[0] - centre[0], c[1] - centre[1]))
              for _, items in sorted(by_family.items())]
    ordered = []
    for rank in range(max((len(q) for q in queues), default=0)):
        ordered += [q[rank] for q in queues if rank < len(q)]
    return ordered


OFFSETS = ((6, 6), (6, -6), (-6, 6), (-6, -6), (0, 9), (0, -9), (9, 0), (-9, 0),
           (14, 14), (-14, -14), (14, -14), (-14, 14), (0, 16), (0, -16))


def _place_labels(fig, ax, labels, xy: np.ndarray) -> None:
    """Greedy placement, in the given order, of at most ``MAX_MAP_LABELS`` labels: each takes
    the first offset at which it stays inside the axes and covers no point and no placed label;
    a label with no such offset is left out (a crowded map gets fewer labels, not a pile)."""
    if not labels:
        return
    fig.canvas.draw()  # runs the layout and the aspect, so display coordinates are final
    fig.set_layout_engine("none")  # and keep them: saving must not move the axes under labels
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    screen = ax.transData.transform(xy)
    margin = 5.0 * fig.dpi / 72  # about a marker's radius, in pixels
    placed = []
    for x, y, text, colour in labels:
        if len(placed) >= MAX_MAP_LABELS:
            break
        for dx, dy in OFFSETS:
            style = {"ha": "left" if dx > 0 else "right" if dx < 0 else "center",
                     "va": "bottom" if dy > 0 else "top" if dy < 0 else "center",
                     "fontsize": 7.5, "color": colour, "zorder": 6}
            artist = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                 **style)
            box = artist.get_window_extent(renderer)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                      and box.y1 <= frame.y1)
            near = box.padded(margin)
            covers = np.any((screen[:, 0] > near.x0) & (screen[:, 0] < near.x1)
                            & (screen[:, 1] > near.y0) & (screen[:, 1] < near.y1))
            artist.remove()
            if inside and not covers and not any(box.overlaps(other) for other in placed):
                if max(abs(dx), abs(dy)) > 10:  # far from its point: a leader line to it
                    style["arrowprops"] = {"arrowstyle": "-", "color": colour, "lw": 0.5,
                                           "shrinkA": 0, "shrinkB": 3}
                ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                  "alpha": 0.7, "edgecolor": "none"}, **style)
                placed.append(box.padded(2.0))
                break


def plot_calibration(calibrations: pl.DataFrame, path, fit=None,
                     title: str = "KL estimator vs Monte-Carlo KL") -> Path:
    """Estimator (Var/2B̄, bits/byte) against the mean Monte-Carlo KL of both directions, on
    log–log axes, with SE bars, the line y = x and the fitted relation (``fit``: a LogLogFit)."""
    from atlas.analysis.calibration import with_mc_mean

    columns = ("estimator_bpb", "estimator_se", "mc_ab_bpb", "mc_ba_bpb", "mc_ab_se_bpb",
               "mc_ba_se_bpb", "method")
    _require(calibrations, columns, "calibrations", "pass Atlas.calibrations()")
    data = with_mc_mean(calibrations).filter((pl.col("mc_bpb") > 0)
                                             & (pl.col("estimator_bpb") > 0))
    if data.height == 0:
        raise FigureError("no calibration with a positive KL both ways to plot")
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    mc_se = ((data["mc_ab_se_bpb"] ** 2 + data["mc_ba_se_bpb"] ** 2).sqrt() / 2).to_numpy()
    for index, (method, group) in enumerate(data.group_by("method", maintain_order=True)):
        rows = data["method"] == method[0]
        ax.errorbar(group["mc_bpb"], group["estimator_bpb"], xerr=mc_se[rows.to_numpy()],
                    yerr=group["estimator_se"], fmt="o", color=FALLBACK[index % len(FALLBACK)],
                    label=f"{method[0]} ({group.height})", capsize=2)
    low = float(min(data["mc_bpb"].min(), data["estimator_bpb"].min())) / 2
    high = float(max(data["mc_bpb"].max(), data["estimator_bpb"].max())) * 2
    grid = np.geomspace(low, high, 50)
    ax.plot(grid, grid, color="#999999", linestyle="--", label="estimator = MC")
    if fit is not None:
        ax.plot(grid, fit.predict(grid), color="#d62728", label=fit.describe())
    ax.set(xscale="log", yscale="log", xlabel="Monte-Carlo KL, mean of both directions "
           "(bits/byte)", ylabel="estimator Var(ℓa − ℓb)/(2 B̄ ln 2) (bits/byte)", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)
