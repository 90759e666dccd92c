"""Gradient-norm clipping that also accepts sparse (row-wise) embedding gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most `max_norm`; return the norm before.

    `torch.nn.utils.clip_grad_norm_` rejects sparse gradients. A sparse gradient is coalesced first,
    so that rows looked up several times in a batch count once, with their summed gradient, exactly
    as in the dense gradient of the same embedding.
    """
    dense, sparse = [], []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            if not g.is_coalesced():
                g = g.coalesce()
                p.grad = g
            sparse.append(g)
        else:
            dense.append(g)
    grads = dense + sparse
    if not grads:
        return 0.0
    sq = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    if dense:
        sq += torch.stack(torch._foreach_norm(dense)).double().pow(2).sum()
    for g in sparse:
        sq += g._values().double().pow(2).sum()
    total = float(sq.sqrt())
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        if dense:
            torch._foreach_mul_(dense, scale)
        for g in sparse:
            g._values().mul_(scale)
    return total
