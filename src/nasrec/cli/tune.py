"""`nasrec tune`: hyper-parameter tuning of a training recipe with Optuna (TPE, pruning, resumable)."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import JSON_HELP, add_device, device_arg, parse_sets
from nasrec.configfile import preset_names


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="tune a training recipe (lr, batch size, dropout, embedding L2 and dim, MLP sizes) with Optuna; "
        "writes best_recipe.yaml for `nasrec train --recipe`",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", metavar="FILE.json", help="nasrec architecture (canonical or NASRec JSON)")
    what.add_argument(
        "--model",
        metavar="NAME",
        help="zoo baseline: lr, fm, dnn, dlrm, deepfm, dcnv2, autoint+, xdeepfm, wdl, ipnn, dcn, finalmlp",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory (with a val split)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="run directory (tune.db there: the same command resumes it)"
    )
    p.add_argument(
        "--space",
        metavar="FILE.yaml",
        help="what to search (default: lr, batch size, embedding L2 and the model's dropout, embedding dim, MLPs)",
    )
    p.add_argument(
        "--trials",
        type=clicheck.int_at_least(1),
        default=20,
        help="finished trials in all, earlier sessions' included (default 20)",
    )
    p.add_argument(
        "--timeout",
        type=clicheck.non_negative,
        metavar="SECONDS",
        help="start no trial after this long (running ones finish)",
    )
    p.add_argument(
        "--workers", type=clicheck.int_at_least(1), default=1, help="trials in parallel, one process each (default 1)"
    )
    p.add_argument("--seed", type=clicheck.int_at_least(0), default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--metric", choices=["logloss", "auc"], default="logloss", help="validation metric to optimise")
    p.add_argument(
        "--evals",
        type=clicheck.int_at_least(1),
        default=4,
        help="validation evaluations per trial, the last at its end; the pruner judges those between the first "
        "and the last (default 4)",
    )
    p.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    p.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="fixed zoo model hyper-parameter")
    p.add_argument(
        "--preset",
        choices=preset_names("train"),
        help="base training preset (nasrec/presets/train; default: a zoo model's default recipe)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="base training setting (repeatable)")
    add_device(p, "train the trials")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_tune(args: argparse.Namespace) -> int:
    from nasrec.tune.api import tune

    overrides = parse_sets(args.set)
    device_arg(args, overrides)
    res = tune(
        args.data,
        args.out,
        arch=args.arch,
        model=args.model,
        hparams=parse_sets(args.hparam),
        preset_name=args.preset,
        overrides=overrides,
        space=args.space,
        trials=args.trials,
        timeout=args.timeout,
        workers=args.workers,
        seed=args.seed,
        metric=args.metric,
        evals=args.evals,
        prune=not args.no_prune,
        # a zoo model given no --preset starts from its default recipe, as `nasrec train` would train it
        recipe="default" if args.model is not None and args.preset is None else None,
    )
    console.show(res, args.json, _tune_text)
    return 0


def _tune_text(r: dict) -> str:
    n = console.num
    counts = f"{r['trials']} trials ({r['complete']} complete, {r['pruned']} pruned, {r['failed']} failed)"
    lines = [f"tuned in {r['out']}: {counts} in {console.duration(r['seconds'])}"]
    best = r.get("best")
    if best is None:
        lines.append("  no trial completed: no recipe written")
        return "\n".join(lines)
    lines.append(f"  best: trial {best['trial']}, val log loss {n(best['val_logloss'])}   AUC {n(best['val_auc'])}")
    lines.append(
        "  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items())
    )
    lines.append(f"  recipe: {r['recipe']} (nasrec train --recipe)")
    return "\n".join(lines)


COMMANDS = {"tune": (_add_tune, _run_tune)}
