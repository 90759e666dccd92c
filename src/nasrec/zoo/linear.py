"""Logistic regression (LR) and the factorization machine (FM).

LR
    logit = w·x_dense + Σ_f w_f[c_f] + b: a Linear(D → 1) with bias over the dense features plus one
    scalar weight per category of every field (`FieldEmbedding(table_sizes, 1)`, so sparse gradients).
    Parameters: D + 1 dense, Σ table sizes embedding; all start at zero. No hyper-parameters.
FM (Rendle, 2010)
    logit = LR + ½ Σ_e ((Σ_f v_f)² − Σ_f v_f²)_e over the field vectors v_f: the sparse fields'
    embeddings (dim `embedding_dim`, default 16) and one dense field, Linear(D → E)(x) (see
    `nasrec.zoo.layers.DenseField`: FM's dense×sparse pairs, no dense×dense pairs). The pairwise term
    is element-wise, so under nasrec's cost convention FM costs only its two Linear layers.
    Defaults: `embedding_dim=16`, `max_embedding_std=0.1` (see `nasrec.zoo.base` on initialisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nasrec.zoo.base import ZooModel
from nasrec.zoo.layers import DenseField, FirstOrder


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """FM's second-order term ½ Σ_{i<j} ⟨v_i, v_j⟩ of field vectors [B, F, E], computed in O(F·E): [B]."""
    s = fields.sum(dim=1)
    return 0.5 * (s * s - (fields * fields).sum(dim=1)).sum(dim=1)


class LR(ZooModel):
    """Logistic regression over dense features and one-hot categorical fields."""

    name = "lr"
    logit_parts = ("linear",)

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
        self, num_dense: int, table_sizes: Sequence[int], embedding_dim: int = 16, max_embedding_std: float | None = 0.1
    ) -> None:
        super().__init__(num_dense, table_sizes)
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.dense_field = DenseField(self.num_dense, dim)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        fields = self.dense_field(dense, self.embedding(sparse))
        return self.linear(dense, sparse) + fm_interaction(fields)
