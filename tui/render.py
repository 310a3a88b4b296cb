"""Text rendering with no Textual in it: cell values, numbers and log-scale rulers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from rich.text import Text

EIGHTHS = " ▏▎▍▌▋▊▉█"
MAX_CELL = 60


def number(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, plain notation for 1e-4 … 1e6; '—' for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-4 <= magnitude < 1e6:
        decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def cell(value) -> str | Text:
    """A DataTable cell for any value a query can return."""
    if value is None:
        return Text("NULL", style="dim italic")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return number(value, 6)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ", timespec="seconds") if isinstance(
            value, datetime) else value.isoformat()
    if isinstance(value, list | tuple):
        head = ", ".join(str(cell(v)) for v in value[:3])
        more = f", … ({len(value)})" if len(value) > 3 else ""
        return f"[{head}{more}]"
    text = str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def optional(value) -> str:
    """Key columns on the models table: blank when unset."""
    return "" if value is None else str(value)


def params(n: int | None) -> str:
    """A parameter count as 70.4M, 1.41B, …"""
    if n is None:
        return ""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def estimate(value: float | None, low: float | None = None, high: float | None = None) -> str:
    """``value [low, high]``, parts left out where unknown."""
    if value is None:
        return "—"
    if low is None or high is None:
        return number(value)
    return f"{number(value)} [{number(low)}, {number(high)}]"


# log scales --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogScale:
    """Whole decades ``lo`` … ``hi`` (as powers of 10) mapped onto ``width`` cells."""

    lo: int
    hi: int
    width: int

    @classmethod
    def around(cls, values: Iterable[float | None], width: int) -> LogScale:
        positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        if not positive:
            return cls(-2, 1, width)
        lo = math.floor(math.log10(min(positive)))
        hi = math.ceil(math.log10(max(positive)))
        if hi <= lo:
            hi = lo + 1
        return cls(lo, hi, max(1, width))

    def position(self, value: float) -> float:
        """Fraction 0 … 1 along the scale (clipped)."""
        if value <= 0:
            return 0.0
        frac = (math.log10(value) - self.lo) / (self.hi - self.lo)
        return min(1.0, max(0.0, frac))

    def column(self, value: float) -> int:
        return min(self.width - 1, round(self.position(value) * (self.width - 1)))

    def bar(self, value: float | None, style: str = "") -> Text:
        """A left-aligned bar of eighth blocks whose length is ``value`` on the scale."""
        if value is None or not math.isfinite(value) or value <= 0:
            return Text("·".ljust(self.width), style="dim")
        eighths = max(1, round(self.position(value) * self.width * 8))
        full, part = divmod(eighths, 8)
        text = "█" * full + (EIGHTHS[part] if part else "")
        return Text(text.ljust(self.width), style=style)

    def range_label(self) -> str:
        return f"{decade_label(self.lo)} … {decade_label(self.hi)} (log)"

    def axis(self) -> tuple[str, str]:
        """A tick line and a label line for the decades, ``width`` cells each."""
        ticks = ["─"] * self.width
        labels = [" "] * self.width
        for power in range(self.lo, self.hi + 1):
            at = self.column(10.0**power)
            ticks[at] = "┼" if 0 < at < self.width - 1 else ("├" if at == 0 else "┤")
            text = decade_label(power)
            start = min(max(0, at - len(text) // 2), self.width - len(text))
            if all(c == " " for c in labels[max(0, start - 1): start + len(text) + 1]):
                labels[start: start + len(text)] = list(text)
        return "".join(ticks), "".join(labels)


@dataclass(frozen=True)
class ScaleRow:
    label: str
    count: int
    q1: float | None
    median: float | None
    q3: float | None


def scale_chart(rows: Sequence[ScaleRow], width: int, label_width: int | None = None) -> Text:
    """One line per setting on a shared log axis: ─── from q1 to q3, ● at the median.

    The line ends with the median and the number of pairs, so the chart is readable alone.
    """
    label_width = label_width or min(24, max([len(r.label) for r in rows] + [7]))
    track = max(10, width - label_width - 16)
    scale = LogScale.around([v for r in rows for v in (r.q1, r.median, r.q3)], track)
    out = Text(no_wrap=True, overflow="crop")
    for row in rows:
        line = [" "] * track
        if row.q1 is not None and row.q3 is not None and row.q1 > 0 and row.q3 > 0:
            for at in range(scale.column(row.q1), scale.column(row.q3) + 1):
                line[at] = "━"
        median_at = None
        if row.median is not None and row.median > 0:
            median_at = scale.column(row.median)
        out.append(row.label[:label_width].ljust(label_width) + " │", style="bold")
        for at, char in enumerate(line):
            if at == median_at:
                out.append("●", style="bold")
            else:
                out.append(char, style="cyan" if char == "━" else "")
        out.append(f"│ {number(row.median):>7} n={row.count}\n")
    ticks, labels = scale.axis()
    pad = " " * label_width
    out.append(f"{pad}  {ticks}\n", style="dim")
    out.append(f"{pad}  {labels}\n", style="dim")
    out.append(f"{pad}  KL bits/byte, log scale: ━ quartiles q1…q3, ● median", style="dim")
    return out


# plotext ----------------------------------------------------------------------------------------
def decade_label(power: int) -> str:
    value = 10.0**power
    return f"{value:g}" if -4 <= power <= 5 else f"1e{power}"


def log_axis(plt, axis: str, values: Sequence[float]) -> list[float]:
    """log10 of ``values`` with decade ticks on ``axis`` ('x' or 'y') of a plotext plot.

    plotext's own log scale transforms the data in place on every build, so a plot that is
    drawn twice (a resize, a theme change) would take the log of the log; this does it once.
    """
    logs = [math.log10(v) for v in values]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    if hi <= lo:
        hi = lo + 1
    ticks = list(range(lo, hi + 1))
    labels = [decade_label(p) for p in ticks]
    if axis == "x":
        plt.xticks(ticks, labels)
        plt.xlim(lo, hi)
    else:
        plt.yticks(ticks, labels)
        plt.ylim(lo, hi)
    return logs


def fitted_line(lags, distances, slope: float | None) -> tuple[list[float], list[float]] | None:
    """A line of the fitted slope through the centroid of the (ln Δt, ln D) points."""
    if slope is None or lags is None or distances is None:
        return None
    pairs = [(math.log(t), math.log(d)) for t, d in zip(lags.ravel(), distances.ravel(),
                                                       strict=True)
             if t > 0 and d is not None and math.isfinite(d) and d > 0]
    if not pairs:
        return None
    xs = [p[0] for p in pairs]
    mx, my = sum(xs) / len(xs), sum(p[1] for p in pairs) / len(pairs)
    lo, hi = min(xs), max(xs)
    return [lo, hi], [my + slope * (lo - mx), my + slope * (hi - mx)]
