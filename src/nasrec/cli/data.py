"""Data commands: `nasrec prepare`, `nasrec cache verify` and `nasrec synth`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nasrec import clicheck, console
from nasrec.cli.common import JSON_HELP, NO_PROGRESS_HELP, add_max_bad_fraction, bars
from nasrec.errors import NasrecError


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="encode raw click logs into a columnar cache")
    p.add_argument("--format", required=True, choices=["criteo", "avazu", "kdd12", "schema"])
    p.add_argument("--schema", help="schema file (YAML or JSON) for --format schema")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="raw input file(s), read in order")
    p.add_argument("--out", required=True, metavar="DIR", help="cache directory to create")
    p.add_argument("--split", default="autoctr", choices=["autoctr", "autoctr-reference", "random", "sequential"])
    p.add_argument("--ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument(
        "--seed", type=clicheck.int_at_least(0), default=None, help="split seed (default 2018 for autoctr, else 0)"
    )
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--hash", dest="encoding", action="store_const", const="hash", help="modulo hashing (default)")
    enc.add_argument("--vocab", dest="encoding", action="store_const", const="vocab", help="train-split vocabulary")
    p.set_defaults(encoding="hash")
    p.add_argument(
        "--min-count",
        type=clicheck.int_at_least(1),
        default=1,
        help="vocabulary: keep ids seen at least N times in train",
    )
    p.add_argument(
        "--max-table-size", type=clicheck.int_at_least(1), default=None, help="cap every embedding table (e.g. 500000)"
    )
    p.add_argument("--dense", dest="dense_transform", choices=["log", "none", "standardize", "bucketize"])
    p.add_argument("--on-error", default="fail", choices=["fail", "skip"])
    add_max_bad_fraction(p)
    p.add_argument("--drop-id", action="store_true", help="avazu: drop the id column")
    p.add_argument("--time-features", action="store_true", help="avazu: add hour-of-day and weekday")
    p.add_argument("--kdd-profile", metavar="FILE", help="kdd12: userid_profile.txt")
    p.add_argument("--force", action="store_true", help="replace an existing cache")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_prepare(args: argparse.Namespace) -> int:
    from nasrec.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        inputs=tuple(args.input),
        out=args.out,
        format=args.format,
        schema=args.schema,
        split=args.split,
        ratios=tuple(args.ratios),
        seed=args.seed,
        encoding=args.encoding,
        min_count=args.min_count,
        max_table_size=args.max_table_size,
        on_error=args.on_error,
        max_bad_fraction=args.max_bad_fraction,
        dense_transform=args.dense_transform,
        drop_id=args.drop_id,
        time_features=args.time_features,
        kdd_profile=args.kdd_profile,
        force=args.force,
        progress=bars(args),
    )
    res = prepare(cfg)
    if args.json:
        console.out(console.to_json({k: v for k, v in vars(res).items() if k != "meta"}))
        return 0
    console.out(
        f"prepared {res.path}: {sum(res.rows.values()):,} rows in {res.seconds:.2f} s "
        f"({res.rows_per_s:,.0f} rows/s, peak memory {res.peak_rss_mb:,.0f} MB)"
    )
    for name, n in res.rows.items():
        console.out(f"  {name:<6} {n:>12,} rows   CTR {res.ctr[name]:.4f}")
    sizes = list(res.table_sizes.values())
    console.out(f"  {len(sizes)} categorical tables, {sum(sizes):,} rows in all (largest {max(sizes, default=0):,})")
    if "bayes_logloss" in res.meta:
        floor = ", ".join(f"{k} {v:.5f}" for k, v in res.meta["bayes_logloss"].items() if v is not None)
        console.out(f"  Bayes-optimal log loss: {floor}")
    if res.skipped:
        from nasrec.data.sources import shown_bad_rows

        read = res.meta["skipped"]["rows_read"]
        console.out(f"  skipped {res.skipped:,} bad rows of {read:,} read ({res.skipped / read:.2%}):")
        for line in shown_bad_rows(res.skipped, res.meta["skipped"]["examples"]):
            console.out(f"    {line}")
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="check a prepared cache")
    csub = p.add_subparsers(dest="cache_command", required=True)
    v = csub.add_parser(
        "verify",
        help="check every file of a cache: its checksum against meta.json (recorded by "
        "prepare), its structure, and its values (ids within the tables, ...)",
    )
    v.add_argument("dir", metavar="DIR", help="cache directory of `nasrec prepare`")
    v.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_cache(args: argparse.Namespace) -> int:
    from nasrec.data.integrity import VerifyFailed, failure_message, format_report, verify_cache

    report = verify_cache(args.dir)
    console.show(report.to_dict(), args.json, lambda _: format_report(report))
    if not report.ok:
        raise VerifyFailed(failure_message(report))
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic Criteo-format dataset with a known click model")
    p.add_argument("--rows", type=clicheck.int_at_least(1), required=True)
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument(
        "--seed",
        type=clicheck.int_at_least(0),
        default=None,
        help="seed of the rows (default 0; with --like, the file's row seed + 1, so new rows)",
    )
    p.add_argument(
        "--model-seed",
        type=clicheck.int_at_least(0),
        default=None,
        metavar="S",
        help="seed of the click model (default: --seed); files with the same configuration and model "
        "seed share one click model",
    )
    p.add_argument(
        "--like",
        metavar="FILE",
        help="new rows from the click model of FILE (a file written by nasrec synth, e.g. a demo's "
        "runs/demo/data/synthetic.tsv): its configuration and model seed",
    )
    p.add_argument("--num-dense", type=int, help="dense fields (default 13)")
    p.add_argument("--num-sparse", type=int, help="categorical fields (default 26)")
    p.add_argument(
        "--preset", choices=["criteo-like", "interactions"], help="a named configuration (default criteo-like)"
    )
    p.add_argument("--config", metavar="JSON", help="SynthConfig fields as a JSON file (flags above override it)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_synth(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from nasrec.data.synthetic import SynthConfig, generate_synthetic

    options: dict = {}
    if args.preset and args.config:
        raise NasrecError("synth: give --preset or --config, not both")
    if args.like:
        return _run_synth_like(args)
    if args.preset:
        from dataclasses import asdict

        from nasrec.data.synthetic import SYNTH_PRESETS

        options = asdict(SYNTH_PRESETS[args.preset])
    if args.config:
        try:
            with open(args.config) as fh:
                options = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise NasrecError(f"{args.config}: cannot read synth config ({e})") from None
        known = {f.name for f in fields(SynthConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise NasrecError(f"{args.config}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    if args.num_dense is not None:
        options["num_dense"] = args.num_dense
    if args.num_sparse is not None:
        options["num_sparse"] = args.num_sparse
    d = options.get("num_dense", 13)
    s = options.get("num_sparse", 26)
    # Shrink the planted-structure defaults to fit a small shape unless the config sets them.
    options.setdefault("num_dense_linear", min(4, d))
    options.setdefault("num_interactions", min(6, s * (s - 1) // 2))
    options.setdefault("num_gated", min(2, d * s))
    options.setdefault("negative_dense_field", 1 if d > 1 else None)
    cfg = SynthConfig(**options)
    seed = 0 if args.seed is None else args.seed
    res = generate_synthetic(args.out, rows=args.rows, seed=seed, config=cfg, model_seed=args.model_seed)
    _synth_written(args, cfg, res)
    return 0


def _run_synth_like(args: argparse.Namespace) -> int:
    """`synth --like FILE`: rows from FILE's click model (configuration and model seed), with a new row seed."""
    from nasrec.data.synthetic import click_model_of, generate_synthetic

    given = [
        flag
        for flag, v in (
            ("--preset", args.preset),
            ("--config", args.config),
            ("--num-dense", args.num_dense),
            ("--num-sparse", args.num_sparse),
            ("--model-seed", args.model_seed),
        )
        if v is not None
    ]
    if given:
        raise NasrecError(f"--like takes the click model from {args.like}; drop {', '.join(given)}")
    cfg, model_seed, row_seed = click_model_of(args.like)
    seed = row_seed + 1 if args.seed is None else args.seed
    res = generate_synthetic(args.out, rows=args.rows, seed=seed, config=cfg, model_seed=model_seed)
    _synth_written(args, cfg, res, prepare_hint=False)
    if args.json:
        return 0
    console.out(f"  click model of {args.like} (model seed {model_seed}), rows drawn with seed {seed}")
    if seed == row_seed:
        console.out(f"  note: {args.like} was drawn with the same row seed, so these rows repeat its first rows")
    console.out(f"  predict on it with: nasrec predict --model RUN --input {res.path} --out predictions.csv")
    return 0


def _synth_written(args: argparse.Namespace, cfg: Any, res: Any, prepare_hint: bool = True) -> None:
    """Write the schema beside a generated file and print what was written (cfg: SynthConfig, res: SynthResult)."""
    from nasrec.data.synthetic import synth_schema

    schema_path = f"{args.out}.schema.json"
    with open(schema_path, "w") as fh:
        json.dump(synth_schema(cfg).to_dict(), fh, indent=1)
    if args.json:
        fields = ("path", "rows", "positives", "ctr", "bayes_logloss", "expected_logloss", "seconds")
        console.out(console.to_json({**{k: getattr(res, k) for k in fields}, "schema": schema_path}))
        return
    console.out(
        f"wrote {res.path}: {res.rows:,} rows, CTR {res.ctr:.4f}, "
        f"Bayes-optimal log loss {res.bayes_logloss:.5f} ({res.seconds:.1f} s)"
    )
    if not prepare_hint:
        return
    if (cfg.num_dense, cfg.num_sparse) == (13, 26):
        console.out(f"  prepare it with: nasrec prepare --format criteo --input {res.path} --out DIR")
    else:
        console.out(
            f"  prepare it with: nasrec prepare --format schema --schema {schema_path} --input {res.path} --out DIR"
        )


COMMANDS = {
    "prepare": (_add_prepare, _run_prepare),
    "synth": (_add_synth, _run_synth),
    "cache": (_add_cache, _run_cache),
}
