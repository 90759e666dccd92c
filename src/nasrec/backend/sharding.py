"""Tables sharded over the processes of a torchrun job: TorchRec's planner and `DistributedModelParallel`.

Each `TorchRecEmbedding` built with a `sharding` holds an `EmbeddingBagCollection` wrapped alone in a
`DistributedModelParallel` (no data-parallel wrapper: nasrec's `GradientSync` keeps the dense part in
step). TorchRec's planner places every table by the sharding asked for; in the forward pass the ids of
each process's examples travel to the processes that hold their rows and the pooled vectors come back
(all-to-all); in the backward the gradients go the same way and the fused optimizer updates each
shard where it lives. TorchRec averages those gradients over the processes, so a W-process run follows
one process with the same global batch to float rounding.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from nasrec.errors import NasrecError

# --sharding's names and TorchRec's
SHARDINGS = {"table-wise": "table_wise", "column-wise": "column_wise", "row-wise": "row_wise"}
# TorchRec's sharder for CPU processes offers these only (data_parallel, table_wise, column_wise,
# table_column_wise); row-wise sharding runs on GPUs
CPU_SHARDINGS = ("table-wise", "column-wise")
RESERVED = 0.2  # the share of each process's memory the planner leaves to all but the tables


class _Tables(nn.Module):
    """The collection `DistributedModelParallel` wraps: KJT -> the pooled `KeyedTensor`."""

    def __init__(self, ebc: nn.Module) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, kjt: Any) -> Any:
        return self.ebc(kjt)


def memory_per_process(device: str = "cpu") -> int:
    """Bytes one process may plan its table shards into: its GPU's memory, or its share of the host's."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def _column_block(dim: int, world: int) -> int:
    """Column-wise shards' width: the table's columns spread over the processes, 4k wide (fbgemm's unit)."""
    return max(4, dim // world // 4 * 4)


def _holder(configs: list[Any], optimizer: tuple[type, dict[str, Any]] | None) -> _Tables:
    """The tables on the meta device (nothing allocated), their fused optimizer attached for the planner."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    holder = _Tables(EmbeddingBagCollection(tables=configs, device=torch.device("meta")))
    if optimizer is not None:  # the planner counts the optimizer's state into each shard's storage
        apply_optimizer_in_backward(optimizer[0], holder.ebc.parameters(), optimizer[1])
    return holder


def plan_tables(
    configs: list[Any],
    sharding: str,
    world: int,
    device: str = "cpu",
    memory: int | None = None,
    group: Any = None,
    optimizer: tuple[type, dict[str, Any]] | None = None,
    planner_out: list[Any] | None = None,
) -> Any:
    """TorchRec's sharding plan for `configs` over `world` processes, every table sharded as asked.

    With a process `group` every process gets rank 0's plan; without one the planner runs here alone (to
    read a plan's memory per process, as `bench/bench_sharding.py` does; `planner_out` receives the
    planner). A plan that cannot fit is TorchRec's planner error, reworded to name the largest table and
    the memory it needs.
    """
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import PlannerError

    if sharding not in SHARDINGS:
        raise NasrecError(f"unknown sharding {sharding!r} (expected one of: {', '.join(SHARDINGS)})")
    if device == "cpu" and sharding not in CPU_SHARDINGS:
        raise NasrecError(
            f"--sharding {sharding}: TorchRec shards rows on GPUs only; CPU processes take {' or '.join(CPU_SHARDINGS)}"
        )
    memory = memory_per_process(device) if memory is None else memory
    kind = SHARDINGS[sharding]
    holder = _holder(configs, optimizer)
    constraints = {
        c.name: ParameterConstraints(sharding_types=[kind], min_partition=_column_block(c.embedding_dim, world))
        for c in configs
    }
    caps = {"ddr_cap": memory} if device == "cpu" else {"hbm_cap": memory}
    topology = Topology(world_size=world, compute_device=device, **caps)
    # A fixed share of each process's memory is kept for everything but the tables (the dense part, batches,
    # activations); TorchRec's default estimates it from the module, which here holds the tables alone
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, storage_reservation=FixedPercentageStorageReservation(RESERVED)
    )
    sharders = [EmbeddingBagCollectionSharder()]
    if planner_out is not None:
        planner_out.append(planner)
    try:
        if group is None:
            return planner.plan(holder, sharders)
        return planner.collective_plan(holder, sharders, group)
    except PlannerError as exc:
        biggest = max(configs, key=lambda c: c.num_embeddings * c.embedding_dim)
        need = biggest.num_embeddings * biggest.embedding_dim * 4
        raise NasrecError(
            f"TorchRec's planner cannot place the tables {sharding} over {world} processes of "
            f"{memory / 2**30:.1f} GiB each ({RESERVED:.0%} kept for the rest): the largest, {biggest.name} ({biggest.num_embeddings:,} rows x "
            f"{biggest.embedding_dim}), needs {need / 2**30:.1f} GiB for its weights alone, plus its optimizer "
            f"state ({str(exc).splitlines()[0][:200]})"
        ) from None


def shard_tables(
    configs: list[Any], optimizer: type, kwargs: dict[str, Any], sharding: str, device: torch.device
) -> nn.Module:
    """The tables of `configs` sharded over the current process group, their optimizer fused into backward."""
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel

    if not dist.is_initialized():
        raise NasrecError(f"--sharding {sharding} spreads the tables over torchrun's processes: start it with torchrun")
    fused = (optimizer, kwargs)
    plan = plan_tables(configs, sharding, dist.get_world_size(), device.type, group=dist.group.WORLD, optimizer=fused)
    holder = _holder(configs, fused)
    return DistributedModelParallel(
        holder, device=device, plan=plan, sharders=[EmbeddingBagCollectionSharder()], init_data_parallel=False
    )


def _offsets(shard: Any) -> tuple[int, int]:
    offsets = list(shard.metadata.shard_offsets)
    return int(offsets[0]), int(offsets[1]) if len(offsets) > 1 else 0


def local_pieces(state: dict[str, Any], pattern: str, tables: int) -> list[tuple[int, int, int, torch.Tensor]]:
    """This process's table shards in a sharded collection's state dict: (table, first row, first column, tensor)."""
    out = []
    for i in range(tables):
        key = next(k for k in state if k.endswith(pattern.format(i)))
        for shard in state[key].local_shards():
            out.append((i, *_offsets(shard), shard.tensor))
    return out


def local_state_pieces(state: dict[str, Any]) -> dict[str, list[tuple[int, int, torch.Tensor]]]:
    """This process's shards of a fused optimizer's state: name -> [(first row, first column, tensor)]."""
    out: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
    for per_table in state.values():
        for name, value in per_table.items():
            if hasattr(value, "local_shards"):
                out[name.split("embedding_bags.")[-1]] = [(*_offsets(s), s.tensor) for s in value.local_shards()]
    return out


def planned_memory(planner: Any, world: int, device: str = "cpu") -> list[int]:
    """Bytes per process of the last plan `planner` made: its own storage estimate of every shard placed there.

    TorchRec's estimate: the shard's weights, its optimizer state and its input/output buffers.
    """
    per_rank = [0] * world
    for option in planner._best_plan or []:  # the options of the plan it returned (TorchRec keeps no public copy)
        for shard in option.shards:
            storage = shard.storage
            per_rank[shard.rank] += storage.ddr if device == "cpu" else storage.hbm
    return per_rank
