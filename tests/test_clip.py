"""Clipping with sparse embedding gradients equals clipping the equivalent dense gradients."""

from __future__ import annotations

import torch

from nasrec.train.clip import clip_grad_norm


def _grads(sparse: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 4, sparse=sparse)
    lin = torch.nn.Linear(4, 1)
    ids = torch.tensor([[1, 3, 3, 7], [3, 0, 1, 1]])  # repeated rows
    (lin(emb(ids)).sum() * 10).backward()
    norm = clip_grad_norm([emb.weight, lin.weight, lin.bias], 5.0)
    g = emb.weight.grad.to_dense() if sparse else emb.weight.grad
    return [norm, g, lin.weight.grad, lin.bias.grad]


def test_sparse_and_dense_clipping_agree() -> None:
    dense, sparse = _grads(False), _grads(True)
    assert abs(dense[0] - sparse[0]) < 1e-4 and dense[0] > 5.0
    for a, b in zip(dense[1:], sparse[1:], strict=True):
        torch.testing.assert_close(a, b)
    after = torch.sqrt(sum((g**2).sum() for g in sparse[1:]))
    assert abs(float(after) - 5.0) < 1e-3
