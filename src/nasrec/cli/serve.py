"""Serving commands: `nasrec predict` and `nasrec export`."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import JSON_HELP, add_device, add_max_bad_fraction, device_arg


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


COMMANDS = {
    "predict": (_add_predict, _run_predict),
    "export": (_add_export, _run_export),
}
