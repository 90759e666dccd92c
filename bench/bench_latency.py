"""Serving latency of random architectures against their MFLOPs: how far FLOPs predict latency here.

Usage::

    python bench/bench_latency.py                                  # 50 archs of small and of full, Criteo shape
    python bench/bench_latency.py --spaces full --archs 20 --batch 1 --threads 1 --reps 300

Each architecture is drawn from the space (`--strategy`, seeds `--seed`, `--seed` + 1, ...), built untrained
at the Criteo shape (13 dense fields, 26 tables capped at `--max-rows` rows: latency does not depend on
the weights, and the lookups of a row do not depend on the table's size) and timed with
`nasrec.export.latency.measure_model_latency` (exported to `--runtime`, `--warmup` untimed calls, then
`--reps` timed ones; p50). Zoo models (`--zoo`, their class defaults) are timed the same way for scale.
Prints one JSON line per model, then per space the Spearman correlation of MFLOPs and p50 latency, and
the spread of milliseconds per MFLOP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.export.latency import measure_model_latency
from nasrec.model.cost import arch_cost
from nasrec.model.subnet import Subnet
from nasrec.space.space import get_space
from nasrec.zoo.registry import build_zoo_model, zoo_cost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["small", "full"])
    ap.add_argument("--archs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default="uniform")
    ap.add_argument("--zoo", nargs="*", default=["lr", "deepfm", "dcnv2", "dlrm", "autoint+", "xdeepfm", "finalmlp"])
    ap.add_argument("--max-rows", type=int, default=100_000)
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torchscript"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    sizes = [min(n, args.max_rows) for n in CRITEO_TABLE_SIZES]
    timing = dict(
        runtime=args.runtime, batches=(args.batch,), threads=(args.threads,), warmup=args.warmup, reps=args.reps
    )
    rows = []
    for name in args.zoo:
        model = build_zoo_model(name, 13, sizes)
        p50 = measure_model_latency(model, 13, sizes, **timing)["results"][0]["p50_ms"]
        row = {"space": "zoo", "model": name, "mflops": round(zoo_cost(name, 13, sizes).flops / 1e6, 4), "p50_ms": p50}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for space_name in args.spaces:
        space = get_space(space_name)
        mine = []
        for k in range(args.archs):
            arch = space.sample(np.random.default_rng(args.seed + k), args.strategy)
            model = Subnet(arch, 13, sizes)
            p50 = measure_model_latency(model, 13, sizes, **timing)["results"][0]["p50_ms"]
            row = {
                "space": space_name,
                "model": f"seed {args.seed + k}",
                "mflops": round(arch_cost(arch, 13, 26).mflops, 4),
                "p50_ms": p50,
            }
            mine.append(row)
            print(json.dumps(row), flush=True)
        rows += mine
        flops = np.array([r["mflops"] for r in mine])
        ms = np.array([r["p50_ms"] for r in mine])
        per = ms / flops
        summary[space_name] = {
            "archs": len(mine),
            "spearman_mflops_latency": round(float(stats.spearmanr(flops, ms).statistic), 3),
            "mflops_range": [round(float(flops.min()), 3), round(float(flops.max()), 3)],
            "p50_ms_range": [round(float(ms.min()), 4), round(float(ms.max()), 4)],
            "ms_per_mflop_range": [round(float(per.min()), 4), round(float(per.max()), 4)],
        }
        print(json.dumps({"space": space_name, **summary[space_name]}), flush=True)
    print(
        json.dumps(
            {
                "bench": "latency",
                "machine": machine_info(),
                "timing": {k: v for k, v in timing.items()},
                "summary": summary,
                "results": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
