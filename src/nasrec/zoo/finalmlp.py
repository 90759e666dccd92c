"""FinalMLP (Mao et al., 2023): two MLP streams with feature gating, fused by multi-head bilinear pooling.

Input: x = [dense features, flattened sparse embeddings] (d = D + S·E values, what the zoo's DNN reads).

Feature selection (`use_fs=True`): each stream i gets its own gated copy x_i = x ⊙ 2σ(G_i(c_i)), where
G_i is an MLP → `fs_dims` → d (ReLU hidden layers, no dropout or batch-norm) and c_i its context,
chosen by `fs1_context` / `fs2_context`:
- None (the default): the whole input x, every field as context;
- a list of sparse field indices (0-based, in the cache's `sparse_fields` order): the concatenated
  embeddings of those fields from the gate's own tables (the paper's and FuxiCTR's form; on Frappe
  BARS gives stream 1 the user and stream 2 the item);
- an empty list: a learned vector of width `embedding_dim`, starting at zero (FuxiCTR's gate with no
  context fields: the same gate for every example).
With `use_fs=False` both streams read x itself.

Streams: o_1 = MLP_1(x_1), o_2 = MLP_2(x_2) (Linear → BatchNorm? → ReLU → Dropout? per layer, no
output layer), with their own widths, dropout and batch-norm.

Fusion: o_1 and o_2 are split into `num_heads` equal chunks o_1^h (width a) and o_2^h (width c); the
logit is Σ_h (w_1^hᵀ o_1^h + w_2^hᵀ o_2^h + o_1^hᵀ W_3^h o_2^h + b^h). The linear terms over all heads
are a Linear over o_1 and one over o_2, and the per-head biases sum into one bias. W_3 starts
xavier-normal as one map from the H·a·c products o_1i o_2j to the logit (std sqrt(2 / (H·a·c + 1)),
FuxiCTR's scale), so the bilinear term starts at variance ≈ 2·E[o_1²]·E[o_2²] whatever the widths
(xavier per head would grow it with a·c / (a + c)).

FLOPs: the gates' and streams' linears, the fusion's two Linears (a + c per head) and the bilinear
term as two matrix products per head, o_1^hᵀ W_3^h (a·c) then · o_2^h (c): H·(a·c + c). The gating
multiply, sigmoid and head sum are element-wise and not counted.

Defaults: FuxiCTR's FinalMLP defaults, `mlp1_dims=(64, 64, 64)`, `mlp2_dims=(64, 64, 64)`,
`mlp1_dropout=mlp2_dropout=0.0`, `mlp1_batchnorm=mlp2_batchnorm=False`, `use_fs=True`,
`fs_dims=(64,)`, `num_heads=1`, except `embedding_dim=16` (FuxiCTR: 10), the zoo's common dimension;
`max_embedding_std=None`. `num_heads` must divide both streams' last widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding
from nasrec.zoo.base import ZooModel, check_bool, check_dims, check_dropout, check_int
from nasrec.zoo.layers import MLP, flat_inputs


class FeatureGate(nn.Module):
    """FinalMLP's feature selection for one stream: x ⊙ 2σ(MLP(c)), the gate centred on 1.

    The context c is x itself (`fields=None`), the embeddings of `fields` from the gate's own tables, or a
    learned vector of width `dim` (`fields=()`).
    """

    def __init__(self, mlp: MLP, fields: tuple[int, ...] | None, table_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.mlp = mlp
        self.fields = fields
        self.context = FieldEmbedding([table_sizes[f] for f in fields], dim) if fields else None
        self.constant = nn.Parameter(torch.zeros(dim)) if fields == () else None
        # the context columns as an index tensor, made once (and moved with the model), not per batch
        self.register_buffer("columns", torch.tensor(fields or (), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """x [B, d], sparse ids [B, S] -> [B, d]."""
        if self.fields is None:
            c = x
        elif self.context is not None:
            c = self.context(sparse.index_select(1, self.columns)).flatten(1)
        else:
            c = self.constant.repeat(x.shape[0], 1)
        return x * (2.0 * torch.sigmoid(self.mlp(c)))

    @staticmethod
    def width(fields: tuple[int, ...] | None, d: int, dim: int) -> int:
        """The width of the context the gate's MLP reads."""
        if fields is None:
            return d
        return dim * max(1, len(fields))


class BilinearFusion(nn.Module):
    """Multi-head bilinear fusion of two stream outputs [B, d1] and [B, d2] into logits [B]."""

    def __init__(self, d1: int, d2: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear1 = nn.Linear(d1, 1)  # w_1ᵀ o_1 plus the heads' summed bias
        self.linear2 = nn.Linear(d2, 1, bias=False)
        self.bilinear = nn.Parameter(torch.empty(heads, d1 // heads, d2 // heads))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W_3 xavier-normal as one map from its H·a·c products to the logit (the Linears are the model's)."""
        nn.init.normal_(self.bilinear, std=math.sqrt(2.0 / (self.bilinear.numel() + 1)))

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        """o1 [B, d1], o2 [B, d2] -> Σ_h (w_1^hᵀ o_1^h + w_2^hᵀ o_2^h + o_1^hᵀ W_3^h o_2^h) + b, [B]."""
        _, a, c = self.bilinear.shape
        # Matrix products (not multiply-and-sum) so that FLOP counters see the bilinear term.
        left = torch.matmul(o1.reshape(-1, self.heads, 1, a), self.bilinear)  # [B, H, 1, c]
        per_head = torch.matmul(left, o2.reshape(-1, self.heads, c, 1))  # [B, H, 1, 1]
        return self.linear1(o1).squeeze(1) + self.linear2(o2).squeeze(1) + per_head.flatten(1).sum(dim=1)


class FinalMLP(ZooModel):
    """FinalMLP: two gated MLP streams and a multi-head bilinear fusion."""

    name = "finalmlp"
    logit_parts = ("fusion",)  # each of its terms holds one of its weights once

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        mlp1_dims: Sequence[int] = (64, 64, 64),
        mlp1_dropout: float = 0.0,
        mlp1_batchnorm: bool = False,
        mlp2_dims: Sequence[int] = (64, 64, 64),
        mlp2_dropout: float = 0.0,
        mlp2_batchnorm: bool = False,
        use_fs: bool = True,
        fs_dims: Sequence[int] = (64,),
        num_heads: int = 1,
        fs1_context: Sequence[int] | None = None,
        fs2_context: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        dims1 = check_dims(self.name, "mlp1_dims", mlp1_dims, allow_empty=False)
        dims2 = check_dims(self.name, "mlp2_dims", mlp2_dims, allow_empty=False)
        drop1 = check_dropout(self.name, mlp1_dropout, "mlp1_dropout")
        drop2 = check_dropout(self.name, mlp2_dropout, "mlp2_dropout")
        bn1 = check_bool(self.name, "mlp1_batchnorm", mlp1_batchnorm)
        bn2 = check_bool(self.name, "mlp2_batchnorm", mlp2_batchnorm)
        gated = check_bool(self.name, "use_fs", use_fs)
        gate_dims = check_dims(self.name, "fs_dims", fs_dims)
        heads = check_int(self.name, "num_heads", num_heads, 1)
        for key, dims in (("mlp1_dims", dims1), ("mlp2_dims", dims2)):
            if dims[-1] % heads:
                raise NasrecError(
                    f"{self.name}: num_heads ({heads}) must divide the stream output width, the last {key} ({dims[-1]})"
                )
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        d = self.num_dense + self.num_sparse * dim
        gates = []
        for key, given in (("fs1_context", fs1_context), ("fs2_context", fs2_context)):
            fields = self._context(key, given, gated)
            if not gated:
                gates.append(None)
                continue
            mlp = self._mlp(FeatureGate.width(fields, d, dim), gate_dims, 0.0, False, out=d, name="fs_dims")
            gates.append(FeatureGate(mlp, fields, self.table_sizes, dim))
        self.gate1, self.gate2 = gates
        self.mlp1 = self._mlp(d, dims1, drop1, bn1, out=None, name="mlp1_dims")
        self.mlp2 = self._mlp(d, dims2, drop2, bn2, out=None, name="mlp2_dims")
        self.fusion = BilinearFusion(dims1[-1], dims2[-1], heads)
        self.reset_parameters()

    def _context(self, key: str, given: object, gated: bool) -> tuple[int, ...] | None:
        """A gate's checked context fields: None (the whole input), or sparse field indices (maybe none)."""
        if given is None:
            return None
        if not gated:
            raise NasrecError(f"{self.name}: {key} needs use_fs: true (without feature selection there is no gate)")
        if isinstance(given, str | bytes) or not isinstance(given, Sequence):
            raise NasrecError(f"{self.name}: {key} must be a list of sparse field indices, got {given!r}")
        fields = tuple(check_int(self.name, key, f, 0) for f in given)
        bad = [f for f in fields if f >= self.num_sparse]
        if bad:
            raise NasrecError(
                f"{self.name}: {key} field index {bad[0]} is out of range (the data has {self.num_sparse} sparse fields)"
            )
        if len(set(fields)) != len(fields):
            raise NasrecError(f"{self.name}: {key} names a field twice: {list(fields)}")
        return fields

    def reset_parameters(self) -> None:
        """The common initialisation, then the fusion's bilinear weights and the constant gate contexts (zero)."""
        super().reset_parameters()
        self.fusion.reset_parameters()
        for gate in (self.gate1, self.gate2):
            if gate is not None and gate.constant is not None:
                nn.init.zeros_(gate.constant)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        x = flat_inputs(dense, self.embedding(sparse))
        x1 = x if self.gate1 is None else self.gate1(x, sparse)
        x2 = x if self.gate2 is None else self.gate2(x, sparse)
        return self.fusion(self.mlp1(x1), self.mlp2(x2))
