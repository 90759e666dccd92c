"""cat, tflat and tcat: parameter-free operators that pass inputs on as a block's output.

With them the space holds models that read raw embeddings and concatenate streams, as DCNv2 does: the
cross network's x0 is the flattened embeddings (`tflat`), and its logit a Linear over the cross network's
and the MLP's outputs side by side (`cat`, read by the head). `tcat` is the sparse one: the raw embeddings
as a block's tokens, so that its fm term is DeepFM's (efc's ReLU would change them). None has weights,
FLOPs or a norm: the values are the inputs themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    ZERO,
    BlockLike,
    CellSpec,
    Cost,
    DenseOperator,
    Operator,
    OpInput,
    SparseOperator,
)
from nasrec.model.ops.flat import flattened

if TYPE_CHECKING:
    import torch
    from torch import nn


def _first(x: torch.Tensor, width: int) -> torch.Tensor:
    """The first `width` entries of x [..., n] along its last axis, zero-padded when n < width."""
    import torch.nn.functional as F

    n = x.shape[-1]
    return x[..., :width] if n >= width else F.pad(x, (0, width - n))


class _Weightless(Operator):
    """An operator without layers, FLOPs or parameters: its output is (part of) its inputs. Listed before
    `DenseOperator` or `SparseOperator` in a subclass's bases."""

    layers = ()

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        pass  # no weights

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return ZERO


class Cat(_Weightless, DenseOperator):
    """The block's dense inputs concatenated, their first W values (zero-padded to W)."""

    name = "cat"
    reads = frozenset({"dense_in"})

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        return _first(x.dense, x.width)


class TokensFlat(_Weightless, DenseOperator):
    """The block's sparse inputs flattened token by token (each token's channels together, as `flat` reads
    them), their first W values (zero-padded to W): over the raw input, the embeddings as the zoo's models
    read them."""

    name = "tflat"
    reads = frozenset({"sparse_in"})

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        return _first(flattened(x), x.width)


class TokensCat(_Weightless, SparseOperator):
    """The block's sparse inputs' tokens concatenated, the first Ws of them (zero tokens where there are fewer)."""

    name = "tcat"
    reads = frozenset({"sparse_in"})

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        return _first(x.tokens_t, x.block.sparse_width).transpose(1, 2)  # tokens_t is [B, e, T]
