"""flat: a fully connected layer over the block's sparse inputs flattened, the MLP-on-embeddings of DNN,
DeepFM, DCNv2 and FinalMLP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import EMBEDDING_DIM, BlockLike, CellSpec, Cost, DenseOperator, OpInput, linear_ln_cost, norm

if TYPE_CHECKING:
    import torch
    from torch import nn


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
        cell.flat = SegLinear(spec.token_segs, spec.width, bias=not ln, unit=EMBEDDING_DIM)
        cell.flat_ln = dense_norm(spec.width, spec.batchnorm) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        t = x.tokens_t  # [B, 16, T] -> [B, T x 16], each token's 16 channels together
        flat = t.transpose(1, 2).reshape(t.shape[0], -1)
        return F.relu(norm(cell.flat_ln, cell.flat(flat, x.token_used, x.width)))

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return flat_cost(tin, b.dense_width, ln, e)
