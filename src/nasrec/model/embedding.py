"""Embedding tables of all categorical fields in one sparse-gradient table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError


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
        self.table = nn.Embedding(sum(sizes), dim, sparse=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal per table (std sqrt(2 / (N + dim)), so it depends on each table's size N)."""
        with torch.no_grad():
            start = 0
            for n in self.table_sizes:
                self.table.weight[start : start + n].normal_(0.0, math.sqrt(2.0 / (n + self.dim)))
                start += n

    @torch.no_grad()
    def cap_std(self, cap: float) -> None:
        """Scale down every table whose initial std sqrt(2 / (N + dim)) exceeds `cap` to exactly `cap`.

        Small tables start far from zero under xavier-normal (std 0.29 for a 7-id field at dim 16); DeepCTR
        and FuxiCTR start every table at std 1e-4, which the zoo's default recipes adopt (BENCHMARKS.md).
        """
        start = 0
        for n in self.table_sizes:
            std = math.sqrt(2.0 / (n + self.dim))
            if std > cap:
                self.table.weight[start : start + n].mul_(cap / std)
            start += n

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """[B, S] ids (each within its field's table) -> [B, S, dim] vectors."""
        return self.table(sparse + self.offsets)
