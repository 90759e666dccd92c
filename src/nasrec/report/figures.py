"""The report's matplotlib plots: supernet curve, search trajectory, Pareto fronts, rank scatter."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from nasrec import rundir
from nasrec.report.sources import _json, _jsonl


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
    log = [r for r in _jsonl(run / rundir.SUPERNET_DIR / rundir.METRICS_JSONL) if "train_loss" in r]
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
    ax.scatter(
        range(1, len(scores) + 1), [math.nan if s is None else s for s in scores], s=6, c="0.7", label="candidate"
    )
    ax.plot(range(1, len(best) + 1), best, c="C0", lw=1.6, label="best so far")
    ax.set_xlabel("candidates scored")
    ax.set_ylabel("supernet score (val log loss)")
    ax.set_title("Search trajectory (validation split)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, out / "search.png")


def _pareto(
    history: list[dict[str, Any]],
    front: list[dict[str, Any]],
    models: list[dict[str, Any]],
    out: Path,
    cost: str = "mflops",
) -> Path | None:
    fig = _pareto_figure(history, front, models, cost)
    name = "pareto.png" if cost == "mflops" else "pareto_latency.png"
    return None if fig is None else _save(fig, out / name, layout=False)


COST_LABELS = {
    "mflops": "MFLOPs per example",
    "latency_ms": "serving latency, ms (search: predicted; trained models: measured)",
}


_GROUPS = (("retrained", "o", "0.6"), ("zoo", "s", "C1"), ("published", "^", "C2"), ("final", "*", "C3"))


def _pareto_figure(
    history: list[dict[str, Any]], front: list[dict[str, Any]], models: list[dict[str, Any]], cost: str = "mflops"
) -> Any:
    """Left: the search's supernet scores and Pareto front. Right: the trained models' validation log loss.

    Both panels show the validation split. A model far worse than the rest (e.g. logistic regression on
    data with interactions) would squash the others into one band, so the right panel breaks its axis:
    such models (`_outlier_cut`) go to a short upper panel with their own scale. Labels are placed so
    that they overlap neither each other nor the points (`_place_labels`). `cost`: the x axis, "mflops" or
    "latency_ms" (the search's predicted latency, the trained models' measured one).
    """
    xlabel = COST_LABELS[cost]
    trained = [m for m in models if m.get("val_logloss") is not None and m.get(cost) is not None]
    if not history and not trained:
        return None
    plt = _plt()
    fig = plt.figure(figsize=(11, 4.4), dpi=DPI)
    grid = fig.add_gridspec(4, 2, hspace=0.08)
    ax = fig.add_subplot(grid[:, 0])
    pts = [(h[cost], h["score"]) for h in history if h["score"] is not None and h.get(cost) is not None]
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=6, c="0.7", label="candidates")
    if front:
        ax.plot([f[cost] for f in front], [f["score"] for f in front], "o-", c="C3", ms=4, label="Pareto front")
    ax.set_xlabel(xlabel)
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
        panels = [
            (top, [m for m in trained if m["val_logloss"] > cut]),
            (bottom, [m for m in trained if m["val_logloss"] <= cut]),
        ]
    for panel, group_models in panels:
        for group, marker, color in _GROUPS:
            g = [m for m in group_models if m["group"] == group]
            if g:
                panel.scatter(
                    [m[cost] for m in g],
                    [m["val_logloss"] for m in g],
                    marker=marker,
                    c=color,
                    s=90 if group == "final" else 30,
                    label=group,
                    zorder=3,
                )
        _pad_limits(panel, [m["val_logloss"] for m in group_models])
    xs = [m[cost] for m in trained]
    if xs:
        lo, hi = min(xs), max(xs)
        span = (hi - lo) or max(abs(hi), 1.0)
        panels[-1][0].set_xlim(lo - 0.08 * span, hi + 0.4 * span)  # room for labels right of the last points
    main, _ = panels[-1]
    main.set_xlabel(xlabel)
    main.set_ylabel("val log loss (trained from scratch)")
    title = "Trained models (validation split)"
    if cut is not None:
        top = panels[0][0]
        title = "Trained models (validation split), broken axis"
        top.spines["bottom"].set_visible(False)
        main.spines["top"].set_visible(False)
        top.tick_params(axis="x", bottom=False, labelbottom=False)
        kw = dict(
            marker=[(-1, -0.5), (1, 0.5)], markersize=10, linestyle="none", color="k", mec="k", mew=1, clip_on=False
        )
        top.plot([0, 1], [0, 0], transform=top.transAxes, **kw)
        main.plot([0, 1], [1, 1], transform=main.transAxes, **kw)
    panels[0][0].set_title(title)
    handles: dict[str, Any] = {}
    for panel, _ in panels:
        handles.update(zip(*reversed(panel.get_legend_handles_labels()), strict=True))
    if handles:
        # outside the axes, right of the panel's top: it hides no point and no label
        panels[0][0].legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            borderaxespad=0.0,
        )
    fig.subplots_adjust(left=0.075, right=0.9, bottom=0.12, top=0.92, wspace=0.24)
    for panel, group_models in panels:
        named = [m for m in group_models if m["group"] != "retrained"]
        _place_labels(
            fig,
            panel,
            [(m[cost], m["val_logloss"], m["name"]) for m in named],
            [(m[cost], m["val_logloss"]) for m in group_models],
        )
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
_LABEL_OFFSETS = [
    (dx * r, dy * r)
    for r in (1, 2, 3.5, 5)
    for dx, dy in ((6, 2), (-6, 2), (0, 8), (0, -8), (6, -8), (-6, -8), (6, 8), (-6, 8))
]


def _place_labels(
    fig: Any, ax: Any, labels: list[tuple[float, float, str]], points: list[tuple[float, float]]
) -> list[Any]:
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
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=8,
                arrowprops=line,
                zorder=4,
            )
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
    rc = _json(run / rundir.RANKCHECK_DIR / rundir.RANKCHECK_JSON)
    png = run / rundir.RANKCHECK_DIR / "rankcheck.png"
    if rc is None or not png.exists():
        return None, None
    shutil.copyfile(png, out / "rankcheck.png")
    return out / "rankcheck.png", rc
