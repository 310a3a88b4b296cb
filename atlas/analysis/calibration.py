"""How the estimator's KL relates to the Monte-Carlo KL: a log–log fit over calibrations.

Pure: takes the rows of ``calibrations`` (``Atlas.calibrations()``) as a frame. The fit is
ln(estimator) = a + b · ln(MC), MC being the mean of KL(a‖b) and KL(b‖a) in bits/byte, by
ordinary least squares over the pairs where both are positive: b = 1 would mean a constant
ratio e^a, b < 1 an estimator that overstates small KLs relative to large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from atlas.errors import AtlasError


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
