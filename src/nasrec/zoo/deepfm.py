"""DeepFM (Guo et al., 2017): an FM and a DNN sharing the field embeddings, logits summed.

logit = FM(x) + MLP([dense features, flattened sparse embeddings]), where the FM is `nasrec.zoo.FM`'s
(first-order weights, then pairwise inner products of the sparse embeddings and the one projected
dense field) and the MLP reads the very same sparse embeddings, so both parts train them.
The DNN part sees the raw dense features like the zoo's DNN, so DeepFM is exactly DNN + FM.

Defaults: `embedding_dim=16` (the zoo's common dimension), `max_embedding_std=0.1` (see
`nasrec.zoo.base` on initialisation), `mlp_dims=(400, 400, 400)` (the DeepFM paper's deep component),
`dropout=0.0` (the paper: 0.5), `batchnorm=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nasrec.model.embedding import FieldEmbedding
from nasrec.zoo.base import ZooModel, check_bool, check_dims, check_dropout, check_int, check_std
from nasrec.zoo.layers import MLP, DenseField, FirstOrder, flat_inputs
from nasrec.zoo.linear import fm_interaction


class DeepFM(ZooModel):
    """FM and DNN components over shared embeddings."""

    name = "deepfm"

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = 0.1,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        dim = check_int(self.name, "embedding_dim", embedding_dim, 1)
        self.max_embedding_std = check_std(self.name, max_embedding_std)
        dims = check_dims(self.name, "mlp_dims", mlp_dims)
        drop = check_dropout(self.name, dropout)
        bn = check_bool(self.name, "batchnorm", batchnorm)
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        self.embedding = FieldEmbedding(self.table_sizes, dim)
        self.dense_field = DenseField(self.num_dense, dim)
        self.mlp = MLP(self.num_dense + self.num_sparse * dim, dims, out=1, dropout=drop, batchnorm=bn)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        emb = self.embedding(sparse)
        fm = self.linear(dense, sparse) + fm_interaction(self.dense_field(dense, emb))
        return fm + self.mlp(flat_inputs(dense, emb)).squeeze(1)
