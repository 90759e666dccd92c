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
    lsub = p.add_subparsers(dest="latency_command", required=True, metavar="{measure}")
    m = lsub.add_parser("measure", help="export a model and time it call by call at each batch size and thread count")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="DIR", help="run directory of `nasrec train`")
    what.add_argument("--arch", metavar="FILE.json", help="nasrec architecture, timed at --data's shape")
    what.add_argument(
        "--zoo", metavar="NAME", help="zoo model with its default recipe's hyper-parameters, at --data's shape"
    )
    m.add_argument("--data", metavar="DIR", help="prepared cache: the fields and table sizes for --arch / --zoo")
    m.add_argument("--runtime", choices=["onnxruntime", "torchscript"], default="onnxruntime")
    m.add_argument("--batch", type=clicheck.int_at_least(1), nargs="+", default=[1], help="batch sizes (default 1)")
    m.add_argument("--threads", type=clicheck.int_at_least(1), nargs="+", default=[1], help="thread counts (default 1)")
    m.add_argument("--warmup", type=clicheck.int_at_least(0), default=50, help="untimed calls first (default 50)")
    m.add_argument("--reps", type=clicheck.int_at_least(1), default=300, help="timed calls (default 300)")
    m.add_argument("--out", metavar="FILE.json", help="also write the result here")
    m.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_latency(args: argparse.Namespace) -> int:
    from nasrec.export.latency import measure_model_latency, measure_run_latency

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
