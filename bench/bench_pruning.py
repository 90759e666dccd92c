"""Training speed of standalone models with and without the operators whose results cannot reach the head.

Usage::

    python bench/bench_pruning.py                 # 6 random NASRec-Full architectures under 1.0446 MFLOPs
    python bench/bench_pruning.py --archs 10 --max-mflops 2 --runs 5

A model skips such operators (a live block's dense side when nobody reads its dense output, ...); the
"all operators" column runs every operator of the live blocks, as models did before. Architectures are
drawn with `SearchSpace.sample(rng, "uniform")` from `--seed` and kept when under `--max-mflops`; those
without such operators are skipped. Criteo shape with tables capped at 500,000 rows, batch 512, the
training step of `bench_train.py` (Adagrad, clip 5), layer norms on, `--threads` threads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package
from bench_train import measure

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.model.cost import arch_cost
from nasrec.model.subnet import Subnet
from nasrec.space.space import get_space


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="full")
    ap.add_argument("--archs", type=int, default=6)
    ap.add_argument("--max-mflops", type=float, default=1.0446)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    torch.set_num_threads(args.threads)
    tables = [min(t, 500_000) for t in CRITEO_TABLE_SIZES]
    space, rng = get_space(args.space), np.random.default_rng(args.seed)
    rows = []
    while len(rows) < args.archs:
        arch = space.sample(rng, "uniform")
        cost = arch_cost(arch, 13, len(tables))
        if cost.mflops > args.max_mflops or cost.flops == cost.flops_live_blocks:
            continue
        model = Subnet(arch, 13, tables, layernorm=True)
        pruned = measure(model, 512, tables, args.steps, args.runs)
        model.outputs = tuple((live, live) for live in arch.live_blocks())  # every operator of the live blocks
        every = measure(model, 512, tables, args.steps, args.runs)
        row = {
            "arch": arch.hash(),
            "mflops": cost.mflops,
            "mflops_live_blocks": cost.flops_live_blocks / 1e6,
            "pruned_samples_per_s": pruned["median"],
            "all_ops_samples_per_s": every["median"],
            "speedup": round(pruned["median"] / every["median"], 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "bench": "pruning",
                "machine": machine_info(),
                "median_speedup": float(np.median([r["speedup"] for r in rows])),
            }
        )
    )
    print("\n| architecture | MFLOPs run / live blocks | samples/s, pruned | samples/s, all operators | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch'][:12]} | {r['mflops']:.3f} / {r['mflops_live_blocks']:.3f} | "
            f"{r['pruned_samples_per_s']:,.0f} | {r['all_ops_samples_per_s']:,.0f} | {r['speedup']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
