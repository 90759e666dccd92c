"""The final architecture's diagram: a Graphviz SVG when `dot` is installed, else a matplotlib drawing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.report.figures import DPI, _plt, _save


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

    path = run / rundir.SEARCH_DIR / rundir.FINAL_JSON
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
            lanes[-1].append(
                (order[dst] - order[src], src, dst, "C0" if roles & _DENSE_SIDE == {"dense"} else "C2", is_live)
            )
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
        box = dict(
            boxstyle="round,pad=0.4",
            lw=1.0,
            fc="white" if dead else ("#f3f3f3" if end else "#eaf1fb"),
            ec=_DEAD if dead else "#4a4a4a",
            ls="--" if dead else "-",
        )
        text[node] = ax.text(
            0,
            -k * dy,
            labels[node],
            ha="center",
            va="center",
            fontsize=7.5,
            color=_DEAD if dead else "black",
            bbox=box,
            zorder=3,
        )
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
            ax.add_patch(
                FancyArrowPatch(
                    path=MplPath(verts, codes),
                    arrowstyle="-|>,head_length=5,head_width=2.5",
                    color=color if is_live else _DEAD,
                    lw=1.0,
                    ls="-" if is_live else "--",
                    zorder=1,
                )
            )
    for src, dst in centre:
        ax.add_patch(
            FancyArrowPatch(
                (0, -order[src] * dy - hh[src]),
                (0, -order[dst] * dy + hh[dst]),
                arrowstyle="-|>,head_length=5,head_width=2.5",
                color="0.25",
                lw=1.0,
            )
        )
    handles = [
        Line2D([], [], color="C0", lw=1.5, label="dense input"),
        Line2D([], [], color="C1", lw=1.5, label="sparse input"),
    ]
    if any(e[3] == "C2" for e in lanes[-1]):
        handles.append(Line2D([], [], color="C2", lw=1.5, label="left / right operand"))
    if not all(live):
        handles.append(Line2D([], [], color=_DEAD, lw=1.5, ls="--", label="dead"))
    ax.legend(handles=handles, loc="upper center", fontsize=7.5, frameon=False, ncol=len(handles))
    return fig
