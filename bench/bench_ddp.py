"""Data-parallel supernet training: 1 process (2 threads, 1 thread) against 2 processes x 1 thread (gloo).

Usage::

    python bench/bench_ddp.py                      # both spaces
    python bench/bench_ddp.py --space full --steps 30 --runs 5

Criteo shape: 13 dense and 26 sparse fields, tables capped at 500,000 rows, embedding dim 16, the same
global batch (512) in every configuration, Adagrad (lr 0.12, eps 1e-2) through nasrec's optimizer,
gradient-norm clipping at 5, layer norms on, sampled paths (the default strategy after the full-path
warm-up) drawn by `supernet_path`, as the trainer does: a new path every step, the same sequence in every
timed run and configuration. Synthetic batches are pre-generated; with W processes rank r trains on rows
[r B/W, (r + 1) B/W) of every global batch and `GradientSync` averages the gradients (see
`nasrec.train.gradsync`), exactly the trainer's step. Every configuration runs in fresh processes
(`torch.multiprocessing.spawn`); each timed run is bracketed by barriers, so it ends when the slowest rank
does. Scaling efficiency = samples/s of 2 x 1 / (2 x samples/s of 1 x 1); the figure that matters on a
2-core machine is 2 x 1 against 1 x 2 (the same cores, as threads or as processes). "comm" is the payload
per rank and step (`SyncStats.comm_bytes`), with what sending whole dense gradients instead of their
nonzero boxes would take; "sync" is rank 0's time in the sync, waiting for the other rank included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line, machine_ticks, own_cpu_s  # bench/ is not a package
from bench_supernet import batches  # identical in every process: a fixed seed

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.model.paths import supernet_path
from nasrec.model.supernet import Supernet
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.clip import clip_grad_norm
from nasrec.train.gradsync import GradientSync
from nasrec.train.optim import build_optimizer

CONFIGS = ((1, 2), (1, 1), (2, 1))  # (processes, threads per process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, threads: int, args: dict, port: int, result: str) -> None:
    """Train the supernet in one of `world` processes; rank 0 writes the timings to `result`."""
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    space = NASREC_SMALL if args["space"] == "small" else NASREC_FULL
    tables = [min(n, args["table_cap"]) for n in CRITEO_TABLE_SIZES]
    torch.manual_seed(args["seed"])  # the same initial weights in every process
    model = Supernet(space, 13, tables, layernorm=True)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2)
    sync = GradientSync.for_model(model) if world > 1 else None
    lb = args["batch"] // world
    data = [
        tuple(t[rank * lb : (rank + 1) * lb] for t in b)
        for b in batches(args["steps"], args["batch"], tables, args["seed"])
    ]
    warmup, steps, runs = args["warmup"], args["steps"], args["runs"]
    # sampled paths, as after the full-path warm-up: a different one every step, the same sequence in
    # every timed run (so that runs differ by timing noise only, not by the paths they drew)
    archs = [supernet_path(space, args["seed"], 10_000 + t, "default", 0) for t in range(warmup + steps)]
    comm: list[int] = []
    whole: list[int] = []  # what sending the used dense gradients whole (not their nonzero boxes) would take
    dense_params = [p for p in model.parameters() if p is not model.embedding.table.weight]
    sync_s = [0.0]

    def step(batch: tuple[torch.Tensor, ...], arch) -> None:
        dense, sparse, y = batch
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse, arch), y)
        loss.backward()
        if sync is not None:
            t0 = time.perf_counter()
            stats = sync(loss, y.shape[0])
            sync_s[0] += time.perf_counter() - t0
            comm.append(stats.comm_bytes)
            whole.append(
                stats.comm_bytes - stats.dense_bytes + sum(4 * p.numel() for p in dense_params if p.grad is not None)
            )
        clip_grad_norm(model.parameters(), 5.0)
        opt.step()

    for t in range(warmup):
        step(data[t % steps], archs[t])
    rates, shares, sync_ms = [], [], []
    for _ in range(runs):
        if world > 1:
            dist.barrier()
        busy0, total0 = machine_ticks()
        cpu0 = own_cpu_s()
        sync_s[0] = 0.0
        t0 = time.perf_counter()
        for t in range(steps):
            step(data[t], archs[warmup + t])
        if world > 1:
            dist.barrier()
        dt = time.perf_counter() - t0
        busy1, total1 = machine_ticks()
        cpu = torch.tensor([own_cpu_s() - cpu0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(cpu)  # the CPU time of all ranks is ours, not "other processes"
        tick = os.sysconf("SC_CLK_TCK")
        other = max(0.0, (busy1 - busy0) / tick - float(cpu)) / max((total1 - total0) / tick, 1e-9)
        rates.append(steps * args["batch"] / dt)
        shares.append(round(other, 3))
        sync_ms.append(1e3 * sync_s[0] / steps)
    if rank == 0:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        timings = {
            "median": round(statistics.median(rates), 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
            "other_share": shares,
            "peak_rss_mb_rank0": round(peak),
        }
        if comm:
            timings["comm_bytes_per_step"] = round(statistics.mean(comm))
            timings["comm_mb_per_step"] = round(statistics.mean(comm) / 2**20, 2)
            timings["comm_mb_per_step_whole_tensors"] = round(statistics.mean(whole) / 2**20, 2)
            timings["sync_ms_per_step"] = round(statistics.median(sync_ms), 1)
        Path(result).write_text(json.dumps(timings))
    if world > 1:
        dist.destroy_process_group()


def measure(procs: int, threads: int, args: argparse.Namespace) -> dict:
    """Samples/s of one (processes, threads) configuration, in fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        mp.spawn(_worker, args=(procs, threads, vars(args), _free_port(), str(result)), nprocs=procs, join=True)
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", choices=["small", "full", "both"], default="both")
    ap.add_argument("--batch", type=int, default=512, help="global batch, the same in every configuration")
    ap.add_argument("--steps", type=int, default=30, help="steps per timed run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--table-cap", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    results = []
    for space in ["small", "full"] if args.space == "both" else [args.space]:
        row: dict = {"space": space, "batch": args.batch}
        for procs, threads in CONFIGS:
            args.space = space
            r = measure(procs, threads, args)
            row[f"{procs}x{threads}"] = r
            print(
                f"{space:<6} {procs} proc x {threads} thread {r['median']:>9,.0f} samples/s "
                f"({r['min']:,.0f} - {r['max']:,.0f})  other {r['other_share']}"
                + (
                    f"  comm {r['comm_mb_per_step']} MiB/step (whole tensors: "
                    f"{r['comm_mb_per_step_whole_tensors']}), sync {r['sync_ms_per_step']} ms/step"
                    if "comm_mb_per_step" in r
                    else ""
                ),
                flush=True,
            )
        two, one, one2 = row["2x1"]["median"], row["1x1"]["median"], row["1x2"]["median"]
        row["scaling_efficiency_vs_1x1"] = round(two / (2 * one), 3)
        row["speedup_vs_1x2"] = round(two / one2, 3)
        print(
            f"{space:<6} scaling efficiency (2x1 vs 2 * 1x1) {row['scaling_efficiency_vs_1x1']:.2f}, "
            f"2x1 / 1x2 {row['speedup_vs_1x2']:.2f}",
            flush=True,
        )
        results.append(row)
    print(json.dumps({"bench": "ddp", "machine": machine_info(), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
