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

import math
from collections.abc import Sequence

import torch

from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding, FirstOrder
from nasrec.zoo.base import ZooModel
from nasrec.zoo.layers import MLP, DenseField


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """FM's second-order term ½ Σ_{i<j} ⟨v_i, v_j⟩ of field vectors [B, F, E], computed in O(F·E): [B]."""
    s = fields.sum(dim=1)
    return 0.5 * (s * s - (fields * fields).sum(dim=1)).sum(dim=1)


@torch.no_grad()
def scale_fm_logit(model: ZooModel, factor: float, mlp: MLP | None = None) -> None:
    """Multiply an FM's (or DeepFM's) logit by `factor` > 0 through its weights.

    The first-order part is linear in its weights (x factor); the inner products are quadratic in the field
    vectors, so the embeddings and the dense field's projection take sqrt(factor). DeepFM's MLP reads the
    same embeddings: its first layer's weights on them take 1 / sqrt(factor), which leaves every hidden
    value as it was, and its last layer takes the factor.
    """
    if not isinstance(model.embedding, FieldEmbedding):
        raise NasrecError(f"{model.name}: its logit can be scaled with nasrec's own embedding tables only")
    root = math.sqrt(factor)
    for p in model.linear.parameters():
        p.mul_(factor)
    model.embedding.table.weight.mul_(root)
    if model.dense_field.proj is not None:
        for p in model.dense_field.proj.parameters():
            p.mul_(root)
    if mlp is not None:
        first, last = mlp.layers[0], mlp.layers[-1]
        first.weight[:, model.num_dense :].div_(root)  # the embedding columns of [dense, flattened embeddings]
        for p in last.parameters():
            p.mul_(factor)


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

    def can_scale_logit(self) -> bool:
        """Yes: `scale_fm_logit`. (nasrec's own embedding tables: TorchRec's fused ones are not scaled in place)."""
        return isinstance(self.embedding, FieldEmbedding)

    def scale_logit_(self, factor: float) -> None:
        """Multiply every logit by `factor` through the weights (`scale_fm_logit`)."""
        scale_fm_logit(self, factor)
