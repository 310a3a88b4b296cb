"""How the estimator's KL relates to the Monte-Carlo KL: a log–log fit over calibrations.

Pure: takes the rows of ``calibrations`` (``Atlas.calibrations()``) as a frame. The fit is
ln(estimator) = a + b · ln(MC), MC being the mean of KL(a‖b) and KL(b‖a) in bits/byte, by
ordinary least squares over the pairs where both are positive: b = 1 would mean a constant
ratio e^a, b < 1 an estimator that overstates small KLs relative to large ones.

``floor_flags`` and ``by_setting`` put the stored calibrations and precision floors beside pairs
of models (``nearest``, the scale's settings): one rule for "within 3 × the floor" everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.errors import AtlasError

FLOOR_FACTOR = 3.0  # a KL under this many precision floors cannot be told from rounding
FLOOR_SCHEMA = {"key": pl.String, "textset": pl.String, "floor": pl.Float64}


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


def floor_flags(pairs: pl.DataFrame, floors: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` (key_a, key_b, textset, kl, …) with ``floor``, the larger precision floor of
    the two vectors (``floors``: key, textset, floor, as ``Atlas.floors()``), and
    ``within_floor`` (kl < FLOOR_FACTOR × floor); both null where neither vector has a floor."""
    own = floors.select("textset", key_a="key", floor_a="floor")
    other = floors.select("textset", key_b="key", floor_b="floor")
    joined = pairs.join(own, on=["key_a", "textset"], how="left", maintain_order="left").join(
        other, on=["key_b", "textset"], how="left", maintain_order="left")
    return joined.with_columns(floor=pl.max_horizontal("floor_a", "floor_b")).with_columns(
        within_floor=pl.col("kl") < FLOOR_FACTOR * pl.col("floor")).drop("floor_a", "floor_b")


def latest_ratios(calibrations: pl.DataFrame) -> pl.DataFrame:
    """(key_a, key_b, textset, ratio) of the newest calibration of each unordered pair and text
    set, listed in both orientations so that a pair joins however it is oriented."""
    newest = calibrations.filter(pl.col("ratio").is_not_null()).sort("created_at").with_columns(
        lo=pl.min_horizontal("key_a", "key_b"), hi=pl.max_horizontal("key_a", "key_b")
    ).unique(["lo", "hi", "textset"], keep="last")
    forward = newest.select("key_a", "key_b", "textset", "ratio")
    return pl.concat([forward, forward.select(key_a="key_b", key_b="key_a",
                                              textset="textset", ratio="ratio")]).unique()


def by_setting(pairs: pl.DataFrame, textset: str, calibrations: pl.DataFrame,
               floors: pl.DataFrame) -> pl.DataFrame:
    """Per setting of ``pairs`` (setting, key_a, key_b, kl: ``Atlas.scale_pairs``, measured on
    ``textset``): ``calibrated`` (pairs with a stored Monte-Carlo calibration on that text
    set), ``ratio`` (the median estimator / MC ratio over them, as stored: the estimator on
    raw vectors, whatever view the pairs were measured through), ``floored`` (pairs with a
    precision floor) and ``within_floor`` (pairs with kl < FLOOR_FACTOR × floor)."""
    marked = floor_flags(pairs.with_columns(textset=pl.lit(textset)), floors).join(
        latest_ratios(calibrations), on=["key_a", "key_b", "textset"], how="left",
        maintain_order="left")
    return marked.group_by("setting", maintain_order=True).agg(
        calibrated=pl.col("ratio").is_not_null().sum(), ratio=pl.col("ratio").median(),
        floored=pl.col("floor").is_not_null().sum(),
        within_floor=pl.col("within_floor").fill_null(False).sum())
