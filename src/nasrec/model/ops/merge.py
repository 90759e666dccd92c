"""The two merge flags of a block: d2s (dense output to 8 extra tokens) and fm (a factorisation-machine
term of the tokens added to the dense output). They are not named in operator lists: `Block.d2s` and
`Block.fm` switch them on, and every supernet cell holds both."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    ZERO,
    BlockLike,
    CellSpec,
    Cost,
    Operator,
    OpInput,
    linear_ln_cost,
    ln_if,
    norm,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

D2S_TOKENS = 8  # the dense-to-sparse merger appends 8 tokens of the embedding dimension (16: 128 values)
D2S_WIDTH = D2S_TOKENS * EMBEDDING_DIM  # 128 at the default dimension


def fm_cost(w: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """fm flag: the (Σe)² − Σe² term is element-wise; Linear(e → w) only if w ≠ e, then LN?(w)."""
    return linear_ln_cost(e, w, ln) if w != e else ln_if(ln, w)


def d2s_cost(w: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """d2s flag: Linear(w → 8e) + LN?(8e) only if w ≠ 8e; the reshape to 8 tokens is free."""
    out = D2S_TOKENS * e
    return linear_ln_cost(w, out, ln) if w != out else ZERO


class FM(Operator):
    """(Σ tokens)² − Σ tokens² (the pairwise interactions, without the FM paper's 1/2), Linear(16 → W)
    where W ≠ 16, LN?(W): added to the block's dense output. Reads the block's own tokens."""

    name = "fm"
    kind = "merge"
    layers = ("fm_proj", "fm_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SliceLinear, dense_norm

        ln, width, dim = spec.layernorm, spec.width, spec.embedding_dim
        if not (spec.exact and width == dim):
            cell.fm_proj = SliceLinear(dim, width, bias=not ln)
        # With layer norms the fm term is normalised at W = 16 too (the reference adds it raw there:
        # its entries grow with the square of the token count and swamp the head; docs/design.md).
        cell.fm_ln = dense_norm(width, spec.batchnorm) if ln else None

    @classmethod
    def term(cls, cell: nn.Module, tokens: torch.Tensor, x: OpInput) -> torch.Tensor:
        """The [B, W] term of the block's tokens [B, Ws, 16]."""
        s = tokens.sum(1)
        v = s * s - (tokens * tokens).sum(1)
        return norm(cell.fm_ln, v if x.width == v.shape[1] else cell.fm_proj(v, x.width))[:, : x.block.dense_width]

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return fm_cost(b.dense_width, ln, e)

    @classmethod
    def live(cls, b: BlockLike, dense_live: bool, sparse_live: bool) -> bool:
        return b.fm and dense_live


class D2S(Operator):
    """Linear(W → 128) + LN?(128) where W ≠ 128, reshaped to 8 tokens of 16: appended to the block's
    tokens. Reads the block's own dense output (before fm's term is added)."""

    name = "d2s"
    kind = "merge"
    layers = ("d2s_proj", "d2s_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SliceLayerNorm, SliceLinear

        out = D2S_TOKENS * spec.embedding_dim
        if not (spec.exact and spec.width == out):
            cell.d2s_proj = SliceLinear(spec.width, out, bias=not spec.layernorm)
            cell.d2s_ln = SliceLayerNorm(out) if spec.layernorm else None

    @classmethod
    def tokens(cls, cell: nn.Module, dense: torch.Tensor, x: OpInput) -> torch.Tensor:
        """The [B, 8, 16] tokens of the block's dense output [B, W]."""
        e = cell.spec.embedding_dim
        if x.block.dense_width == D2S_TOKENS * e and not x.masking:
            z = dense
        else:
            z = norm(cell.d2s_ln, cell.d2s_proj(dense, D2S_TOKENS * e))
        return z.reshape(z.shape[0], D2S_TOKENS, e)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return d2s_cost(b.dense_width, ln, e)

    @classmethod
    def live(cls, b: BlockLike, dense_live: bool, sparse_live: bool) -> bool:
        return b.d2s and sparse_live
