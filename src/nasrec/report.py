"""`nasrec report RUN_DIR`: a Markdown page and a self-contained HTML page about one pipeline run.

Sections (each only when its data exists in the run directory): the data (rows, CTR, Bayes-optimal log
loss of synthetic data); the supernet's training curve; the search trajectory (best score so far
against candidates scored); the Pareto front of supernet score against MFLOPs, and the from-scratch
validation log loss against MFLOPs of the retrained candidates, the final model and the baselines (zoo
and published NASRecNets); the rank-correlation scatter of a `rankcheck/` folder; the final comparison
table (test log loss, AUC, MFLOPs, parameters, training samples/s; mean ± std over the seeds of
`final.seeds`, each model against the searched one by Welch's interval); the goal check against the
best baseline, over the seeds and over the test rows (`nasrec compare`'s tests); the final
architecture's diagram (an SVG from Graphviz when `dot` is installed, else a matplotlib drawing; the
Markdown also holds its Mermaid source) and text summary. Plots are matplotlib PNGs in `report/`,
embedded as data URIs in `report/report.html`, which loads nothing and works offline. Every plot says
which split it shows. The HTML is made from the Markdown by `_html`, which renders the inline markup
the report uses (bold, italics, code, links), so no Markdown marker reaches the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from nasrec.errors import NasrecError
from nasrec.train.compare import difference, goal_check, seed_summary


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 110


def _save(fig: Any, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def _supernet_curve(run: Path, out: Path) -> Path | None:
    log = [r for r in _jsonl(run / "supernet" / "metrics.jsonl") if "train_loss" in r]
    if not log:
        return None
    fig, ax = _plt().subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in log], [r["train_loss"] for r in log], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training log loss (sampled paths)")
    ax.set_title("Supernet training (train split)")
    return _save(fig, out / "supernet.png")


def _trajectory(history: list[dict[str, Any]], out: Path) -> Path | None:
    scores = [h["score"] for h in history]
    if not scores:
        return None
    best, running = [], math.inf
    for s in scores:
        if s is not None and s < running:
            running = s
        best.append(running)
    fig, ax = _plt().subplots(figsize=(6, 3.5))
    ax.scatter(range(1, len(scores) + 1), [math.nan if s is None else s for s in scores], s=6, c="0.7",
               label="candidate")  # fmt: skip
    ax.plot(range(1, len(best) + 1), best, c="C0", lw=1.6, label="best so far")
    ax.set_xlabel("candidates scored")
    ax.set_ylabel("supernet score (val log loss)")
    ax.set_title("Search trajectory (validation split)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, out / "search.png")


def _pareto(history: list[dict[str, Any]], front: list[dict[str, Any]], models: list[dict[str, Any]],
            out: Path) -> Path | None:  # fmt: skip
    fig = _pareto_figure(history, front, models)
    return None if fig is None else _save(fig, out / "pareto.png", layout=False)


_GROUPS = (("retrained", "o", "0.6"), ("zoo", "s", "C1"), ("published", "^", "C2"), ("final", "*", "C3"))


def _pareto_figure(history: list[dict[str, Any]], front: list[dict[str, Any]],
                   models: list[dict[str, Any]]) -> Any:  # fmt: skip
    """Left: the search's supernet scores and Pareto front. Right: the trained models' validation log loss.

    Both panels show the validation split. A model far worse than the rest (e.g. logistic regression on
    data with interactions) would squash the others into one band, so the right panel breaks its axis:
    such models (`_outlier_cut`) go to a short upper panel with their own scale. Labels are placed so
    that they overlap neither each other nor the points (`_place_labels`).
    """
    trained = [m for m in models if m.get("val_logloss") is not None and m.get("mflops") is not None]
    if not history and not trained:
        return None
    plt = _plt()
    fig = plt.figure(figsize=(11, 4.4), dpi=DPI)
    grid = fig.add_gridspec(4, 2, hspace=0.08)
    ax = fig.add_subplot(grid[:, 0])
    pts = [(h["mflops"], h["score"]) for h in history if h["score"] is not None]
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=6, c="0.7", label="candidates")
    if front:
        ax.plot([f["mflops"] for f in front], [f["score"] for f in front], "o-", c="C3", ms=4, label="Pareto front")
    ax.set_xlabel("MFLOPs per example")
    ax.set_ylabel("supernet score (val log loss)")
    ax.set_title("Search: supernet scores (validation split)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()

    cut = _outlier_cut([m["val_logloss"] for m in trained])
    if cut is None:
        panels = [(fig.add_subplot(grid[:, 1]), trained)]
    else:
        top = fig.add_subplot(grid[0, 1])
        bottom = fig.add_subplot(grid[1:, 1], sharex=top)
        panels = [(top, [m for m in trained if m["val_logloss"] > cut]),
                  (bottom, [m for m in trained if m["val_logloss"] <= cut])]  # fmt: skip
    for panel, group_models in panels:
        for group, marker, color in _GROUPS:
            g = [m for m in group_models if m["group"] == group]
            if g:
                panel.scatter([m["mflops"] for m in g], [m["val_logloss"] for m in g], marker=marker, c=color,
                              s=90 if group == "final" else 30, label=group, zorder=3)  # fmt: skip
        _pad_limits(panel, [m["val_logloss"] for m in group_models])
    xs = [m["mflops"] for m in trained]
    if xs:
        lo, hi = min(xs), max(xs)
        span = (hi - lo) or max(abs(hi), 1.0)
        panels[-1][0].set_xlim(lo - 0.08 * span, hi + 0.4 * span)  # room for labels right of the last points
    main, _ = panels[-1]
    main.set_xlabel("MFLOPs per example")
    main.set_ylabel("val log loss (trained from scratch)")
    title = "Trained models (validation split)"
    if cut is not None:
        top = panels[0][0]
        title = "Trained models (validation split), broken axis"
        top.spines["bottom"].set_visible(False)
        main.spines["top"].set_visible(False)
        top.tick_params(axis="x", bottom=False, labelbottom=False)
        kw = dict(marker=[(-1, -0.5), (1, 0.5)], markersize=10, linestyle="none", color="k", mec="k", mew=1,
                  clip_on=False)  # fmt: skip
        top.plot([0, 1], [0, 0], transform=top.transAxes, **kw)
        main.plot([0, 1], [1, 1], transform=main.transAxes, **kw)
    panels[0][0].set_title(title)
    handles: dict[str, Any] = {}
    for panel, _ in panels:
        handles.update(zip(*reversed(panel.get_legend_handles_labels()), strict=True))
    if handles:
        # outside the axes, right of the panel's top: it hides no point and no label
        panels[0][0].legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                            fontsize=8, borderaxespad=0.0)  # fmt: skip
    fig.subplots_adjust(left=0.075, right=0.9, bottom=0.12, top=0.92, wspace=0.24)
    for panel, group_models in panels:
        named = [m for m in group_models if m["group"] != "retrained"]
        _place_labels(fig, panel, [(m["mflops"], m["val_logloss"], m["name"]) for m in named],
                      [(m["mflops"], m["val_logloss"]) for m in group_models])  # fmt: skip
    return fig


def _outlier_cut(values: list[float]) -> float | None:
    """A value above which models are far behind the rest, or None when none is.

    The sorted values split at their widest gap that is wider than the spread of the values below it,
    with at least half of the values (and two) below. Then a few models far behind (logistic regression
    on data with interactions, a diverged run) do not squash the rest into one band, while values spread
    evenly are never split. Returns the middle of that gap.
    """
    v = np.sort(np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64))
    best, widest = None, 0.0
    for i in range(max(2, math.ceil(len(v) / 2)), len(v)):
        gap = float(v[i] - v[i - 1])
        if gap > float(v[i - 1] - v[0]) and gap > widest:
            best, widest = i, gap
    return None if best is None else float(v[best - 1] + v[best]) / 2


def _pad_limits(ax: Any, ys: list[float]) -> None:
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or max(0.01 * abs(hi), 1e-3)
    ax.set_ylim(lo - 0.12 * span, hi + 0.25 * span)


# Offsets (points) tried in turn for a label: right, left, above, below, then further out.
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.5, 5) for dx, dy in
                  ((6, 2), (-6, 2), (0, 8), (0, -8), (6, -8), (-6, -8), (6, 8), (-6, 8))]  # fmt: skip


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]],
                  points: list[tuple[float, float]]) -> list[Any]:  # fmt: skip
    """Annotate points with names that overlap neither one another nor any marker, inside the axes.

    Greedy: each label takes the first offset of `_LABEL_OFFSETS` whose box is free (of markers, labels
    placed before and the legend); all but the nearest offsets get a leader line. The layout must be final (no tight_layout afterwards). Returns the annotations.
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = 4 * fig.dpi / 72  # marker half-size in pixels
    taken = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        taken.append((px - r, py - r, px + r, py + r))
    if ax.get_legend() is not None:
        b = ax.get_legend().get_window_extent(renderer)
        taken.append((b.x0, b.y0, b.x1, b.y1))

    def free(box: Any) -> bool:
        x0, y0, x1, y1 = box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1
        if x0 < frame.x0 or x1 > frame.x1 or y0 < frame.y0 or y1 > frame.y1:
            return False
        return not any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in taken)

    placed = []
    for x, y, text in sorted(labels, key=lambda t: (t[0], t[1])):
        best = None
        for k, (dx, dy) in enumerate(_LABEL_OFFSETS):
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            if dx != 0 and abs(dy) < 3:
                va = "center"
            line = dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if k >= 4 else None
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                              arrowprops=line, zorder=4)  # fmt: skip
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, without its leader line
            if free(box):
                best = (ann, box)
                break
            ann.remove()
        if best is None:  # nowhere free: the first place, over whatever is there
            dx, dy = _LABEL_OFFSETS[0]
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, va="center")
            ann.update_positions(renderer)
            best = (ann, Text.get_window_extent(ann, renderer))
        taken.append((best[1].x0 - 4, best[1].y0, best[1].x1 + 4, best[1].y1))  # a gap between neighbours
        placed.append(best[0])
    return placed


def _rank_scatter(run: Path, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    rc = _json(run / "rankcheck" / "rankcheck.json")
    png = run / "rankcheck" / "rankcheck.png"
    if rc is None or not png.exists():
        return None, None
    shutil.copyfile(png, out / "rankcheck.png")
    return out / "rankcheck.png", rc


def _models(run: Path) -> list[dict[str, Any]]:
    """Every trained model of the run with its metrics: the final one, baselines, retrained candidates.

    `logloss_seeds` holds the test log loss of the folder's own run and of its `seed-<s>/` runs.
    """
    rows = []

    def add(name: str, group: str, folder: Path) -> None:
        metrics = _json(folder / "metrics.json")
        if metrics:
            seeds = [metrics] + [m for d in sorted(folder.glob("seed-*")) if (m := _json(d / "metrics.json"))]
            rows.append({"name": name, "group": group, "logloss": metrics.get("logloss"), "auc": metrics.get("auc"),
                         "val_logloss": (metrics.get("val") or {}).get("logloss"), "mflops": metrics.get("mflops"),
                         "params": metrics.get("params"), "samples_per_s": metrics.get("samples_per_s"),
                         "logloss_seeds": [m["logloss"] for m in seeds if m.get("logloss") is not None],
                         "auc_seeds": [m["auc"] for m in seeds if m.get("auc") is not None]})  # fmt: skip

    add("searched (final)", "final", run / "final")
    for d in sorted((run / "baselines").glob("*")) if (run / "baselines").exists() else []:
        model = _json(d / "model.json") or {}
        add(d.name, "zoo" if model.get("kind") == "zoo" else "published", d)
    for d in sorted((run / "search" / "retrain").glob("*")) if (run / "search" / "retrain").exists() else []:
        add(f"retrained {d.name}", "retrained", d)
    return rows


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
        r = compare_runs(run / "final", run / "baselines" / baseline, cache)
    except (NasrecError, OSError):  # a run without weights (e.g. copied without them): nothing to compare
        return []
    same = "identical predictions"
    return [f"On the {r['logloss']['rows']:,} test rows (the recipe's seed of each), searched minus {baseline}: "
            f"log loss {_interval(r['logloss'], same)}, AUC {_interval(r['auc'], same)} (DeLong's test).", ""]  # fmt: skip


def _compared_note(run: Path, names: list[str]) -> str:
    """Which baselines the goal check saw (only those this run trained), and how their MFLOPs were counted."""
    from nasrec.zoo.registry import ZOO_MODELS

    others = [m for m in ZOO_MODELS if m not in names]
    note = f"The goal check compares the searched model with the baselines this run trained ({', '.join(names)})"
    note += (f" and no others: {', '.join(others)} were not trained (`baselines: all` trains the whole zoo). "
             if others else ", the whole zoo. ")  # fmt: skip
    ln = (_json(run / "final" / "model.json") or {}).get("layernorm")
    if ln is not None:
        note += (f"MFLOPs count every model as it is served, the searched one {'with' if ln else 'without'} the layer "
                 "norms of its final recipe, as the search's caps counted it.")  # fmt: skip
    return note.rstrip()


def _comparison(run: Path, models: list[dict[str, Any]]) -> list[str]:
    """The final comparison table (mean over seeds) and the goal check against the best baseline."""
    final_models = [m for m in models if m["group"] != "retrained" and m["logloss_seeds"]]
    if not final_models:
        return []
    searched = next((m for m in final_models if m["group"] == "final"), None)
    md = ["## Final comparison (test split)", ""]
    head = "| model | test log loss | test AUC | MFLOPs | params | train samples/s |"
    if searched is not None:
        md.append("Last column: the searched model's mean test log loss minus the model's, with Welch's 95 % interval "
                  "over the seeds (training noise; the test split is the same for every seed).")  # fmt: skip
        md.append("")
        head += " searched minus model |"
    md += [head, "|---" * head.count(" |") + "|"]
    for m in sorted(final_models, key=lambda m: seed_summary(m["logloss_seeds"])["mean"]):
        row = (f"| {m['name']} | {_mean_std(m['logloss_seeds'], '.4f')} | {_mean_std(m['auc_seeds'], '.4f')} | "
               f"{_fmt(m['mflops'], '.4g')} | {_fmt(m['params'], ',')} | {_fmt(m['samples_per_s'], ',.0f')} |")  # fmt: skip
        if searched is not None and m is not searched:
            row += f" {_interval(difference(searched['logloss_seeds'], m['logloss_seeds']))} |"
        elif searched is not None:
            row += " – |"
        md.append(row)
    md.append("")
    if searched is None:
        return md
    baselines = {m["name"]: {"logloss": m["logloss_seeds"], "mflops": m["mflops"]}
                 for m in final_models if m["group"] != "final"}  # fmt: skip
    searched_seeds = {"logloss": searched["logloss_seeds"], "mflops": searched["mflops"]}
    goal = goal_check(searched_seeds, baselines)
    if goal is not None:
        cost = "no more" if goal["no_more_mflops"] else "more"
        md += ["## Goal check", "",
               f"Best baseline by mean test log loss: {goal['baseline']} ({_fmt(goal['baseline_mflops'], '.4g')} "
               f"MFLOPs); the searched model has {_fmt(goal['mflops'], '.4g')} MFLOPs ({cost}). Searched minus "
               f"baseline: {_interval(goal['difference'])}. Goal (at least as good at no more MFLOPs): "
               f"**{goal['outcome']}**.", ""]  # fmt: skip
        md += [_compared_note(run, list(baselines)), ""]
        md += _row_check(run, goal["baseline"])
        mine = searched["mflops"]
        costlier = {n: b for n, b in baselines.items() if mine is not None and (b["mflops"] or 0) >= mine}
        within = goal_check(searched_seeds, costlier)
        if within is not None and within["baseline"] != goal["baseline"]:
            md += [f"Among the baselines with at least its MFLOPs the best is {within['baseline']} "
                   f"({_fmt(within['baseline_mflops'], '.4g')} MFLOPs): searched minus it "
                   f"{_interval(within['difference'])}; **{within['outcome']}** against it.", ""]  # fmt: skip
            md += _row_check(run, within["baseline"])
    return md


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _diagram_backend() -> str:
    """How the architecture is drawn: `graphviz` (SVG) when Graphviz's `dot` is installed, else `matplotlib`."""
    return "graphviz" if shutil.which("dot") else "matplotlib"


def _graphviz_svg(dot: str) -> str | None:
    """SVG of DOT text, through the `graphviz` Python package when it is installed, else `dot` itself."""
    try:
        import graphviz  # optional: not a dependency of nasrec

        return graphviz.Source(dot).pipe(format="svg", encoding="utf-8")
    except ImportError:
        pass
    except Exception:  # any failure of the optional renderer: fall back to matplotlib
        return None
    try:
        svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return svg.stdout if svg.returncode == 0 else None


def _diagram(run: Path, out: Path) -> dict[str, Any]:
    from nasrec.space.arch import Architecture
    from nasrec.space.draw import summary, to_dot, to_mermaid

    path = run / "search" / "final.json"
    if not path.exists():
        return {}
    arch = Architecture.load(path)
    res: dict[str, Any] = {"text": summary(arch), "mermaid": to_mermaid(arch)}
    for stale in ("architecture.svg", "architecture.png"):
        (out / stale).unlink(missing_ok=True)
    svg = _graphviz_svg(to_dot(arch)) if _diagram_backend() == "graphviz" else None
    if svg is not None:
        (out / "architecture.svg").write_text(svg)
        res.update(svg=svg, image=out / "architecture.svg")
    else:
        res["image"] = _save(_arch_figure(arch), out / "architecture.png", layout=False)
    return res


_DENSE_SIDE = {"dense", "left", "right"}  # drawn left of the column; "sparse" right of it
_DEAD = "#9a9a9a"


def _arch_figure(arch: Any) -> Any:
    """A matplotlib drawing of an architecture (for machines without Graphviz): the graph of `to_dot`.

    The raw input, the blocks in order and the head stand in one column. Each input a block reads is a
    bracket from its source to it in a lane of its own: dense inputs (blue; a binary operator's left /
    right operands green) left of the column, sparse (embedding) inputs (orange) right of it. Lanes nest
    by the number of blocks skipped, and each bracket leaves and enters its boxes at its own height, so
    no two brackets share a line. Dead blocks and their inputs are grey and dashed.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MplPath

    from nasrec.space.draw import _block_label_lines, _edges, head_width

    plt = _plt()
    live = arch.live_blocks()
    labels = {"input": "raw input"}
    for i, b in enumerate(arch.blocks):
        labels[f"b{i}"] = "\n".join(_block_label_lines(i, b, not live[i]))
    labels["head"] = f"head\n{head_width(arch)} -> 1"
    order = {node: k for k, node in enumerate(labels)}
    dy, margin, top, lane = 1.0, 0.35, 0.45, 0.11  # inches: node spacing, border, legend, lane spacing

    # lanes: (side, span, source, target, colour, live), innermost first on each side
    lanes: dict[int, list[tuple[int, str, str, str, bool]]] = {-1: [], 1: []}
    centre = []
    for src, dst, role, is_live in _edges(arch):
        roles = set(role.split(", ")) if role else set()
        if roles & _DENSE_SIDE:
            lanes[-1].append((order[dst] - order[src], src, dst, "C0" if roles & _DENSE_SIDE == {"dense"} else "C2",
                              is_live))  # fmt: skip
        if "sparse" in roles:
            lanes[1].append((order[dst] - order[src], src, dst, "C1", is_live))
        if not roles:  # the last block into the head
            centre.append((src, dst))
    for side in lanes:
        lanes[side].sort(key=lambda e: (e[0], order[e[1]]))

    fig = plt.figure(figsize=(4, 4), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    text = {}
    for node, k in order.items():
        dead = node.startswith("b") and not live[int(node[1:])]
        end = node in ("input", "head")
        box = dict(boxstyle="round,pad=0.4", lw=1.0, fc="white" if dead else ("#f3f3f3" if end else "#eaf1fb"),
                   ec=_DEAD if dead else "#4a4a4a", ls="--" if dead else "-")  # fmt: skip
        text[node] = ax.text(0, -k * dy, labels[node], ha="center", va="center", fontsize=7.5,
                             color=_DEAD if dead else "black", bbox=box, zorder=3)  # fmt: skip
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    size = {n: t.get_bbox_patch().get_window_extent(renderer) for n, t in text.items()}
    hw = {n: b.width / fig.dpi / 2 for n, b in size.items()}  # half sizes in inches
    hh = {n: b.height / fig.dpi / 2 for n, b in size.items()}
    inner = max(hw.values()) + 0.15
    half = max(inner + lane * max(len(lanes[-1]), len(lanes[1])) + 0.25, 2.2)
    height = (len(labels) - 1) * dy + 2 * margin + top
    fig.set_size_inches(2 * half, height)
    ax.set_xlim(-half, half)
    ax.set_ylim(-(len(labels) - 1) * dy - margin, margin + top)  # data units are inches

    # where each bracket leaves and enters a box: per box side, top to bottom, incoming lanes from the
    # innermost out, then outgoing lanes from the outermost in (so that no arm crosses a lane of its box)
    arms: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for side, group in lanes.items():
        for k, (_, src, dst, _, _) in enumerate(group):
            arms.setdefault((dst, side), []).append((k, "in"))
            arms.setdefault((src, side), []).append((k, "out"))
    height_of: dict[tuple[str, int, int, str], float] = {}
    for (node, side), items in arms.items():
        items.sort(key=lambda a: (a[1] != "in", a[0] if a[1] == "in" else -a[0]))
        n, y, h = len(items), -order[node] * dy, 0.7 * hh[node]
        for j, (k, way) in enumerate(items):
            height_of[node, side, k, way] = y + (h - 2 * h * j / (n - 1) if n > 1 else 0.0)
    for side, group in lanes.items():
        for k, (_, src, dst, color, is_live) in enumerate(group):
            x = side * (inner + lane * k)
            y0, y1 = height_of[src, side, k, "out"], height_of[dst, side, k, "in"]
            verts = [(side * hw[src], y0), (x, y0), (x, y1), (side * hw[dst], y1)]
            codes = [MplPath.MOVETO] + [MplPath.LINETO] * 3
            ax.add_patch(FancyArrowPatch(path=MplPath(verts, codes), arrowstyle="-|>,head_length=5,head_width=2.5",
                                         color=color if is_live else _DEAD, lw=1.0, ls="-" if is_live else "--",
                                         zorder=1))  # fmt: skip
    for src, dst in centre:
        ax.add_patch(FancyArrowPatch((0, -order[src] * dy - hh[src]), (0, -order[dst] * dy + hh[dst]),
                                     arrowstyle="-|>,head_length=5,head_width=2.5", color="0.25", lw=1.0))  # fmt: skip
    handles = [Line2D([], [], color="C0", lw=1.5, label="dense input"),
               Line2D([], [], color="C1", lw=1.5, label="sparse input")]  # fmt: skip
    if any(e[3] == "C2" for e in lanes[-1]):
        handles.append(Line2D([], [], color="C2", lw=1.5, label="left / right operand"))
    if not all(live):
        handles.append(Line2D([], [], color=_DEAD, lw=1.5, ls="--", label="dead"))
    ax.legend(handles=handles, loc="upper center", fontsize=7.5, frameon=False, ncol=len(handles))
    return fig


def write_report(run: str | Path) -> dict[str, Path]:
    """Write `report/report.md` and `report/report.html` (plus PNGs) for a run directory."""
    run = Path(run)
    if not run.is_dir():
        raise NasrecError(f"{run}: no such run directory")
    out = run / "report"
    out.mkdir(exist_ok=True)
    stages = _json(run / "stages.json") or {}
    prep = (stages.get("prepare") or {}).get("result") or {}
    history = _jsonl(run / "search" / "history.jsonl")
    front = _json(run / "search" / "pareto.json") or []
    result = _json(run / "search" / "result.json")
    models = _models(run)
    plots: list[tuple[str, Path]] = []
    for title, p in (("Supernet training", _supernet_curve(run, out)),
                     ("Search trajectory (validation split)", _trajectory(history, out)),
                     ("Pareto fronts (validation split)", _pareto(history, front, models, out))):  # fmt: skip
        if p is not None:
            plots.append((title, p))
    rank_png, rc = _rank_scatter(run, out)
    if rank_png is not None:
        plots.append(("Supernet ranking against training from scratch", rank_png))
    diagram = _diagram(run, out)

    md = [f"# nasrec report: {run.name}", ""]
    if prep:
        md += _data_section(prep)
    if result:
        md += ["## Search", "", f"{result['scored']} candidates scored in {result['seconds']:.0f} s "
               f"({result['candidates_per_minute']:.1f} per minute); best supernet score {result['best']['score']:.5f} "
               f"at {result['best']['mflops']:.3f} MFLOPs; {len(front)} architectures on the Pareto front.", ""]  # fmt: skip
    md += _comparison(run, models)
    if rc is not None:
        md += ["## Ranking quality", "", f"Kendall tau {rc['kendall_tau']:.3f}, Spearman rho {rc['spearman_rho']:.3f} "
               f"over {rc['pairs']} architectures.", ""]  # fmt: skip
    for title, p in plots:
        md += [f"## {title}", "", f"![{title}]({p.name})", ""]
    if diagram:
        how = ("Drawn with Graphviz; edge labels say which inputs an edge carries." if "svg" in diagram else
               "Drawn with matplotlib (with Graphviz's `dot` installed the report draws an SVG instead): blue "
               "brackets carry dense inputs, orange ones sparse (embedding) inputs.")  # fmt: skip
        md += ["## Final architecture", "",
               f"![final architecture]({diagram['image'].name})", "",
               how + (" Grey dashed blocks are dead: their output never reaches the head."
                      if "no dead blocks" not in diagram["text"] else ""), "",
               "```mermaid", diagram["mermaid"].rstrip(), "```", "", "```", diagram["text"].rstrip(), "```", ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(run.name, md, plots, diagram))
    return {"markdown": out / "report.md", "html": out / "report.html"}


def _data_section(prep: dict[str, Any]) -> list[str]:
    """Rows, CTR and (synthetic data) the Bayes-optimal log loss of each split, as a table."""
    rows, ctr = prep.get("rows") or {}, prep.get("ctr") or {}
    bayes = {k: v for k, v in (prep.get("bayes_logloss") or {}).items() if v is not None}
    head = ["split", "rows", "CTR"] + (["Bayes-optimal log loss"] if bayes else [])
    table = []
    for split in rows or ctr:
        cells = [split, _fmt(rows.get(split), ","), _fmt(ctr.get(split), ".4f")]
        table.append(cells + ([_fmt(bayes.get(split), ".4f")] if bayes else []))
    if len(rows) > 1 and all(isinstance(n, int) for n in rows.values()):
        table.append(["all", f"{sum(rows.values()):,}", "", *([""] if bayes else [])])
    md = ["## Data", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    md += ["| " + " | ".join(cells) + " |" for cells in table] + [""]
    if bayes:
        md += ["Bayes-optimal log loss: the log loss of the true click probabilities of the synthetic data "
               "(its known click model), the floor no model can beat on those rows.", ""]  # fmt: skip
    if prep.get("skipped"):
        md += [f"{prep['skipped']:,} malformed input rows were skipped.", ""]
    return md


_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"  # code span
    r"|\*\*(?P<bold>[^*]+?)\*\*"  # bold
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"  # italics
    r"|!?\[(?P<link>[^\]]+)\]\((?P<url>[^)\s]+)\)"  # link
)


def _inline(text: str) -> str:
    """HTML of one line of Markdown inline markup: code spans, bold, italics and links; the rest escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        if m["code"] is not None:
            out.append(f"<code>{html.escape(m['code'])}</code>")
        elif m["bold"] is not None:
            out.append(f"<strong>{_inline(m['bold'])}</strong>")
        elif m["em"] is not None:
            out.append(f"<em>{_inline(m['em'])}</em>")
        else:
            out.append(f'<a href="{html.escape(m["url"])}">{_inline(m["link"])}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _image(src: str, alt: str, images: dict[str, Path], diagram: dict[str, Any]) -> str:
    """An image of the report as an inline element: a PNG as a data URI, the Graphviz SVG inline."""
    if src == "architecture.svg" and "svg" in diagram:
        svg = diagram["svg"]
        return f'<div class="diagram" role="img" aria-label="{html.escape(alt)}">{svg[svg.find("<svg") :]}</div>'
    if src in images:
        data = base64.b64encode(images[src].read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    return f"<p>{html.escape(alt)} (image missing)</p>"


def _html(name: str, md: list[str], plots: list[tuple[str, Path]], diagram: dict[str, Any]) -> str:
    """A self-contained page from the report's Markdown: headings, paragraphs, tables, code and images.

    Only the Markdown this module writes is handled: `#`/`##` headings, paragraphs (consecutive lines are
    one paragraph), pipe tables, fenced blocks (a `mermaid` block is left out: the diagram is drawn as an
    image), images on their own line, and the inline markup of `_inline`.
    """
    body: list[str] = []
    table: list[str] = []
    para: list[str] = []
    images = {p.name: p for _, p in plots}
    if isinstance(diagram.get("image"), Path):
        images[diagram["image"].name] = diagram["image"]
    code: list[str] | None = None
    lang = ""

    def flush() -> None:
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table.clear()
        if para:
            body.append(f"<p>{' '.join(_inline(x) for x in para)}</p>")
            para.clear()

    for line in md:
        if code is not None:
            if line.startswith("```"):
                if lang != "mermaid":
                    body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code, lang = [], line[3:].strip()
            continue
        if line.startswith("|"):
            if para:
                flush()
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table or not line:
            flush()
        if not line:
            continue
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif (m := re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", line.strip())) is not None:
            flush()
            body.append(_image(m[2], m[1], images, diagram))
        else:
            para.append(line)
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}.diagram svg{max-width:100%;height:auto}"
             "code{background:#f3f3f3;padding:0 3px;border-radius:3px}pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}")  # fmt: skip
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nasrec report: {html.escape(name)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip
