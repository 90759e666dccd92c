"""Building blocks shared by several zoo models: MLP, dense field, pairwise inner products, input flattening,
LR's first-order part."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Hidden layers Linear → BatchNorm? → ReLU → Dropout?, then an optional output Linear(→ out)."""

    def __init__(
        self,
        din: int,
        dims: Sequence[int],
        out: int | None = 1,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = din
        for d in dims:
            layers.append(nn.Linear(width, d))
            if batchnorm:
                layers.append(nn.BatchNorm1d(d))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = d
        if out is not None:
            layers.append(nn.Linear(width, out))
            width = out
        self.layers = nn.Sequential(*layers)
        self.din = din
        self.dout = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, din] -> [B, dout]."""
        return self.layers(x)


class DenseField(nn.Module):
    """All dense features projected, by one Linear(D → E) with bias, to a single field vector.

    This is how the zoo's field-interaction models (FM, DeepFM, AutoInt+, xDeepFM) see dense features,
    as DLRM's bottom MLP and NASRec's dot operator do: the vector then interacts with every sparse
    field's embedding. Its interaction with field f, ⟨W x + b, e_f⟩ = Σ_k x_k ⟨w_k, e_f⟩ + ⟨b, e_f⟩, is
    the FM dense×sparse term with one vector w_k per dense feature; dense×dense pairs are left out,
    which also keeps large raw dense values (log counts up to ~10) from blowing up the initial logits.
    With no dense features the field is absent.
    """

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_dense, dim) if num_dense > 0 else None
        self.count = 1 if num_dense > 0 else 0

    def forward(self, dense: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """dense [B, D], sparse field embeddings [B, S, E] -> all fields [B, count + S, E], dense first."""
        if self.proj is None:
            return fields
        return torch.cat([self.proj(dense).unsqueeze(1), fields], dim=1)


class InnerProducts(nn.Module):
    """The inner products of every pair among T vectors: [B, T, E] -> [B, T(T−1)/2].

    They are the strictly lower triangle of the Gram matrix, row by row. The whole Gram matrix is one
    batched matrix product (T·T·E FLOPs under nasrec's convention, which FLOP counters see), and the
    pairs are gathered from it.
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(count, count, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.count = count * (count - 1) // 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, T(T−1)/2]."""
        gram = torch.bmm(z, z.transpose(1, 2))
        return gram[:, self.rows, self.cols]


def flat_inputs(dense: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """The usual deep-model input: [dense features, flattened sparse embeddings], [B, D + S·E]."""
    return torch.cat([dense, fields.flatten(1)], dim=1)
