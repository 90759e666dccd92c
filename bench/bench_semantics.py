"""What slicing changes: supernet ranking quality with nasrec's sliced weights against the reference's masks.

Usage::

    python bench/bench_semantics.py --space full --rows 60000 --k 24

On one prepared dataset (as `bench/bench_quality.py` prepares it, under the same `--work`):

1. two supernets over `--space` with the same "cpu-supernet" recipe and seed (`--epochs` epochs, full-path
   warm-up over the first quarter of the steps): `semantics="slice"` (nasrec) and `semantics="mask"` (the
   reference's full-width operators, layer norms over all positions, dot product on 45 tokens, attention
   over masked zero tokens; `nasrec.model.cell.Cell.forward`);
2. `--k` architectures drawn once (`rankcheck`'s draw, seed 0; with `--max-mflops` only those within the
   cap), trained from scratch once with the quality benchmark's recipe (at most `--rank-epochs` epochs,
   layer norms and `--nasrec-lr` as the search benchmark's nasrec models), shared by every rank check;
3. each supernet scores them with each fine-tune mode of `--finetune` (`head`: through the supernet's own
   path, so its semantics; `all`: the materialised standalone model, so only the trained weights differ),
   `--finetune-steps` steps: Kendall tau and Spearman rho against the from-scratch validation losses.

Prints one JSON line per supernet and per rank check, then per fine-tune mode tau(mask) - tau(slice) with a
95 % paired bootstrap over the architectures, and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package
from bench_quality import prepare_dataset, recipe
from scipy.stats import kendalltau

from nasrec.data.cache import open_cache
from nasrec.search.rankcheck import rankcheck
from nasrec.train.api import train_supernet


def tau_difference(
    a: list[float], b: list[float], truth: list[float], rounds: int = 4000
) -> tuple[float, float, float]:
    """Kendall tau of `a` minus that of `b` against `truth`, with a 95 % paired bootstrap over the architectures."""
    a_, b_, t = np.asarray(a), np.asarray(b), np.asarray(truth)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(rounds):
        i = rng.integers(0, len(t), len(t))
        d = kendalltau(a_[i], t[i]).statistic - kendalltau(b_[i], t[i]).statistic
        if np.isfinite(d):  # a resample with a constant column has no tau
            diffs.append(d)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(kendalltau(a_, t).statistic - kendalltau(b_, t).statistic), float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--rows", type=int, default=60_000, help="rows of the synthetic dataset")
    ap.add_argument("--space", default="full")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nasrec-bench-quality"))
    ap.add_argument("--epochs", type=int, default=4, help="supernet epochs")
    ap.add_argument("--k", type=int, default=24, help="architectures of the rank checks")
    ap.add_argument("--rank-epochs", type=int, default=2, help="training epochs of each architecture from scratch")
    ap.add_argument("--finetune", nargs="+", default=["head", "all"], choices=["head", "all"])
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--nasrec-lr", type=float, default=0.15, help="learning rate of the architectures from scratch")
    ap.add_argument("--max-mflops", help="draw only architectures within this cap (MFLOPs or a zoo model)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of supernet training")
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    cache = prepare_dataset(args.dataset, args.work, 2, args.rows, "interactions")
    steps = args.epochs * (len(open_cache(cache).split_index("train")) // 512)
    base = args.work / f"semantics-{args.dataset}-{args.space}"
    rows = []
    supernets = {}
    for semantics in ("slice", "mask"):
        sn = base / f"supernet-{semantics}"
        t0 = time.perf_counter()
        m = train_supernet(
            cache,
            sn,
            space=args.space,
            preset_name="cpu-supernet",
            resume=True,
            semantics=semantics,
            overrides=dict(epochs=args.epochs, path_warmup_steps=steps // 4, threads=args.threads),
            progress=False,
        )
        supernets[semantics] = sn
        row = {
            "supernet": semantics,
            "seconds": round(time.perf_counter() - t0),
            "steps": m["steps"],
            "samples_per_s": m.get("samples_per_s"),
            "val_logloss": m.get("logloss"),
        }
        print(json.dumps(row), flush=True)
    train = dict(recipe(args.dataset, cache, 0), epochs=args.rank_epochs, layernorm=True, lr=args.nasrec_lr)
    shared_runs = base / "runs"  # the from-scratch trainings, the same for every check
    for semantics, sn in supernets.items():
        for ft in args.finetune:
            out = base / f"rankcheck-{semantics}-{ft}"
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "runs").exists():
                shared_runs.mkdir(parents=True, exist_ok=True)
                (out / "runs").symlink_to(shared_runs.resolve(), target_is_directory=True)
            t0 = time.perf_counter()
            rc = rankcheck(
                sn,
                cache,
                out,
                k=args.k,
                preset="cpu",
                train_overrides=train,
                workers=args.workers,
                score_overrides={"finetune": ft, "finetune_steps": args.finetune_steps},
                max_mflops=args.max_mflops,
            )
            row = {
                "supernet": semantics,
                "finetune": ft,
                "kendall_tau": rc["kendall_tau"],
                "spearman_rho": rc["spearman_rho"],
                "pairs": rc["pairs"],
                "seconds": round(time.perf_counter() - t0),
                "scores": [c["supernet_score"] for c in rc["candidates"]],
                "scratch": [c["scratch_val_logloss"] for c in rc["candidates"]],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for ft in args.finetune:  # the same architectures under both supernets: a paired bootstrap over them
        by = {r["supernet"]: r for r in rows if r["finetune"] == ft}
        diff, low, high = tau_difference(by["mask"]["scores"], by["slice"]["scores"], by["slice"]["scratch"])
        between = kendalltau(by["mask"]["scores"], by["slice"]["scores"]).statistic
        print(
            json.dumps(
                {
                    "finetune": ft,
                    "tau_mask_minus_slice": diff,
                    "bootstrap_95": [low, high],
                    "tau_between_supernets": between,
                }
            )
        )
    print("| supernet | fine-tune | Kendall tau | Spearman rho | architectures |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['supernet']} | {r['finetune']} | {r['kendall_tau']:.3f} | {r['spearman_rho']:.3f} | {r['pairs']} |"
        )
    print(json.dumps({"bench": "semantics", "machine": machine_info(), "dataset": args.dataset, "space": args.space}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
