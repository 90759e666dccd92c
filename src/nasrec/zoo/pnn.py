"""IPNN (Qu et al., 2016): the product-based neural network with inner products.

Fields: the S sparse embeddings and one dense field (Linear(D → E) of the dense features, see
`nasrec.zoo.layers.DenseField`), F = S + 1 vectors (S without dense features). The product layer
holds the inner products of every pair of fields, F(F−1)/2 values; they are concatenated with the
linear signals, [dense features, flattened sparse embeddings] (what the zoo's DNN reads), and an MLP
gives the logit. Concatenating and applying the first hidden Linear is the paper's l_z + l_p + b_1 with
free weights on every product; the paper's low-rank factorisation of the product weights (θ θᵀ) is
not used, as in DeepCTR's and FuxiCTR's IPNN.

FLOPs: the dense field's Linear (D·E), the Gram matrix of the F fields as one batched matrix product
(F·F·E, as DLRM's interactions are counted; the products are read from its lower triangle) and the MLP.

Defaults: `embedding_dim=16`, `max_embedding_std=None` (the products reach the logit through the MLP, as
DLRM's), `mlp_dims=(400, 400, 400)` (the zoo's common deep component), `dropout=0.0`, `batchnorm=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nasrec.errors import NasrecError
from nasrec.zoo.base import ZooModel
from nasrec.zoo.layers import DenseField, InnerProducts, flat_inputs


class IPNN(ZooModel):
    """Inner-product PNN: pairwise inner products of the fields and the embeddings, then an MLP."""

    name = "ipnn"
    logit_parts = ("mlp",)

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.dense_field = DenseField(self.num_dense, dim)
        fields = self.dense_field.count + self.num_sparse
        if fields < 2:
            raise NasrecError(f"{self.name}: needs at least two fields (dense or sparse) to take products of")
        self.products = InnerProducts(fields)
        din = self.num_dense + self.num_sparse * dim + self.products.count
        self.mlp = self._mlp(din, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        emb = self.embedding(sparse)
        products = self.products(self.dense_field(dense, emb))
        return self.mlp(torch.cat([flat_inputs(dense, emb), products], dim=1)).squeeze(1)
