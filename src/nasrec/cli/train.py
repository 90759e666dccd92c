"""Training commands: `nasrec train`, `supernet`, `evaluate` and `compare`."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import (
    JSON_HELP,
    NO_PROGRESS_HELP,
    add_device,
    add_embeddings,
    add_latency_caps,
    bars,
    device_arg,
    embeddings_arg,
    latency_overrides,
    parse_sets,
)
from nasrec.configfile import preset_names
from nasrec.errors import NasrecError


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--preset", choices=preset_names("train"), help="training preset (nasrec/presets/train)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training setting (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_device(p, "train", resumable=True)
    add_embeddings(p)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an architecture or a zoo baseline from scratch")
    # --recipe alone names the model too
    what = p.add_mutually_exclusive_group()
    what.add_argument("--arch", metavar="FILE.json", help="nasrec architecture (canonical or NASRec JSON)")
    what.add_argument(
        "--model",
        metavar="NAME",
        help="zoo baseline: lr, fm, dnn, dlrm, deepfm, dcnv2, autoint+, xdeepfm, wdl, ipnn, dcn, finalmlp",
    )
    p.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="zoo model hyper-parameter (repeatable)")
    p.add_argument(
        "--recipe",
        metavar="FILE.yaml",
        help="model, hyper-parameters and training settings (best_recipe.yaml of `nasrec tune`); "
        "--arch/--model must be its model, --hparam and --set override it",
    )
    _add_train_options(p)


def _print_final(res: dict, args: argparse.Namespace) -> None:
    from nasrec.distributed import is_main

    if not is_main():  # under torchrun every rank returns the result; one prints it
        return
    keys = ("logloss", "auc", "mflops", "params", "samples_per_s", "steps")
    console.show({"out": args.out, **{k: res.get(k) for k in keys}}, args.json, lambda _: _train_text(res, args))


def _train_text(res: dict, args: argparse.Namespace) -> str:
    from nasrec.rundir import RunMetrics

    r = RunMetrics.from_dict(res)
    what = "supernet" if args.command == "supernet" else "model"
    stop = ", early stopped" if r.early_stopped else ""
    best = f", weights of step {r.best_step:,} (best validation)" if r.weights == "best" else ""
    lines = [
        f"trained {what} in {args.out}: {r.steps or 0:,} steps{stop} in "
        f"{console.duration(r.train_seconds or 0.0)} ({r.samples_per_s or 0:,.0f} samples/s){best}"
    ]
    for split in ("val", "test"):
        if res.get(split):
            m = r.split(split)
            lines.append(f"  {split:<5} log loss {console.num(m.logloss)}   AUC {console.num(m.auc)}")
    if args.command == "supernet":
        lines.append("  (a supernet's metrics are the mean over fixed sampled paths)")
    cost = [f"{console.mflops(r.mflops)} MFLOPs"] if r.mflops is not None else []
    cost += [f"{r.params:,} parameters"] if r.params is not None else []
    if cost:
        lines.append(f"  model: {', '.join(cost)}")
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    from nasrec.train.api import train

    overrides = parse_sets(args.set)
    device_arg(args, overrides)
    embeddings_arg(args, overrides)
    hparams = parse_sets(args.hparam)
    if args.recipe is not None:
        args.arch, args.model, hparams, overrides = _with_recipe(args, hparams, overrides)
    elif args.arch is None and args.model is None:
        raise NasrecError("give one of --arch FILE.json, --model NAME or --recipe FILE.yaml")
    # a zoo model given no --preset or --recipe trains with its default recipe (nasrec/presets/recipes)
    default = args.model is not None and args.recipe is None and args.preset is None
    res = train(
        args.data,
        args.out,
        arch=args.arch,
        model=args.model,
        hparams=hparams,
        preset_name=args.preset,
        overrides=overrides,
        resume=args.resume,
        progress=bars(args),
        recipe="default" if default else None,
    )
    _print_final(res, args)
    return 0


def _with_recipe(args: argparse.Namespace, hparams: dict, overrides: dict) -> tuple:
    """(arch, model, hparams, overrides) of a run with --recipe: the command line's options over the recipe's."""
    from nasrec.data.cache import open_cache
    from nasrec.train.evaluation import train_size
    from nasrec.train.recipe import merged, read_recipe, recipe_model

    if args.preset is not None:
        raise NasrecError("give --recipe or --preset, not both (a recipe holds every training setting)")
    recipe = read_recipe(args.recipe)
    arch, model = recipe_model(args.recipe, recipe, args.arch, args.model)
    size = train_size(open_cache(args.data)) if recipe.small_data is not None else (None, None)
    return arch, model, *merged(recipe, hparams, overrides, *size)


def _add_supernet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supernet", help="train a weight-sharing supernet over a search space")
    p.add_argument("--space", default="full", help="small, full, full+, or a space file (YAML/JSON)")
    p.add_argument(
        "--embedding-dim",
        type=int,
        metavar="N",
        help="every token's width, the embedding tables' included (default: the space's, 16 for the built-in ones)",
    )
    p.add_argument(
        "--max-mflops",
        metavar="X|MODEL",
        help="after the warm-up, train only paths of at most X MFLOPs (the search's cap), or of at "
        "most a zoo model's MFLOPs on this data (e.g. dcnv2); paths count as models without layer "
        "norms unless --set path_count_layernorm=true (as a cpu-quick final model has them)",
    )
    add_latency_caps(p)
    p.add_argument(
        "--semantics",
        choices=["slice", "mask"],
        default="slice",
        help="slice: nasrec's sliced weights (a path costs what it computes); mask: the reference's "
        "full-width operators with masks, to measure what slicing changes (slower)",
    )
    _add_train_options(p)


def _run_supernet(args: argparse.Namespace) -> int:
    from nasrec.train.api import train_supernet

    overrides = parse_sets(args.set)
    device_arg(args, overrides)
    embeddings_arg(args, overrides)
    if args.max_mflops is not None:
        overrides["path_max_mflops"] = args.max_mflops
    latency_overrides(args, overrides)
    if "max_latency_ms" in overrides:  # a supernet's cap is on the paths it trains
        overrides["path_max_latency_ms"] = overrides.pop("max_latency_ms")
    if "path_max_latency_ms" in overrides:  # a zoo model's name: its latency timed here (or the resumed run's)
        from nasrec.export.latency_caps import supernet_latency_cap

        overrides = supernet_latency_cap(overrides, args.data, args.out, args.resume)
    res = train_supernet(
        args.data,
        args.out,
        space=args.space,
        preset_name=args.preset,
        overrides=overrides,
        resume=args.resume,
        semantics=args.semantics,
        embedding_dim=args.embedding_dim,
        progress=bars(args),
    )
    _print_final(res, args)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="log loss and AUC of a trained model on a split")
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `nasrec train`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    add_device(p, "evaluate")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_evaluate(args: argparse.Namespace) -> int:
    from nasrec.train.api import evaluate_run

    device = device_arg(args)
    res = evaluate_run(args.model, args.data, args.split, args.checkpoint, device=device)
    console.show(res, args.json, lambda r: _evaluate_text(r, args))
    return 0


def _evaluate_text(r: dict, args: argparse.Namespace) -> str:
    n = console.num
    lines = [
        f"{args.model} ({args.checkpoint} weights) on the {r['split']} split of {args.data}, "
        f"{int(r.get('count') or 0):,} rows:",
        f"  log loss {n(r.get('logloss'))}   AUC {n(r.get('auc'))}   calibration {n(r.get('calibration'), 3)} "
        f"(mean prediction {n(r.get('mean_pred'), 4)}, CTR {n(r.get('ctr'), 4)})",
    ]
    if r.get("mflops") is not None:
        lines.append(f"  model: {console.mflops(r['mflops'])} MFLOPs, {r.get('params') or 0:,} parameters")
    return "\n".join(lines)


def _add_unshard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unshard", help="merge a TorchRec-sharded run's table shards into a run directory with whole tables"
    )
    p.add_argument("run", metavar="RUN", help="run directory of a sharded `nasrec train` (torchrun, --sharding)")
    p.add_argument("--out", required=True, metavar="DIR", help="new run directory (evaluate, predict, export take it)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_unshard(args: argparse.Namespace) -> int:
    from nasrec.backend.shardfiles import unshard

    written = unshard(args.run, args.out)
    res = {"run": args.run, "out": args.out, "files": written}
    console.show(res, args.json, lambda r: f"wrote {args.out} with whole tables: {', '.join(written)}")
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="two trained models on the same rows: log loss and AUC differences with "
        "intervals (paired per-row differences; DeLong's test)",
    )
    p.add_argument("runs", nargs=2, metavar="RUN", help="run directories of `nasrec train` (a, then b)")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument(
        "--level", type=clicheck.fraction, default=0.95, help="confidence level of the intervals (default 0.95)"
    )
    add_device(p, "evaluate")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_compare(args: argparse.Namespace) -> int:
    from nasrec.train.api import compare_runs

    device = device_arg(args)
    res = compare_runs(*args.runs, args.data, args.split, args.checkpoint, args.level, device=device)
    console.show(res, args.json, _compare_text)
    return 0


def _compare_text(r: dict) -> str:
    n = console.num
    ll, auc = r["logloss"], r["auc"]
    level = f"{100 * ll.get('level', 0.95):g}%"
    lines = [
        f"a: {r['a']}",
        f"b: {r['b']}",
        f"{r['split']} split, {ll.get('rows', 0):,} rows; a minus b with {level} intervals:",
    ]
    for name, m, key in (("log loss", ll, "logloss"), ("AUC", auc, "auc")):
        interval = f"[{n(m.get('low'))}, {n(m.get('high'))}]" if m.get("low") is not None else "[n/a]"
        diff = m.get("diff")
        sign = "+" if isinstance(diff, float) and diff >= 0 else ""
        verdict = m.get("verdict")
        said = f"a is {verdict}" if verdict in ("better", "worse") else verdict
        lines.append(
            f"  {name:<8} a {n(m.get(key + '_a'))}  b {n(m.get(key + '_b'))}  a-b {sign}{n(diff)} "
            f"{interval}  p {n(m.get('p'), 3)}: {said}"
        )
    return "\n".join(lines)


COMMANDS = {
    "train": (_add_train, _run_train),
    "supernet": (_add_supernet, _run_supernet),
    "evaluate": (_add_evaluate, _run_evaluate),
    "compare": (_add_compare, _run_compare),
    "unshard": (_add_unshard, _run_unshard),
}
