"""The `nasrec` command line: one subcommand per pipeline stage, mirroring the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from nasrec import __version__, clicheck, console
from nasrec.errors import NasrecError

NO_PROGRESS_HELP = "no progress bars: log lines instead (bars are shown only when stderr is a terminal)"
JSON_HELP = "print the result as one JSON object on stdout (the log stays on stderr)"


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
    p.add_argument("--min-count", type=clicheck.int_at_least(1), default=1,
                   help="vocabulary: keep ids seen at least N times in train")  # fmt: skip
    p.add_argument("--max-table-size", type=clicheck.int_at_least(1), default=None,
                   help="cap every embedding table (e.g. 500000)")  # fmt: skip
    p.add_argument("--dense", dest="dense_transform", choices=["log", "none", "standardize", "bucketize"])
    p.add_argument("--on-error", default="fail", choices=["fail", "skip"])
    _add_max_bad_fraction(p)
    p.add_argument("--drop-id", action="store_true", help="avazu: drop the id column")
    p.add_argument("--time-features", action="store_true", help="avazu: add hour-of-day and weekday")
    p.add_argument("--kdd-profile", metavar="FILE", help="kdd12: userid_profile.txt")
    p.add_argument("--force", action="store_true", help="replace an existing cache")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_prepare(args: argparse.Namespace) -> int:
    from nasrec.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        inputs=tuple(args.input), out=args.out, format=args.format, schema=args.schema, split=args.split,
        ratios=tuple(args.ratios), seed=args.seed, encoding=args.encoding, min_count=args.min_count,
        max_table_size=args.max_table_size, on_error=args.on_error, max_bad_fraction=args.max_bad_fraction,
        dense_transform=args.dense_transform,
        drop_id=args.drop_id, time_features=args.time_features, kdd_profile=args.kdd_profile, force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip
    res = prepare(cfg)
    if args.json:
        print(console.to_json({k: v for k, v in vars(res).items() if k != "meta"}))
        return 0
    print(f"prepared {res.path}: {sum(res.rows.values()):,} rows in {res.seconds:.2f} s "
          f"({res.rows_per_s:,.0f} rows/s, peak memory {res.peak_rss_mb:,.0f} MB)")  # fmt: skip
    for name, n in res.rows.items():
        print(f"  {name:<6} {n:>12,} rows   CTR {res.ctr[name]:.4f}")
    sizes = list(res.table_sizes.values())
    print(f"  {len(sizes)} categorical tables, {sum(sizes):,} rows in all (largest {max(sizes, default=0):,})")
    if "bayes_logloss" in res.meta:
        floor = ", ".join(f"{k} {v:.5f}" for k, v in res.meta["bayes_logloss"].items() if v is not None)
        print(f"  Bayes-optimal log loss: {floor}")
    if res.skipped:
        from nasrec.data.sources import shown_bad_rows

        read = res.meta["skipped"]["rows_read"]
        print(f"  skipped {res.skipped:,} bad rows of {read:,} read ({res.skipped / read:.2%}):")
        for line in shown_bad_rows(res.skipped, res.meta["skipped"]["examples"]):
            print(f"    {line}")
    return 0


def _add_max_bad_fraction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                   help="with --on-error skip: fail all the same when more than this share of the rows read is "
                        "malformed (default 0.01; 1 accepts any share)")  # fmt: skip


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="check a prepared cache")
    csub = p.add_subparsers(dest="cache_command", required=True)
    v = csub.add_parser("verify", help="check every file of a cache: its checksum against meta.json (recorded by "
                                       "prepare), its structure, and its values (ids within the tables, ...)")  # fmt: skip
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
    p.add_argument("--seed", type=clicheck.int_at_least(0), default=None,
                   help="seed of the rows (default 0; with --like, the file's row seed + 1, so new rows)")  # fmt: skip
    p.add_argument("--model-seed", type=clicheck.int_at_least(0), default=None, metavar="S",
                   help="seed of the click model (default: --seed); files with the same configuration and model "
                        "seed share one click model")  # fmt: skip
    p.add_argument("--like", metavar="FILE",
                   help="new rows from the click model of FILE (a file written by nasrec synth, e.g. a demo's "
                        "runs/demo/data/synthetic.tsv): its configuration and model seed")  # fmt: skip
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

    given = [flag for flag, v in (("--preset", args.preset), ("--config", args.config), ("--num-dense", args.num_dense),
                                  ("--num-sparse", args.num_sparse), ("--model-seed", args.model_seed)) if v is not None]  # fmt: skip
    if given:
        raise NasrecError(f"--like takes the click model from {args.like}; drop {', '.join(given)}")
    cfg, model_seed, row_seed = click_model_of(args.like)
    seed = row_seed + 1 if args.seed is None else args.seed
    res = generate_synthetic(args.out, rows=args.rows, seed=seed, config=cfg, model_seed=model_seed)
    _synth_written(args, cfg, res, prepare_hint=False)
    if args.json:
        return 0
    print(f"  click model of {args.like} (model seed {model_seed}), rows drawn with seed {seed}")
    if seed == row_seed:
        print(f"  note: {args.like} was drawn with the same row seed, so these rows repeat its first rows")
    print(f"  predict on it with: nasrec predict --model RUN --input {res.path} --out predictions.csv")
    return 0


def _synth_written(args: argparse.Namespace, cfg: Any, res: Any, prepare_hint: bool = True) -> None:
    """Write the schema beside a generated file and print what was written (cfg: SynthConfig, res: SynthResult)."""
    from nasrec.data.synthetic import synth_schema

    schema_path = f"{args.out}.schema.json"
    with open(schema_path, "w") as fh:
        json.dump(synth_schema(cfg).to_dict(), fh, indent=1)
    if args.json:
        fields = ("path", "rows", "positives", "ctr", "bayes_logloss", "expected_logloss", "seconds")
        print(console.to_json({**{k: getattr(res, k) for k in fields}, "schema": schema_path}))
        return
    print(f"wrote {res.path}: {res.rows:,} rows, CTR {res.ctr:.4f}, "
          f"Bayes-optimal log loss {res.bayes_logloss:.5f} ({res.seconds:.1f} s)")  # fmt: skip
    if not prepare_hint:
        return
    if (cfg.num_dense, cfg.num_sparse) == (13, 26):
        print(f"  prepare it with: nasrec prepare --format criteo --input {res.path} --out DIR")
    else:
        print(f"  prepare it with: nasrec prepare --format schema --schema {schema_path} --input {res.path} --out DIR")


ARCH_DATASETS = ("criteo", "avazu", "kdd12")


def _add_arch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arch", help="inspect, sample and draw architectures")
    asub = p.add_subparsers(dest="arch_command", required=True, metavar="{info,sample,draw}")
    info = asub.add_parser("info", help="FLOPs, parameters and dead blocks of an architecture")
    info.add_argument("file", metavar="FILE.json", help="architecture (canonical or NASRec reference JSON)")
    src = info.add_mutually_exclusive_group()
    src.add_argument("--cache", metavar="DIR", help="take field counts and table sizes from a prepared cache")
    src.add_argument("--dataset", choices=ARCH_DATASETS, help="built-in table sizes (default criteo)")
    info.add_argument("--layernorm", action="store_true", help="count the layer norms of supernet training")
    info.add_argument("--json", action="store_true", help=JSON_HELP)
    sample = asub.add_parser("sample", help="draw a random architecture from a search space")
    sample.add_argument("--space", required=True, metavar="small|full|FILE", help="built-in space or space file")
    sample.add_argument("--seed", type=clicheck.int_at_least(0), required=True)
    sample.add_argument(
        "--strategy", default="default", choices=["default", "single-path", "any-path", "full-path", "uniform"]
    )
    sample.add_argument("--out", metavar="FILE", help="write the JSON here instead of printing it")
    draw = asub.add_parser("draw", help="render an architecture as text, Graphviz DOT or Mermaid")
    draw.add_argument("file", metavar="FILE.json")
    draw.add_argument("--format", default="text", choices=["text", "dot", "mermaid"])
    draw.add_argument("--out", metavar="FILE", help="write the drawing here instead of printing it")


def _arch_shape(args: argparse.Namespace) -> dict:
    """Field counts and table sizes of the dataset an architecture is costed for."""
    if args.cache:
        from nasrec.data.cache import open_cache

        cache = open_cache(args.cache)
        return {"num_dense": len(cache.dense_fields), "num_sparse": len(cache.sparse_fields),
                "table_sizes": cache.table_sizes}  # fmt: skip
    from nasrec.data.formats import AVAZU_TABLE_SIZES, CRITEO_TABLE_SIZES, KDD12_TABLE_SIZES

    # Dense field counts of the built-in schemas: Avazu has one constant-zero dense column, as NASRec.
    shapes = {"criteo": (13, CRITEO_TABLE_SIZES), "avazu": (1, AVAZU_TABLE_SIZES), "kdd12": (3, KDD12_TABLE_SIZES)}
    num_dense, sizes = shapes[args.dataset or "criteo"]
    return {"num_dense": num_dense, "num_sparse": len(sizes), "table_sizes": list(sizes)}


def _run_arch_info(args: argparse.Namespace) -> int:
    from nasrec.model.cost import arch_cost
    from nasrec.model.memory import footprint, physical_memory
    from nasrec.space.arch import Architecture
    from nasrec.space.draw import head_width, summary
    from nasrec.space.space import NASREC_FULL, NASREC_SMALL

    arch = Architecture.load(args.file)
    shape = _arch_shape(args)
    cost = arch_cost(arch, shape["num_dense"], shape["num_sparse"], shape["table_sizes"], use_layernorm=args.layernorm)
    report = {
        "file": args.file,
        "hash": arch.hash(),
        "blocks": arch.num_blocks,
        "dead_blocks": [int(i) for i in cost.dead_blocks],
        "head_input": head_width(arch),
        "num_dense": shape["num_dense"],
        "num_sparse": shape["num_sparse"],
        "use_layernorm": args.layernorm,
        "flops": int(cost.flops),
        "mflops": float(cost.mflops),
        "dense_params": int(cost.dense_params),
        "embedding_params": int(cost.embedding_params),
        "params": int(cost.params),
        "spaces": [s.name for s in (NASREC_SMALL, NASREC_FULL) if s.contains(arch)],
        # float32 bytes, counted without building the model (`nasrec.model.memory`)
        "memory": {
            "weights_bytes": footprint(int(cost.params), int(cost.dense_params), None)["total"],
            "train_bytes": {
                o: footprint(int(cost.params), int(cost.dense_params), o)["total"] for o in ("adagrad", "adam", "sgd")
            },
            "machine_bytes": physical_memory(),
        },
        "summary": summary(arch).splitlines(),
    }
    console.show(report, args.json, _arch_info_text)
    return 0


def _arch_memory_text(m: dict) -> str:
    from nasrec.model.memory import human_bytes

    train, machine = m["train_bytes"], m["machine_bytes"]
    text = (f"{human_bytes(m['weights_bytes'])} of weights (float32); to train, about {human_bytes(train['adagrad'])} "
            f"with Adagrad, {human_bytes(train['adam'])} with Adam (activations not counted)")  # fmt: skip
    if machine is not None and min(train.values()) > machine:
        text += f": more than this machine's {human_bytes(machine)}, it cannot train here"
    return text


def _arch_info_text(r: dict) -> str:
    dead = f" (dead: {', '.join(map(str, r['dead_blocks']))})" if r["dead_blocks"] else ""
    lines = [f"{r['file']}: architecture {r['hash']}, {r['blocks']} blocks{dead}, head input {r['head_input']}",
             f"  on {r['num_dense']} dense and {r['num_sparse']} sparse fields"
             f"{' with layer norms' if r['use_layernorm'] else ''}: {console.mflops(r['mflops'])} MFLOPs, "
             f"{r['dense_params']:,} dense and {r['embedding_params']:,} embedding parameters",
             f"  in the built-in spaces: {', '.join(r['spaces']) or 'none'}",
             f"  memory: {_arch_memory_text(r['memory'])}"]  # fmt: skip
    return "\n".join([*lines, *(f"  {line}" for line in r["summary"])])


def _run_arch_sample(args: argparse.Namespace) -> int:
    from nasrec.space.space import sample_architecture

    arch = sample_architecture(args.space, args.seed, args.strategy)
    if args.out:
        arch.save(args.out)
        print(
            f"wrote {args.out} (architecture {arch.hash()}, {args.strategy} sample of {args.space}, seed {args.seed})"
        )
    else:
        print(arch.to_json(indent=1))
    return 0


def _run_arch_draw(args: argparse.Namespace) -> int:
    from nasrec.space.arch import Architecture
    from nasrec.space.draw import summary, to_dot, to_mermaid

    arch = Architecture.load(args.file)
    text = {"text": lambda a: summary(a) + "\n", "dot": to_dot, "mermaid": to_mermaid}[args.format](arch)
    if args.out:
        try:
            with open(args.out, "w") as fh:
                fh.write(text)
        except OSError as e:
            raise NasrecError(f"{args.out}: cannot write ({e.strerror})") from None
    else:
        sys.stdout.write(text)
    return 0


def _run_arch(args: argparse.Namespace) -> int:
    runners = {"info": _run_arch_info, "sample": _run_arch_sample, "draw": _run_arch_draw}
    return runners[args.arch_command](args)


def _parse_sets(items: list[str] | None) -> dict:
    """`--set key=value` pairs; values parsed as JSON when they can be (numbers, true, null...)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise NasrecError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def _add_device(p: argparse.ArgumentParser, what: str, resumable: bool = False) -> None:
    default = "default cpu; on resume: the run's own" if resumable else "default cpu"
    p.add_argument("--device", metavar="cpu|cuda|cuda:N|auto",
                   help=f"where to {what} ({default}; auto: cuda when available)")  # fmt: skip


def _device(args: argparse.Namespace, overrides: dict | None = None) -> str | None:
    """`--device`, checked before any work (an unavailable CUDA is an error), and put into `overrides`."""
    if args.device is None:
        return None
    from nasrec.device import resolve_device

    resolve_device(args.device)
    if overrides is not None:
        overrides["device"] = args.device
    return args.device


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--preset", help="paper-supernet, paper-final, cpu-quick, cpu-supernet")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training setting (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_device(p, "train", resumable=True)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an architecture or a zoo baseline from scratch")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", metavar="FILE.json", help="nasrec architecture (canonical or NASRec JSON)")
    what.add_argument(
        "--model", metavar="NAME", help="zoo baseline: lr, fm, dnn, dlrm, deepfm, dcnv2, autoint+, xdeepfm"
    )
    p.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="zoo model hyper-parameter (repeatable)")
    _add_train_options(p)


def _print_final(res: dict, args: argparse.Namespace) -> None:
    from nasrec.distributed import is_main

    if not is_main():  # under torchrun every rank returns the result; one prints it
        return
    keys = ("logloss", "auc", "mflops", "params", "samples_per_s", "steps")
    console.show({"out": args.out, **{k: res.get(k) for k in keys}}, args.json, lambda _: _train_text(res, args))


def _train_text(res: dict, args: argparse.Namespace) -> str:
    what = "supernet" if args.command == "supernet" else "model"
    stop = ", early stopped" if res.get("early_stopped") else ""
    best = f", weights of step {res['best_step']:,} (best validation)" if res.get("weights") == "best" else ""
    lines = [f"trained {what} in {args.out}: {res.get('steps', 0):,} steps{stop} in "
             f"{console.duration(res.get('train_seconds') or 0.0)} ({res.get('samples_per_s') or 0:,.0f} samples/s){best}"]  # fmt: skip
    for split in ("val", "test"):
        m = res.get(split)
        if m:
            lines.append(f"  {split:<5} log loss {console.num(m.get('logloss'))}   AUC {console.num(m.get('auc'))}")
    if args.command == "supernet":
        lines.append("  (a supernet's metrics are the mean over fixed sampled paths)")
    cost = [f"{console.mflops(res['mflops'])} MFLOPs"] if res.get("mflops") is not None else []
    cost += [f"{res['params']:,} parameters"] if res.get("params") is not None else []
    if cost:
        lines.append(f"  model: {', '.join(cost)}")
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    from nasrec.train.api import train

    overrides = _parse_sets(args.set)
    _device(args, overrides)
    res = train(args.data, args.out, arch=args.arch, model=args.model, hparams=_parse_sets(args.hparam),
                preset_name=args.preset, overrides=overrides, resume=args.resume,
                progress=False if args.no_progress else None)  # fmt: skip
    _print_final(res, args)
    return 0


def _add_supernet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supernet", help="train a weight-sharing supernet over a search space")
    p.add_argument("--space", default="full", help="small, full, or a space file (YAML/JSON)")
    p.add_argument("--max-mflops", metavar="X|MODEL",
                   help="after the warm-up, train only paths of at most X MFLOPs (the search's cap), or of at "
                        "most a zoo model's MFLOPs on this data (e.g. dcnv2); paths count as models without layer "
                        "norms unless --set path_count_layernorm=true (as a cpu-quick final model has them)")  # fmt: skip
    p.add_argument("--semantics", choices=["slice", "mask"], default="slice",
                   help="slice: nasrec's sliced weights (a path costs what it computes); mask: the reference's "
                        "full-width operators with masks, to measure what slicing changes (slower)")  # fmt: skip
    _add_train_options(p)


def _run_supernet(args: argparse.Namespace) -> int:
    from nasrec.train.api import train_supernet

    overrides = _parse_sets(args.set)
    _device(args, overrides)
    if args.max_mflops is not None:
        overrides["path_max_mflops"] = args.max_mflops
    res = train_supernet(args.data, args.out, space=args.space, preset_name=args.preset,
                         overrides=overrides, resume=args.resume, semantics=args.semantics,
                         progress=False if args.no_progress else None)  # fmt: skip
    _print_final(res, args)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="log loss and AUC of a trained model on a split")
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `nasrec train`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    _add_device(p, "evaluate")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_evaluate(args: argparse.Namespace) -> int:
    from nasrec.train.api import evaluate_run

    device = _device(args)
    res = evaluate_run(args.model, args.data, args.split, args.checkpoint, device=device)
    console.show(res, args.json, lambda r: _evaluate_text(r, args))
    return 0


def _evaluate_text(r: dict, args: argparse.Namespace) -> str:
    n = console.num
    lines = [f"{args.model} ({args.checkpoint} weights) on the {r['split']} split of {args.data}, "
             f"{int(r.get('count') or 0):,} rows:",
             f"  log loss {n(r.get('logloss'))}   AUC {n(r.get('auc'))}   calibration {n(r.get('calibration'), 3)} "
             f"(mean prediction {n(r.get('mean_pred'), 4)}, CTR {n(r.get('ctr'), 4)})"]  # fmt: skip
    if r.get("mflops") is not None:
        lines.append(f"  model: {console.mflops(r['mflops'])} MFLOPs, {r.get('params') or 0:,} parameters")
    return "\n".join(lines)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two trained models on the same rows: log loss and AUC differences with "
                                       "intervals (paired per-row differences; DeLong's test)")  # fmt: skip
    p.add_argument("runs", nargs=2, metavar="RUN", help="run directories of `nasrec train` (a, then b)")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--level", type=clicheck.fraction, default=0.95,
                   help="confidence level of the intervals (default 0.95)")  # fmt: skip
    _add_device(p, "evaluate")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_compare(args: argparse.Namespace) -> int:
    from nasrec.train.api import compare_runs

    device = _device(args)
    res = compare_runs(*args.runs, args.data, args.split, args.checkpoint, args.level, device=device)
    console.show(res, args.json, _compare_text)
    return 0


def _compare_text(r: dict) -> str:
    n = console.num
    ll, auc = r["logloss"], r["auc"]
    level = f"{100 * ll.get('level', 0.95):g}%"
    lines = [f"a: {r['a']}", f"b: {r['b']}",
             f"{r['split']} split, {ll.get('rows', 0):,} rows; a minus b with {level} intervals:"]  # fmt: skip
    for name, m, key in (("log loss", ll, "logloss"), ("AUC", auc, "auc")):
        interval = f"[{n(m.get('low'))}, {n(m.get('high'))}]" if m.get("low") is not None else "[n/a]"
        diff = m.get("diff")
        sign = "+" if isinstance(diff, float) and diff >= 0 else ""
        verdict = m.get("verdict")
        said = f"a is {verdict}" if verdict in ("better", "worse") else verdict
        lines.append(f"  {name:<8} a {n(m.get(key + '_a'))}  b {n(m.get(key + '_b'))}  a-b {sign}{n(diff)} "
                     f"{interval}  p {n(m.get('p'), 3)}: {said}")  # fmt: skip
    return "\n".join(lines)


def _add_caps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-mflops", metavar="X|MODEL",
                   help="only architectures of at most X MFLOPs, or of a zoo model's on this data (dcnv2)")  # fmt: skip
    p.add_argument("--max-params", metavar="N|MODEL",
                   help="only architectures of at most N non-embedding params (or a zoo model's count)")  # fmt: skip


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a trained supernet's space (regularized evolution or random)")
    p.add_argument("--supernet", required=True, metavar="DIR", help="run directory of `nasrec supernet`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory (the supernet's)")
    p.add_argument("--out", required=True, metavar="DIR", help="search directory")
    p.add_argument("--strategy", choices=["evolution", "random"])
    p.add_argument("--preset", help="auto (default: the paper's search fitted to the data and --time-budget), "
                                    "paper, cpu, cpu-quick")  # fmt: skip
    p.add_argument("--time-budget", metavar="T", help="wall time the auto preset fits its scoring into: seconds or "
                                                      "15m, 2h (default 15m; retraining not included)")  # fmt: skip
    _add_caps(p)
    p.add_argument("--layernorm", action=argparse.BooleanOptionalAction, default=None,
                   help="count MFLOPs and params (caps, history) for served models with layer norms, or without "
                        "(default: as the retraining recipe trains them)")  # fmt: skip
    p.add_argument("--pareto", action="store_true", help="multi-objective: Pareto front of (val loss, MFLOPs)")
    p.add_argument("--workers", type=clicheck.int_at_least(1), default=1,
                   help="scoring processes (the result does not depend on it)")  # fmt: skip
    p.add_argument("--seed", type=clicheck.int_at_least(0))
    p.add_argument("--retrain", action="store_true", help="train the top-k from scratch and choose the final one")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a retraining setting")
    p.add_argument("--retrain-seeds", type=clicheck.int_at_least(1), default=1, metavar="N",
                   help="train each top-k architecture with N seeds and judge it by the mean validation loss")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a search or scoring setting")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    _add_device(p, "score candidates (and retrain them, unless --train-set device=... says otherwise)", resumable=True)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_search(args: argparse.Namespace) -> int:
    from nasrec.search.api import search

    overrides = _parse_sets(args.set)
    for key in ("strategy", "max_mflops", "max_params", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.pareto:
        overrides["pareto"] = True
    if args.layernorm is not None:
        overrides["count_layernorm"] = args.layernorm
    train_overrides = _parse_sets(args.train_set)
    if _device(args, overrides):
        train_overrides.setdefault("device", args.device)
    res = search(args.supernet, args.data, args.out, preset=args.preset, overrides=overrides, workers=args.workers,
                 retrain=args.retrain, train_overrides=train_overrides, retrain_seeds=args.retrain_seeds,
                 resume=args.resume, time_budget=args.time_budget,
                 progress=False if args.no_progress else None)  # fmt: skip
    from nasrec.distributed import is_main

    if not is_main():  # under torchrun every rank returns the result; one prints it
        return 0
    best = res["best"]
    summary = {"best": best["hash"], "score": best["score"], "mflops": best["mflops"], "scored": res["scored"],
               "candidates_per_minute": round(res["candidates_per_minute"], 2), "pareto": len(res["pareto"])}  # fmt: skip
    if "final" in res:
        summary["final"] = res["final"]["chosen"]
    console.show(summary, args.json, lambda s: _search_text(s, res, args.out))
    return 0


def _search_text(s: dict, res: dict, out: str) -> str:
    n = console.num
    lines = [f"searched {s['scored']:,} candidates in {console.duration(res.get('seconds') or 0.0)} "
             f"({s['candidates_per_minute']:g} candidates/min) into {out}",
             f"  best: {s['best']} (supernet-scored validation log loss {n(s['score'])}, "
             f"{console.mflops(s['mflops'])} MFLOPs) in best.json; Pareto front of {s['pareto']} in pareto.json"]  # fmt: skip
    f = s.get("final")
    if f:
        lines.append(f"  final (retrained, chosen by validation log loss): {f['hash']} in final.json: validation "
                     f"{n(f.get('val_logloss'))}, test log loss {n(f.get('test_logloss'))}, test AUC "
                     f"{n(f.get('test_auc'))}, {console.mflops(f.get('mflops'))} MFLOPs")  # fmt: skip
    return "\n".join(lines)


def _add_rankcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rankcheck", help="rank correlation of supernet scores with training from scratch")
    p.add_argument("--supernet", required=True, metavar="DIR", help="run directory of `nasrec supernet`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared cache directory (the supernet's)")
    p.add_argument("--out", required=True, metavar="DIR", help="rank check directory (rankcheck.json, runs/)")
    p.add_argument("-k", "--k", type=clicheck.int_at_least(3), default=20, help="architectures to sample (default 20)")
    p.add_argument("--seed", type=clicheck.int_at_least(0), default=0)
    p.add_argument("--strategy", default="uniform", help="sampling strategy of the architectures")
    _add_caps(p)
    p.add_argument("--preset", default="cpu-quick", help="search preset whose scoring budget is used")
    p.add_argument("--train-preset", help="training preset of the from-scratch runs (default: the search preset's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scoring setting")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="override a training setting")
    p.add_argument("--workers", type=clicheck.int_at_least(1), default=1, help="scoring processes")
    _add_device(p, "score and train the architectures")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_rankcheck(args: argparse.Namespace) -> int:
    from nasrec.search.rankcheck import rankcheck

    score_overrides, train_overrides = _parse_sets(args.set), _parse_sets(args.train_set)
    if _device(args, score_overrides):
        train_overrides.setdefault("device", args.device)
    res = rankcheck(args.supernet, args.data, args.out, k=args.k, seed=args.seed, strategy=args.strategy,
                    preset=args.preset, score_overrides=score_overrides, train_preset=args.train_preset,
                    train_overrides=train_overrides, workers=args.workers, max_mflops=args.max_mflops,
                    max_params=args.max_params)  # fmt: skip
    console.show({k: res[k] for k in ("kendall_tau", "spearman_rho", "pairs")}, args.json,
                 lambda r: f"rank check of {args.k} architectures in {args.out} ({r['pairs']} with finite losses): "
                           f"Kendall tau {console.num(r['kendall_tau'], 3)}, Spearman rho "
                           f"{console.num(r['spearman_rho'], 3)}\n  rankcheck.json, rankcheck.png")  # fmt: skip
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="click probabilities for raw input files from a trained model")
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `nasrec train`")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="raw rows in the training format")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    p.add_argument("--data", metavar="DIR", help="cache whose encoder to use (default: the model's own)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="malformed rows: stop, or skip them")
    _add_max_bad_fraction(p)
    _add_device(p, "run the model")
    p.add_argument("--no-drift-check", dest="drift_check", action="store_false",
                   help="skip the per-field share of values unseen in training (it reads the cache's train ids "
                        "once: about 2 s per million rows)")  # fmt: skip
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_predict(args: argparse.Namespace) -> int:
    from nasrec.predict import predict

    device = _device(args)
    res = predict(args.model, args.input, args.out, data=args.data, checkpoint=args.checkpoint,
                  on_error=args.on_error, device=device, max_bad_fraction=args.max_bad_fraction,
                  drift_check=args.drift_check)  # fmt: skip
    console.show({k: v for k, v in res.items() if k != "skipped_examples"}, args.json, _predict_text)
    if res["skipped"]:
        from nasrec.data.sources import shown_bad_rows

        for line in shown_bad_rows(res["skipped"], res["skipped_examples"]):
            print(f"skipped {line}", file=sys.stderr)
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
            text += (f"\n  categorical values unseen in training: at most {shares[worst]['share']:.1%} per field "
                     f"({worst}; {split} split {ref:.1%})")  # fmt: skip
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
    p.add_argument("--verify-rows", type=clicheck.int_at_least(0), default=65_536, metavar="N",
                   help="test rows to compare (0: skip)")  # fmt: skip
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_export(args: argparse.Namespace) -> int:
    from nasrec.export import export_model

    res = export_model(args.model, args.out, args.format, checkpoint=args.checkpoint, data=args.data,
                       verify_rows=args.verify_rows)  # fmt: skip
    if args.json:
        print(console.to_json(res))
        return 0
    print(f"exported {args.model} as {res['format']}:")
    for f in res["files"]:
        print(f"  {f}")
    if res["passed"] is None:
        print("  not verified (no rows compared)")
    else:
        print(f"  verified on {res['verified_rows']:,} {res['split']} rows: max |exported - PyTorch| = "
              f"{res['max_abs_diff']:.3g}")  # fmt: skip
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole pipeline from one config file (prepare ... report)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--out", metavar="DIR", help="run directory (default: the config's `out`)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_run(args: argparse.Namespace) -> int:
    from nasrec.pipeline.config import load_config
    from nasrec.pipeline.runner import run_pipeline

    cfg = load_config(args.config)
    if args.out or cfg.get("out"):
        console.add_run_log(args.out or cfg["out"])
    records = run_pipeline(cfg, args.out, progress=False if args.no_progress else None)
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

    summary = {"out": str(out), "final": brief(final), "baselines": {m: brief(r) for m, r in base.items()},
               "report": ((records.get("report") or {}).get("result") or {}).get("html")}  # fmt: skip
    console.show(summary, as_json, lambda s: _pipeline_text(s, records))


def _pipeline_text(s: dict, records: dict) -> str:
    n = console.num

    def row(name: str, r: dict) -> str:
        mean = f" (mean of the seeds {n(r['logloss_mean'])})" if "logloss_mean" in r else ""
        mflops = f", {console.mflops(r['mflops'])} MFLOPs" if r.get("mflops") is not None else ""
        return f"    {name:<24} test log loss {n(r.get('logloss'))}{mean}, AUC {n(r.get('auc'))}{mflops}"

    times = ", ".join(f"{k} {console.duration(v['seconds'])}" for k, v in records.items()
                      if isinstance(v, dict) and v.get("seconds") is not None)  # fmt: skip
    lines = [f"pipeline run in {s['out']}" + (f" (stage times: {times})" if times else "")]
    if s["final"].get("logloss") is not None or s["baselines"]:
        lines.append("  test metrics:")
        lines.append(row("searched model", s["final"]))
        lines += [row(name, r) for name, r in s["baselines"].items()]
    if s.get("report"):
        lines.append(f"  report: {s['report']}")
    return "\n".join(lines)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on bundled synthetic data (minutes on a CPU)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train the final model and each baseline with N seeds; the report compares them "
                        "over the seeds (the pipeline's final.seeds)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run_demo(args: argparse.Namespace) -> int:
    from nasrec.pipeline.config import DEMO, resolve_config
    from nasrec.pipeline.runner import run_pipeline

    cfg = resolve_config({**DEMO, "final": {**DEMO["final"], "seeds": args.seeds}})
    records = run_pipeline(cfg, args.out, progress=False if args.no_progress else None)
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
    "prepare": (_add_prepare, _run_prepare),
    "synth": (_add_synth, _run_synth),
    "arch": (_add_arch, _run_arch),
    "train": (_add_train, _run_train),
    "supernet": (_add_supernet, _run_supernet),
    "evaluate": (_add_evaluate, _run_evaluate),
    "compare": (_add_compare, _run_compare),
    "search": (_add_search, _run_search),
    "rankcheck": (_add_rankcheck, _run_rankcheck),
    "predict": (_add_predict, _run_predict),
    "export": (_add_export, _run_export),
    "run": (_add_run, _run_run),
    "demo": (_add_demo, _run_demo),
    "report": (_add_report, _run_report),
    "cache": (_add_cache, _run_cache),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the full usage stays available with --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `nasrec` command."""
    parser = _Parser(prog="nasrec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nasrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


# Commands whose --out is a run directory: their log is also written to <out>/nasrec.log (`run` adds its own).
_RUN_LOGS = ("train", "supernet", "search", "rankcheck", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors become a one-line message and exit code 2.

    Paths and numbers are checked first, before anything heavy is imported (`nasrec.clicheck`). Log
    lines go to stderr and, for a command with a run directory, to its `nasrec.log` (`nasrec.console`);
    stdout holds the result alone, as text or (`--json`) one JSON object.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    run_log = getattr(args, "out", None) if args.command in _RUN_LOGS else None
    with console.session(args.command, argv, run_log) as session:
        try:
            clicheck.check(args)
            rc = COMMANDS[args.command][1](args)
            session.finished(rc)
            return rc
        except NasrecError as e:
            print(f"nasrec {args.command}: error: {e}", file=sys.stderr)
            session.failed(f"error: {e}")
            return e.exit_code
        except BrokenPipeError:  # output piped into a program that stopped reading (e.g. `| head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            session.finished(0)
            return 0
        except KeyboardInterrupt:
            print(f"nasrec {args.command}: interrupted", file=sys.stderr)
            session.failed("interrupted")
            return 130
        except Exception as e:  # a bug: its traceback goes to stderr as usual, and into the run log
            session.failed(f"failed: {type(e).__name__}: {e}", exc=e)
            raise


if __name__ == "__main__":
    sys.exit(main())
