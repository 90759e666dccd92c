"""Training-step throughput of the supernet, and forward throughput of the published architectures.

Usage::

    python bench/bench_supernet.py                 # both spaces, sampled paths and full path
    python bench/bench_supernet.py --space full --steps 30 --runs 5

Criteo shape: 13 dense and 26 sparse fields, tables capped at 500,000 rows, embedding dim 16, batch
512, 2 threads, Adagrad (lr 0.12, eps 1e-2) with gradient-norm clipping at 5, layer norms on. The
optimizer is the trainer's for a supernet: `build_optimizer(sliced=True)`, whose dense Adagrad updates
only each gradient's nonzero box (`--whole-updates`: torch's Adagrad on whole tensors, same result).
"sampled" draws a new path every step with the default strategy (single-operator any-connection),
from a fixed seed, as after the full-path warm-up; "warm-up-half" is halfway through the warm-up
(each choice is the full path's with probability 1/2); "full-path" is the start of the warm-up (every
operator, every connection, largest widths). Synthetic batches are pre-generated, so data loading is not in the figure. Each
configuration: warm-up steps, then `--runs` timed runs of `--steps` steps; median and min-max, with
the share of the machine used by other processes per run (from /proc/stat).
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
from _machine import LoadSample, machine_info  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import SplitOptimizer, build_optimizer

# Published reference implementation on this machine kind (../shared/docs/benchmarking.md), samples/s.
REFERENCE = {
    ("small", "sampled"): 799,
    ("full", "sampled"): 322,
    ("small", "full-path"): 431,
    ("full", "full-path"): 81,
}
CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"


def batches(n: int, batch: int, tables: list[int], seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Pre-generated random Criteo-shaped batches."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        dense = torch.rand(batch, 13, generator=g) * 3
        sparse = torch.stack([torch.randint(0, t, (batch,), generator=g) for t in tables], 1)
        out.append((dense, sparse, torch.randint(0, 2, (batch,), generator=g).float()))
    return out


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
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1),
            "other_share": shares}  # fmt: skip


def bench_space(name: str, args: argparse.Namespace, data: list, tables: list[int]) -> list[dict]:
    """Sampled-path and full-path training throughput of one space's supernet."""
    space = NASREC_SMALL if name == "small" else NASREC_FULL
    model = Supernet(space, 13, tables, layernorm=True)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2, sliced=not args.whole_updates)
    rng = np.random.default_rng(args.seed)
    full = space.full_path()
    out = []
    modes = (("sampled", args.steps), ("warm-up-half", args.full_steps * 2), ("full-path", args.full_steps))
    for mode, steps in modes:

        def archs(k: int, mode: str = mode) -> list[Architecture]:
            if mode == "full-path":
                return [full] * k
            prob = 0.5 if mode == "warm-up-half" else 0.0  # halfway through the warm-up: p(full) = 1/2
            return [space.sample(rng, "default", full_path_prob=prob) for _ in range(k)]

        train_steps(model, opt, data[:2], archs(2))  # warm-up
        pool = iter([archs(steps) for _ in range(args.runs)])

        def run(steps: int = steps, pool=pool) -> None:
            train_steps(model, opt, data[:steps], next(pool))

        r = timed(run, args.runs, steps * args.batch)
        ref = REFERENCE.get((name, mode))
        speedup = round(r["median"] / ref, 1) if ref else None
        out.append({"space": name, "mode": mode, **r, "reference": ref, "speedup": speedup})
        vs = f"reference {ref:>4}  x{speedup}" if ref else "(no reference figure)"
        print(f"{name:<6}{mode:<13} {r['median']:>9,.0f} samples/s  ({r['min']:,.0f} - {r['max']:,.0f})"
              f"  {vs}  other {r['other_share']}", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", choices=["small", "full", "both"], default="both")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run (sampled paths)")
    ap.add_argument("--full-steps", type=int, default=4, help="steps per timed run (full path)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--whole-updates", action="store_true", help="torch's Adagrad on whole dense tensors")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tables = [min(n, 500_000) for n in CRITEO_TABLE_SIZES]
    results = []
    spaces = ["small", "full"] if args.space == "both" else [args.space]
    data = batches(max(args.steps, args.full_steps), args.batch, tables, args.seed)
    for name in spaces:
        results += bench_space(name, args, data, tables)
    if CONFIGS.is_dir():
        for tag in ("autoctr", "xlarge"):
            arch = Architecture.load(CONFIGS / f"criteo_{tag}_best.json")
            model = Subnet(arch, 13, tables, layernorm=False).eval()

            def forward(model: Subnet = model) -> None:
                with torch.no_grad():
                    for dense, sparse, _ in data[: args.steps]:
                        model(dense, sparse)

            forward()
            r = timed(forward, args.runs, args.steps * args.batch)
            results.append({"space": tag, "mode": "forward-best-criteo", **r})
            print(f"criteo_{tag}_best forward {r['median']:>10,.0f} samples/s ({r['min']:,.0f} - {r['max']:,.0f})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB")
    print(json.dumps({"bench": "supernet", "machine": machine_info(), "batch": args.batch, "threads": args.threads,
                      "whole_updates": args.whole_updates,
                      "results": results, "peak_rss_mb": round(peak)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
