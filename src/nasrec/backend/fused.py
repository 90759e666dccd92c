"""TorchRec's fused embedding tables in place of nasrec's own (`TrainConfig.embeddings: torchrec`).

`use_torchrec` swaps every `FieldEmbedding` of a built model whose width fbgemm accepts (a multiple of
4) for a `TorchRecEmbedding`: the same rows, one TorchRec table per field, held in a
`FusedEmbeddingBagCollection` whose fbgemm kernels apply the optimizer inside the backward pass. The
tables then never hold a gradient, and the run's optimizer (`build_optimizer`) sees only the dense
parameters plus a `FusedTables` part that carries the tables' learning rate (so lr schedules drive them)
and their optimizer state (so checkpoints resume exactly).

A `TorchRecEmbedding` reads and writes its weights in `FieldEmbedding`'s layout (`table.weight`, the
fields' rows stacked), so its checkpoints load into a model built with nasrec's own tables: `evaluate`,
`predict` and `export` take them as they are. The per-field first-order weights of the zoo's LR part
(width 1) stay nasrec tables with sparse gradients.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nasrec.backend import FUSED_OPTIMIZERS, require_torchrec
from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding

log = logging.getLogger(__name__)


def fused_optimizer(name: str, lr: float, eps: float) -> tuple[type, dict[str, Any]]:
    """The optimizer class and keyword arguments TorchRec fuses for the embedding optimizer `name`."""
    require_torchrec()
    from torchrec.optim import RowWiseAdagrad

    if name not in FUSED_OPTIMIZERS:
        raise NasrecError(
            f"unknown fused embedding optimizer {name!r} (expected one of: {', '.join(FUSED_OPTIMIZERS)})"
        )
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr}
    cls = {"adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad, "adam": torch.optim.Adam}[name]
    return cls, {"lr": lr, "eps": eps}


class TorchRecEmbedding(nn.Module):
    """A `FieldEmbedding`'s tables as a TorchRec `FusedEmbeddingBagCollection`: [B, S] ids -> [B, S, dim].

    The collection is kept out of the module tree on purpose: its weights take no gradient and no part in
    the run's optimizer, and the state dict shows them in `FieldEmbedding`'s layout (see module docstring).
    """

    def __init__(
        self,
        source: FieldEmbedding,
        optimizer: str,
        lr: float,
        eps: float,
        sharding: str | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        require_torchrec()
        from torchrec import EmbeddingBagConfig

        self.table_sizes, self.dim, self.optimizer, self.lr = source.table_sizes, source.dim, optimizer, lr
        self.sharding = sharding
        self.keys = [f"f{i}" for i in range(len(self.table_sizes))]
        configs = [
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=self.dim, num_embeddings=n, feature_names=[key])
            for i, (n, key) in enumerate(zip(self.table_sizes, self.keys, strict=True))
        ]
        cls, kwargs = fused_optimizer(optimizer, lr, eps)
        device = source.offsets.device if device is None else device
        try:
            if sharding is None:
                from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

                ebc = FusedEmbeddingBagCollection(
                    tables=configs, optimizer_type=cls, optimizer_kwargs=kwargs, device=device
                )
            else:
                from nasrec.backend.sharding import shard_tables

                ebc = shard_tables(configs, cls, kwargs, sharding, device)
        except AssertionError as exc:  # fbgemm's own checks (e.g. "Optimizer adam is not supported in CPU mode")
            raise NasrecError(
                f"TorchRec cannot fuse embedding optimizer {optimizer!r} on {device.type}: {exc}; "
                "on CPU use embedding_optimizer adagrad, rowwise_adagrad or sgd"
            ) from None
        self.__dict__["ebc"] = ebc  # not a child module: see the class docstring
        if source.table.weight.is_meta:  # built deferred (`deferred_tables`): each shard from its table's generator
            self._init_from(source)
        else:
            self._copy_in(source.table.weight.detach())

    def weights(self) -> list[torch.Tensor]:
        """The per-field tables (fbgemm's storage, [N_i, dim] each); one process only."""
        if self.sharding is not None:
            raise NasrecError("the tables are sharded over the processes: no process holds them whole")
        return [self.ebc.embedding_bags[f"t{i}"].weight for i in range(len(self.table_sizes))]

    def local_shards(self) -> list[tuple[int, int, int, torch.Tensor]]:
        """This process's pieces of the tables: (table index, first row, first column, tensor), live."""
        if self.sharding is None:
            return [(i, 0, 0, w) for i, w in enumerate(self.weights())]
        from nasrec.backend.sharding import local_pieces

        return local_pieces(self.ebc.state_dict(), "embedding_bags.t{}.weight", len(self.table_sizes))

    @torch.no_grad()
    def _copy_in(self, stacked: torch.Tensor) -> None:
        if tuple(stacked.shape) != (sum(self.table_sizes), self.dim):
            raise NasrecError(
                f"embedding weights of shape {tuple(stacked.shape)} do not fit tables of {sum(self.table_sizes):,} rows x {self.dim}"
            )
        starts = [0, *itertools.accumulate(self.table_sizes)]
        for i, row, col, t in self.local_shards():
            r0 = starts[i] + row
            t.copy_(stacked[r0 : r0 + t.shape[0], col : col + t.shape[1]])

    @torch.no_grad()
    def _init_from(self, source: FieldEmbedding) -> None:
        for i, row, col, t in self.local_shards():
            t.copy_(source.table_init(i)[row : row + t.shape[0], col : col + t.shape[1]])

    @property
    def table(self) -> nn.Embedding:
        """A copy of the tables as one `nn.Embedding`, rows stacked as `FieldEmbedding.table` holds them."""
        out = nn.Embedding(sum(self.table_sizes), self.dim)
        with torch.no_grad():
            out.weight.copy_(torch.cat([w.detach() for w in self.weights()]))
        return out

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """[B, S] ids (each within its field's table) -> [B, S, dim] vectors."""
        from torchrec import KeyedJaggedTensor

        b, s = sparse.shape
        # one id per field and example, field-major: lengths of 1 and pooling over a single row
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=sparse.t().reshape(-1),
            lengths=torch.ones(b * s, dtype=torch.int32, device=sparse.device),
        )
        out = self.ebc(kjt)
        if out.keys() != self.keys:  # sharded: the pooled vectors come grouped by the process that holds them
            pooled = out.to_dict()
            return torch.stack([pooled[k] for k in self.keys], dim=1)
        return out.values().view(b, s, self.dim)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        if self.sharding is None:  # sharded tables are written by each process (`nasrec.backend.sharding`)
            destination[prefix + "table.weight"] = torch.cat([w.detach() for w in self.weights()])

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "table.weight"
        if key not in state_dict:
            if self.sharding is None:  # sharded tables are read by each process (`nasrec.backend.sharding`)
                missing_keys.append(key)
            return
        try:
            self._copy_in(state_dict[key])
        except NasrecError as exc:
            error_msgs.append(str(exc))

    # -- the optimizer's side ------------------------------------------------------------------
    def _fused(self) -> Any:
        return self.ebc.fused_optimizer if self.sharding is not None else self.ebc.fused_optimizer()

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next fused updates."""
        fused = self._fused()
        for group in fused.param_groups:
            group["lr"] = lr
        fused.step()  # fbgemm's fused optimizers pass their groups' lr to the kernels here; nothing else

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """The fused optimizer's state tensors (live), by name (e.g. "t0.weight.momentum_1"); one process."""
        if self.sharding is not None:
            raise NasrecError("the tables are sharded: their optimizer state is in each process's shard file")
        state = self._fused().state_dict()["state"]
        return {name: t for per_table in state.values() for name, t in per_table.items()}

    def local_optimizer_shards(self) -> dict[str, list[tuple[int, int, torch.Tensor]]]:
        """This process's pieces of the fused optimizer state: name -> [(first row, first column, tensor)], live."""
        if self.sharding is None:
            return {name: [(0, 0, t)] for name, t in self.optimizer_state().items()}
        from nasrec.backend.sharding import local_state_pieces

        return local_state_pieces(self._fused().state_dict()["state"])

    def extra_repr(self) -> str:
        shards = f", sharding={self.sharding}" if self.sharding else ""
        return f"tables={len(self.table_sizes)}, rows={sum(self.table_sizes):,}, dim={self.dim}, optimizer={self.optimizer}{shards}"


def fused_tables(model: nn.Module) -> list[TorchRecEmbedding]:
    """The model's `TorchRecEmbedding` modules, in module order."""
    return [m for m in model.modules() if isinstance(m, TorchRecEmbedding)]


def use_torchrec(
    model: nn.Module,
    optimizer: str,
    lr: float,
    eps: float,
    first_order_lr: float | None = None,
    sharding: str | None = None,
    device: torch.device | None = None,
) -> int:
    """Swap the model's `FieldEmbedding`s of width 4k for `TorchRecEmbedding`s (same weights); how many.

    `sharding` ("table-wise", "column-wise", "row-wise"; under torchrun): the tables are spread over the
    processes by TorchRec's planner and `DistributedModelParallel` (`nasrec.backend.sharding`).
    """
    require_torchrec()
    swaps: list[tuple[nn.Module, str, FieldEmbedding, float]] = []

    def walk(module: nn.Module, part_lr: float) -> None:
        if getattr(module, "lr_group", None) == "first_order" and first_order_lr is not None:
            part_lr = first_order_lr
        for name, child in module.named_children():
            if isinstance(child, FieldEmbedding):
                if child.dim % 4 == 0:  # fbgemm's tables are 4k wide; the LR part's width-1 ones stay ours
                    swaps.append((module, name, child, part_lr))
            else:
                walk(child, part_lr)

    walk(model, lr)
    for parent, name, child, part_lr in swaps:
        setattr(parent, name, TorchRecEmbedding(child, optimizer, part_lr, eps, sharding, device))
    if not swaps:
        raise NasrecError("--embeddings torchrec: the model has no embedding table of a width fbgemm takes (4k)")
    log.info("TorchRec embeddings: %d collection(s), fused %s", len(swaps), optimizer)
    return len(swaps)


class FusedTables:
    """The optimizer part of a model's fused tables: an lr per table set, and their state for checkpoints.

    Quacks like the torch optimizers `SplitOptimizer` holds: one param group per `TorchRecEmbedding`
    (named "embedding", with no params: the updates happen in backward), `step` passes the groups' lrs
    on for the next backward, and the state dict holds the fused optimizer's state tensors.
    """

    def __init__(self, tables: list[TorchRecEmbedding], lrs: list[float]) -> None:
        self.tables = tables
        self.param_groups: list[dict[str, Any]] = [{"params": [], "name": "embedding", "lr": lr} for lr in lrs]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Pass the groups' lrs to the fused kernels before the backward that uses them (a schedule moves them)."""
        for table, group in zip(self.tables, self.param_groups, strict=True):
            table.set_lr(float(group["lr"]))

    def step(self) -> None:
        """Nothing: the update happened inside backward."""

    def state_dict(self) -> dict[str, Any]:
        """The fused state tensors of every table set (live references, as torch's optimizers give)."""
        # a sharded table's state is in each process's shard file (`nasrec.backend.shardfiles`)
        tables = [None if t.sharding else t.optimizer_state() for t in self.tables]
        return {"tables": tables, "lrs": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a `state_dict()` of the same model's fused tables back in."""
        saved = state.get("tables", [])
        if len(saved) != len(self.tables):
            raise ValueError(f"state of {len(saved)} fused table sets, this model has {len(self.tables)}")
        with torch.no_grad():
            for table, tensors in zip(self.tables, saved, strict=True):
                if tensors is None or table.sharding:
                    if (tensors is None) != bool(table.sharding):
                        raise ValueError("the fused tables were sharded in one run and whole in the other")
                    continue
                live = table.optimizer_state()
                if set(live) != set(tensors):
                    raise ValueError(f"fused optimizer state {sorted(tensors)[:3]}..., expected {sorted(live)[:3]}...")
                for name, t in live.items():
                    if t.shape != tensors[name].shape:
                        raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, expected {tuple(t.shape)}")
                    t.copy_(tensors[name])
        for group, lr in zip(self.param_groups, state.get("lrs", []), strict=False):
            group["lr"] = lr
        self.zero_grad()

    def parameters(self) -> Iterator[nn.Parameter]:
        """None: the fused tables take no part in gradient clipping or weight decay."""
        return iter(())
