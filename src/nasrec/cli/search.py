"""Search commands: `nasrec search` and `nasrec rankcheck`."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import (
    JSON_HELP,
    NO_PROGRESS_HELP,
    add_caps,
    add_device,
    add_latency_caps,
    bars,
    device_arg,
    latency_overrides,
    parse_sets,
)
from nasrec.configfile import preset_names


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a trained supernet's space (regularized evolution or random)")
    p.add_argument("--supernet", required=True, metavar="DIR", help="run directory of `nasrec supernet`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory (the supernet's)")
    p.add_argument("--out", required=True, metavar="DIR", help="search directory")
    p.add_argument("--strategy", choices=["evolution", "random"])
    fitted = "default auto: the paper's search fitted to the data and --time-budget"
    p.add_argument("--preset", choices=preset_names("search"), help=f"search preset (nasrec/presets/search; {fitted})")
    p.add_argument(
        "--time-budget",
        metavar="T",
        help="wall time the auto preset fits its scoring into: seconds or "
        "15m, 2h (default 15m; retraining not included)",
    )
    add_caps(p)
    add_latency_caps(p)
    p.add_argument(
        "--layernorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count MFLOPs and params (caps, history) for served models with layer norms, or without "
        "(default: as the retraining recipe trains them)",
    )
    p.add_argument(
        "--pareto",
        action="store_true",
        help="multi-objective: parents from the Pareto front of (val loss, MFLOPs), or of (val loss, "
        "predicted latency) with --latency-table",
    )
    p.add_argument(
        "--workers",
        type=clicheck.int_at_least(1),
        default=1,
        help="scoring processes (the result does not depend on it)",
    )
    p.add_argument("--seed", type=clicheck.int_at_least(0))
    p.add_argument(
        "--seed-arch",
        action="append",
        metavar="FILE.json",
        help="an architecture the initial population starts with (repeatable; e.g. a published NASRecNet)",
    )
    p.add_argument("--retrain", action="store_true", help="train the top-k from scratch and choose the final one")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a retraining setting")
    p.add_argument(
        "--retrain-seeds",
        type=clicheck.int_at_least(1),
        default=1,
        metavar="N",
        help="train each top-k architecture with N seeds and judge it by the mean validation loss",
    )
    p.add_argument(
        "--halving",
        type=clicheck.int_at_least(2),
        metavar="ETA",
        help="with --retrain: successive halving of the top k, keeping the best 1/ETA at each rung "
        "(trained from scratch for --halving-min-steps, then ETA times as many steps, ...); the last ETA or "
        "fewer train with the whole recipe",
    )
    p.add_argument(
        "--halving-min-steps",
        type=clicheck.int_at_least(1),
        metavar="N",
        help="the first rung's training steps (default 200)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a search or scoring setting")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    add_device(p, "score candidates (and retrain them, unless --train-set device=... says otherwise)", resumable=True)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_search(args: argparse.Namespace) -> int:
    from nasrec.search.api import search
    from nasrec.search.retrain import Halving

    overrides = parse_sets(args.set)
    for key in ("strategy", "max_mflops", "max_params", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    latency_overrides(args, overrides)
    if args.pareto:
        overrides["pareto"] = True
    if args.seed_arch:
        from nasrec.space.arch import Architecture

        overrides["seed_archs"] = [Architecture.load(f).to_dict() for f in args.seed_arch]
    if args.layernorm is not None:
        overrides["count_layernorm"] = args.layernorm
    train_overrides = parse_sets(args.train_set)
    if device_arg(args, overrides):
        train_overrides.setdefault("device", args.device)
    res = search(
        args.supernet,
        args.data,
        args.out,
        preset=args.preset,
        overrides=overrides,
        workers=args.workers,
        retrain=args.retrain,
        train_overrides=train_overrides,
        retrain_seeds=args.retrain_seeds,
        halving=None if args.halving is None else Halving(args.halving, args.halving_min_steps or Halving.min_steps),
        resume=args.resume,
        time_budget=args.time_budget,
        progress=bars(args),
    )
    from nasrec.distributed import is_main

    if not is_main():  # under torchrun every rank returns the result; one prints it
        return 0
    from nasrec.rundir import SearchResult

    r = SearchResult.from_dict(res)
    best = r.best
    summary = {
        "best": best.hash,
        "score": best.score,
        "mflops": best.mflops,
        "scored": r.scored,
        "candidates_per_minute": round(r.candidates_per_minute, 2),
        "pareto": len(r.pareto),
    }
    if r.final is not None and r.final.chosen is not None:
        summary["final"] = r.final.chosen.to_dict()
        if r.final.rungs:
            summary["halving"] = [len(rung.runs) for rung in r.final.rungs]
    console.show(summary, args.json, lambda s: _search_text(s, res, args.out))
    return 0


def _search_text(s: dict, res: dict, out: str) -> str:
    n = console.num
    lines = [
        f"searched {s['scored']:,} candidates in {console.duration(res.get('seconds') or 0.0)} "
        f"({s['candidates_per_minute']:g} candidates/min) into {out}",
        f"  best: {s['best']} (supernet-scored validation log loss {n(s['score'])}, "
        f"{console.mflops(s['mflops'])} MFLOPs) in best.json; Pareto front of {s['pareto']} in pareto.json",
    ]
    f = s.get("final")
    if s.get("halving"):
        lines.append(
            "  successive halving: " + " -> ".join(str(k) for k in s["halving"]) + " architectures per rung, "
            "the last with the whole recipe (retrain/rungN/ and retrain/)"
        )
    if f:
        lines.append(
            f"  final (retrained, chosen by validation log loss): {f['hash']} in final.json: validation "
            f"{n(f.get('val_logloss'))}, test log loss {n(f.get('test_logloss'))}, test AUC "
            f"{n(f.get('test_auc'))}, {console.mflops(f.get('mflops'))} MFLOPs"
        )
    return "\n".join(lines)


def _add_rankcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rankcheck", help="rank correlation of supernet scores with training from scratch")
    p.add_argument("--supernet", required=True, metavar="DIR", help="run directory of `nasrec supernet`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory (the supernet's)")
    p.add_argument("--out", required=True, metavar="DIR", help="rank check directory (rankcheck.json, runs/)")
    p.add_argument("-k", "--k", type=clicheck.int_at_least(3), default=20, help="architectures to sample (default 20)")
    p.add_argument("--seed", type=clicheck.int_at_least(0), default=0)
    p.add_argument("--strategy", default="uniform", help="sampling strategy of the architectures")
    add_caps(p)
    p.add_argument("--preset", default="cpu-quick", choices=preset_names("search"), help="search preset to score with")
    from_scratch = "training preset of the from-scratch runs (default: the search preset's)"
    p.add_argument("--train-preset", choices=preset_names("train"), help=from_scratch)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scoring setting")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a training setting")
    p.add_argument("--workers", type=clicheck.int_at_least(1), default=1, help="scoring processes")
    p.add_argument(
        "--train-workers",
        type=clicheck.int_at_least(1),
        default=1,
        help="architectures trained from scratch at a time, each in its own process (default 1)",
    )
    add_device(p, "score and train the architectures")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_rankcheck(args: argparse.Namespace) -> int:
    from nasrec.search.rankcheck import rankcheck

    score_overrides, train_overrides = parse_sets(args.set), parse_sets(args.train_set)
    if device_arg(args, score_overrides):
        train_overrides.setdefault("device", args.device)
    res = rankcheck(
        args.supernet,
        args.data,
        args.out,
        k=args.k,
        seed=args.seed,
        strategy=args.strategy,
        preset=args.preset,
        score_overrides=score_overrides,
        train_preset=args.train_preset,
        train_overrides=train_overrides,
        workers=args.workers,
        max_mflops=args.max_mflops,
        max_params=args.max_params,
        train_workers=args.train_workers,
    )
    console.show(
        {k: res[k] for k in ("kendall_tau", "kendall_ci_low", "kendall_ci_high", "spearman_rho", "pairs")},
        args.json,
        lambda r: (
            f"rank check of {args.k} architectures in {args.out} ({r['pairs']} with finite losses): "
            f"Kendall tau {console.num(r['kendall_tau'], 3)} (95 % bootstrap interval "
            f"{console.num(r['kendall_ci_low'], 2)} to {console.num(r['kendall_ci_high'], 2)}), Spearman rho "
            f"{console.num(r['spearman_rho'], 3)}\n  rankcheck.json, rankcheck.png"
        ),
    )
    return 0


COMMANDS = {
    "search": (_add_search, _run_search),
    "rankcheck": (_add_rankcheck, _run_rankcheck),
}
