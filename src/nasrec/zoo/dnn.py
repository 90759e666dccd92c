"""Plain deep models: DNN (an MLP over the embeddings) and DLRM (Naumov et al., 2019).

DNN
    MLP over [dense features, flattened sparse embeddings] (D + S·E inputs) → logit.
    Defaults: `embedding_dim=16`, `max_embedding_std=None`, `mlp_dims=(400, 400, 400)` (the DeepFM
    paper's deep component, a common DNN baseline), `dropout=0.0`, `batchnorm=False`.
DLRM
    Bottom MLP on the dense features → an E-dimensional vector (ReLU after every layer, as the
    reference); pairwise dot products among the T = 1 + S vectors [bottom output, field embeddings],
    the strictly lower triangle of their Gram matrix (T(T−1)/2 values, row by row); concatenated with
    the bottom output and fed to the top MLP → logit.
    Defaults: the DLRM reference's Criteo Kaggle configuration, `embedding_dim=16`,
    `bottom_mlp=(512, 256, 64, 16)`, `top_mlp=(512, 256)` (then Linear → 1); `dropout=0.0` and
    `batchnorm=False` (top MLP only), `max_embedding_std=None`. The bottom MLP's last width must equal
    `embedding_dim`. Without dense features there is no bottom MLP: the interactions are among the
    field embeddings alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nasrec.errors import NasrecError
from nasrec.zoo.base import ZooModel, check_dims
from nasrec.zoo.layers import MLP, InnerProducts, flat_inputs


class DNN(ZooModel):
    """An MLP over the dense features and the flattened field embeddings."""

    name = "dnn"
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
        self.mlp = self._mlp(self.num_dense + self.num_sparse * dim, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        return self.mlp(flat_inputs(dense, self.embedding(sparse))).squeeze(1)


class DLRM(ZooModel):
    """DLRM: bottom MLP, pairwise dot-product interactions, top MLP."""

    name = "dlrm"
    logit_parts = ("top",)

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        bottom_mlp: Sequence[int] = (512, 256, 64, 16),
        top_mlp: Sequence[int] = (512, 256),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        bottom = check_dims(self.name, "bottom_mlp", bottom_mlp, allow_empty=False)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        if bottom[-1] != dim:
            raise NasrecError(
                f"{self.name}: the last bottom_mlp width ({bottom[-1]}) must equal embedding_dim ({dim}): "
                "the bottom output is one of the interacting vectors"
            )
        # Bottom MLP only when there are dense features; its output joins the interactions.
        self.bottom = MLP(self.num_dense, bottom, out=None) if self.num_dense > 0 else None
        tokens = self.num_sparse + (1 if self.bottom is not None else 0)
        if tokens < 2:
            raise NasrecError(f"{self.name}: needs at least two interacting vectors (dense or sparse fields)")
        self.interaction = InnerProducts(tokens)
        din = self.interaction.count + (dim if self.bottom is not None else 0)
        self.top = self._mlp(din, top_mlp, dropout, batchnorm, name="top_mlp")
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        z = self.embedding(sparse)
        if self.bottom is None:
            return self.top(self.interaction(z)).squeeze(1)
        x = self.bottom(dense)
        pairs = self.interaction(torch.cat([x.unsqueeze(1), z], dim=1))
        return self.top(torch.cat([x, pairs], dim=1)).squeeze(1)
