"""cat and tflat: parameter-free operators that pass inputs on as a block's dense output.

With them the space holds models that read raw embeddings and concatenate streams, as DCNv2 does: the
cross network's x0 is the flattened embeddings (`tflat`), and its logit a Linear over the cross network's
and the MLP's outputs side by side (`cat`, read by the head). Neither has weights, FLOPs or a norm: the
values are the inputs themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import EMBEDDING_DIM, ZERO, BlockLike, CellSpec, Cost, DenseOperator, OpInput
from nasrec.model.ops.flat import flattened

if TYPE_CHECKING:
    import torch
    from torch import nn


def _first(x: torch.Tensor, width: int) -> torch.Tensor:
    """The first `width` columns of x [B, n], zero-padded when n < width."""
    import torch.nn.functional as F

    n = x.shape[1]
    return x[:, :width] if n >= width else F.pad(x, (0, width - n))


class _Weightless(DenseOperator):
    """A dense operator without layers, FLOPs or parameters: its output is (part of) its inputs."""

    layers = ()

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        pass  # no weights

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return ZERO


class Cat(_Weightless):
    """The block's dense inputs concatenated, their first W values (zero-padded to W)."""

    name = "cat"
    reads = frozenset({"dense_in"})

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        return _first(x.dense, x.width)


class TokensFlat(_Weightless):
    """The block's sparse inputs flattened token by token (each token's channels together, as `flat` reads
    them), their first W values (zero-padded to W): over the raw input, the embeddings as the zoo's models
    read them."""

    name = "tflat"
    reads = frozenset({"sparse_in"})

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        return _first(flattened(x), x.width)
