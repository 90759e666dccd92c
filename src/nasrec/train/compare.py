"""Comparing trained models: over seeds (training noise) and over the rows of one test split (test noise).

A model trained with several seeds gives a sample of a test metric; two models differ by more than their
seeds' noise when Welch's t interval for the difference of their means excludes zero (`difference`). Every
seed is evaluated on the same test split, so that interval covers training noise (initialisation,
shuffling), not the sampling of the test rows. For two trained models on the same rows, `paired_logloss`
(the per-row log loss differences, a normal interval) and `delong` (DeLong's test for two correlated
AUCs) cover the sampling of the rows instead.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
    out = {
        "diff": sa["mean"] - sb["mean"],
        "low": None,
        "high": None,
        "p": None,
        "level": level,
        "n_a": sa["n"],
        "n_b": sb["n"],
        "verdict": "undetermined",
    }
    if sa["n"] < 2 or sb["n"] < 2 or (sa["std"] == 0 and sb["std"] == 0):
        return out
    from scipy.stats import ttest_ind

    res = ttest_ind([float(x) for x in a], [float(x) for x in b], equal_var=False)
    ci = res.confidence_interval(level)
    low, high = float(ci.low), float(ci.high)
    if math.isnan(low) or math.isnan(high):
        return out
    out.update(low=low, high=high, p=float(res.pvalue), verdict=_verdict(low, high, lower_is_better))
    return out


def _verdict(low: float, high: float, lower_is_better: bool) -> str:
    """`better` / `worse` for a (a - b) interval that excludes zero, else `not distinguishable`."""
    if high < 0 or low > 0:
        return "better" if (high < 0) == lower_is_better else "worse"
    return "not distinguishable"


def _normal(diff: float, se: float, level: float, lower_is_better: bool) -> dict[str, Any]:
    """Interval, two-sided p-value and verdict of an asymptotically normal difference."""
    from scipy.stats import norm

    if not 0 < level < 1:
        raise NasrecError(f"confidence level must lie in (0, 1), got {level}")
    if not se > 0:  # identical predictions, or a single row
        return {"diff": diff, "low": None, "high": None, "p": None, "level": level, "verdict": "undetermined"}
    h = float(norm.ppf(0.5 + level / 2)) * se
    return {
        "diff": diff,
        "low": diff - h,
        "high": diff + h,
        "p": float(2 * norm.sf(abs(diff) / se)),
        "level": level,
        "verdict": _verdict(diff - h, diff + h, lower_is_better),
    }


def _rows(labels: Any, *values: Any) -> tuple[np.ndarray, ...]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    out = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    if any(v.shape != y.shape for v in out):
        raise NasrecError(f"labels and predictions differ in length ({y.size} vs {[v.size for v in out]})")
    if y.size < 2:
        raise NasrecError("a paired comparison needs at least 2 rows")
    return (y, *out)


def paired_logloss(labels: Any, logits_a: Any, logits_b: Any, level: float = 0.95) -> dict[str, Any]:
    """Log loss of a minus b on the same rows, with the normal interval of the mean per-row difference."""
    y, za, zb = _rows(labels, logits_a, logits_b)
    la = np.logaddexp(0.0, za) - y * za  # per-row binary cross-entropy of a logit, stable
    lb = np.logaddexp(0.0, zb) - y * zb
    d = la - lb
    res = _normal(float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), level, lower_is_better=True)
    return {"logloss_a": float(la.mean()), "logloss_b": float(lb.mean()), "rows": int(y.size), **res}


def delong(labels: Any, scores_a: Any, scores_b: Any, level: float = 0.95) -> dict[str, Any]:
    """AUC of a minus b on the same rows by DeLong's test (DeLong, DeLong and Clarke-Pearson 1988).

    The structural components come from midranks (Sun and Xu 2014): one sort per model, no pair loop.
    """
    from scipy.stats import rankdata

    y, sa, sb = _rows(labels, scores_a, scores_b)
    pos = y > 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise NasrecError("DeLong's test needs both classes among the rows")
    v10, v01 = [], []
    for s in (sa, sb):
        tz = rankdata(s)  # midranks over all rows
        tx, ty = rankdata(s[pos]), rankdata(s[~pos])
        v10.append((tz[pos] - tx) / n)  # per positive: the share of negatives it outranks (ties 1/2)
        v01.append(1.0 - (tz[~pos] - ty) / m)  # per negative: the share of positives that outrank it
    aucs = [float(v.mean()) for v in v10]
    s10, s01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    res = _normal(aucs[0] - aucs[1], math.sqrt(max(float(var), 0.0)), level, lower_is_better=False)
    return {"auc_a": aucs[0], "auc_b": aucs[1], "rows": int(y.size), **res}


# Baselines cheaper than this are out of any block's reach (LR and FM: issue 23's yardstick leaves them out)
DOMINANCE_MIN_MFLOPS = 0.05


def against_each(
    searched: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    min_mflops: float = DOMINANCE_MIN_MFLOPS,
    level: float = 0.95,
) -> dict[str, Any]:
    """The searched model against every baseline of at least `min_mflops` MFLOPs, one by one.

    Each model is a mapping with `logloss` and `auc` (per-seed values) and `mflops`. Against baseline B the
    searched model wins (`met`) when it costs no more MFLOPs than B, its mean test log loss is lower by
    Welch's interval and its mean AUC is not lower by it; `within noise` when it costs no more and neither
    metric is worse by the interval but the log loss is not better; otherwise `not met` (or `undetermined`
    with a single seed). `beaten_all` says whether every such baseline was met; `left_out` names the cheaper
    baselines not compared.
    """
    rows, left_out = [], []
    for name, b in baselines.items():
        if b.get("mflops") is None or b["mflops"] < min_mflops:
            left_out.append(name)
            continue
        ll = difference(searched["logloss"], b["logloss"], level)
        auc = difference(searched["auc"], b["auc"], level, lower_is_better=False)
        cheaper = searched.get("mflops") is not None and searched["mflops"] <= b["mflops"]
        if not cheaper or "worse" in (ll["verdict"], auc["verdict"]):
            outcome = "not met"
        elif "undetermined" in (ll["verdict"], auc["verdict"]):
            outcome = "undetermined"
        else:
            outcome = "met" if ll["verdict"] == "better" else "within noise"
        rows.append({"baseline": name, "mflops": b["mflops"], "no_more_mflops": cheaper, "logloss": ll, "auc": auc,
                     "outcome": outcome})  # fmt: skip
    rows.sort(key=lambda r: r["mflops"])
    return {
        "rows": rows,
        "beaten_all": bool(rows) and all(r["outcome"] == "met" for r in rows),
        "not_beaten": [r["baseline"] for r in rows if r["outcome"] != "met"],
        "left_out": left_out,
        "min_mflops": min_mflops,
    }


def against_each_line(result: Mapping[str, Any]) -> str:
    """One sentence: better than every baseline at no more MFLOPs, or which baselines it does not beat, and why."""
    rows = result["rows"]
    if not rows:
        return f"no baseline of at least {result['min_mflops']:g} MFLOPs to compare with"
    if result["beaten_all"]:
        names = ", ".join(r["baseline"] for r in rows)
        return f"better than every baseline at no more MFLOPs ({names}; log loss by Welch's 95 % interval)"
    why = []
    for r in rows:
        if r["outcome"] == "met":
            continue
        if not r["no_more_mflops"]:
            reason = "it costs more MFLOPs"
        elif r["outcome"] == "undetermined":
            reason = "one seed: no interval"
        elif "worse" in (r["logloss"]["verdict"], r["auc"]["verdict"]):
            reason = "worse" + (" log loss" if r["logloss"]["verdict"] == "worse" else " AUC")
        else:
            reason = "within noise"
        why.append(f"{r['baseline']} ({reason})")
    beaten = [r["baseline"] for r in rows if r["outcome"] == "met"]
    line = "does not beat " + ", ".join(why)
    return line + (f"; better than {', '.join(beaten)} at no more MFLOPs" if beaten else "")


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
    return {
        "baseline": name,
        "baseline_mflops": best["mflops"],
        "mflops": searched["mflops"],
        "no_more_mflops": cheaper,
        "difference": diff,
        "outcome": outcome,
    }
