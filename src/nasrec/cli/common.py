"""Argument helpers shared by the `nasrec` subcommands: option help texts, `--set`, `--device`, caps."""

from __future__ import annotations

import argparse
import json

from nasrec import clicheck, console
from nasrec.errors import NasrecError

NO_PROGRESS_HELP = "no progress bars: log lines instead (bars are shown only when stderr is a terminal)"
JSON_HELP = "print the result as one JSON object on stdout (the log stays on stderr)"


def add_max_bad_fraction(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="with --on-error skip: fail all the same when more than this share of the rows read is "
        "malformed (default 0.01; 1 accepts any share)",
    )


def parse_sets(items: list[str] | None, dotted: bool = False) -> dict:
    """`--set key=value` pairs; values parsed as JSON when they can be (numbers, true, null...).

    `dotted`: keys are key paths (`search.set.max_mflops`), whose dashes are kept as written.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise NasrecError(f"--set expects {'key.path' if dotted else 'key'}=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip() if dotted else key.strip().replace("-", "_")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_device(p: argparse.ArgumentParser, what: str, resumable: bool = False) -> None:
    default = "default cpu; on resume: the run's own" if resumable else "default cpu"
    p.add_argument(
        "--device", metavar="cpu|cuda|cuda:N|auto", help=f"where to {what} ({default}; auto: cuda when available)"
    )


def device_arg(args: argparse.Namespace, overrides: dict | None = None) -> str | None:
    """`--device`, checked before any work (an unavailable CUDA is an error), and put into `overrides`."""
    if args.device is None:
        return None
    from nasrec.device import resolve_device

    resolve_device(args.device)
    if overrides is not None:
        overrides["device"] = args.device
    return args.device


def add_embeddings(p: argparse.ArgumentParser) -> None:
    """`--embeddings` and `--embedding-optimizer`: which engine holds the embedding tables."""
    p.add_argument(
        "--embeddings",
        choices=["nasrec", "torchrec"],
        help="the embedding tables' engine: nasrec's sparse-gradient tables (default) or TorchRec's fused "
        'fbgemm tables (pip install "nasrec[torchrec]"; README.md, TorchRec)',
    )
    p.add_argument(
        "--embedding-optimizer",
        choices=["adagrad", "rowwise_adagrad", "sgd", "adam"],
        help="--embeddings torchrec: the tables' fused optimizer (default: the run's; adam on GPUs only)",
    )
    p.add_argument(
        "--sharding",
        choices=["table-wise", "column-wise", "row-wise"],
        help="--embeddings torchrec under torchrun: how TorchRec's planner spreads the tables over the "
        "processes (default table-wise; row-wise on GPUs only)",
    )


def embeddings_arg(args: argparse.Namespace, overrides: dict) -> None:
    """Put `--embeddings` / `--embedding-optimizer` into the training overrides, checking the backend is there."""
    if args.embeddings is not None:
        overrides["embeddings"] = args.embeddings
    if args.embedding_optimizer is not None:
        overrides["embedding_optimizer"] = args.embedding_optimizer
    if args.sharding is not None:
        overrides["sharding"] = args.sharding
    if overrides.get("embeddings") == "torchrec":
        from nasrec.backend import require_torchrec

        require_torchrec()  # a missing extra is one line now, before the data is opened


def add_caps(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-mflops",
        metavar="X|MODEL",
        help="only architectures of at most X MFLOPs, or of a zoo model's on this data (dcnv2)",
    )
    p.add_argument(
        "--max-params",
        metavar="N|MODEL",
        help="only architectures of at most N non-embedding params (or a zoo model's count)",
    )


def add_latency_caps(p: argparse.ArgumentParser) -> None:
    """--max-latency-ms and the latency table it is predicted from (`nasrec latency profile`)."""
    p.add_argument(
        "--max-latency-ms",
        metavar="MS|MODEL",
        help="only architectures whose predicted serving latency is at most MS milliseconds, or a zoo model's "
        "latency measured here (dcnv2); needs --latency-table",
    )
    p.add_argument(
        "--latency-table",
        metavar="FILE",
        help="latency table of this machine, space and data shape (`nasrec latency profile`): candidates get a "
        "predicted latency, and the result a Pareto front over it",
    )
    p.add_argument("--latency-batch", type=clicheck.int_at_least(1), metavar="B", help="examples a call (default 1)")
    p.add_argument("--latency-threads", type=clicheck.int_at_least(1), metavar="T", help="threads (default 1)")
    p.add_argument(
        "--latency-runtime", choices=("onnxruntime", "torchscript"), help="serving runtime (default onnxruntime)"
    )
    p.add_argument(
        "--force-latency-table",
        action="store_true",
        help="use a latency table measured for another machine, space or data shape anyway (the result says so)",
    )


def latency_overrides(args: argparse.Namespace, overrides: dict) -> None:
    """Copy the latency options given on the command line into `overrides` (search config keys)."""
    for key in ("max_latency_ms", "latency_table", "latency_batch", "latency_threads", "latency_runtime"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "force_latency_table", False):
        overrides["latency_force"] = True


def bars(args: argparse.Namespace) -> bool:
    """Whether the command shows progress bars: on a terminal, unless --no-progress or --quiet."""
    return console.progress_enabled(False if args.no_progress else None)
