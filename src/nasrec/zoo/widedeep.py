"""Wide & Deep (Cheng et al., 2016): a linear model and a DNN sharing nothing but the input, logits summed.

logit = LR(x) + MLP([dense features, flattened sparse embeddings]). The wide part is `nasrec.zoo.LR`'s
first-order model (a Linear(D → 1) over the dense features, one scalar weight per category of every
field, a bias; all start at zero); the paper's hand-chosen cross-product features have no generic
counterpart and are left out, as in DeepCTR's WDL. The deep part is the zoo's DNN, so Wide & Deep is
exactly DNN + LR (and DeepFM is Wide & Deep plus FM's pairwise term).

FLOPs: the wide part's Linear(D → 1) (D; the per-category weights are gathered and summed, not
counted) plus the MLP's linears.

Defaults: `embedding_dim=16`, `max_embedding_std=None` (the embeddings reach the logit through the MLP
only, as in DNN), `mlp_dims=(400, 400, 400)` (the zoo's common deep component), `dropout=0.0`,
`batchnorm=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nasrec.model.embedding import FirstOrder
from nasrec.zoo.base import ZooModel
from nasrec.zoo.layers import flat_inputs


class WideAndDeep(ZooModel):
    """Wide & Deep: a first-order linear model and a DNN, logits summed."""

    name = "wdl"
    logit_parts = ("linear", "mlp")

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
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.mlp = self._mlp(self.num_dense + self.num_sparse * dim, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        return self.linear(dense, sparse) + self.mlp(flat_inputs(dense, self.embedding(sparse))).squeeze(1)
