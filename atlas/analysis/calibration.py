"""How the estimator's KL relates to the Monte-Carlo KL, and which KLs are rounding.

Pure: takes the rows of ``calibrations`` (``Atlas.calibrations()``) as a frame. The fit is
ln(estimator) = a + b · ln(MC), MC being the mean of KL(a‖b) and KL(b‖a) in bits/byte, by
ordinary least squares over the pairs where both are positive: b = 1 would mean a constant
ratio e^a, b < 1 an estimator that overstates small KLs relative to large ones.

``flag_floors`` is the one rule that marks a KL as within rounding (nearest, scale, report):
below ``FLOOR_FACTOR`` × the larger precision floor of the two vectors. ``with_ratios`` puts a
stored calibration's estimator/MC ratio beside the pairs it measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.errors import AtlasError

FLOOR_FACTOR = 3.0  # a KL within this many precision floors is flagged


class CalibrationFitError(AtlasError, ValueError):
    """Too few usable calibrations to fit a relation."""


@dataclass(frozen=True)
class LogLogFit:
    intercept: float  # a in ln(estimator) = a + b ln(MC)
    slope: float  # b
    r2: float
    n: int

    def predict(self, mc: np.ndarray) -> np.ndarray:
        """The estimator's KL the fit expects at Monte-Carlo KL ``mc`` (bits/byte)."""
        return np.exp(self.intercept) * np.asarray(mc, dtype=np.float64) ** self.slope

    def describe(self) -> str:
        return (f"estimator ≈ {np.exp(self.intercept):.3g} × MC^{self.slope:.2f} "
                f"(log–log OLS, R² = {self.r2:.2f}, {self.n} pairs)")


def with_mc_mean(frame: pl.DataFrame) -> pl.DataFrame:
    """The calibrations with ``mc_bpb``: the mean of both directions (bits/byte)."""
    return frame.with_columns(mc_bpb=(pl.col("mc_ab_bpb") + pl.col("mc_ba_bpb")) / 2)


def fit_loglog(frame: pl.DataFrame) -> LogLogFit:
    """OLS of ln(estimator_bpb) on ln(mc_bpb) over rows where both are positive."""
    usable = with_mc_mean(frame).filter((pl.col("estimator_bpb") > 0) & (pl.col("mc_bpb") > 0))
    if usable.height < 2 or usable["mc_bpb"].n_unique() < 2:
        raise CalibrationFitError(
            f"{usable.height} calibration(s) with a positive KL both ways: a log–log fit needs "
            "two or more pairs of different KL; run `atlas calibrate` on more pairs")
    x = np.log(usable["mc_bpb"].to_numpy())
    y = np.log(usable["estimator_bpb"].to_numpy())
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return LogLogFit(float(intercept), float(slope), r2, usable.height)


def flag_floors(pairs: pl.DataFrame, floors: pl.DataFrame,
                keys: tuple[str, str] = ("key_a", "key_b")) -> pl.DataFrame:
    """``pairs`` (columns ``keys``, ``textset``, ``kl``) with ``floor``, the larger precision
    floor of the two vectors (each for the dtype it was scored in), and ``within_floor``
    (kl < FLOOR_FACTOR × floor: not to be told from rounding), when some pair has a floor; the
    rows as they were otherwise. ``floors``: (key, textset, floor), as
    ``atlas.queries.scored_floors`` reads them."""
    joined = pairs
    for i, column in enumerate(keys):
        joined = joined.join(floors.rename({"key": column, "floor": f"_floor{i}"}),
                             on=[column, "textset"], how="left", maintain_order="left")
    floor = pl.max_horizontal("_floor0", "_floor1")
    if joined.select(floor.is_null().all()).item():
        return pairs
    return joined.with_columns(floor=floor).with_columns(
        within_floor=pl.col("kl") < FLOOR_FACTOR * pl.col("floor")).drop("_floor0", "_floor1")


def pair_ratios(frame: pl.DataFrame) -> pl.DataFrame:
    """(key_a, key_b, textset, est_over_mc): the latest stored calibration of each unordered
    pair on each estimator text set, in both orders (the ratio is symmetric in a and b)."""
    stored = frame.filter(pl.col("ratio").is_not_null()).select(
        "key_a", "key_b", "textset", "created_at", est_over_mc="ratio")
    swapped = stored.with_columns(key_a=pl.col("key_b"), key_b=pl.col("key_a"))
    return pl.concat([stored, swapped]).sort("created_at").unique(
        ["key_a", "key_b", "textset"], keep="last", maintain_order=True).drop("created_at")


def with_ratios(pairs: pl.DataFrame, ratios: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` (key_a, key_b, textset …) with ``est_over_mc`` from ``pair_ratios`` when some
    pair was calibrated; the rows as they were otherwise."""
    joined = pairs.join(ratios, on=["key_a", "key_b", "textset"], how="left",
                        maintain_order="left")
    return pairs if joined["est_over_mc"].is_null().all() else joined
