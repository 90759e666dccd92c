"""Dense optimizer step of a supernet: Adagrad on each gradient's nonzero box against on whole tensors.

Usage::

    python bench/bench_box_adagrad.py              # both spaces, 20 timed steps each
    python bench/bench_box_adagrad.py --space full --steps 40
    python bench/bench_box_adagrad.py --full-path   # every step on the full path (the warm-up's start)

Criteo shape (13 dense, 26 sparse fields, tables capped at 500,000 rows), batch 512, 2 threads, layer
norms on, sampled paths (default strategy) or, with `--full-path`, the full path, whose gradients fill
every tensor (the box is the whole tensor: what matters there is what finding it costs). Two copies
of the supernet: every step computes the gradient of one path once, gives the second copy the same
gradients, and times the dense part of
`build_optimizer(sliced=True)` (`BoxAdagrad`) and of `sliced=False` (torch's Adagrad) on them, in
alternating order. The forward and backward time of the step is printed for scale.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package
from bench_supernet import batches

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.model.supernet import Supernet
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.optim import build_optimizer


def bench_space(name: str, steps: int, warmup: int, batch: int, tables: list[int], full_path: bool = False) -> dict:
    """Milliseconds per step of forward+backward and of both dense optimizer steps."""
    space = NASREC_SMALL if name == "small" else NASREC_FULL
    torch.manual_seed(0)
    boxed = Supernet(space, 13, tables, layernorm=True)
    whole = copy.deepcopy(boxed)
    opts = {
        "box": build_optimizer(boxed, "adagrad", lr=0.12, sliced=True).optimizers["dense"],
        "whole": build_optimizer(whole, "adagrad", lr=0.12, sliced=False).optimizers["dense"],
    }
    rng = np.random.default_rng(0)
    spent = {"forward_backward": 0.0, "box": 0.0, "whole": 0.0}
    for i, (dense, sparse, y) in enumerate(batches(warmup + steps, batch, tables)):
        arch = space.full_path() if full_path else space.sample(rng, "default")
        boxed.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        F.binary_cross_entropy_with_logits(boxed(dense, sparse, arch), y).backward()
        fb = time.perf_counter() - t0
        for a, b in zip(boxed.parameters(), whole.parameters(), strict=True):
            b.grad = None if a.grad is None else a.grad.clone()
        for key in ("box", "whole") if i % 2 else ("whole", "box"):
            t0 = time.perf_counter()
            opts[key].step()
            if i >= warmup:
                spent[key] += time.perf_counter() - t0
        if i >= warmup:
            spent["forward_backward"] += fb
    dense_params = sum(p.numel() for n, p in boxed.named_parameters() if not n.startswith("embedding"))
    out = {
        "space": name,
        "paths": "full" if full_path else "sampled",
        "dense_params": dense_params,
        **{f"{k}_ms": round(v / steps * 1000, 2) for k, v in spent.items()},
    }
    print(
        f"{name:<6} {out['paths']:<8} forward+backward {out['forward_backward_ms']:7.1f} ms/step   dense optimizer step: "
        f"box {out['box_ms']:5.1f} ms, whole tensors {out['whole_ms']:5.1f} ms",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", choices=["small", "full", "both"], default="both")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-path", action="store_true", help="train the full path at every step")
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    torch.set_num_threads(args.threads)
    tables = [min(n, 500_000) for n in CRITEO_TABLE_SIZES]
    spaces = ["small", "full"] if args.space == "both" else [args.space]
    results = [bench_space(s, args.steps, args.warmup, args.batch, tables, args.full_path) for s in spaces]
    print(json.dumps({"bench": "box_adagrad", "machine": machine_info(), "batch": args.batch, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
