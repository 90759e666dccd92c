"""Logistic regression (LR) and the factorization machine (FM).

LR
    logit = w·x_dense + Σ_f w_f[c_f] + b: a Linear(D → 1) with bias over the dense features plus one
    scalar weight per category of every field (`FieldEmbedding(table_sizes, 1)`, so sparse gradients).
    Parameters: D + 1 dense, Σ table sizes embedding. No hyper-parameters.
FM (Rendle, 2010)
    logit = LR + ½ Σ_e ((Σ_f v_f)² − Σ_f v_f²)_e over the field vectors v_f: the sparse fields'
    embeddings (dim `embedding_dim`, default 16) and one dense field, Linear(D → E)(x) (see
    `nasrec.zoo.layers.DenseField`: FM's dense×sparse pairs, no dense×dense pairs). The pairwise term
    is element-wise, so under nasrec's cost convention FM costs only its two Linear layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.model.embedding import FieldEmbedding
from nasrec.zoo.base import ZooModel, check_int, check_std
from nasrec.zoo.layers import DenseField


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """FM's second-order term ½ Σ_{i<j} ⟨v_i, v_j⟩ of field vectors [B, F, E], computed in O(F·E): [B]."""
    s = fields.sum(dim=1)
    return 0.5 * (s * s - (fields * fields).sum(dim=1)).sum(dim=1)


class FirstOrder(nn.Module):
    """LR's logit: Linear(D → 1) on dense features + per-category scalar weights + bias."""

    def __init__(self, num_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.dense = nn.Linear(num_dense, 1, bias=False) if num_dense > 0 else None
        self.weights = FieldEmbedding(table_sizes, 1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense [B, D], sparse ids [B, S] -> [B]."""
        out = self.weights(sparse).sum(dim=(1, 2)) + self.bias
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(1)
        return out


class LR(ZooModel):
    """Logistic regression over dense features and one-hot categorical fields."""

    name = "lr"

    def __init__(self, num_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__(num_dense, table_sizes)
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        return self.linear(dense, sparse)


class FM(ZooModel):
    """Factorization machine: LR plus pairwise inner products of field vectors."""

    name = "fm"

    def __init__(
        self, num_dense: int, table_sizes: Sequence[int], embedding_dim: int = 16, embedding_std: float | None = 0.01
    ) -> None:
        super().__init__(num_dense, table_sizes)
        dim = check_int(self.name, "embedding_dim", embedding_dim, 1)
        self.embedding_std = check_std(self.name, embedding_std)
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        self.embedding = FieldEmbedding(self.table_sizes, dim)
        self.dense_field = DenseField(self.num_dense, dim)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        fields = self.dense_field(dense, self.embedding(sparse))
        return self.linear(dense, sparse) + fm_interaction(fields)
