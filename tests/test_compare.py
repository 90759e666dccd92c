"""Comparing models over seeds: summaries, Welch's interval and the goal check."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import small_synth_cache

from nasrec.cli import main
from nasrec.errors import NasrecError
from nasrec.train.api import train
from nasrec.train.compare import (
    against_each,
    against_each_line,
    delong,
    difference,
    goal_check,
    paired_logloss,
    seed_summary,
)
from nasrec.train.metrics import auc


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
    base = {
        "big": {"logloss": [0.300, 0.301, 0.302], "mflops": 20.0},
        "small": {"logloss": [0.310, 0.311, 0.312], "mflops": 1.0},
    }
    better = goal_check({"logloss": [0.290, 0.291, 0.292], "mflops": 4.0}, base)
    assert better["baseline"] == "big" and better["no_more_mflops"] and better["outcome"] == "met"
    level = goal_check({"logloss": [0.299, 0.302, 0.301], "mflops": 4.0}, base)
    assert level["outcome"] == "within noise"
    assert goal_check({"logloss": [0.310, 0.311, 0.312], "mflops": 4.0}, base)["outcome"] == "not met"  # worse
    assert goal_check({"logloss": [0.290, 0.291, 0.292], "mflops": 25.0}, base)["outcome"] == "not met"  # costlier
    assert goal_check({"logloss": [0.290], "mflops": 4.0}, base)["outcome"] == "undetermined"
    assert goal_check({"logloss": [0.290], "mflops": 4.0}, {}) is None


def test_against_each_baseline_of_at_least_0_05_mflops() -> None:
    """Each baseline on its own: cost, log loss better by Welch and AUC not worse; LR-sized ones left out."""
    auc = [0.90, 0.901, 0.902]
    base = {
        "lr": {"logloss": [0.5, 0.5, 0.5], "auc": [0.7, 0.7, 0.7], "mflops": 1e-5},
        "big": {"logloss": [0.300, 0.301, 0.302], "auc": auc, "mflops": 20.0},
        "level": {"logloss": [0.290, 0.292, 0.291], "auc": auc, "mflops": 5.0},
        "small": {"logloss": [0.280, 0.281, 0.282], "auc": auc, "mflops": 1.0},
        "sharp": {"logloss": [0.300, 0.301, 0.302], "auc": [0.95, 0.951, 0.952], "mflops": 8.0},
    }
    mine = {"logloss": [0.290, 0.291, 0.292], "auc": auc, "mflops": 4.0}
    r = against_each(mine, base)
    assert r["left_out"] == ["lr"] and [x["baseline"] for x in r["rows"]] == ["small", "level", "sharp", "big"]
    outcome = {x["baseline"]: x["outcome"] for x in r["rows"]}
    # small: costs less; level: within noise; sharp: better log loss but worse AUC; big: met
    assert outcome == {"small": "not met", "level": "within noise", "sharp": "not met", "big": "met"}
    assert not r["beaten_all"] and r["not_beaten"] == ["small", "level", "sharp"]
    line = against_each_line(r)
    assert line.startswith("does not beat small (it costs more MFLOPs), level (within noise), sharp (worse AUC)")
    assert line.endswith("better than big at no more MFLOPs")
    everything = against_each(mine, {"big": base["big"]})
    assert everything["beaten_all"] and against_each_line(everything).startswith("better than every baseline")
    assert against_each({**mine, "logloss": [0.29]}, {"big": base["big"]})["rows"][0]["outcome"] == "undetermined"
    assert "no baseline" in against_each_line(against_each(mine, {"lr": base["lr"]}))


def _brute_delong(y: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> tuple[float, float]:
    """AUC difference and its variance straight from DeLong's definitions (every positive-negative pair)."""
    pos, neg = y > 0.5, y <= 0.5
    v10, v01 = [], []
    for s in (sa, sb):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    m, n = pos.sum(), neg.sum()
    c10, c01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))
    var = (c10[0, 0] + c10[1, 1] - 2 * c10[0, 1]) / m + (c01[0, 0] + c01[1, 1] - 2 * c01[0, 1]) / n
    return v10[0].mean() - v10[1].mean(), var


def test_delong_matches_its_definition_and_the_exact_auc() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(float)
    sa = np.round(y + rng.normal(0, 1.0, 400), 1)  # rounded: ties within and across classes
    sb = np.round(y + rng.normal(0, 1.3, 400), 1)
    res = delong(y, sa, sb)
    diff, var = _brute_delong(y, sa, sb)
    assert res["auc_a"] == pytest.approx(auc(y, sa), abs=1e-12) and res["auc_b"] == pytest.approx(auc(y, sb), abs=1e-12)
    assert res["diff"] == pytest.approx(diff, abs=1e-12)
    half = 1.959964 * math.sqrt(var)
    assert (res["low"], res["high"]) == pytest.approx((diff - half, diff + half), abs=1e-6)
    assert res["rows"] == 400 and 0 < res["p"] < 1


def test_row_comparisons_verdicts() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(5000) < 0.25).astype(float)
    good = 3 * (y - 0.5) + rng.normal(0, 1, 5000)
    noise = rng.normal(0, 1, 5000)
    assert delong(y, good, noise)["verdict"] == "better" and delong(y, noise, good)["verdict"] == "worse"
    assert paired_logloss(y, good, noise)["verdict"] == "better"
    assert paired_logloss(y, good, good)["verdict"] == "undetermined"  # no difference on any row
    assert delong(y, good, good)["verdict"] == "undetermined"
    twin = good + rng.normal(0, 1e-3, 5000)  # practically the same model
    assert paired_logloss(y, good, twin)["verdict"] == "not distinguishable"
    with pytest.raises(NasrecError, match="both classes"):
        delong(np.ones(10), good[:10], noise[:10])
    with pytest.raises(NasrecError, match="differ in length"):
        paired_logloss(y, good, noise[:10])


def test_paired_logloss_by_hand() -> None:
    y, za, zb = [1.0, 0.0, 1.0, 0.0], [2.0, -1.0, 0.5, 0.3], [1.0, 0.0, -0.5, -2.0]

    def bce(t: float, z: float) -> float:
        return math.log1p(math.exp(-z)) if t else math.log1p(math.exp(z))

    d = [bce(t, a) - bce(t, b) for t, a, b in zip(y, za, zb, strict=True)]
    se = statistics.stdev(d) / 2
    res = paired_logloss(y, za, zb)
    assert res["diff"] == pytest.approx(statistics.fmean(d))
    assert res["logloss_a"] == pytest.approx(statistics.fmean(bce(t, a) for t, a in zip(y, za, strict=True)))
    assert (res["low"], res["high"]) == pytest.approx((res["diff"] - 1.959964 * se, res["diff"] + 1.959964 * se))


@pytest.mark.slow
def test_nasrec_compare_two_trained_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, cache = small_synth_cache(tmp_path, rows=4_000, seed=4)
    quick = dict(batch_size=256, epochs=1, lr=0.05, eval_every=0, log_every=10**6, threads=1)
    a = train(cache, tmp_path / "dnn", model="dnn", overrides=quick, progress=False)
    b = train(cache, tmp_path / "lr", model="lr", overrides=quick, progress=False)
    assert main(["compare", str(tmp_path / "dnn"), str(tmp_path / "lr"), "--data", str(cache), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["logloss"]["logloss_a"] == pytest.approx(a["logloss"], abs=1e-6)
    assert res["logloss"]["logloss_b"] == pytest.approx(b["logloss"], abs=1e-6)
    assert res["auc"]["auc_a"] == pytest.approx(a["auc"], abs=1e-6) and res["auc"]["rows"] == res["logloss"]["rows"]
    assert res["logloss"]["low"] <= res["logloss"]["diff"] <= res["logloss"]["high"]
    assert main(["compare", str(tmp_path / "dnn"), str(tmp_path / "nope"), "--data", str(cache)]) == 2


def test_the_report_lists_the_searched_model_against_each_baseline() -> None:
    from nasrec.report.tables import _against_each_section

    def model(name: str, ll: list[float], mflops: float) -> dict:
        return {"name": name, "logloss_seeds": ll, "auc_seeds": [0.9, 0.901, 0.902], "mflops": mflops}

    searched = model("searched (final)", [0.290, 0.291, 0.292], 4.0)
    md = "\n".join(
        _against_each_section(searched, [model("dcnv2", [0.300, 0.301, 0.302], 20.0), model("lr", [0.5] * 3, 1e-5)])
    )
    assert "## Against each baseline" in md and "| dcnv2 | 20 | yes | -0.0100 [" in md and "| met |" in md
    assert (
        "**better than every baseline at no more MFLOPs (dcnv2;" in md and "Not compared (under 0.05 MFLOPs): lr." in md
    )
    assert _against_each_section(searched, [model("lr", [0.5] * 3, 1e-5)]) == []
