"""flat and gflat: a fully connected layer over the block's sparse inputs flattened, the MLP-on-embeddings of
DNN, DeepFM, DCNv2 and FinalMLP; gflat with FinalMLP's feature gate in front of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    BlockLike,
    CellSpec,
    Cost,
    DenseOperator,
    OpInput,
    linear_cost,
    linear_ln_cost,
    norm,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def flattened(x: OpInput) -> torch.Tensor:
    """The block's sparse inputs [B, e, T] as [B, T x e], each token's e channels together."""
    t = x.tokens_t
    return t.transpose(1, 2).reshape(t.shape[0], -1)


def gflat_cost(tin: int, w: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """gflat: the gate Linear(tin x e → w), ReLU, Linear(w → tin x e), both with biases; then flat's cost."""
    return linear_cost(tin * e, w, bias=True) + linear_cost(w, tin * e, bias=True) + flat_cost(tin, w, ln, e)


def flat_cost(tin: int, w: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """flat: Linear(tin x e → w) on the flattened tokens, LN?(w), ReLU."""
    return linear_ln_cost(tin * e, w, ln)


class Flat(DenseOperator):
    """Linear(sparse_in tokens flattened, token by token → W) (one weight block per input slot), LN?(W), ReLU.

    NASRec's dense operators see the embeddings only through dot products (dot) and the FM term; the
    strong hand-designed models all run an MLP on the embeddings themselves: flat, then fc blocks.
    """

    name = "flat"
    reads = frozenset({"sparse_in"})
    layers = ("flat", "flat_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SegLinear, dense_norm

        ln = spec.layernorm
        cell.flat = SegLinear(spec.token_segs, spec.width, bias=not ln, unit=spec.embedding_dim)
        cell.flat_ln = dense_norm(spec.width, spec.batchnorm) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        flat = flattened(x)
        return F.relu(norm(cell.flat_ln, cell.flat(flat, x.token_used, x.width)))

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return flat_cost(tin, b.dense_width, ln, e)


class GatedFlat(DenseOperator):
    """FinalMLP's feature selection, then flat: x ⊙ 2σ(G2 ReLU(G1 x)) with x the flattened tokens, then
    Linear(→ W), LN?(W), ReLU. The gate's hidden width is W; at G2 = 0 the gate is 1 everywhere.

    FinalMLP (Mao et al., 2023) gates each of its two MLP streams' inputs this way (its gate reads every
    field when no context fields are chosen); two gflat blocks fused by `bilinear` are its shape.
    """

    name = "gflat"
    reads = frozenset({"sparse_in"})
    layers = ("gflat_g1", "gflat_g2", "gflat", "gflat_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SegLinear, SegOutLinear, dense_norm

        ln = spec.layernorm
        e = spec.embedding_dim
        cell.gflat_g1 = SegLinear(spec.token_segs, spec.width, bias=True, unit=e)
        cell.gflat_g2 = SegOutLinear(spec.width, spec.token_segs, unit=e)
        cell.gflat = SegLinear(spec.token_segs, spec.width, bias=not ln, unit=e)
        cell.gflat_ln = dense_norm(spec.width, spec.batchnorm) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        flat, used = flattened(x), x.token_used
        gate = 2.0 * torch.sigmoid(cell.gflat_g2(F.relu(cell.gflat_g1(flat, used, x.width)), used))
        return F.relu(norm(cell.gflat_ln, cell.gflat(flat * gate, used, x.width)))

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return gflat_cost(tin, b.dense_width, ln, e)
