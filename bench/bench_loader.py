"""Throughput of nasrec.data.loader.BatchLoader in rows/s over a synthetic 2,000,000-row cache.

Usage::

    python bench/bench_loader.py                      # build a temporary cache under /tmp, then delete it
    python bench/bench_loader.py --cache /tmp/c2m     # build it there once, reuse it on later runs

Every configuration gets one untimed warm-up epoch (which also pulls the cache into the page cache),
then ``--runs`` (at least 5) timed runs, each of as many whole epochs as fill ``--min-run-s``. Around
each timed run the machine-wide busy time from /proc/stat is sampled and this process's own CPU time
(getrusage) is subtracted from it; what remains is the share of the machine used by *other* processes,
printed per run and flagged above 5%, because a busy neighbour on a 2-core machine distorts the
figures. The median and min–max are reported, plus peak RSS, as a table and as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasrec.data.cache import AppendableArray, CacheWriter, open_cache
from nasrec.data.loader import DEFAULT_GROUP_BATCHES, BatchLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import LoadSample, machine_info, machine_line  # bench/ is not a package

TARGET_ROWS_S = 2_000_000
NOISY_SHARE = 0.05
MIN_RUNS = 5
_BUILD_CHUNK = 250_000  # rows generated at a time, so building the cache does not inflate peak RSS


def build_cache(out: Path, rows: int, n_dense: int, n_sparse: int, seed: int = 0) -> None:
    """Write a synthetic cache of random features (train = every row) to ``out``."""
    rng = np.random.default_rng(seed)
    table_size = 100_000
    with CacheWriter(out) as w:
        dense = AppendableArray(w.path("dense.npy"), np.float32, (n_dense,))
        sparse = AppendableArray(w.path("sparse.npy"), np.int32, (n_sparse,))
        label = AppendableArray(w.path("label.npy"), np.float32)
        for start in range(0, rows, _BUILD_CHUNK):
            n = min(_BUILD_CHUNK, rows - start)
            dense.append(rng.standard_normal((n, n_dense), dtype=np.float32))
            sparse.append(rng.integers(0, table_size, (n, n_sparse), dtype=np.int32))
            label.append((rng.random(n) < 0.25).astype(np.float32))
        for a in (dense, sparse, label):
            a.close()
        np.save(w.path("splits/train.npy"), np.arange(rows, dtype=np.int64))
        np.save(w.path("splits/val.npy"), np.zeros(0, np.int64))
        np.save(w.path("splits/test.npy"), np.zeros(0, np.int64))
        w.commit(
            {
                "dense_fields": [f"I{j + 1}" for j in range(n_dense)],
                "sparse_fields": [f"C{j + 1}" for j in range(n_sparse)],
                "table_sizes": [table_size] * n_sparse,
                "split": {"rows": {"train": rows, "val": 0, "test": 0}},
                "synthetic": True,
            }
        )


@dataclass
class Run:
    """One timed epoch."""

    rows_s: float
    other_share: float  # share of the whole machine used by other processes during the run


def time_epoch(loader: BatchLoader, epoch: int) -> tuple[int, float]:
    """Consume one epoch; return (rows seen, seconds)."""
    rows = 0
    t0 = time.perf_counter()
    for batch in loader.iter_epoch(epoch):
        rows += batch.label.shape[0]
    return rows, time.perf_counter() - t0


def measure(loader: BatchLoader, runs: int, min_run_s: float) -> tuple[list[Run], int]:
    """Warm up, then time ``runs`` runs of whole epochs; return the runs and the epochs per run."""
    _, warm_s = time_epoch(loader, epoch=0)
    # A run repeats whole epochs until it lasts about min_run_s: a 25 ms file-order epoch alone would be
    # too short both for a stable timing and for /proc/stat's 10 ms ticks.
    epochs = max(1, math.ceil(min_run_s / max(warm_s, 1e-6)))
    out = []
    for r in range(runs):
        load = LoadSample()
        load.start()
        rows, dt = 0, 0.0
        for e in range(epochs):
            n, t = time_epoch(loader, epoch=1 + r * epochs + e)
            if n != loader.num_rows:
                raise RuntimeError(f"epoch yielded {n} rows, expected {loader.num_rows}")
            rows, dt = rows + n, dt + t
        out.append(Run(rows_s=rows / dt, other_share=load.stop()))
    return out, epochs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table and a JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, help="cache directory to reuse (built there first if missing)")
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of a newly built cache")
    p.add_argument("--dense", type=int, default=13, help="dense columns of a newly built cache")
    p.add_argument("--sparse", type=int, default=26, help="sparse columns of a newly built cache")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--group-batches", type=int, default=DEFAULT_GROUP_BATCHES)
    p.add_argument("--prefetch", type=int, default=2, help="queue depth of the prefetching configurations")
    p.add_argument("--runs", type=int, default=MIN_RUNS, help=f"timed epochs per configuration (>= {MIN_RUNS})")
    p.add_argument("--min-run-s", type=float, default=1.0, help="repeat epochs until a timed run lasts this long")
    args = p.parse_args(argv)
    print(machine_line(), flush=True)
    if args.runs < MIN_RUNS:
        p.error(f"--runs must be at least {MIN_RUNS}")

    torch.set_num_threads(2)
    tmp = None
    if args.cache is None:
        tmp = Path(tempfile.mkdtemp(prefix="nasrec-bench-loader-", dir="/tmp"))
        cache_dir = tmp / "cache"
    else:
        cache_dir = args.cache
    try:
        if not (cache_dir / "meta.json").is_file():
            t0 = time.perf_counter()
            build_cache(cache_dir, args.rows, args.dense, args.sparse)
            print(f"built {cache_dir} ({args.rows:,} rows) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        cache = open_cache(cache_dir)
        rss_open_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        configs = [
            ("shuffled", True, 0),
            ("shuffled+prefetch", True, args.prefetch),
            ("file-order", False, 0),
            ("file-order+prefetch", False, args.prefetch),
        ]
        results = []
        for name, shuffle, prefetch in configs:
            loader = BatchLoader(
                cache,
                args.split,
                batch_size=args.batch_size,
                shuffle=shuffle,
                prefetch=prefetch,
                group_batches=args.group_batches,
            )
            runs, epochs = measure(loader, args.runs, args.min_run_s)
            rates = [r.rows_s for r in runs]
            results.append(
                {
                    "name": name,
                    "shuffle": shuffle,
                    "prefetch": prefetch,
                    "epochs_per_run": epochs,
                    "median_rows_s": round(statistics.median(rates)),
                    "min_rows_s": round(min(rates)),
                    "max_rows_s": round(max(rates)),
                    "runs_rows_s": [round(x) for x in rates],
                    "other_share": [round(r.other_share, 4) for r in runs],
                    "noisy_runs": sum(r.other_share > NOISY_SHARE for r in runs),
                }
            )
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    rows, n_dense, n_sparse = cache.rows, len(cache.dense_fields), len(cache.sparse_fields)
    print(
        f"\nBatchLoader, {rows:,} rows x ({n_dense} dense, {n_sparse} sparse), "
        f"split {args.split!r}, batch {args.batch_size}, group {args.group_batches} batches, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {args.runs} timed runs each"
    )
    header = f"{'config':<22}{'epochs/run':>10}{'median rows/s':>15}{'min – max rows/s':>28}"
    print(f"{header}   other processes per run")
    for r in results:
        shares = " ".join(f"{s:.1%}" + ("!" if s > NOISY_SHARE else "") for s in r["other_share"])
        span = f"{r['min_rows_s']:,} – {r['max_rows_s']:,}"
        print(f"{r['name']:<22}{r['epochs_per_run']:>10}{r['median_rows_s']:>15,}{span:>28}   {shares}")
    noisy = sum(r["noisy_runs"] for r in results)
    if noisy:
        print(f"! {noisy} run(s) had other processes above {NOISY_SHARE:.0%} of the machine: figures may be low")
    shuffled = next(r for r in results if r["name"] == "shuffled")
    met = shuffled["median_rows_s"] >= TARGET_ROWS_S
    print(
        f"peak RSS {peak_rss_mib:.0f} MiB (after opening the cache {rss_open_mib:.0f} MiB); "
        f"target {TARGET_ROWS_S:,} rows/s shuffled: {'met' if met else 'NOT met'}"
    )
    summary = {
        "bench": "loader",
        "rows": rows,
        "dense": n_dense,
        "sparse": n_sparse,
        "split": args.split,
        "batch_size": args.batch_size,
        "group_batches": args.group_batches,
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "runs": args.runs,
        "results": results,
        "peak_rss_mib": round(peak_rss_mib, 1),
        "target_rows_s": TARGET_ROWS_S,
        "target_met": met,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
