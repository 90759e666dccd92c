"""Comparing models over seeds: summaries, Welch's interval and the goal check."""

from __future__ import annotations

import pytest

from nasrec.errors import NasrecError
from nasrec.train.compare import difference, goal_check, seed_summary


def test_seed_summary() -> None:
    assert seed_summary([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    s = seed_summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
    with pytest.raises(NasrecError, match="no values"):
        seed_summary([])


def test_welch_interval_by_hand() -> None:
    # means 2 and 5, variances 1 and 1, n 3 and 3: standard error sqrt(2/3), 4 degrees of freedom,
    # t(0.975, 4) = 2.7764451: -3 -/+ 2.266957
    d = difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert d["diff"] == pytest.approx(-3.0)
    assert (d["low"], d["high"]) == pytest.approx((-5.266957, -0.733043), abs=1e-5)
    assert d["verdict"] == "better" and d["n_a"] == d["n_b"] == 3 and 0 < d["p"] < 0.05
    assert difference([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])["verdict"] == "worse"
    assert difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], lower_is_better=False)["verdict"] == "worse"  # AUC-like
    # a wider level can take in zero
    assert difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], level=0.999)["verdict"] == "not distinguishable"


def test_overlap_one_seed_and_no_spread() -> None:
    d = difference([0.30, 0.31, 0.29], [0.305, 0.295, 0.31])
    assert d["low"] < 0 < d["high"] and d["verdict"] == "not distinguishable"
    one = difference([0.30], [0.31, 0.32])
    assert one["verdict"] == "undetermined" and one["low"] is None and one["diff"] == pytest.approx(-0.015)
    assert difference([0.3, 0.3], [0.4, 0.4])["verdict"] == "undetermined"
    with pytest.raises(NasrecError, match="confidence level"):
        difference([1.0, 2.0], [1.0, 2.0], level=1.5)


def test_goal_check_against_the_best_baseline() -> None:
    base = {"big": {"logloss": [0.300, 0.301, 0.302], "mflops": 20.0},
            "small": {"logloss": [0.310, 0.311, 0.312], "mflops": 1.0}}  # fmt: skip
    better = goal_check({"logloss": [0.290, 0.291, 0.292], "mflops": 4.0}, base)
    assert better["baseline"] == "big" and better["no_more_mflops"] and better["outcome"] == "met"
    level = goal_check({"logloss": [0.299, 0.302, 0.301], "mflops": 4.0}, base)
    assert level["outcome"] == "within noise"
    assert goal_check({"logloss": [0.310, 0.311, 0.312], "mflops": 4.0}, base)["outcome"] == "not met"  # worse
    assert goal_check({"logloss": [0.290, 0.291, 0.292], "mflops": 25.0}, base)["outcome"] == "not met"  # costlier
    assert goal_check({"logloss": [0.290], "mflops": 4.0}, base)["outcome"] == "undetermined"
    assert goal_check({"logloss": [0.290], "mflops": 4.0}, {}) is None
