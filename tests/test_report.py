"""`atlas report` (atlas.report) and what it puts beside the scale: the papers' references
(atlas.analysis.protocol.REFERENCES) and the calibrations and precision floors of each setting
(atlas.analysis.calibration.by_setting)."""

from __future__ import annotations

import datetime

import polars as pl

from atlas.analysis import calibration, protocol


def _calibration(key_a: str, key_b: str, ratio: float, day: int, textset: str = "eval") -> dict:
    return {"key_a": key_a, "key_b": key_b, "textset": textset, "ratio": ratio,
            "created_at": datetime.datetime(2026, 1, day)}


def test_by_setting_counts_calibrations_and_floors_per_setting():
    pairs = pl.DataFrame({"setting": ["seeds", "seeds", "sizes"], "key_a": ["a", "a", "a"],
                          "key_b": ["b", "c", "d"], "kl": [0.5, 2.0, 1.0]})
    calibrations = pl.DataFrame([
        _calibration("b", "a", 4.0, 1),  # stored the other way round: still the pair a, b
        _calibration("a", "b", 6.0, 2),  # newer: the one that counts
        _calibration("a", "c", 9.0, 1, textset="other"),  # another text set: not this pair
    ])
    floors = pl.DataFrame({"key": ["b", "c"], "textset": ["eval", "eval"], "floor": [0.2, 0.1]},
                          schema=calibration.FLOOR_SCHEMA)
    found = calibration.by_setting(pairs, "eval", calibrations, floors)
    assert found.rows() == [("seeds", 1, 6.0, 2, 1), ("sizes", 0, None, 0, 0)]
    assert found.columns == ["setting", "calibrated", "ratio", "floored", "within_floor"]


def test_floor_flags_take_the_larger_floor_of_the_two():
    pairs = pl.DataFrame({"key_a": ["a", "a", "x"], "key_b": ["b", "c", "y"],
                          "textset": ["eval"] * 3, "kl": [0.5, 0.5, 0.5]})
    floors = pl.DataFrame({"key": ["a", "b"], "textset": ["eval", "eval"], "floor": [0.1, 0.2]})
    flagged = calibration.floor_flags(pairs, floors)
    assert flagged["floor"].to_list() == [0.2, 0.1, None]
    assert flagged["within_floor"].to_list() == [True, False, None]  # 0.5 < 3 × 0.2, not 3 × 0.1


def test_a_reference_matches_only_the_models_it_was_measured_on():
    seeds, later = (next(r for r in protocol.REFERENCES if r.setting == name)
                    for name in ("seeds", "later"))
    assert seeds.matches("pythia-410m/s1@step143000", "pythia-410m/s2@step143000")
    assert not seeds.matches("pythia-1b/s1@step143000", "pythia-1b/s2@step143000")
    assert not seeds.matches("mini-410m/s1@step143000", "mini-410m/s2@step143000")
    assert later.matches("pythia-410m@step100000", "pythia-410m@step101000")
    assert not later.matches("pythia-410m@step99000", "pythia-410m@step100000")
    assert not later.matches("pythia-410m/s1@step100000", "pythia-410m/s1@step101000")
    sizes = {r.other: r for r in protocol.REFERENCES if r.setting == "sizes"}
    assert sizes["1b"].matches("pythia-410m@step143000", "pythia-1b@step143000")
    assert not sizes["1.4b"].matches("pythia-410m@step143000", "pythia-1b@step143000")


def test_orderings_say_whether_the_papers_order_holds():
    summary = pl.DataFrame({"setting": ["early", "later", "quant-8bit", "quant-4bit"],
                            "median": [0.1, 0.05, 0.3, 0.2]})
    found = {(r["lower"], r["higher"]): r["holds"]
             for r in protocol.orderings(summary).iter_rows(named=True)}
    assert found[("later", "early")] is True
    assert found[("quant-8bit", "quant-4bit")] is False
    assert found[("seeds", "sizes")] is None  # not measured here
