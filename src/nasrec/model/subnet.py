"""Standalone models: one architecture at exactly its sizes, dead blocks pruned."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.model.cell import Cell, CellSpec, Output
from nasrec.model.embedding import FieldEmbedding
from nasrec.model.layers import HeadLinear, Seg
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.liveness import live_outputs


class Subnet(nn.Module):
    """A standalone model of one architecture (fresh initialisation, or `from_supernet`)."""

    def __init__(self, arch: Architecture, num_dense: int, table_sizes: Sequence[int], layernorm: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.num_dense, self.num_sparse = num_dense, len(table_sizes)
        self.layernorm = layernorm
        self.embedding = FieldEmbedding(table_sizes)
        dense_w = [num_dense] + [b.dense_width for b in arch.blocks]
        token_w = [self.num_sparse] + [b.sparse_width for b in arch.blocks]
        has_d2s = [False] + [b.d2s for b in arch.blocks]
        self.live = arch.live_blocks()
        self.outputs = live_outputs(arch)  # finer than `live`: a live block may compute one side only
        cells = {}
        for i, (block, live) in enumerate(zip(arch.blocks, self.live, strict=True)):
            if not live:
                continue
            dense_segs = tuple(Seg(j, dense_w[j]) for j in block.dense_in) if block.uses_dense_in else ()
            pad = max(dense_w[block.left], dense_w[block.right]) if block.uses_left_right else 1
            spec = CellSpec(
                dense_ops=block.dense_ops, sparse_ops=block.sparse_ops, dense_segs=dense_segs,
                token_segs=tuple(Seg(j, token_w[j], has_d2s[j]) for j in block.sparse_in), pad_cap=pad,
                width=block.dense_width, tokens=block.sparse_width, fm=block.fm, d2s=block.d2s,
                layernorm=layernorm, exact=True,
            )  # fmt: skip
            cells[str(i)] = Cell(spec)
        self.cells = nn.ModuleDict(cells)
        last = arch.blocks[-1]
        self.head = HeadLinear(last.dense_width, last.sparse_width, last.d2s, centre=layernorm)

    @classmethod
    def for_cache(cls, arch: Architecture, cache: Cache, layernorm: bool = False) -> Subnet:
        """A freshly initialised model of `arch` shaped for a prepared cache."""
        return cls(arch, len(cache.dense_fields), cache.table_sizes, layernorm=layernorm)

    @classmethod
    def from_supernet(cls, supernet: Supernet, arch: Architecture) -> Subnet:
        """Materialise `arch` from a supernet: same outputs as the supernet on that path."""
        table_sizes = supernet.embedding.table_sizes
        model = cls(arch, supernet.num_dense, table_sizes, layernorm=supernet.layernorm)
        with torch.no_grad():
            model.embedding.table.weight.copy_(supernet.embedding.table.weight)
            for name, cell in model.cells.items():
                cell.copy_from(supernet.cells[int(name)])
            model.head.copy_from(supernet.head)
        return model

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        f = self.features(dense, sparse)
        return self.head(f.dense, f.tokens, f.d2s)

    def features(self, dense: torch.Tensor, sparse: torch.Tensor) -> Output:
        """The head's inputs: the last block's dense, token and d2s outputs."""
        outs: list[Output | None] = [Output(dense, self.embedding(sparse))]
        for i, block in enumerate(self.arch.blocks):
            live = self.outputs[i]
            outs.append(self.cells[str(i)](outs, block, live) if any(live) else None)
        last = outs[-1]
        assert last is not None  # the last block always reaches the head
        return last
