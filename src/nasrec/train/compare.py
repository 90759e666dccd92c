"""Comparing trained models over seeds: mean, spread, and Welch's interval for a difference of means.

A model trained with several seeds gives a sample of a test metric; two models differ by more than their
seeds' noise when Welch's t interval for the difference of their means excludes zero. Every seed is
evaluated on the same test split, so the interval covers training noise (initialisation, shuffling), not
the sampling of the test rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from nasrec.errors import NasrecError

VERDICTS = ("better", "worse", "not distinguishable", "undetermined")
OUTCOMES = ("met", "within noise", "not met", "undetermined")


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for a single value) and count of one model's per-seed metric."""
    vals = [float(v) for v in values]
    if not vals:
        raise NasrecError("no values to summarise")
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, lower_is_better: bool = True
) -> dict[str, Any]:
    """Welch's interval for mean(a) - mean(b) at `level`, and the verdict for `a`: better, worse or neither.

    The verdict is `undetermined` when either side has a single value or both have no spread (no interval).
    """
    if not 0 < level < 1:
        raise NasrecError(f"confidence level must lie in (0, 1), got {level}")
    sa, sb = seed_summary(a), seed_summary(b)
    out = {"diff": sa["mean"] - sb["mean"], "low": None, "high": None, "p": None, "level": level,
           "n_a": sa["n"], "n_b": sb["n"], "verdict": "undetermined"}  # fmt: skip
    if sa["n"] < 2 or sb["n"] < 2 or (sa["std"] == 0 and sb["std"] == 0):
        return out
    from scipy.stats import ttest_ind

    res = ttest_ind([float(x) for x in a], [float(x) for x in b], equal_var=False)
    ci = res.confidence_interval(level)
    low, high = float(ci.low), float(ci.high)
    if math.isnan(low) or math.isnan(high):
        return out
    out.update(low=low, high=high, p=float(res.pvalue))
    if high < 0 or low > 0:
        a_lower = high < 0
        out["verdict"] = "better" if a_lower == lower_is_better else "worse"
    else:
        out["verdict"] = "not distinguishable"
    return out


def goal_check(
    searched: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]], level: float = 0.95
) -> dict[str, Any] | None:
    """The searched model against the baseline with the lowest mean test log loss, and their MFLOPs.

    Each model is a mapping with `logloss` (per-seed values) and `mflops`. The goal is a searched model at
    least as good as the best baseline at no more MFLOPs. `outcome`: `met` (no more MFLOPs and better by
    the interval), `within noise` (no more MFLOPs, the interval holds zero), `not met` (more MFLOPs, or
    worse by the interval) or `undetermined` (a single seed on either side, nothing else against it).
    None when there is no baseline.
    """
    if not baselines:
        return None
    name = min(baselines, key=lambda m: statistics.fmean(baselines[m]["logloss"]))
    best = baselines[name]
    diff = difference(searched["logloss"], best["logloss"], level)
    cheaper = searched["mflops"] is not None and best["mflops"] is not None and searched["mflops"] <= best["mflops"]
    if not cheaper or diff["verdict"] == "worse":
        outcome = "not met"
    else:
        outcome = {"better": "met", "not distinguishable": "within noise"}.get(diff["verdict"], "undetermined")
    return {"baseline": name, "baseline_mflops": best["mflops"], "mflops": searched["mflops"],
            "no_more_mflops": cheaper, "difference": diff, "outcome": outcome}  # fmt: skip
