"""AutoInt+ (Song et al., 2019): self-attentive interacting layers over the fields, plus a DNN.

Fields: the S sparse embeddings and one dense field (Linear(D → E) of the dense features, see
`nasrec.zoo.layers.DenseField`), F = S + 1 vectors. Interacting layer (in → H·d'): per head h,
Q = X W_Q^h, K = X W_K^h, V = X W_V^h (no biases), A = softmax(Q Kᵀ) over the fields (the paper's plain
inner product, unscaled), output concat_h(A V); with `residual`, + X W_res; then ReLU. The last layer's
[F, H·d'] output is flattened and a Linear(→ 1) gives the attention logit. The "+" is a DNN over
[dense features, flattened sparse embeddings] whose logit is added.

Attention is written with explicit matrix products (not fused SDPA) so that FLOP counters see the
Q·Kᵀ and A·V products: 2·H·F²·d' FLOPs per layer.

Defaults: the AutoInt paper's attention, `embedding_dim=16`, `attention_layers=3`, `attention_heads=2`,
`attention_dim=32` (per head), `residual=True`; the DNN part `mlp_dims=(400, 400, 400)` (the zoo's
common deep component), `dropout=0.0`, `batchnorm=False` (DNN only); `max_embedding_std=None`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasrec.zoo.base import ZooModel, check_bool, check_int
from nasrec.zoo.layers import DenseField, flat_inputs


class InteractingLayer(nn.Module):
    """Multi-head self-attention over fields with an optional projected residual, then ReLU."""

    def __init__(self, din: int, heads: int, head_dim: int, residual: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        width = heads * head_dim
        self.query = nn.Linear(din, width, bias=False)
        self.key = nn.Linear(din, width, bias=False)
        self.value = nn.Linear(din, width, bias=False)
        self.residual = nn.Linear(din, width, bias=False) if residual else None
        self.dout = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, din] -> [B, F, heads·head_dim]."""
        b, f, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, f, self.heads, self.head_dim).transpose(1, 2)  # [B, H, F, d']

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(2, 3)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, f, self.dout)
        if self.residual is not None:
            out = out + self.residual(x)
        return F.relu(out)


class AutoIntPlus(ZooModel):
    """AutoInt+: stacked interacting layers and a DNN, logits summed."""

    name = "autoint+"
    logit_parts = ("attention_head", "mlp")

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        attention_layers: int = 3,
        attention_heads: int = 2,
        attention_dim: int = 32,
        residual: bool = True,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        layers = check_int(self.name, "attention_layers", attention_layers, 1)
        heads = check_int(self.name, "attention_heads", attention_heads, 1)
        head_dim = check_int(self.name, "attention_dim", attention_dim, 1)
        res = check_bool(self.name, "residual", residual)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        self.dense_field = DenseField(self.num_dense, dim)
        attention = []
        width = dim
        for _ in range(layers):
            attention.append(InteractingLayer(width, heads, head_dim, res))
            width = heads * head_dim
        self.attention = nn.ModuleList(attention)
        fields = self.dense_field.count + self.num_sparse
        self.attention_head = nn.Linear(fields * width, 1)
        self.mlp = self._mlp(self.num_dense + self.num_sparse * dim, mlp_dims, dropout, batchnorm)
        self.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        emb = self.embedding(sparse)
        x = self.dense_field(dense, emb)
        for layer in self.attention:
            x = layer(x)
        return self.attention_head(x.flatten(1)).squeeze(1) + self.mlp(flat_inputs(dense, emb)).squeeze(1)
