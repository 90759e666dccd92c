"""Every zoo baseline builds, runs, gives sparse embedding gradients and reports its cost."""

from __future__ import annotations

import pytest
import torch

from nasrec.errors import NasrecError
from nasrec.zoo.registry import ZOO_MODELS, build_zoo_model, zoo_cost

TABLES = [7, 30, 3, 50, 11, 5]


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_runs_and_costs(name: str) -> None:
    torch.manual_seed(0)
    model = build_zoo_model(name, 4, TABLES)
    dense = torch.rand(16, 4)
    sparse = torch.stack([torch.randint(0, t, (16,)) for t in TABLES], 1)
    y = model(dense, sparse)
    assert y.shape == (16,) and torch.isfinite(y).all()
    y.sum().backward()
    sparse_grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.is_sparse]
    assert sparse_grads, "embeddings should get row-wise (sparse) gradients"
    cost = zoo_cost(name, 4, TABLES)
    assert cost.flops >= 0 and cost.dense_params > 0 and cost.embedding_params > 0
    n = sum(p.numel() for p in model.parameters())
    assert cost.params == n


def test_unknown_model_is_an_error() -> None:
    with pytest.raises(NasrecError):
        build_zoo_model("gbdt", 4, TABLES)
