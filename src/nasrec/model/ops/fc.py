"""fc: a fully connected layer over the block's concatenated dense inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import EMBEDDING_DIM, BlockLike, CellSpec, Cost, DenseOperator, OpInput, linear_ln_cost, norm

if TYPE_CHECKING:
    import torch
    from torch import nn


def fc_cost(din: int, w: int, ln: bool) -> Cost:
    """fc: Linear(din → w), LN?(w), ReLU."""
    return linear_ln_cost(din, w, ln)


class FC(DenseOperator):
    """Linear(dense_in → W) (one weight block per input slot), LN?(W), ReLU."""

    name = "fc"
    reads = frozenset({"dense_in"})
    layers = ("fc", "fc_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SegLinear, dense_norm

        ln = spec.layernorm
        cell.fc = SegLinear(spec.dense_segs, spec.width, bias=not ln)
        cell.fc_ln = dense_norm(spec.width, spec.batchnorm) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        return F.relu(norm(cell.fc_ln, cell.fc(x.dense, x.dense_used, x.width)))

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return fc_cost(din, b.dense_width, ln)
