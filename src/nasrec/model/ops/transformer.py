"""transformer: a token-axis projection of the sparse inputs, then one encoder layer over the tokens.

`attention` is looked up in this module at each call, so a benchmark can swap in another form by
setting ``nasrec.model.ops.transformer.attention`` (``bench/bench_attention.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    BlockLike,
    CellSpec,
    Cost,
    OpInput,
    SparseOperator,
    layernorm_cost,
    linear_cost,
    norm,
    token_linear_cost,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

HEADS = 8  # NASRec's attention heads at its 16-wide tokens (2 dimensions a head)


def heads(e: int) -> int:
    """Attention heads over tokens of width `e`: the most of up to HEADS that divide it (8 at 16, 5 at 20)."""
    return max(h for h in range(1, HEADS + 1) if e % h == 0)


TRANSFORMER_LN_INIT = 0.17
ATTENTION_CHUNK = 2**19  # score entries per chunk (2 MB): a chunk's scores stay in cache


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, T, d], computed in chunks of the batch."""
    import torch

    # With 2-dimensional heads, torch's fused CPU attention spends its time on per-block overhead, and
    # the plain form on memory traffic: scores of [512, 8, 64, 64] are 67 MB a tensor. Chunks of the
    # batch whose scores fit in cache were 25-35 % faster than either, forward and backward, at 16-64
    # tokens (BENCHMARKS.md); computing the products transposed made the chunks faster again. Export
    # sees the plain form: a traced split would fix the batch size.
    from nasrec.model.ops.small_heads import SmallHeadAttention

    B, H, T, d = q.shape
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return torch.matmul(torch.softmax(torch.matmul(q * d**-0.5, k.transpose(-1, -2)), -1), v)
    rows = H * max(1, ATTENTION_CHUNK // (H * T * T))
    keep = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    q, k, v = (t.reshape(B * H, T, d) for t in (q, k, v))
    out = SmallHeadAttention.apply(q, k, v, rows, keep)
    return out.view(B, H, T, d)


def attention_matmul_flops(tokens: int, e: int = EMBEDDING_DIM) -> int:
    """FLOPs of attention's Q·Kᵀ and A·V over `tokens` tokens of width `e` (hidden inside SDPA in torch 2).

    The head count does not enter: heads × tokens² × (e / heads) = e · tokens² for each product.
    """
    return 2 * e * tokens * tokens


def mha_cost(tokens: int, e: int = EMBEDDING_DIM) -> Cost:
    """Self-attention (q = k = v) over `tokens` tokens of width `e`; in/out projections with bias."""
    projections = linear_cost(e, 3 * e, bias=True, rows=tokens) + linear_cost(e, e, bias=True, rows=tokens)
    return projections + Cost(attention_matmul_flops(tokens, e), 0)


def transformer_cost(tin: int, ws: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """transformer: token-axis Linear(tin → ws) + LN?; self-attention; LN(e); FFN e → e → e; LN(e)."""
    cost = token_linear_cost(tin, ws, ln, e) + mha_cost(ws, e)
    ffn = linear_cost(e, e, bias=True, rows=ws) + linear_cost(e, e, bias=True, rows=ws)
    # Both LN(e) exist whatever use_layernorm says.
    return cost + ffn + layernorm_cost(e, ws) + layernorm_cost(e, ws)


class Transformer(SparseOperator):
    """Token-axis Linear(sparse_in tokens → Ws) + LN?(Ws); self-attention with 8 heads and a residual,
    LN(16); FFN 16 → 16 → 16 with a residual, LN(16). The attention and FFN layers have fixed sizes:
    a standalone cell shares them whole."""

    name = "transformer"
    reads = frozenset({"sparse_in"})
    layers = ("tr_proj", "tr_proj_ln", "attn_in", "attn_out", "attn_ln", "ffn1", "ffn2", "ffn_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from torch import nn

        from nasrec.model.layers import SegLinear, SliceLayerNorm

        ln = spec.layernorm
        cell.tr_proj = SegLinear(spec.token_segs, spec.tokens, bias=not ln)
        cell.tr_proj_ln = SliceLayerNorm(spec.tokens) if ln else None
        e = spec.embedding_dim
        cell.attn_in = nn.Linear(e, 3 * e)
        cell.attn_out = nn.Linear(e, e)
        cell.attn_ln = SliceLayerNorm(e, TRANSFORMER_LN_INIT)
        cell.ffn1 = nn.Linear(e, e)
        cell.ffn2 = nn.Linear(e, e)
        cell.ffn_ln = SliceLayerNorm(e, TRANSFORMER_LN_INIT)
        for lin in (cell.attn_in, cell.attn_out, cell.ffn1, cell.ffn2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        cWs, Ws = x.tokens, x.block.sparse_width
        t = norm(cell.tr_proj_ln, cell.tr_proj(x.tokens_t, x.token_used, cWs)).transpose(1, 2)  # [B, cWs, 16]
        if cWs != Ws:  # masking: tokens >= Ws are zeros, and attend and are attended to
            t = F.pad(t[:, :Ws], (0, 0, 0, cWs - Ws))
        B, T, E = t.shape
        h = heads(E)
        q, k, v = cell.attn_in(t).view(B, T, 3, h, E // h).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v).transpose(1, 2).reshape(B, T, E)
        t = cell.attn_ln(t + cell.attn_out(a))
        return cell.ffn_ln(t + cell.ffn2(F.relu(cell.ffn1(t))))[:, :Ws]

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return transformer_cost(tin, b.sparse_width, ln, e)

    @classmethod
    def attention_flops(cls, b: BlockLike, e: int = EMBEDDING_DIM) -> int:
        return attention_matmul_flops(b.sparse_width, e)
