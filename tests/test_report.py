"""`nasrec report`: the Markdown-to-HTML path, the Data tables, the plots and the architecture drawing."""

from __future__ import annotations

import html.parser
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.patches import FancyArrowPatch
from matplotlib.text import Text

from nasrec import report
from nasrec.report import _arch_figure, _diagram_backend, _inline, _outlier_cut, _pareto_figure, write_report
from nasrec.space.arch import Architecture
from nasrec.space.draw import _edges
from nasrec.space.space import NASREC_FULL, NASREC_SMALL


def _model(folder: Path, kind: str, mflops: float, ll: float, val: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "logloss": ll,
                "auc": 0.7,
                "mflops": mflops,
                "params": 10,
                "samples_per_s": 1000.0,
                "val": {"logloss": val},
            }
        )
    )
    (folder / "model.json").write_text(json.dumps({"kind": kind}))


def _arch_with_dead_blocks(space, seed: int = 0) -> Architecture:
    rng = np.random.default_rng(seed)
    for _ in range(500):
        arch = space.sample(rng)
        if arch.dead_blocks():
            return arch
    raise AssertionError("no architecture with a dead block sampled")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run directory as the pipeline leaves it, without trained weights (one seed: goal undetermined)."""
    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    prep = {
        "rows": {"train": 2400, "val": 300, "test": 300},
        "ctr": {"train": 0.24883333333333332, "val": 0.27, "test": 0.23},
        "skipped": 0,
        "bayes_logloss": {"train": 0.3036253406175546, "val": 0.27948031228810577, "test": 0.22868600731704836},
    }
    (run / "stages.json").write_text(json.dumps({"prepare": {"done": True, "result": prep}}))
    _model(run / "final", "nasrec", 0.55, 0.3105, 0.3101)
    for name, mflops, ll in (
        ("lr", 1.3e-5, 0.495),
        ("dlrm", 0.486, 0.316),
        ("deepfm", 0.492, 0.311),
        ("dcnv2", 1.045, 0.300),
    ):
        _model(run / "baselines" / name, "zoo", mflops, ll, ll + 0.001)
    for i in range(3):
        _model(run / "search" / "retrain" / f"r{i}", "nasrec", 0.4 + 0.2 * i, 0.31 + 0.002 * i, 0.309 + 0.002 * i)
    rng = np.random.default_rng(0)
    history = [
        {"hash": str(i), "mflops": float(0.3 + rng.random()), "score": float(0.32 + 0.02 * rng.random())}
        for i in range(20)
    ]
    (run / "search" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (run / "search" / "pareto.json").write_text(json.dumps(sorted(history, key=lambda h: h["mflops"])[:3]))
    (run / "search" / "result.json").write_text(
        json.dumps({"scored": 20, "seconds": 12.0, "candidates_per_minute": 100.0, "best": history[0]})
    )
    _arch_with_dead_blocks(NASREC_SMALL).save(run / "search" / "final.json")
    return run


class _Text(html.parser.HTMLParser):
    """The text a reader sees: everything outside <style>, <pre> (fixed text) and inline SVG."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.skip += tag in ("style", "pre", "svg", "title")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("style", "pre", "svg", "title")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def _visible(page: str) -> list[str]:
    parser = _Text()
    parser.feed(page)
    return parser.parts


def test_inline_markdown_becomes_html() -> None:
    assert _inline("Goal: **undetermined**.") == "Goal: <strong>undetermined</strong>."
    assert _inline("set `baselines: all` <now>") == "set <code>baselines: all</code> &lt;now&gt;"
    assert _inline("an *emphasis* and 2 * 3 * 4") == "an <em>emphasis</em> and 2 * 3 * 4"
    assert _inline("see [the docs](docs/design.md)") == 'see <a href="docs/design.md">the docs</a>'
    assert _inline("**`code` in bold**") == "<strong><code>code</code> in bold</strong>"
    assert _inline("`**not bold**`") == "<code>**not bold**</code>"


@pytest.mark.slow
def test_no_markdown_marker_reaches_the_page(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda name: None)  # no Graphviz: the matplotlib drawing
    page = write_report(run)["html"].read_text()
    md = (run / "report" / "report.md").read_text()
    assert "**undetermined**" in md and "<strong>undetermined</strong>" in page
    parts = _visible(page)
    text = "".join(parts)
    for marker in ("**", "`", "](", "![", "|---", "| ", "```", "mermaid", "flowchart", "{'", "<br/>"):
        assert marker not in text, marker
    assert not any(part.lstrip().startswith("#") for part in parts)
    assert "Graphviz's dot installed" in text  # the code span's text, without its backticks


@pytest.mark.slow
def test_data_section_is_a_table_of_rounded_numbers(run: Path) -> None:
    md = write_report(run)["markdown"].read_text()
    assert "| split | rows | CTR | Bayes-optimal log loss |" in md
    assert "| train | 2,400 | 0.2488 | 0.3036 |" in md and "| test | 300 | 0.2300 | 0.2287 |" in md
    assert "| all | 3,000 |" in md
    assert "0.24883333" not in md and "{'train'" not in md
    page = (run / "report" / "report.html").read_text()
    assert "<tr><td>train</td><td>2,400</td><td>0.2488</td><td>0.3036</td></tr>" in page


@pytest.mark.slow
def test_diagram_backend_follows_dot(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><g/></svg>'
    monkeypatch.setattr(report.shutil, "which", lambda name: "/usr/bin/dot" if name == "dot" else None)
    assert _diagram_backend() == "graphviz"
    monkeypatch.setattr(report.diagram, "_graphviz_svg", lambda dot: svg)
    page = write_report(run)["html"].read_text()
    out = run / "report"
    assert (out / "architecture.svg").read_text() == svg and not (out / "architecture.png").exists()
    assert '<div class="diagram" role="img" aria-label="final architecture"><svg' in page
    assert "![final architecture](architecture.svg)" in (out / "report.md").read_text()
    # dot installed but failing: the matplotlib drawing instead, and the stale SVG goes
    monkeypatch.setattr(report.diagram, "_graphviz_svg", lambda dot: None)
    page = write_report(run)["html"].read_text()
    assert (out / "architecture.png").exists() and not (out / "architecture.svg").exists()
    assert page.count('<img alt="final architecture" src="data:image/png;base64,') == 1
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    assert _diagram_backend() == "matplotlib"


def test_graphviz_svg_needs_neither_the_package_nor_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "graphviz", None)  # the optional package absent: `import graphviz` fails
    monkeypatch.setenv("PATH", "/nonexistent")  # and no dot: no SVG, no error
    assert report._graphviz_svg("digraph { a -> b }") is None


@pytest.mark.parametrize("space", [NASREC_SMALL, NASREC_FULL], ids=["small", "full"])
def test_matplotlib_architecture_drawing(space, tmp_path: Path) -> None:
    arch = _arch_with_dead_blocks(space, seed=3)
    fig = _arch_figure(arch)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "raw input" and texts[-1].startswith("head\n") and len(texts) == arch.num_blocks + 2
    dead = arch.dead_blocks()
    assert all(("(dead)" in texts[1 + i]) == (i in dead) for i in range(arch.num_blocks))
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    sides = sum(
        ("sparse" in role) + bool({"dense", "left", "right"} & set(role.split(", "))) + (not role)
        for _, _, role, _ in _edges(arch)
    )
    assert len(arrows) == sides  # one bracket per input and side, one arrow into the head
    paths = [p._path_original.vertices for p in arrows if p._path_original is not None]  # as drawn
    lanes = [v[1, 0] for v in paths if len(v) == 4]
    assert len(lanes) == sides - 1 and len(set(lanes)) == len(lanes)  # every bracket in a lane of its own
    assert all(v[1, 0] == v[2, 0] and v[0, 1] == v[1, 1] and v[2, 1] == v[3, 1] for v in paths if len(v) == 4)
    fig.canvas.draw()
    boxes = [t.get_bbox_patch().get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 for b in boxes)
    widest = max(b.width for b in boxes) / fig.dpi / 2  # inches, the drawing's data unit
    assert min(abs(x) for x in lanes) > widest  # brackets run beside the column of boxes, never through it
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["dense input", "sparse input"] and "dead" in legend
    fig.savefig(tmp_path / "arch.png")
    assert (tmp_path / "arch.png").stat().st_size > 10_000


def test_outlier_cut() -> None:
    assert _outlier_cut([0.31, 0.495]) is None  # too few to tell
    assert _outlier_cut([0.30, 0.305, 0.31, 0.311, 0.316]) is None
    assert _outlier_cut([1.0, 2.0, 3.0, 4.0, 5.1]) is None  # evenly spread: never split
    assert _outlier_cut([0.30, 0.305, 0.31, 0.311, 0.316, 0.495]) == pytest.approx((0.316 + 0.495) / 2)
    assert _outlier_cut([0.499, 0.524, 0.573, 0.56, 7.09, 8.44]) == pytest.approx((0.573 + 7.09) / 2)
    # two models far behind a wide bulk (a short run: LR and a diverged DeepFM)
    cut = _outlier_cut([0.497, 0.473, 0.37, 0.35, 0.338, 0.326, 0.316, 0.314])
    assert cut == pytest.approx((0.37 + 0.473) / 2)
    assert _outlier_cut([0.3, 0.9, 0.91, 0.92]) is None  # the far one is the best model, never cut off


def _label_boxes(fig) -> list:
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes[1:]:
        for t in ax.texts:
            t.update_positions(renderer)
            out.append((ax, t.get_text(), Text.get_window_extent(t, renderer)))
    return out


@pytest.mark.slow
def test_trained_models_plot_breaks_its_axis_and_labels_do_not_overlap(run: Path) -> None:
    models = report._models(run)
    # crowd the labels: more models close together
    for i, name in enumerate(("fm", "autoint+", "xdeepfm", "dnn")):
        models.append({"name": name, "group": "zoo", "val_logloss": 0.3112 + 0.0004 * i, "mflops": 0.49 + 0.01 * i})
    fig = _pareto_figure([], [], models)
    assert len(fig.axes) == 3  # the search panel, then the trained models' broken axis: top and bottom
    top, bottom = fig.axes[1], fig.axes[2]
    assert "validation split" in fig.axes[0].get_title() and "validation split" in top.get_title()
    assert "val log loss" in bottom.get_ylabel()
    assert [t.get_text() for t in top.texts] == ["lr"] and top.get_ylim()[0] > 0.4 > bottom.get_ylim()[1]
    boxes = _label_boxes(fig)
    names = sorted(name for _, name, _ in boxes)
    assert names == sorted(["lr", "dlrm", "deepfm", "dcnv2", "searched (final)", "fm", "autoint+", "xdeepfm", "dnn"])
    for (_, n1, b1), (_, n2, b2) in itertools.combinations(boxes, 2):
        assert not b1.overlaps(b2), (n1, n2)
    for ax, name, b in boxes:
        frame = ax.get_window_extent(fig.canvas.get_renderer())
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1, name
    legend = top.get_legend().get_window_extent(fig.canvas.get_renderer())  # outside the panels, at the right
    assert not any(legend.overlaps(b) for _, _, b in boxes)
    assert legend.x0 > bottom.get_window_extent(fig.canvas.get_renderer()).x1
    # without a model far behind, one panel
    fig = _pareto_figure([], [], [m for m in models if m["name"] != "lr"])
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "Trained models (validation split)"


def test_graphviz_svg_with_dot_installed() -> None:
    if not shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed (the report then draws with matplotlib)")
    from nasrec.space.draw import to_dot

    svg = report._graphviz_svg(to_dot(_arch_with_dead_blocks(NASREC_SMALL)))
    assert svg is not None and "<svg" in svg and "raw input" in svg


def test_the_search_section_says_how_halving_chose(run: Path) -> None:
    """With successive halving's rungs in final_metrics.json, the report names them; without, it says nothing."""
    assert "Successive halving" not in write_report(run)["markdown"].read_text()
    arch = {"hash": "a", "val_logloss": 0.31}
    rungs = [
        {"rung": 0, "max_steps": 200, "runs": [arch] * 9, "kept": ["a"] * 3},
        {"rung": 1, "max_steps": None, "runs": [arch] * 3, "kept": []},
    ]
    (run / "search" / "final_metrics.json").write_text(json.dumps({"chosen": arch, "runs": [arch] * 3, "rungs": rungs}))
    text = write_report(run)["markdown"].read_text()
    assert "Successive halving chose the final architecture: 9 -> 3 architectures trained from scratch " in text
    assert "(200 steps, then the whole recipe)" in text


def test_a_run_with_a_latency_table_reports_measured_latency_and_the_front_over_it(run: Path) -> None:
    """latency.json (measured after export) becomes a column and, with the search's predictions, a second figure."""
    plain = write_report(run)["markdown"].read_text()
    assert "latency ms" not in plain and not (run / "report" / "pareto_latency.png").exists()
    history = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    for h in history:
        h["latency_ms"] = round(0.05 + 0.1 * h["mflops"], 4)
    (run / "search" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    best = {**history[0]}
    (run / "search" / "result.json").write_text(
        json.dumps({"scored": 20, "seconds": 12.0, "candidates_per_minute": 100.0, "best": best})
    )
    (run / "search" / "pareto_latency.json").write_text(json.dumps(sorted(history, key=lambda h: h["latency_ms"])[:3]))
    measured = {"searched (final)": 0.0812, "dcnv2": 0.0705, "deepfm": 0.0531}
    (run / "latency.json").write_text(
        json.dumps({"runtime": "onnxruntime", "models": {k: {"p50_ms": v} for k, v in measured.items()}})
    )
    text = write_report(run)["markdown"].read_text()
    assert "| model | test log loss | test AUC | MFLOPs | latency ms (measured) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| dcnv2 |"))
    assert "| 0.0705 |" in row
    lr = next(line for line in text.splitlines() if line.startswith("| lr |"))
    assert "| 1.3e-05 | – |" in lr  # not measured: no figure
    assert f"predicted to serve in {best['latency_ms']:.4g} ms" in text
    assert (run / "report" / "pareto_latency.png").exists() and "serving latency" in text
    fig = _pareto_figure(history, [], report._models(run), cost="latency_ms")
    assert "latency" in fig.axes[0].get_xlabel() and "measured" in fig.axes[-1].get_xlabel()
