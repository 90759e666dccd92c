"""Memory per process of TorchRec sharding plans (`--embeddings torchrec --sharding`), planned and measured.

Usage::

    python bench/bench_sharding.py plan                      # the planner's memory per rank, large tables
    torchrun --standalone --nproc_per_node 2 bench/bench_sharding.py measure --rows 1000000 --tables 8

``plan`` asks TorchRec's planner (`nasrec.backend.sharding.plan_tables`, as a sharded run does, with the
tables' fused row-wise Adagrad) to place two table sets on 2, 8 and 64 ranks, and prints its own storage
estimate per rank (weights, optimizer state, buffers): the largest and the smallest rank.

- ``criteo-1tb``: the 26 tables of the Criteo 1TB click logs with every field hashed to at most 40 M rows
  (MLPerf's DLRM setting, also TorchRec's DLRM example; 204 M rows), at dimension 64.
- ``industrial``: one table of 10^9 rows at dimension 64 beside the Criteo 1TB tables.

Row-wise sharding is planned for GPUs (TorchRec's CPU sharder offers table-wise and column-wise only);
the other two are planned for CPU processes. Each rank is given 16 TiB, so that every plan is placed and
the figure is what it needs, not what fits.

``measure`` runs under torchrun on this machine: each process builds the tables as a sharded nasrec run
does (a `FieldEmbedding` on the meta device, `deferred_tables`, swapped for sharded TorchRec tables whose
shards it fills from each table's own generator, `nasrec.backend.fused.use_torchrec`), trains 5 steps on
random ids, and reports its resident memory above what it held before the tables existed, next to the
planner's estimate for its rank, and its peak (which adds one whole table: a shard is cut from its
table's generated values).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line

# Criteo 1TB, each field hashed to at most 40 M ids (MLPerf DLRM / TorchRec's DLRM example)
CRITEO_1TB_40M = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
TIB = 2**40


def _configs(sizes: list[int], dim: int) -> list:
    from torchrec import EmbeddingBagConfig

    return [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=dim, num_embeddings=n, feature_names=[f"f{i}"])
        for i, n in enumerate(sizes)
    ]


def _rowwise() -> tuple[type, dict]:
    from torchrec.optim import RowWiseAdagrad

    return RowWiseAdagrad, {"lr": 0.1, "eps": 1e-2}


def plan(dim: int, worlds: list[int]) -> list[dict]:
    """The planner's memory per rank for each table set, sharding and world size."""
    from nasrec.backend.sharding import plan_tables, planned_memory

    sets = {"criteo-1tb": list(CRITEO_1TB_40M), "industrial": [1_000_000_000, *CRITEO_1TB_40M]}
    rows = []
    for name, sizes in sets.items():
        weights = sum(sizes) * dim * 4
        for sharding, device in (("table-wise", "cpu"), ("column-wise", "cpu"), ("row-wise", "cuda")):
            for world in worlds:
                planners: list = []
                plan_tables(_configs(sizes, dim), sharding, world, device, 16 * TIB, None, _rowwise(), planners)
                per_rank = planned_memory(planners[0], world, device)
                row = {
                    "tables": name,
                    "rows": sum(sizes),
                    "dim": dim,
                    "weights_gib": round(weights / 2**30, 2),
                    "sharding": sharding,
                    "device": device,
                    "world": world,
                    "max_rank_gib": round(max(per_rank) / 2**30, 2),
                    "min_rank_gib": round(min(per_rank) / 2**30, 2),
                    "ideal_gib": round(sum(per_rank) / world / 2**30, 2),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(tables: int, rows: int, dim: int, sharding: str) -> dict:
    """This process's memory with its shards of `tables` tables of `rows` x `dim`, against the planner's figure."""
    import torch.distributed as dist
    from torch import nn

    from nasrec.backend.fused import use_torchrec
    from nasrec.backend.sharding import plan_tables, planned_memory
    from nasrec.model.embedding import FieldEmbedding, deferred_tables

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    sizes = [rows] * tables
    planners: list = []
    plan_tables(_configs(sizes, dim), sharding, world, "cpu", 16 * TIB, None, _rowwise(), planners)
    planned = planned_memory(planners[0], world, "cpu")[rank]
    gc.collect()
    before = _status_bytes("VmRSS")
    holder = nn.Module()
    with deferred_tables():
        holder.embedding = FieldEmbedding(sizes, dim)
    use_torchrec(holder, "rowwise_adagrad", lr=0.1, eps=1e-2, sharding=sharding)
    gc.collect()
    g = torch.Generator().manual_seed(rank)
    for _ in range(5):
        ids = torch.stack([torch.randint(0, rows, (512,), generator=g) for _ in sizes], 1)
        holder.embedding(ids).square().mean().backward()
    gc.collect()
    after = _status_bytes("VmRSS")
    result = {
        "rank": rank,
        "world": world,
        "sharding": sharding,
        "tables": tables,
        "rows": rows,
        "dim": dim,
        "planned_gib": round(planned / 2**30, 3),
        "measured_gib": round((after - before) / 2**30, 3),
        "peak_gib": round((_status_bytes("VmHWM") - before) / 2**30, 3),
    }
    results = [None] * world
    dist.all_gather_object(results, result)
    dist.destroy_process_group()
    return {"rank": rank, "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 8, 64])
    m = sub.add_parser("measure")
    m.add_argument("--tables", type=int, default=8)
    m.add_argument("--rows", type=int, default=1_000_000)
    m.add_argument("--dim", type=int, default=64)
    m.add_argument("--sharding", choices=["table-wise", "column-wise"], default="table-wise")
    args = ap.parse_args(argv)
    if args.what == "plan":
        print(machine_line(), flush=True)
        rows = plan(args.dim, args.worlds)
        print(json.dumps({"bench": "sharding-plan", "machine": machine_info(), "results": rows}))
        return 0
    out = measure(args.tables, args.rows, args.dim, args.sharding)
    if out["rank"] == 0:
        print(machine_line(), flush=True)
        for r in out["results"]:
            print(json.dumps(r), flush=True)
        print(json.dumps({"bench": "sharding-measure", "machine": machine_info(), "results": out["results"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
