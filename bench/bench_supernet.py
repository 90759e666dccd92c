"""Training-step throughput of the supernet, and forward throughput of the published architectures.

Usage::

    python bench/bench_supernet.py                 # both spaces, Criteo shape, all path modes
    python bench/bench_supernet.py --space full --steps 30 --runs 5
    python bench/bench_supernet.py --space small --cache /tmp/frappe-cache     # a prepared cache's shape and rows
    python bench/bench_supernet.py --space small --num-dense 0 --table-sizes 952,4084,9,9,4,5,4,11,82,234

Data shape: by default the Criteo shape (13 dense and 26 sparse fields, tables capped at 500,000
rows); `--num-dense`, `--num-sparse` and `--table-sizes` give another one (random ids and dense
values), and `--cache DIR` takes a prepared cache's shape and its first shuffled train batches, so the
figure is for the data a user trains on. Embedding dim 16, batch 512, 2 threads, Adagrad (lr 0.12, eps
1e-2) with gradient-norm clipping at 5, layer norms on. The optimizer is the trainer's for a supernet:
`build_optimizer(sliced=True)`, whose dense Adagrad updates only each gradient's nonzero box
(`--whole-updates`: torch's Adagrad on whole tensors, same result).

Path modes (`--modes`): "sampled" draws a new path every step with the default strategy
(single-operator any-connection), from a fixed seed, as after the full-path warm-up; "warm-up-mean" runs
the warm-up's schedule (the probability of each choice being the full path's falls linearly from 1 to 0
over the run's steps), so its rate is the average rate of a whole warm-up; "warm-up-half" is halfway
through the warm-up (p(full) = 1/2); "full-path" is the start of the warm-up (every operator, every
connection, largest widths). Batches are held in memory, so data loading is not in the figure. Each
configuration: warm-up steps, then `--runs` timed runs of `--steps` steps; median and min-max, with the
share of the machine used by other processes per run (from /proc/stat).

A ratio to the published implementation is printed only when the reference was measured on a CPU of
this machine's torch CPU capability and on the Criteo shape (../shared/docs/benchmarking.md); otherwise
the reference's raw figures are shown beside nasrec's, never divided.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import LoadSample, machine_info, machine_line, reference, reference_text  # bench/ is not a package

from nasrec.data.cache import open_cache
from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.data.loader import BatchLoader
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import SplitOptimizer, build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"  # ../shared/configs beside the repository
CRITEO_CAPPED = [min(n, 500_000) for n in CRITEO_TABLE_SIZES]
MODES = ("sampled", "warm-up-mean", "warm-up-half", "full-path")


def batches(n: int, batch: int, num_dense: int, tables: list[int], seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Pre-generated random batches of the given shape."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        dense = torch.rand(batch, num_dense, generator=g) * 3
        sparse = torch.stack([torch.randint(0, t, (batch,), generator=g) for t in tables], 1)
        out.append((dense, sparse, torch.randint(0, 2, (batch,), generator=g).float()))
    return out


def cache_batches(
    path: Path, n: int, batch: int, seed: int = 0
) -> tuple[int, list[int], list[tuple[torch.Tensor, ...]]]:
    """(dense count, table sizes, the first n shuffled train batches) of a prepared cache (cycled if it is short)."""
    cache = open_cache(path)
    loader = BatchLoader(cache, "train", batch_size=batch, shuffle=True, seed=seed, drop_last=True)
    if len(loader) == 0:
        raise SystemExit(f"{path}: the train split has fewer rows than one batch ({batch})")
    out: list[tuple[torch.Tensor, ...]] = []
    while len(out) < n:
        for b in loader:
            out.append((b.dense, b.sparse, b.label))
            if len(out) == n:
                break
    return len(cache.dense_fields), list(cache.table_sizes), out


def data_shape(args: argparse.Namespace) -> tuple[int, list[int], str]:
    """(dense count, table sizes, description) from --num-dense / --num-sparse / --table-sizes (Criteo by default)."""
    if args.table_sizes:
        tables = [int(v) for v in args.table_sizes.split(",")]
        if len(tables) == 1 and args.num_sparse:
            tables *= args.num_sparse
    elif args.num_sparse is not None:
        tables = CRITEO_CAPPED[: args.num_sparse] if args.num_sparse <= 26 else [500_000] * args.num_sparse
    else:
        tables = CRITEO_CAPPED
    if args.num_sparse is not None and len(tables) != args.num_sparse:
        raise SystemExit(f"--table-sizes lists {len(tables)} tables, --num-sparse says {args.num_sparse}")
    if min(tables) < 1:
        raise SystemExit("--table-sizes: every table needs at least one row")
    num_dense = 13 if args.num_dense is None else args.num_dense
    criteo = num_dense == 13 and tables == CRITEO_CAPPED
    what = "Criteo shape, tables capped at 500,000" if criteo else "synthetic ids"
    return num_dense, tables, what


def is_criteo_shape(num_dense: int, tables: list[int]) -> bool:
    """Whether this is the shape the reference's figures were measured on."""
    return num_dense == 13 and tables == CRITEO_CAPPED


def train_steps(model: Supernet, opt: SplitOptimizer, data, archs) -> None:
    """One optimisation step per (batch, architecture)."""
    for (dense, sparse, y), arch in zip(data, archs, strict=False):
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse, arch), y)
        loss.backward()
        clip_grad_norm(model.parameters(), 5.0)
        opt.step()


def timed(fn, runs: int, samples: int) -> dict:
    """Median / min / max samples per second of `runs` calls of fn, with other-process shares."""
    rates, shares = [], []
    for _ in range(runs):
        load = LoadSample()
        load.start()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        shares.append(round(load.stop(), 3))
        rates.append(samples / dt)
    return {
        "median": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
        "other_share": shares,
    }


def path_sampler(space, mode: str, rng: np.random.Generator):
    """k architectures for a timed run of `mode` (see the module docstring)."""
    full = space.full_path()

    def archs(k: int) -> list[Architecture]:
        if mode == "full-path":
            return [full] * k
        if mode == "warm-up-mean":  # p(full) = 1 - t / T at the midpoints of k equal parts of the warm-up
            return [space.sample(rng, "default", full_path_prob=1 - (j + 0.5) / k) for j in range(k)]
        prob = 0.5 if mode == "warm-up-half" else 0.0
        return [space.sample(rng, "default", full_path_prob=prob) for _ in range(k)]

    return archs


def bench_space(name: str, args: argparse.Namespace, data: list, num_dense: int, tables: list[int]) -> list[dict]:
    """Training throughput of one space's supernet in each path mode."""
    space = NASREC_SMALL if name == "small" else NASREC_FULL
    model = Supernet(space, num_dense, tables, layernorm=True)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2, sliced=not args.whole_updates)
    rng = np.random.default_rng(args.seed)
    criteo = is_criteo_shape(num_dense, tables)
    out = []
    for mode in args.modes:
        steps = (
            args.steps
            if mode in ("sampled", "warm-up-mean")
            else args.full_steps * (2 if mode == "warm-up-half" else 1)
        )
        archs = path_sampler(space, mode, rng)
        train_steps(model, opt, data[:2], archs(2))  # warm-up
        pool = iter([archs(steps) for _ in range(args.runs)])

        def run(steps: int = steps, pool=pool) -> None:
            train_steps(model, opt, data[:steps], next(pool))

        r = timed(run, args.runs, steps * args.batch)
        key = f"supernet {name} {mode} b{args.batch}"
        ref = reference(key, r["median"]) if criteo else {"reference": {}}
        out.append({"space": name, "mode": mode, **r, **ref})
        vs = reference_text(key, r["median"]) if criteo else "no reference figure for this data shape"
        print(
            f"{name:<6}{mode:<13} {r['median']:>9,.0f} samples/s  ({r['min']:,.0f} - {r['max']:,.0f})"
            f"  other {r['other_share']}  [{vs}]",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", choices=["small", "full", "both"], default="both")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=["sampled", "warm-up-half", "full-path"])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run (sampled paths, warm-up-mean)")
    ap.add_argument("--full-steps", type=int, default=4, help="steps per timed run (full path; twice that half-way)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--whole-updates", action="store_true", help="torch's Adagrad on whole dense tensors")
    ap.add_argument("--num-dense", type=int, help="dense fields (default 13, the Criteo shape)")
    ap.add_argument("--num-sparse", type=int, help="sparse fields (default 26, the Criteo shape)")
    ap.add_argument("--table-sizes", help="comma-separated rows per table, or one size for every table")
    ap.add_argument("--cache", type=Path, help="a prepared cache: its shape and its shuffled train rows")
    ap.add_argument(
        "--configs",
        type=Path,
        default=CONFIGS,
        help="directory of the published architectures (default: ../shared/configs beside the repository)",
    )
    args = ap.parse_args(argv)
    if args.cache and (args.num_dense is not None or args.num_sparse is not None or args.table_sizes):
        ap.error("--cache gives the data shape: leave out --num-dense, --num-sparse and --table-sizes")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(machine_line(), flush=True)
    n = max(args.steps, 2 * args.full_steps, 2)
    if args.cache:
        num_dense, tables, data = cache_batches(args.cache, n, args.batch, args.seed)
        what = f"cache {args.cache}"
    else:
        num_dense, tables, what = data_shape(args)
        data = batches(n, args.batch, num_dense, tables, args.seed)
    print(
        f"data: {what}: {num_dense} dense, {len(tables)} sparse fields, tables of {min(tables):,}-{max(tables):,} "
        f"rows; batch {args.batch}, {args.threads} threads",
        flush=True,
    )
    results = []
    spaces = ["small", "full"] if args.space == "both" else [args.space]
    for name in spaces:
        results += bench_space(name, args, data, num_dense, tables)
    skipped = []
    for tag in ("autoctr", "xlarge"):
        path = args.configs / f"criteo_{tag}_best.json"
        if not path.is_file():
            skipped.append({"what": f"forward criteo_{tag}_best", "why": f"{path} not found (give --configs DIR)"})
            print(f"skipped: forward-only criteo_{tag}_best: {path} not found (give --configs DIR)", flush=True)
            continue
        arch = Architecture.load(path)
        model = Subnet(arch, num_dense, tables, layernorm=False).eval()

        def forward(model: Subnet = model) -> None:
            with torch.no_grad():
                for dense, sparse, _ in data[: args.steps]:
                    model(dense, sparse)

        forward()
        r = timed(forward, args.runs, args.steps * args.batch)
        results.append({"space": tag, "mode": "forward-best-criteo", **r})
        print(
            f"criteo_{tag}_best forward {r['median']:>10,.0f} samples/s ({r['min']:,.0f} - {r['max']:,.0f})"
            f"  other {r['other_share']}",
            flush=True,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB")
    print(
        json.dumps(
            {
                "bench": "supernet",
                "machine": machine_info(),
                "batch": args.batch,
                "threads": args.threads,
                "data": {"what": what, "num_dense": num_dense, "table_sizes": tables},
                "whole_updates": args.whole_updates,
                "results": results,
                "skipped": skipped,
                "peak_rss_mb": round(peak),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
