"""dot: pairwise dot products of the block's dense input (as one token) and its sparse tokens."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    ZERO,
    BlockLike,
    CellSpec,
    Cost,
    DenseOperator,
    OpInput,
    linear_ln_cost,
    ln_if,
    norm,
    token_linear_cost,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

_TRIL: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _tril(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the strictly lower triangle of an n x n matrix, row-major (cached)."""
    import torch

    key = (n, str(device))
    if key in _TRIL:
        return _TRIL[key]
    rows, cols = torch.tril_indices(n, n, offset=-1, device=device)
    # under tracing or export these may be symbolic or fake tensors, useless to later eager calls
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        _TRIL[key] = (rows, cols)
    return rows, cols


def dot_tokens(w: int) -> int:
    """Number p of projected sparse tokens of dot at output width w: round(sqrt(2w)), Python rounding."""
    return round(math.sqrt(2 * w))


def dot_cost(din: int, tin: int, w: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """dot: dense → e, tokens tin → p, Gram of the p+1 tokens, its lower triangle → w, LN?(w).

    Each projection (with its LN?) is skipped when the widths already match: din = e, tin = p,
    (p+1)p/2 = w. The final LN?(w) is kept either way.
    """
    p = dot_tokens(w)
    pairs = (p + 1) * p // 2
    cost = linear_ln_cost(din, e, ln) if din != e else ZERO
    if tin != p:
        cost += token_linear_cost(tin, p, ln, e)
    cost += Cost((p + 1) * (p + 1) * e, 0)  # Gram matrix Z·Zᵀ, a batched matrix product
    return cost + (linear_ln_cost(pairs, w, ln) if pairs != w else ln_if(ln, w))


class Dot(DenseOperator):
    """Dense input → 16 (one token), tokens → p = round(sqrt(2W)), the Gram matrix of those p+1 tokens,
    its strictly lower triangle ((p+1)p/2 pairs) → W; each Linear with its LN?.

    As the reference, a projection whose input already has its output's size is left out: dense inputs
    16 wide, p tokens, (p+1)p/2 = W pairs. A standalone cell does not build it; the masking supernet
    (the reference's supernet) always projects.
    """

    name = "dot"
    reads = frozenset({"dense_in", "sparse_in"})
    layers = ("dot_dense", "dot_dense_ln", "dot_tokens", "dot_tokens_ln", "dot_out", "dot_out_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SegLinear, SliceLayerNorm, SliceLinear, dense_norm

        ln, W, exact = spec.layernorm, spec.width, spec.exact
        p = dot_tokens(W)
        e = spec.embedding_dim
        if not (exact and sum(s.width for s in spec.dense_segs) == e):
            cell.dot_dense = SegLinear(spec.dense_segs, e, bias=not ln)
            cell.dot_dense_ln = SliceLayerNorm(e) if ln else None
        tokens_in = sum(s.width + (8 if s.d2s else 0) for s in spec.token_segs)
        if not (exact and tokens_in == p):
            cell.dot_tokens = SegLinear(spec.token_segs, p, bias=not ln)
            cell.dot_tokens_ln = SliceLayerNorm(p) if ln else None
        if not (exact and (p + 1) * p // 2 == W):
            cell.dot_out = SliceLinear((p + 1) * p // 2, W, bias=not ln)
            cell.dot_out_ln = dense_norm(W, spec.batchnorm) if ln else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch

        W, mask = x.width, x.masking
        p = dot_tokens(W)  # the reference's supernet inputs are never 16 wide or p tokens
        d, e = x.dense, cell.spec.embedding_dim
        if d.shape[1] != e or mask:
            d = norm(cell.dot_dense_ln, cell.dot_dense(d, x.dense_used, e))
        y = x.tokens_t
        if y.shape[2] != p or mask:  # as the reference: no projection when there are already p tokens
            y = norm(cell.dot_tokens_ln, cell.dot_tokens(y, x.token_used, p))
        z = torch.cat([d.unsqueeze(1), y.transpose(1, 2)], dim=1)  # [B, p+1, 16]
        gram = torch.bmm(z, z.transpose(1, 2))
        rows, cols = _tril(p + 1, z.device)
        pairs = gram[:, rows, cols]
        if pairs.shape[1] == W and not mask:  # likewise no output layer when the pair count is already W
            return pairs
        return norm(cell.dot_out_ln, cell.dot_out(pairs, W))

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return dot_cost(din, tin, b.dense_width, ln, e)
