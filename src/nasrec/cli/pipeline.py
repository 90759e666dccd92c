"""Whole-pipeline commands: `nasrec run`, `nasrec demo` and `nasrec report`."""

from __future__ import annotations

import argparse

from nasrec import console
from nasrec.cli.common import JSON_HELP, NO_PROGRESS_HELP, bars, parse_sets


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole pipeline from one config file (prepare ... report)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--out", metavar="DIR", help="run directory (default: the config's `out`)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="change one key of the config (repeatable): data.input=train.csv, search.set.max_mflops=0.5, "
        "final.seeds=5; a relative path is taken from the working directory",
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_run(args: argparse.Namespace) -> int:
    from nasrec.pipeline.config import load_config
    from nasrec.pipeline.runner import run_pipeline

    cfg = load_config(args.config, parse_sets(args.set, dotted=True))
    if args.out or cfg.get("out"):
        console.add_run_log(args.out or cfg["out"])
    records = run_pipeline(cfg, args.out, progress=bars(args))
    _print_pipeline(records, args.out or cfg["out"], args.json)
    return 0


def _print_pipeline(records: dict, out: str, as_json: bool = False) -> None:
    final = (records.get("final") or {}).get("result") or {}
    base = (records.get("baselines") or {}).get("result") or {}

    def brief(r: dict) -> dict:
        """The first seed's metrics and, over several seeds, the mean test log loss of all."""
        out = {k: r.get(k) for k in ("logloss", "auc", "mflops")}
        if len(r.get("seeds") or {}) > 1:
            out["logloss_mean"] = sum(s["logloss"] for s in r["seeds"].values()) / len(r["seeds"])
        return out

    summary = {
        "out": str(out),
        "final": brief(final),
        "baselines": {m: brief(r) for m, r in base.items()},
        "report": ((records.get("report") or {}).get("result") or {}).get("html"),
    }
    if final and base:
        from nasrec.train.compare import against_each, against_each_line

        verdict = against_each(_seeds(final), {m: _seeds(r) for m, r in base.items()})
        summary["against_baselines"] = against_each_line(verdict)
    console.show(summary, as_json, lambda s: _pipeline_text(s, records))


def _seeds(r: dict) -> dict:
    """Per-seed test log loss and AUC of a pipeline stage's result (its own run when it has no seeds), and MFLOPs."""
    runs = list((r.get("seeds") or {}).values()) or [r]
    return {
        "logloss": [x["logloss"] for x in runs if x.get("logloss") is not None],
        "auc": [x["auc"] for x in runs if x.get("auc") is not None],
        "mflops": r.get("mflops"),
    }


def _pipeline_text(s: dict, records: dict) -> str:
    n = console.num

    def row(name: str, r: dict) -> str:
        mean = f" (mean of the seeds {n(r['logloss_mean'])})" if "logloss_mean" in r else ""
        mflops = f", {console.mflops(r['mflops'])} MFLOPs" if r.get("mflops") is not None else ""
        return f"    {name:<24} test log loss {n(r.get('logloss'))}{mean}, AUC {n(r.get('auc'))}{mflops}"

    times = ", ".join(
        f"{k} {console.duration(v['seconds'])}"
        for k, v in records.items()
        if isinstance(v, dict) and v.get("seconds") is not None
    )
    lines = [f"pipeline run in {s['out']}" + (f" (stage times: {times})" if times else "")]
    if s["final"].get("logloss") is not None or s["baselines"]:
        lines.append("  test metrics:")
        lines.append(row("searched model", s["final"]))
        lines += [row(name, r) for name, r in s["baselines"].items()]
    if s.get("against_baselines"):
        lines.append(f"  the searched model: {s['against_baselines']}")
    if s.get("report"):
        lines.append(f"  report: {s['report']}")
    return "\n".join(lines)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on bundled synthetic data (minutes on a CPU)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train the final model and each baseline with N seeds; the report compares them "
        "over the seeds (the pipeline's final.seeds)",
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_demo(args: argparse.Namespace) -> int:
    from nasrec.pipeline.config import DEMO, resolve_config
    from nasrec.pipeline.runner import run_pipeline

    cfg = resolve_config({**DEMO, "final": {**DEMO["final"], "seeds": args.seeds}})
    records = run_pipeline(cfg, args.out, progress=bars(args))
    _print_pipeline(records, args.out, args.json)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown and HTML report of a pipeline run directory")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_report(args: argparse.Namespace) -> int:
    from nasrec.report import write_report

    files = {k: str(v) for k, v in write_report(args.run).items()}
    console.show(files, args.json, lambda f: "wrote " + " and ".join(f.values()))
    return 0


COMMANDS = {
    "run": (_add_run, _run_run),
    "demo": (_add_demo, _run_demo),
    "report": (_add_report, _run_report),
}
