"""Embedding tables of all categorical fields in one sparse-gradient table."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nasrec.errors import NasrecError

_DEFERRED = False  # see `deferred_tables`


@contextmanager
def deferred_tables() -> Iterator[None]:
    """Build `FieldEmbedding` tables of width 4k on the meta device (no memory), to be sharded.

    A process of a sharded run (`nasrec.backend.sharding`) then fills only its own shards, each from its
    table's own generator (`FieldEmbedding.table_init`): the values a whole-table build would hold.
    """
    global _DEFERRED
    before, _DEFERRED = _DEFERRED, True
    try:
        yield
    finally:
        _DEFERRED = before


class FieldEmbedding(nn.Module):
    """One row block per field in a single `nn.Embedding(sparse=True)`.

    A batch's gradient then touches only the rows it looked up, so a sparse optimizer (SparseAdam, or
    Adagrad, which accepts sparse gradients) reads and writes only those rows: the cost of a step does
    not depend on the table sizes.
    """

    def __init__(self, table_sizes: Sequence[int], dim: int = 16) -> None:
        super().__init__()
        sizes = [int(n) for n in table_sizes]
        if not sizes or min(sizes) < 1:
            raise NasrecError(f"embedding table sizes must be positive, got {sizes[:5]}...")
        self.table_sizes = tuple(sizes)
        self.dim = dim
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        # One draw of the global generator seeds every table's own: a process that builds only some shards
        # of the tables (sharded TorchRec tables) gets the values a process holding them whole has.
        # (A model built on the meta device, to count its cost, holds no values and draws nothing.)
        draw = torch.randint(0, 2**62, (1,))
        self.init_seed = 0 if draw.is_meta else int(draw.item())
        self.std_cap: float | None = None
        meta = _DEFERRED and dim % 4 == 0  # the widths fbgemm's tables take (`nasrec.backend.fused`)
        # _weight: no nn.Embedding init of its own (a draw of the global generator that only a build holding
        # the whole table would make); reset_parameters fills it
        empty = torch.empty(sum(sizes), dim, device="meta" if meta else None)
        self.table = nn.Embedding(sum(sizes), dim, sparse=True, _weight=empty)
        self.reset_parameters()

    def _draw(self, i: int, out: torch.Tensor) -> None:
        """Table i's xavier-normal draw (std sqrt(2 / (N_i + dim))) from its own generator into `out`, not capped."""
        g = torch.Generator().manual_seed(self.init_seed + i)
        out.normal_(generator=g).mul_(math.sqrt(2.0 / (self.table_sizes[i] + self.dim)))

    def table_init(self, i: int) -> torch.Tensor:
        """Table i's initial weights [N_i, dim]: its draw, scaled down as `cap_std` scales it when a cap is set."""
        w = torch.empty(self.table_sizes[i], self.dim)
        self._draw(i, w)
        std = math.sqrt(2.0 / (self.table_sizes[i] + self.dim))
        if self.std_cap is not None and std > self.std_cap:
            w.mul_(self.std_cap / std)  # the product `cap_std` makes, so a deferred build matches a whole one
        return w

    def reset_parameters(self) -> None:
        """Xavier-normal per table (std sqrt(2 / (N + dim)), so it depends on each table's size N)."""
        if self.table.weight.is_meta:
            return
        with torch.no_grad():
            start = 0
            for i, n in enumerate(self.table_sizes):
                self._draw(i, self.table.weight[start : start + n])  # contiguous rows: the same draw as table_init's
                start += n

    @torch.no_grad()
    def cap_std(self, cap: float) -> None:
        """Scale down every table whose initial std sqrt(2 / (N + dim)) exceeds `cap` to exactly `cap`.

        Small tables start far from zero under xavier-normal (std 0.29 for a 7-id field at dim 16); DeepCTR
        and FuxiCTR start every table at std 1e-4, which the zoo's default recipes adopt (BENCHMARKS.md).
        The weights are scaled in place (a table another rule set, such as LR's zeros, stays as it is);
        `table_init` applies the same cap to a table built deferred.
        """
        self.std_cap = cap
        start = 0
        for n in self.table_sizes:
            std = math.sqrt(2.0 / (n + self.dim))
            if std > cap and not self.table.weight.is_meta:
                self.table.weight[start : start + n].mul_(cap / std)
            start += n

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """[B, S] ids (each within its field's table) -> [B, S, dim] vectors."""
        return self.table(sparse + self.offsets)


class FirstOrder(nn.Module):
    """LR's logit: Linear(D → 1) on dense features + per-category scalar weights + bias."""

    lr_group = "first_order"  # `TrainConfig.first_order_lr` reaches these weights

    def __init__(self, num_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.dense = nn.Linear(num_dense, 1, bias=False) if num_dense > 0 else None
        self.weights = FieldEmbedding(table_sizes, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """All weights zero, LR's natural starting point."""
        # Xavier weights on raw log-count features and FieldEmbedding's scalars (std sqrt(2/(N+1)), about
        # 0.5 for small tables) start the logits at std ~2.4: LR then spends its first epoch undoing it.
        self.weights.table.weight.zero_()
        if self.dense is not None:
            self.dense.weight.zero_()
        self.bias.zero_()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense [B, D], sparse ids [B, S] -> [B]."""
        out = self.weights(sparse).sum(dim=(1, 2)) + self.bias
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(1)
        return out
