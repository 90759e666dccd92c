"""`write_report`: the report's Markdown and HTML pages of one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.report.diagram import _diagram
from nasrec.report.figures import _pareto, _rank_scatter, _supernet_curve, _trajectory
from nasrec.report.html import _html
from nasrec.report.sources import _json, _jsonl, _models
from nasrec.report.tables import _comparison, _fmt, tune_section
from nasrec.rundir import RetrainResult, StageRecord


def write_report(run: str | Path) -> dict[str, Path]:
    """Write `report/report.md` and `report/report.html` (plus PNGs) for a run directory."""
    run = Path(run)
    if not run.is_dir():
        raise NasrecError(f"{run}: no such run directory")
    out = run / "report"
    out.mkdir(exist_ok=True)
    stages = _json(run / rundir.STAGES_JSON) or {}
    prep = StageRecord.from_dict(stages.get("prepare") or {}).result or {}
    search_dir = run / rundir.SEARCH_DIR
    history = _jsonl(search_dir / rundir.HISTORY_JSONL)
    front = _json(search_dir / rundir.PARETO_JSON) or []
    result = _json(search_dir / rundir.RESULT_JSON)
    models = _models(run)
    plots: list[tuple[str, Path]] = []
    for title, p in (
        ("Supernet training", _supernet_curve(run, out)),
        ("Search trajectory (validation split)", _trajectory(history, out)),
        ("Pareto fronts (validation split)", _pareto(history, front, models, out)),
        ("Pareto fronts over serving latency (validation split)", _latency_front(search_dir, history, models, out)),
    ):
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
        md += [
            "## Search",
            "",
            f"{result['scored']} candidates scored in {result['seconds']:.0f} s "
            f"({result['candidates_per_minute']:.1f} per minute); best supernet score {result['best']['score']:.5f} "
            f"at {result['best']['mflops']:.3f} MFLOPs{_predicted(result['best'])}; {len(front)} architectures on "
            f"the Pareto front.",
            "",
            *_selection(_json(search_dir / rundir.FINAL_METRICS_JSON)),
        ]
    md += _comparison(run, models)
    md += tune_section(StageRecord.from_dict(stages.get("tune") or {}).result)
    if rc is not None:
        md += [
            "## Ranking quality",
            "",
            f"Kendall tau {rc['kendall_tau']:.3f}{_tau_interval(rc)}, Spearman rho {rc['spearman_rho']:.3f} "
            f"over {rc['pairs']} architectures.",
            "",
        ]
    for title, p in plots:
        md += [f"## {title}", "", f"![{title}]({p.name})", ""]
    if diagram:
        how = (
            "Drawn with Graphviz; edge labels say which inputs an edge carries."
            if "svg" in diagram
            else "Drawn with matplotlib (with Graphviz's `dot` installed the report draws an SVG instead): blue "
            "brackets carry dense inputs, orange ones sparse (embedding) inputs."
        )
        md += [
            "## Final architecture",
            "",
            f"![final architecture]({diagram['image'].name})",
            "",
            how
            + (
                " Grey dashed blocks are dead: their output never reaches the head."
                if "no dead blocks" not in diagram["text"]
                else ""
            ),
            "",
            "```mermaid",
            diagram["mermaid"].rstrip(),
            "```",
            "",
            "```",
            diagram["text"].rstrip(),
            "```",
            "",
        ]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(run.name, md, plots, diagram))
    return {"markdown": out / "report.md", "html": out / "report.html"}


def _predicted(best: dict[str, Any]) -> str:
    """ ", predicted to serve in X ms" for a search with a latency table."""
    ms = best.get("latency_ms")
    return "" if ms is None else f", predicted to serve in {ms:.4g} ms"


def _latency_front(
    search_dir: Path, history: list[dict[str, Any]], models: list[dict[str, Any]], out: Path
) -> Path | None:
    """The fronts over latency: the search's (predicted) and the trained models' (measured), with a latency table."""
    front = _json(search_dir / rundir.PARETO_LATENCY_JSON)
    if front is None and not any(m.get("latency_ms") is not None for m in models):
        return None
    return _pareto(history, front or [], models, out, cost="latency_ms")


def _selection(final: dict[str, Any] | None) -> list[str]:
    """How the final architecture was chosen among the retrained top k: a line on successive halving, if used."""
    rungs = RetrainResult.from_dict(final).rungs if final else None
    if not rungs:
        return []
    steps = ", then ".join(f"{r.max_steps:,} steps" for r in rungs if r.max_steps is not None)
    counts = " -> ".join(str(len(r.runs)) for r in rungs)
    return [
        f"Successive halving chose the final architecture: {counts} architectures trained from scratch "
        f"({steps}, then the whole recipe), the best by validation log loss kept at each rung.",
        "",
    ]


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
        md += [
            "Bayes-optimal log loss: the log loss of the true click probabilities of the synthetic data "
            "(its known click model), the floor no model can beat on those rows.",
            "",
        ]
    if prep.get("skipped"):
        md += [f"{prep['skipped']:,} malformed input rows were skipped.", ""]
    return md


def _tau_interval(rc: dict[str, Any]) -> str:
    """Tau's bootstrap interval in words (rank checks written before it was measured have none)."""
    if "kendall_ci_low" not in rc:
        return ""
    return f" (95 % bootstrap interval {rc['kendall_ci_low']:.2f} to {rc['kendall_ci_high']:.2f})"
