"""Self-attention over heads of a few dimensions, forward and backward, in cache-sized chunks."""

from __future__ import annotations

import torch


class SmallHeadAttention(torch.autograd.Function):
    """softmax(q k^T · scale) v over [B·heads, T, d] in chunks; every product with d on the outer side.

    CPU matrix products with 2 output columns (P·v, and dS·k, dSᵀ·q in the backward, as autograd writes
    them) ran 4-6x slower than the same products transposed to 2 output rows (vᵀ·Pᵀ), so each is
    computed transposed. Scores of one chunk fit in cache; the probabilities are kept for the backward
    when `keep` (grad enabled and an input requires it).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int, keep: bool = True) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        qs = q * scale
        kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        out_t = q.new_empty(q.shape[0], q.shape[2], q.shape[1])  # [N, d, T]
        probs = []
        for i in range(0, q.shape[0], rows):
            p = torch.softmax(torch.bmm(qs[i : i + rows], kt[i : i + rows]), -1)
            torch.bmm(vt[i : i + rows], p.transpose(1, 2), out=out_t[i : i + rows])
            if keep:  # inference keeps no probabilities
                probs.append(p)
        ctx.rows, ctx.scale = rows, scale
        ctx.save_for_backward(qs, kt, vt, *probs)
        return out_t.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qs, kt, vt, *probs = ctx.saved_tensors
        rows = ctx.rows
        g, g_t = grad.contiguous(), grad.transpose(1, 2).contiguous()  # [N, T, d], [N, d, T]
        dq_t, dk_t, dv_t = (torch.empty_like(vt) for _ in range(3))
        qs_t = qs.transpose(1, 2)
        for j, p in enumerate(probs):
            c = slice(j * rows, (j + 1) * rows)
            torch.bmm(g_t[c], p, out=dv_t[c])  # dvᵀ = gᵀ P
            ds = torch._softmax_backward_data(torch.bmm(g[c], vt[c]), p, -1, p.dtype)
            torch.bmm(kt[c], ds.transpose(1, 2), out=dq_t[c])  # dqᵀ = kᵀ dSᵀ (times scale, below)
            torch.bmm(qs_t[c], ds, out=dk_t[c])  # dkᵀ = (q·scale)ᵀ dS
        dq_t.mul_(ctx.scale)
        return dq_t.transpose(1, 2), dk_t.transpose(1, 2), dv_t.transpose(1, 2), None, None
