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

from nasrec.model.embedding import FieldEmbedding, FirstOrder
from nasrec.zoo.base import ZooModel
from nasrec.zoo.layers import DenseField, flat_inputs
from nasrec.zoo.linear import fm_interaction, scale_fm_logit


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
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.dense_field = DenseField(self.num_dense, dim)
        self.mlp = self._mlp(self.num_dense + self.num_sparse * dim, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        emb = self.embedding(sparse)
        fm = self.linear(dense, sparse) + fm_interaction(self.dense_field(dense, emb))
        return fm + self.mlp(flat_inputs(dense, emb)).squeeze(1)

    def can_scale_logit(self) -> bool:
        """Yes: `scale_fm_logit`, with the MLP's first and last layers. (nasrec's own embedding tables: TorchRec's fused ones are not scaled in place)."""
        return isinstance(self.embedding, FieldEmbedding)

    def scale_logit_(self, factor: float) -> None:
        """Multiply every logit by `factor` through the weights (`scale_fm_logit`)."""
        scale_fm_logit(self, factor, self.mlp)
