"""`nasrec report RUN_DIR`: a Markdown page and a self-contained HTML page about one pipeline run.

Sections (each only when its data exists in the run directory): the data (rows, CTR, Bayes-optimal log
loss of synthetic data); the supernet's training curve; the search trajectory (best score so far
against candidates scored); the Pareto front of supernet score against MFLOPs, and the from-scratch
validation log loss against MFLOPs of the retrained candidates, the final model and the baselines (zoo
and published NASRecNets); the rank-correlation scatter of a `rankcheck/` folder; the final comparison
table (test log loss, AUC, MFLOPs, parameters, training samples/s; mean ± std over the seeds of
`final.seeds`, each model against the searched one by Welch's interval); the goal check against the
best baseline, over the seeds and over the test rows (`nasrec compare`'s tests); the final
architecture's diagram (Graphviz SVG when `dot` is installed, else Mermaid text in the Markdown and a
text summary). Plots are matplotlib PNGs in `report/`, embedded as data URIs in `report/report.html`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

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


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    ax.set_title("Supernet training")
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
    ax.set_title("Search trajectory")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, out / "search.png")


def _pareto(history: list[dict[str, Any]], front: list[dict[str, Any]], models: list[dict[str, Any]],
            out: Path) -> Path | None:  # fmt: skip
    if not history and not models:
        return None
    fig, axes = _plt().subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    pts = [(h["mflops"], h["score"]) for h in history if h["score"] is not None]
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=6, c="0.7", label="candidates")
    if front:
        ax.plot([f["mflops"] for f in front], [f["score"] for f in front], "o-", c="C3", ms=4, label="Pareto front")
    ax.set_xlabel("MFLOPs per example")
    ax.set_ylabel("supernet score (val log loss)")
    ax.set_title("Search: supernet scores")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax = axes[1]
    for group, marker, color in (("retrained", "o", "0.6"), ("zoo", "s", "C1"), ("published", "^", "C2"),
                                 ("final", "*", "C3")):  # fmt: skip
        g = [m for m in models if m["group"] == group and m.get("val_logloss") is not None]
        if g:
            ax.scatter([m["mflops"] for m in g], [m["val_logloss"] for m in g], marker=marker, c=color,
                       s=90 if group == "final" else 30, label=group)  # fmt: skip
            for m in g:
                if group != "retrained":
                    ax.annotate(m["name"], (m["mflops"], m["val_logloss"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
    ax.set_xlabel("MFLOPs per example")
    ax.set_ylabel("val log loss (trained from scratch)")
    ax.set_title("Trained models")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, out / "pareto.png")


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


def _diagram(run: Path, out: Path) -> dict[str, str]:
    from nasrec.space.arch import Architecture
    from nasrec.space.draw import summary, to_dot, to_mermaid

    path = run / "search" / "final.json"
    if not path.exists():
        return {}
    arch = Architecture.load(path)
    res = {"text": summary(arch), "mermaid": to_mermaid(arch)}
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=to_dot(arch), capture_output=True, text=True, check=False)
        if svg.returncode == 0:
            (out / "architecture.svg").write_text(svg.stdout)
            res["svg"] = svg.stdout
    return res


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
    for title, p in (("Supernet training", _supernet_curve(run, out)), ("Search trajectory", _trajectory(history, out)),
                     ("Pareto fronts", _pareto(history, front, models, out))):  # fmt: skip
        if p is not None:
            plots.append((title, p))
    rank_png, rc = _rank_scatter(run, out)
    if rank_png is not None:
        plots.append(("Supernet ranking against training from scratch", rank_png))
    diagram = _diagram(run, out)

    md = [f"# nasrec report: {run.name}", ""]
    if prep:
        bayes = (prep.get("bayes_logloss") or {}).get("test")
        md += ["## Data", "", f"Rows per split: {prep.get('rows')}; CTR: {prep.get('ctr')}."]
        if bayes is not None:
            md.append(f"Bayes-optimal test log loss (synthetic data, known click model): {bayes:.4f}.")
        md.append("")
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
        md += ["## Final architecture", ""]
        if "svg" in diagram:
            md += ["![final architecture](architecture.svg)", ""]
        md += ["```mermaid", diagram["mermaid"].rstrip(), "```", "", "```", diagram["text"].rstrip(), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(run.name, md, plots, diagram))
    return {"markdown": out / "report.md", "html": out / "report.html"}


def _html(name: str, md: list[str], plots: list[tuple[str, Path]], diagram: dict[str, str]) -> str:
    """A self-contained page: the Markdown's text and tables as HTML, plots as data URIs."""
    body: list[str] = []
    table: list[str] = []
    images = {p.name: p for _, p in plots}
    code: list[str] | None = None
    for line in md:
        if code is not None:
            if line.startswith("```"):
                body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            code = []
            continue
        if line.startswith("|"):
            if not line.startswith("|---"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            src = src.rstrip(")")
            if src in images:
                data = base64.b64encode(images[src].read_bytes()).decode()
                body.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
            elif src == "architecture.svg" and "svg" in diagram:
                body.append(diagram["svg"][diagram["svg"].find("<svg") :])
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{background:#f6f6f6;padding:8px}")  # fmt: skip
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nasrec report: {html.escape(name)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip
