"""DCN (Wang et al., 2017) and DCNv2 (Wang et al., 2021): a cross network and a DNN over x_0 = [dense
features, flattened embeddings] (d = D + S·E values).

DCN (v1)
    Cross layer l: x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l with a weight vector w_l and a bias vector b_l
    (both d-dimensional, b_l starts at zero). x_lᵀ w_l is a Linear(d → 1) without bias, so it costs d
    FLOPs per layer; scaling x_0 by that scalar is element-wise and, as DCNv2's x_0 ⊙ (·), not counted.
    The cross output and the DNN output are concatenated and a Linear(→ 1) gives the logit (the
    paper's combination layer); empty `mlp_dims` leaves the cross network alone. Defaults as DCNv2's,
    so that the two differ in their cross layers only: `embedding_dim=16`, `max_embedding_std=None`,
    `cross_layers=3`, `mlp_dims=(400, 400, 400)`, `dropout=0.0`, `batchnorm=False` (DNN only).

DCNv2
    Cross layer l: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l with a full d×d matrix W_l, or, with
    `cross_rank=r`, the low-rank W_l = U_l V_lᵀ (x_0 ⊙ (U_l (V_lᵀ x_l) + b_l) + x_l: 2·d·r FLOPs instead
    of d²). Structures:

    - `"parallel"` (default): the cross output and the DNN output (both from x_0) are concatenated and
      a Linear(→ 1) gives the logit.
    - `"stacked"`: the DNN reads the cross output; its output Linear gives the logit.

    Empty `mlp_dims` leaves the cross network alone (then a Linear(d → 1) on its output either way).
    Defaults: `embedding_dim=16`, `max_embedding_std=None`, `cross_layers=3`, `cross_rank=None` (full
    rank), `structure="parallel"`, `mlp_dims=(400, 400, 400)` (the zoo's common deep component),
    `dropout=0.0`, `batchnorm=False` (DNN only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.zoo.base import ZooModel, check_int
from nasrec.zoo.layers import MLP, flat_inputs

STRUCTURES = ("parallel", "stacked")


class CrossLayer(nn.Module):
    """One DCNv2 cross layer, full-rank (`rank=None`) or low-rank."""

    def __init__(self, d: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is None:
            self.proj: nn.Module = nn.Linear(d, d)
        else:
            # The bias sits on the up-projection, so the layer is W x + b with W = U Vᵀ of rank r.
            self.proj = nn.Sequential(nn.Linear(d, rank, bias=False), nn.Linear(rank, d))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0, x [B, d] -> x0 ⊙ (W x + b) + x."""
        return x0 * self.proj(x) + x


class VectorCrossLayer(nn.Module):
    """One DCN (v1) cross layer: x_0 (xᵀ w) + b + x with a weight vector w and a bias vector b."""

    def __init__(self, d: int) -> None:
        super().__init__()
        # xᵀw as a Linear: the generic xavier init, and FLOP counters see its d multiply-accumulates.
        self.proj = nn.Linear(d, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(d))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The bias vector back to zero (the weight vector is a Linear, initialised with the others)."""
        self.bias.zero_()

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0, x [B, d] -> x0 (xᵀ w) + b + x."""
        return x0 * self.proj(x) + self.bias + x


class CrossNetwork(nn.Module):
    """A stack of cross layers (`CrossLayer` or `VectorCrossLayer`); every layer multiplies by the same x_0."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, d]."""
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class CrossAndDeep(ZooModel):
    """What DCN and DCNv2 share: a cross network and a DNN over x_0, parallel or stacked, and the logit."""

    logit_parts = ("head",)

    def _build(
        self, cross: CrossNetwork, d: int, mlp_dims: object, dropout: object, batchnorm: object, structure: str
    ) -> None:
        """Adds the cross network, the DNN and the head for inputs of width `d`."""
        self.structure = structure
        self.cross = cross
        mlp = self._mlp(d, mlp_dims, dropout, batchnorm, out=None)
        self.mlp: MLP | None = mlp if len(mlp.layers) else None
        if self.mlp is None:
            self.head = nn.Linear(d, 1)
        elif structure == "stacked":
            self.head = nn.Linear(self.mlp.dout, 1)
        else:
            self.head = nn.Linear(d + self.mlp.dout, 1)

    def reset_parameters(self) -> None:
        """The common initialisation, then DCN's cross biases at zero."""
        super().reset_parameters()
        for m in self.modules():
            if isinstance(m, VectorCrossLayer):
                m.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        x0 = flat_inputs(dense, self.embedding(sparse))
        x = self.cross(x0)
        if self.mlp is not None:
            x = self.mlp(x) if self.structure == "stacked" else torch.cat([x, self.mlp(x0)], dim=1)
        return self.head(x).squeeze(1)


class DCN(CrossAndDeep):
    """DCN (v1): vector cross layers and a DNN in parallel."""

    name = "dcn"

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        cross_layers: int = 3,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        layers = check_int(self.name, "cross_layers", cross_layers, 1)
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        d = self.num_dense + self.num_sparse * dim
        self._build(
            CrossNetwork(VectorCrossLayer(d) for _ in range(layers)), d, mlp_dims, dropout, batchnorm, "parallel"
        )
        self.reset_parameters()


class DCNv2(CrossAndDeep):
    """DCN-V2: cross network and DNN, parallel or stacked."""

    name = "dcnv2"

    def __init__(
        self,
        num_dense: int,
        table_sizes: Sequence[int],
        embedding_dim: int = 16,
        max_embedding_std: float | None = None,
        cross_layers: int = 3,
        cross_rank: int | None = None,
        structure: str = "parallel",
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__(num_dense, table_sizes)
        layers = check_int(self.name, "cross_layers", cross_layers, 1)
        rank = None if cross_rank is None else check_int(self.name, "cross_rank", cross_rank, 1)
        if structure not in STRUCTURES:
            raise NasrecError(f"{self.name}: structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
        dim = self._add_embedding(embedding_dim, max_embedding_std)
        d = self.num_dense + self.num_sparse * dim
        cross = CrossNetwork(CrossLayer(d, rank) for _ in range(layers))
        self._build(cross, d, mlp_dims, dropout, batchnorm, structure)
        self.reset_parameters()
