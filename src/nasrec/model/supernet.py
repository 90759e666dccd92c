"""The weight-sharing supernet: every operator of a search space held once, at its largest size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.model.cell import Cell, CellSpec, Output
from nasrec.model.embedding import FieldEmbedding
from nasrec.model.layers import HeadLinear, Seg
from nasrec.space.arch import Architecture
from nasrec.space.liveness import live_outputs


class SpaceLike(Protocol):
    """What the supernet needs to know of a search space."""

    num_blocks: int
    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_widths: tuple[int, ...]
    sparse_widths: tuple[int, ...]
    embedding_dim: int


class Supernet(nn.Module):
    """All candidate operators of a space with shared weights; `forward(..., arch)` runs one subnet.

    Each block's input slots are the raw input and every earlier block, at the largest widths; a
    sampled architecture uses slices of those weights (see `layers.py`), so its cost is what it
    computes. Blocks that cannot reach the head are skipped. `masking` runs paths with the reference's
    semantics instead (full widths, then masks: `Cell.forward`), to measure what slicing changes.
    """

    def __init__(
        self,
        space: SpaceLike,
        num_dense: int,
        table_sizes: Sequence[int],
        layernorm: bool = True,
        masking: bool = False,
        max_embedding_std: float | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.masking = masking
        self.num_dense, self.num_sparse = num_dense, len(table_sizes)
        self.layernorm = layernorm
        e = space.embedding_dim
        self.embedding = FieldEmbedding(table_sizes, e)
        if max_embedding_std is not None:  # as a standalone model's (`Subnet`): the zoo's start on small data
            self.embedding.cap_std(max_embedding_std)
        W, Ws = max(space.dense_widths), max(space.sparse_widths)
        cells = []
        for i in range(space.num_blocks):
            dense_segs = (Seg(0, num_dense), *(Seg(j, W) for j in range(1, i + 1)))
            token_segs = (Seg(0, self.num_sparse), *(Seg(j, Ws, d2s=True) for j in range(1, i + 1)))
            spec = CellSpec(
                dense_ops=tuple(space.dense_ops),
                sparse_ops=tuple(space.sparse_ops),
                dense_segs=dense_segs,
                token_segs=token_segs,
                pad_cap=max(num_dense, W),
                width=W,
                tokens=Ws,
                fm=True,
                d2s=True,
                layernorm=layernorm,
                masking=masking,
                embedding_dim=e,
            )
            cells.append(Cell(spec))
        self.cells = nn.ModuleList(cells)
        self.head = HeadLinear(W, Ws, d2s_slot=True, dim=e, centre=layernorm)

    @classmethod
    def for_cache(cls, space: SpaceLike, cache: Cache, layernorm: bool = True) -> Supernet:
        """A supernet shaped for a prepared cache (dense field count and table sizes from its meta)."""
        return cls(space, len(cache.dense_fields), cache.table_sizes, layernorm=layernorm)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor, arch: Architecture) -> torch.Tensor:
        """Logits [B] of the subnet `arch` on dense [B, D] and sparse ids [B, S]."""
        f = self.features(dense, sparse, arch)
        return self.head(f.dense, f.tokens, f.d2s)

    def features(self, dense: torch.Tensor, sparse: torch.Tensor, arch: Architecture) -> Output:
        """The head's inputs for the subnet `arch`: the last block's dense, token and d2s outputs."""
        # an architecture outside the space (a width it does not offer, say) would read past the shared weights
        self.space.check(arch)
        outs: list[Output | None] = [Output(dense, self.embedding(sparse))]
        for cell, block, live in zip(self.cells, arch.blocks, live_outputs(arch), strict=True):
            outs.append(cell(outs, block, live) if any(live) else None)
        last = outs[-1]
        assert last is not None  # the last block always reaches the head
        return last
