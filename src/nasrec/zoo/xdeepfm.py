"""xDeepFM (Lian et al., 2018): linear part + compressed interaction network (CIN) + DNN, logits summed.

Fields: the S sparse embeddings and one dense field (Linear(D → E) of the dense features, see
`nasrec.zoo.layers.DenseField`), m = S + 1 vectors of width E, X⁰ [m, E].
CIN layer k: Z = the outer products X^{k-1}_i ⊙ X⁰_j for every pair (i, j) (H_{k-1}·m vectors, an
element-wise step), compressed to H_k feature maps by a Linear(H_{k-1}·m → H_k) with bias applied to each of
the E embedding columns (the paper's 1×1 convolution: H_k·H_{k-1}·m·E FLOPs), identity activation.
With `cin_split_half`, every layer but the last sends half its maps to the output and half to the
next layer (so those layers need even sizes); otherwise all maps go both ways. The output maps are
sum-pooled over E, concatenated and a Linear(→ 1) gives the CIN logit. The linear part is LR's; the
DNN reads [dense features, flattened sparse embeddings].

Defaults: `embedding_dim=16`, `max_embedding_std=0.1` (see `nasrec.zoo.base` on initialisation),
`cin_dims=(200, 200, 200)`, `cin_split_half=True`, `mlp_dims=(400, 400, 400)` (the zoo's common deep
component), `dropout=0.0`, `batchnorm=False` (DNN only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.embedding import FirstOrder
from nasrec.zoo.base import ZooModel, check_bool, check_dims
from nasrec.zoo.layers import DenseField, flat_inputs


class CIN(nn.Module):
    """Compressed interaction network over m fields of width E → sum-pooled feature maps [B, dout]."""

    def __init__(self, fields: int, dims: Sequence[int], split_half: bool = True) -> None:
        super().__init__()
        self.split_half = split_half
        layers = []
        h = fields
        dout = 0
        for k, size in enumerate(dims):
            layers.append(nn.Linear(h * fields, size))
            last = k == len(dims) - 1
            h = size // 2 if split_half and not last else size
            dout += size - h if split_half and not last else size
        self.layers = nn.ModuleList(layers)
        self.dout = dout

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """[B, m, E] -> [B, dout]."""
        b, m, e = x0.shape
        x = x0
        pooled = []
        for k, layer in enumerate(self.layers):
            z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(b, x.shape[1] * m, e)
            # Applying the Linear on [B, E, H·m] compresses each embedding column: a plain matrix product.
            x = layer(z.transpose(1, 2)).transpose(1, 2)  # [B, H_k, E]
            if self.split_half and k < len(self.layers) - 1:
                half = x.shape[1] // 2
                pooled.append(x[:, half:].sum(dim=2))
                x = x[:, :half]
            else:
                pooled.append(x.sum(dim=2))
        return torch.cat(pooled, dim=1)


class XDeepFM(ZooModel):
    """xDeepFM: linear, CIN and DNN components over shared embeddings."""

    name = "xdeepfm"
    logit_parts = ("linear", "cin_head", "mlp")

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = 0.1,
        cin_dims: Sequence[int] = (200, 200, 200),
        cin_split_half: bool = True,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        cin = check_dims(self.name, "cin_dims", cin_dims, allow_empty=False)
        split = check_bool(self.name, "cin_split_half", cin_split_half)
        if split and any(size % 2 for size in cin[:-1]):
            raise NasrecError(f"{self.name}: with cin_split_half, every cin_dims size but the last must be even: {cin}")
        self.linear = FirstOrder(self.num_dense, self.table_sizes)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.dense_field = DenseField(self.num_dense, dim)
        self.cin = CIN(self.dense_field.count + self.num_sparse, cin, split)
        self.cin_head = nn.Linear(self.cin.dout, 1)
        self.mlp = self._mlp(self.num_dense + self.num_sparse * dim, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        emb = self.embedding(sparse)
        cin = self.cin_head(self.cin(self.dense_field(dense, emb))).squeeze(1)
        return self.linear(dense, sparse) + cin + self.mlp(flat_inputs(dense, emb)).squeeze(1)
