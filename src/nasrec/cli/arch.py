"""`nasrec arch info|sample|draw`: inspect, sample and draw architectures."""

from __future__ import annotations

import argparse

from nasrec import clicheck, console
from nasrec.cli.common import JSON_HELP
from nasrec.errors import NasrecError

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
        return {
            "num_dense": len(cache.dense_fields),
            "num_sparse": len(cache.sparse_fields),
            "table_sizes": cache.table_sizes,
        }
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
    from nasrec.space.space import NASREC_FULL, NASREC_FULL_PLUS, NASREC_SMALL

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
        "spaces": [s.name for s in (NASREC_SMALL, NASREC_FULL, NASREC_FULL_PLUS) if s.contains(arch)],
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
    text = (
        f"{human_bytes(m['weights_bytes'])} of weights (float32); to train, about {human_bytes(train['adagrad'])} "
        f"with Adagrad, {human_bytes(train['adam'])} with Adam (activations not counted)"
    )
    if machine is not None and min(train.values()) > machine:
        text += f": more than this machine's {human_bytes(machine)}, it cannot train here"
    return text


def _arch_info_text(r: dict) -> str:
    dead = f" (dead: {', '.join(map(str, r['dead_blocks']))})" if r["dead_blocks"] else ""
    lines = [
        f"{r['file']}: architecture {r['hash']}, {r['blocks']} blocks{dead}, head input {r['head_input']}",
        f"  on {r['num_dense']} dense and {r['num_sparse']} sparse fields"
        f"{' with layer norms' if r['use_layernorm'] else ''}: {console.mflops(r['mflops'])} MFLOPs, "
        f"{r['dense_params']:,} dense and {r['embedding_params']:,} embedding parameters",
        f"  in the built-in spaces: {', '.join(r['spaces']) or 'none'}",
        f"  memory: {_arch_memory_text(r['memory'])}",
    ]
    return "\n".join([*lines, *(f"  {line}" for line in r["summary"])])


def _run_arch_sample(args: argparse.Namespace) -> int:
    from nasrec.space.space import sample_architecture

    arch = sample_architecture(args.space, args.seed, args.strategy)
    if args.out:
        arch.save(args.out)
        console.out(
            f"wrote {args.out} (architecture {arch.hash()}, {args.strategy} sample of {args.space}, seed {args.seed})"
        )
    else:
        console.out(arch.to_json(indent=1))
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
        console.out(text, end="")
    return 0


def _run_arch(args: argparse.Namespace) -> int:
    runners = {"info": _run_arch_info, "sample": _run_arch_sample, "draw": _run_arch_draw}
    return runners[args.arch_command](args)


COMMANDS = {
    "arch": (_add_arch, _run_arch),
}
