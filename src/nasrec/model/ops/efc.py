"""efc: a fully connected layer along the token axis of the block's concatenated sparse inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    BlockLike,
    CellSpec,
    Cost,
    OpInput,
    SparseOperator,
    norm,
    token_linear_cost,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def efc_cost(tin: int, ws: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """efc: token-axis Linear(tin → ws) on each channel, LN?(ws), ReLU."""
    return token_linear_cost(tin, ws, ln, e)


class EFC(SparseOperator):
    """Token-axis Linear(sparse_in tokens → Ws) on each of the 16 channels, LN?(Ws), ReLU."""

    name = "efc"
    reads = frozenset({"sparse_in"})
    layers = ("efc", "efc_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SegLinear, SliceLayerNorm

        ln = spec.layernorm
        cell.efc = SegLinear(spec.token_segs, spec.tokens, bias=not ln)
        cell.efc_ln = SliceLayerNorm(spec.tokens) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        t = F.relu(norm(cell.efc_ln, cell.efc(x.tokens_t, x.token_used, x.tokens)))
        return t[:, :, : x.block.sparse_width].transpose(1, 2)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return efc_cost(tin, b.sparse_width, ln, e)
