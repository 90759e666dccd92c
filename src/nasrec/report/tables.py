"""The report's Markdown tables: the final comparison over seeds and the goal check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.report.sources import _json
from nasrec.train.compare import against_each, against_each_line, difference, goal_check, seed_summary


def _mean_std(values: list[float], spec: str) -> str:
    """`mean ± std (n seeds)`, or the single value."""
    if not values:
        return "–"
    s = seed_summary(values)
    if s["n"] == 1:
        return format(s["mean"], spec)
    return f"{s['mean']:{spec}} ± {s['std']:{spec}} ({s['n']} seeds)"


def _interval(d: dict[str, Any], why_none: str = "one seed: no interval") -> str:
    """A difference with its interval, e.g. `-0.0012 [-0.0030, +0.0006] not distinguishable`."""
    if d["low"] is None:
        return f"{d['diff']:+.4f} ({why_none})"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {d['verdict']}"


def _row_check(run: Path, baseline: str) -> list[str]:
    """The final model against a baseline on the test rows (each folder's own run), when both can be loaded."""
    from nasrec.train.api import compare_runs

    cache = run / "data" / "cache"
    if not (cache / "meta.json").exists():
        return []
    try:
        r = compare_runs(run / rundir.FINAL_DIR, run / rundir.BASELINES_DIR / baseline, cache)
    except (NasrecError, OSError):  # a run without weights (e.g. copied without them): nothing to compare
        return []
    same = "identical predictions"
    return [
        f"On the {r['logloss']['rows']:,} test rows (the recipe's seed of each), searched minus {baseline}: "
        f"log loss {_interval(r['logloss'], same)}, AUC {_interval(r['auc'], same)} (DeLong's test).",
        "",
    ]


def _compared_note(run: Path, names: list[str]) -> str:
    """Which baselines the goal check saw (only those this run trained), and how their MFLOPs were counted."""
    from nasrec.zoo.registry import ZOO_MODELS

    others = [m for m in ZOO_MODELS if m not in names]
    note = f"The goal check compares the searched model with the baselines this run trained ({', '.join(names)})"
    note += (
        f" and no others: {', '.join(others)} were not trained (`baselines: all` trains the whole zoo). "
        if others
        else ", the whole zoo. "
    )
    ln = (_json(run / rundir.FINAL_DIR / rundir.MODEL_JSON) or {}).get("layernorm")
    if ln is not None:
        note += (
            f"MFLOPs count every model as it is served, the searched one {'with' if ln else 'without'} the layer "
            "norms of its final recipe, as the search's caps counted it."
        )
    return note.rstrip()


def _comparison(run: Path, models: list[dict[str, Any]]) -> list[str]:
    """The final comparison table (mean over seeds) and the goal check against the best baseline."""
    final_models = [m for m in models if m["group"] != "retrained" and m["logloss_seeds"]]
    if not final_models:
        return []
    searched = next((m for m in final_models if m["group"] == "final"), None)
    md = ["## Final comparison (test split)", ""]
    timed = any(m.get("latency_ms") is not None for m in final_models)
    head = "| model | test log loss | test AUC | MFLOPs |" + (" latency ms (measured) |" if timed else "")
    head += " params | train samples/s |"
    if searched is not None:
        md.append(
            "Last column: the searched model's mean test log loss minus the model's, with Welch's 95 % interval "
            "over the seeds (training noise; the test split is the same for every seed)."
        )
        md.append("")
        head += " searched minus model |"
    md += [head, "|---" * head.count(" |") + "|"]
    for m in sorted(final_models, key=lambda m: seed_summary(m["logloss_seeds"])["mean"]):
        row = (
            f"| {m['name']} | {_mean_std(m['logloss_seeds'], '.4f')} | {_mean_std(m['auc_seeds'], '.4f')} | "
            f"{_fmt(m['mflops'], '.4g')} |"
            + (f" {_fmt(m.get('latency_ms'), '.4g')} |" if timed else "")
            + f" {_fmt(m['params'], ',')} | {_fmt(m['samples_per_s'], ',.0f')} |"
        )
        if searched is not None and m is not searched:
            row += f" {_interval(difference(searched['logloss_seeds'], m['logloss_seeds']))} |"
        elif searched is not None:
            row += " – |"
        md.append(row)
    md.append("")
    if searched is None:
        return md
    baselines = {
        m["name"]: {"logloss": m["logloss_seeds"], "mflops": m["mflops"]} for m in final_models if m["group"] != "final"
    }
    searched_seeds = {"logloss": searched["logloss_seeds"], "mflops": searched["mflops"]}
    goal = goal_check(searched_seeds, baselines)
    if goal is not None:
        cost = "no more" if goal["no_more_mflops"] else "more"
        md += [
            "## Goal check",
            "",
            f"Best baseline by mean test log loss: {goal['baseline']} ({_fmt(goal['baseline_mflops'], '.4g')} "
            f"MFLOPs); the searched model has {_fmt(goal['mflops'], '.4g')} MFLOPs ({cost}). Searched minus "
            f"baseline: {_interval(goal['difference'])}. Goal (at least as good at no more MFLOPs): "
            f"**{goal['outcome']}**.",
            "",
        ]
        md += [_compared_note(run, list(baselines)), ""]
        md += _row_check(run, goal["baseline"])
        mine = searched["mflops"]
        costlier = {n: b for n, b in baselines.items() if mine is not None and (b["mflops"] or 0) >= mine}
        within = goal_check(searched_seeds, costlier)
        if within is not None and within["baseline"] != goal["baseline"]:
            md += [
                f"Among the baselines with at least its MFLOPs the best is {within['baseline']} "
                f"({_fmt(within['baseline_mflops'], '.4g')} MFLOPs): searched minus it "
                f"{_interval(within['difference'])}; **{within['outcome']}** against it.",
                "",
            ]
            md += _row_check(run, within["baseline"])
    md += _against_each_section(searched, [m for m in final_models if m["group"] != "final"])
    return md


def _against_each_section(searched: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    """The searched model against each baseline of at least 0.05 MFLOPs: cost, both metrics' intervals, verdict."""
    seeds = {m["name"]: {"logloss": m["logloss_seeds"], "auc": m["auc_seeds"], "mflops": m["mflops"]} for m in others}
    mine = {"logloss": searched["logloss_seeds"], "auc": searched["auc_seeds"], "mflops": searched["mflops"]}
    result = against_each(mine, seeds)
    if not result["rows"]:
        return []
    md = [
        "## Against each baseline",
        "",
        f"Every baseline of at least {result['min_mflops']:g} MFLOPs: the searched model wins against it when it "
        "costs no more MFLOPs, its log loss is lower by Welch's 95 % interval and its AUC not lower by it.",
        "",
        "| baseline | MFLOPs | searched at no more MFLOPs | log loss, searched minus baseline | AUC, searched minus "
        "baseline | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        md.append(
            f"| {r['baseline']} | {_fmt(r['mflops'], '.4g')} | {'yes' if r['no_more_mflops'] else 'no'} | "
            f"{_interval(r['logloss'])} | {_interval(r['auc'])} | {r['outcome']} |"
        )
    md += ["", f"The searched model: **{against_each_line(result)}**."]
    if result["left_out"]:
        md.append(f"Not compared (under {result['min_mflops']:g} MFLOPs): {', '.join(result['left_out'])}.")
    return [*md, ""]


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def tune_section(tune: dict[str, Any] | None) -> list[str]:
    """What tuning budget each model had (the pipeline's `tune` stage), as a paragraph and a table."""
    if not tune:
        return []
    b = tune.get("budget") or {}
    own = ", the zoo baselines with their own default recipes (`nasrec/presets/recipes`), `baselines.set` on top"
    own = own if tune.get("baselines_recipe") == "default" else ""
    if not b.get("trials"):
        trained = (
            f"the searched model trained with the final recipe as configured{own}"
            if own
            else "the searched model and the baselines trained with the final recipe as configured "
            "(the baselines with `baselines.set` on top)"
        )
        return ["## Tuning", "", f"No model was tuned (`tune.trials` is 0): {trained}.", ""]
    timeout = f", at most {b['timeout']:.0f} s" if b.get("timeout") else ""
    md = [
        "## Tuning",
        "",
        f"Every model had the same budget: {b['trials']} trials of `nasrec tune`{timeout} each, scored by "
        f"validation {b.get('metric', 'logloss')}, from "
        + (f"its own base (the searched model from the final recipe{own})" if own else "the same base settings")
        + "; each then trained with its best trial's recipe.",
        "",
        "| model | trials complete | pruned | seconds | best val log loss | best val AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (tune.get("models") or {}).items():
        best = r.get("best") or {}
        md.append(
            f"| {name} | {_fmt(r.get('complete'), 'd')} | {_fmt(r.get('pruned'), 'd')} | {_fmt(r.get('seconds'), '.0f')} | "
            f"{_fmt(best.get('val_logloss'), '.4f')} | {_fmt(best.get('val_auc'), '.4f')} |"
        )
    return [*md, ""]
