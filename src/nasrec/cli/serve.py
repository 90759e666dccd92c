"""Serving commands: `nasrec predict`, `nasrec export` and `nasrec latency`."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import JSON_HELP, add_device, add_max_bad_fraction, device_arg
from nasrec.errors import NasrecError


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="click probabilities for raw input files from a trained model")
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `nasrec train`")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="raw rows in the training format")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    p.add_argument("--data", metavar="DIR", help="cache whose encoder to use (default: the model's own)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="malformed rows: stop, or skip them")
    add_max_bad_fraction(p)
    add_device(p, "run the model")
    p.add_argument(
        "--no-drift-check",
        dest="drift_check",
        action="store_false",
        help="skip the per-field share of values unseen in training (it reads the cache's train ids "
        "once: about 2 s per million rows)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_predict(args: argparse.Namespace) -> int:
    from nasrec.predict import predict

    device = device_arg(args)
    res = predict(
        args.model,
        args.input,
        args.out,
        data=args.data,
        checkpoint=args.checkpoint,
        on_error=args.on_error,
        device=device,
        max_bad_fraction=args.max_bad_fraction,
        drift_check=args.drift_check,
    )
    console.show({k: v for k, v in res.items() if k != "skipped_examples"}, args.json, _predict_text)
    if res["skipped"]:
        from nasrec.data.sources import shown_bad_rows

        for line in shown_bad_rows(res["skipped"], res["skipped_examples"]):
            console.note(f"skipped {line}")
    return 0


def _predict_text(r: dict) -> str:
    skipped = f" (skipped {r['skipped']:,} bad rows)" if r.get("skipped") else ""
    text = f"wrote {r['out']}: probabilities for {r['rows']:,} rows{skipped}"
    if r.get("logloss") is not None:
        text += f"\n  on the rows' labels: log loss {console.num(r['logloss'])}, AUC {console.num(r.get('auc'))}"
    fields = (r.get("unseen") or {}).get("fields") or {}
    shares = {n: f for n, f in fields.items() if f["share"] is not None}
    if shares:
        worst = max(shares, key=lambda n: shares[n]["share"])
        split = r["unseen"]["reference_split"] or "reference"
        ref = shares[worst]["reference"] or 0.0
        if shares[worst]["share"] == 0:
            text += "\n  categorical values unseen in training: none"
        else:
            text += (
                f"\n  categorical values unseen in training: at most {shares[worst]['share']:.1%} per field "
                f"({worst}; {split} split {ref:.1%})"
            )
    if r.get("warning"):
        text += f"\n  warning: {r['warning']}"
    return text


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained model for serving (TorchScript or ONNX) with its encoder")
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `nasrec train`")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--out", required=True, metavar="FILE", help="model file (e.g. model.pt or model.onnx)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--data", metavar="DIR", help="cache whose encoder to write and test rows to verify on")
    p.add_argument(
        "--verify-rows",
        type=clicheck.int_at_least(0),
        default=65_536,
        metavar="N",
        help="test rows to compare (0: skip)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_export(args: argparse.Namespace) -> int:
    from nasrec.export import export_model

    res = export_model(
        args.model, args.out, args.format, checkpoint=args.checkpoint, data=args.data, verify_rows=args.verify_rows
    )
    if args.json:
        console.out(console.to_json(res))
        return 0
    console.out(f"exported {args.model} as {res['format']}:")
    for f in res["files"]:
        console.out(f"  {f}")
    if res["passed"] is None:
        console.out("  not verified (no rows compared)")
    else:
        console.out(
            f"  verified on {res['verified_rows']:,} {res['split']} rows: max |exported - PyTorch| = "
            f"{res['max_abs_diff']:.3g}"
        )
    return 0


def _add_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="serving latency of a model on this machine (onnxruntime or TorchScript)")
    lsub = p.add_subparsers(dest="latency_command", required=True, metavar="{measure,profile,predict}")
    m = lsub.add_parser("measure", help="export a model and time it call by call at each batch size and thread count")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="DIR", help="run directory of `nasrec train`")
    what.add_argument("--arch", metavar="FILE.json", help="nasrec architecture, timed at --data's shape")
    what.add_argument(
        "--zoo", metavar="NAME", help="zoo model with its default recipe's hyper-parameters, at --data's shape"
    )
    m.add_argument("--data", metavar="DIR", help="prepared cache: the fields and table sizes for --arch / --zoo")
    _add_timing(m)
    m.add_argument("--out", metavar="FILE.json", help="also write the result here")
    m.add_argument("--json", action="store_true", help=JSON_HELP)
    _add_latency_profile(lsub)
    _add_latency_predict(lsub)


def _add_timing(p: argparse.ArgumentParser) -> None:
    """The serving runtime, the batch sizes and thread counts, and the protocol's warm-up and timed calls."""
    p.add_argument("--runtime", choices=["onnxruntime", "torchscript"], default="onnxruntime")
    p.add_argument("--batch", type=clicheck.int_at_least(1), nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--threads", type=clicheck.int_at_least(1), nargs="+", default=[1], help="thread counts (default 1)")
    p.add_argument("--warmup", type=clicheck.int_at_least(0), default=50, help="untimed calls first (default 50)")
    p.add_argument("--reps", type=clicheck.int_at_least(1), default=300, help="timed calls (default 300)")


def _add_shape(p: argparse.ArgumentParser, required: bool) -> None:
    shape = p.add_mutually_exclusive_group(required=required)
    shape.add_argument("--data", metavar="DIR", help="prepared cache: its fields and table sizes")
    shape.add_argument(
        "--shape", metavar="criteo|D,S", help="a data shape without a cache: criteo, or D dense and S sparse fields"
    )


def _add_latency_profile(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser(
        "profile",
        help="measure a latency table: each operator and block part a space's models run, on this machine",
    )
    p.add_argument("--space", required=True, help="small, full, full+ or a space file")
    p.add_argument(
        "--embedding-dim",
        type=clicheck.int_at_least(1),
        metavar="N",
        help="the tokens' width of the space's models (default: the space's, 16 for the built-in ones; as the "
        "supernet's --embedding-dim)",
    )
    _add_shape(p, required=True)
    _add_timing(p)
    p.add_argument(
        "--calibration",
        type=clicheck.int_at_least(3),
        default=10,
        metavar="N",
        help="architectures timed end to end to fit the per-model overhead (default 10)",
    )
    p.add_argument(
        "--fit",
        choices=["auto", "overhead", "scaled", "params"],
        default="auto",
        help="overhead: intercept + cost per head input; scaled: also a scale on the table's sum; params: also a "
        "cost per million weights; auto (default): the one of least leave-one-out error on the calibration models",
    )
    p.add_argument("--layernorm", action="store_true", help="models with layer norms (as their recipe trains them)")
    p.add_argument("--force", action="store_true", help="resume a table made for another use anyway")
    p.add_argument("--out", required=True, metavar="TABLE.json", help="the table (resumed if it exists)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_latency_predict(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("predict", help="an architecture's latency predicted from a latency table")
    p.add_argument("--table", required=True, metavar="TABLE.json", help="from `nasrec latency profile`")
    p.add_argument("--arch", metavar="FILE.json", help="nasrec architecture (else --seed draws one of --space)")
    p.add_argument("--space", help="the space (default: the table's)")
    p.add_argument("--seed", type=int, help="draw the architecture of --space with this seed")
    p.add_argument("--strategy", default="uniform", help="sampling strategy for --seed (default uniform)")
    _add_shape(p, required=False)
    p.add_argument("--runtime", choices=["onnxruntime", "torchscript"], default="onnxruntime")
    p.add_argument("--batch", type=clicheck.int_at_least(1), default=1)
    p.add_argument("--threads", type=clicheck.int_at_least(1), default=1)
    p.add_argument("--layernorm", action="store_true", help="models with layer norms")
    p.add_argument("--force", action="store_true", help="use a table of another machine, space or shape anyway")
    p.add_argument("--measure", action="store_true", help="also export the model and time it end to end")
    p.add_argument("--warmup", type=clicheck.int_at_least(0), default=50)
    p.add_argument("--reps", type=clicheck.int_at_least(1), default=300)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _shape(args: argparse.Namespace) -> tuple[int, list[int], str] | None:
    """(dense fields, table sizes, what) of --data or --shape, or None where neither is given."""
    if args.data is not None:
        from nasrec.data.cache import open_cache

        cache = open_cache(args.data)
        return len(cache.dense_fields), list(cache.table_sizes), str(args.data)
    if args.shape is None:
        return None
    if args.shape == "criteo":
        from nasrec.data.formats import CRITEO_TABLE_SIZES

        # latency does not depend on a table's row count; capped so that a model builds quickly
        return 13, [min(n, 100_000) for n in CRITEO_TABLE_SIZES], "criteo"
    try:
        dense, sparse = (int(v) for v in args.shape.split(","))
    except ValueError:
        raise NasrecError(f"--shape {args.shape!r}: expected criteo or D,S (dense and sparse field counts)") from None
    if dense < 0 or sparse < 1:
        raise NasrecError(f"--shape {args.shape!r}: need D >= 0 dense and S >= 1 sparse fields")
    return dense, [1_000] * sparse, args.shape


def _run_latency_profile(args: argparse.Namespace) -> int:
    from nasrec.export.latency_table import profile_table
    from nasrec.space.space import get_space

    num_dense, sizes, what = _shape(args)  # type: ignore[misc]  # --data or --shape is required
    table = profile_table(
        get_space(args.space).at_embedding_dim(args.embedding_dim),
        num_dense,
        sizes,
        args.out,
        runtime=args.runtime,
        batches=args.batch,
        threads=args.threads,
        warmup=args.warmup,
        reps=args.reps,
        layernorm=args.layernorm,
        calibration=args.calibration,
        fit_form=args.fit,
        force=args.force,
    )
    res = {
        "table": args.out,
        "space": table["space"]["name"],
        "shape": what,
        "machine": table["machine"],
        "runtime": table["runtime"],
        "settings": {
            k: {"entries": len(v["entries"]), "calibration": len(v["calibration"]), "fit": v.get("fit")}
            for k, v in table["settings"].items()
        },
    }
    console.show(res, args.json, _profile_text)
    return 0


def _profile_text(r: dict) -> str:
    m = r["machine"]
    lines = [f"wrote {r['table']}: latency table of space {r['space']!r} at {r['shape']} on {m['cpu']} "
             f"({m['cpu_capability']}), {r['runtime']}"]  # fmt: skip
    for name, s in r["settings"].items():
        fit = s["fit"] or {}
        lines.append(
            f"  {name}: {s['entries']} entries, overhead fitted on {s['calibration']} architectures: "
            f"{fit.get('intercept_ms', float('nan')):.4f} ms + {fit.get('head_ms_per_input', float('nan')) * 1e3:.3f} us "
            f"per head input, scale {fit.get('scale', 1.0):.3f}"
        )
    return "\n".join(lines)


def _run_latency_predict(args: argparse.Namespace) -> int:
    from nasrec.latency.model import load_latency_model, read_table
    from nasrec.space.arch import Architecture
    from nasrec.space.space import SearchSpace, get_space, sample_architecture

    table = read_table(args.table)
    space = get_space(args.space) if args.space else SearchSpace.from_dict(table["space"], source=args.table)
    if (args.arch is None) == (args.seed is None):
        raise NasrecError("latency predict needs --arch FILE or --seed N (an architecture of --space)")
    arch = Architecture.load(args.arch) if args.arch else sample_architecture(space, args.seed, args.strategy)
    if not args.force:
        space.check(arch)  # the table prices only the operators and widths of its space
    shape = _shape(args)
    if shape is None:  # the table's own shape: nothing to compare against, so nothing can differ
        num_dense, num_sparse = table["shape"]["num_dense"], table["shape"]["num_sparse"]
        sizes, what = [1_000] * num_sparse, "the table's shape"
    else:
        num_dense, sizes, what = shape
        num_sparse = len(sizes)
    model = load_latency_model(
        args.table,
        space,
        num_dense,
        num_sparse,
        runtime=args.runtime,
        batch=args.batch,
        threads=args.threads,
        layernorm=args.layernorm,
        force=args.force,
    )
    res: dict = {
        "arch": args.arch or f"{space.name} seed {args.seed} ({args.strategy})",
        "shape": what,
        "runtime": args.runtime,
        "batch": args.batch,
        "threads": args.threads,
        "predicted_ms": round(model.predict(arch), 5),
        "warnings": model.warnings,
    }
    if args.measure:
        from nasrec.export.latency import measure_model_latency
        from nasrec.model.subnet import Subnet

        m = measure_model_latency(
            Subnet(arch, num_dense, sizes, layernorm=args.layernorm),
            num_dense,
            sizes,
            runtime=args.runtime,
            batches=(args.batch,),
            threads=(args.threads,),
            warmup=args.warmup,
            reps=args.reps,
        )
        res["measured_ms"] = m["results"][0]["p50_ms"]
        res["relative_error"] = round((res["predicted_ms"] - res["measured_ms"]) / res["measured_ms"], 4)
    console.show(res, args.json, _predict_latency_text)
    return 0


def _predict_latency_text(r: dict) -> str:
    text = f"{r['arch']}: predicted {r['predicted_ms']:.4f} ms ({r['runtime']}, batch {r['batch']}, {r['threads']} thread(s))"
    if "measured_ms" in r:
        text += f"\n  measured {r['measured_ms']:.4f} ms: prediction off by {r['relative_error']:+.1%}"
    for w in r["warnings"]:
        text += f"\n  warning: {w}"
    return text


def _run_latency(args: argparse.Namespace) -> int:
    from nasrec.export.latency import measure_model_latency, measure_run_latency

    if args.latency_command == "profile":
        return _run_latency_profile(args)
    if args.latency_command == "predict":
        return _run_latency_predict(args)

    options = dict(runtime=args.runtime, batches=args.batch, threads=args.threads, warmup=args.warmup, reps=args.reps)
    if args.model is not None:
        if args.data is not None:
            raise NasrecError("--data goes with --arch or --zoo; a run directory knows its data shape")
        res = measure_run_latency(args.model, **options)
    else:
        if args.data is None:
            raise NasrecError(f"--{'arch' if args.arch else 'zoo'} needs --data DIR (the fields and table sizes)")
        model, num_dense, sizes, what = _model_at_shape(args)
        res = {"model": what, **measure_model_latency(model, num_dense, sizes, **options)}
    if args.out:
        from nasrec.rundir import atomic_write_json

        atomic_write_json(args.out, res)
    console.show(res, args.json, _latency_text)
    return 0


def _model_at_shape(args: argparse.Namespace) -> tuple[object, int, list[int], str]:
    """The --arch or --zoo model built at --data's shape (untrained: latency does not depend on the weights)."""
    from nasrec.data.cache import open_cache

    cache = open_cache(args.data)
    num_dense, sizes = len(cache.dense_fields), list(cache.table_sizes)
    if args.arch is not None:
        from nasrec.model.subnet import Subnet
        from nasrec.space.arch import Architecture

        return Subnet(Architecture.load(args.arch), num_dense, sizes), num_dense, sizes, args.arch
    from nasrec.train.evaluation import train_size
    from nasrec.train.recipe import apply_recipe
    from nasrec.zoo.registry import build_zoo_model

    hparams, _, _ = apply_recipe("default", args.zoo, None, None, None, *train_size(cache))
    return build_zoo_model(args.zoo, num_dense, sizes, **hparams), num_dense, sizes, f"{args.zoo} (default recipe)"


def _latency_text(r: dict) -> str:
    m = r["machine"]
    lines = [f"{r['model']} on {m['cpu']} ({m['cpu_capability']}), {r['reps']} timed calls after {r['warmup']}:"]
    for x in r["results"]:
        lines.append(
            f"  {x['runtime']}, batch {x['batch']:,}, {x['threads']} thread(s): p50 {x['p50_ms']:.4f} ms, "
            f"p99 {x['p99_ms']:.4f} ms, mean {x['mean_ms']:.4f} ms"
        )
    return "\n".join(lines)


COMMANDS = {
    "predict": (_add_predict, _run_predict),
    "export": (_add_export, _run_export),
    "latency": (_add_latency, _run_latency),
}
