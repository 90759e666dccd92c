"""What every zoo model shares: input checks, hyper-parameter validation and initialisation.

Initialisation (`ZooModel.reset_parameters`): linears xavier-uniform with zero bias, embeddings
FieldEmbedding's xavier-normal per table (std sqrt(2 / (N + E))), as nasrec's own models, with two
exceptions, both measured on synthetic data with planted interactions (Adagrad, batch 512):

- LR's first-order weights (LR itself and the linear part of FM, DeepFM and xDeepFM) start at zero.
  Xavier weights on log-count dense features plus FieldEmbedding's 1-dim scalars (std ≈ 0.5 for small
  tables) start the logits at std ≈ 2.4, and LR was still worse than a constant after one epoch.
- FM, DeepFM and xDeepFM cap every embedding table's std at `max_embedding_std` = 0.1 (tables whose
  xavier std is smaller, i.e. more than ~180 rows, keep it), and the dense field's projection too.
  Their field vectors reach the logit through fixed products (FM's ~F²/2 inner products, CIN's
  outer products), so FieldEmbedding's std ≈ 0.3 on small tables starts FM terms at logit std ≈ 5-10
  and Adagrad diverged (test log loss 1.2-1.8, LR ≈ 0.5); with std 0.01 for every table the shared
  embeddings barely moved in three epochs. `max_embedding_std=None` restores FieldEmbedding's init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding, FirstOrder
from nasrec.model.layers import log_odds
from nasrec.zoo.layers import MLP, DenseField


def check_int(model: str, name: str, value: object, minimum: int) -> int:
    """An integer hyper-parameter of at least `minimum`, or a NasrecError naming model and parameter."""
    # bool is an int subclass, but `layers=True` is a mistake rather than one layer.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NasrecError(f"{model}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_dims(model: str, name: str, dims: object, allow_empty: bool = True) -> tuple[int, ...]:
    """A sequence of positive layer widths (a list from JSON is accepted), as a tuple."""
    if isinstance(dims, str | bytes) or not isinstance(dims, Sequence):
        raise NasrecError(f"{model}: {name} must be a sequence of positive integers, got {dims!r}")
    out = tuple(dims)
    if not out and not allow_empty:
        raise NasrecError(f"{model}: {name} must not be empty")
    for d in out:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise NasrecError(f"{model}: {name} must be a sequence of positive integers, got {dims!r}")
    return tuple(int(d) for d in out)


def check_dropout(model: str, value: object, name: str = "dropout") -> float:
    """A dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise NasrecError(f"{model}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_std(model: str, value: object) -> float | None:
    """An embedding std cap: None (no cap) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise NasrecError(f"{model}: max_embedding_std must be a positive number or None, got {value!r}")
    return float(value)


def check_bool(model: str, name: str, value: object) -> bool:
    """A boolean flag (a 0/1 integer is not accepted: it is usually a misplaced width)."""
    if not isinstance(value, bool):
        raise NasrecError(f"{model}: {name} must be true or false, got {value!r}")
    return value


@torch.no_grad()
def init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear inside `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if m.weight.numel():  # a zero-width layer has nothing to initialise (and torch warns)
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ZooModel(nn.Module):
    """Base of the zoo models: input shape bookkeeping and the common initialisation.

    Subclasses build every layer in their constructor (no lazy shapes) and call `reset_parameters` at
    its end; `forward(dense [B, D] float32, sparse [B, S] int64) -> logits [B]`.
    """

    name: str = "zoo"
    # Set by models with a `max_embedding_std` hyper-parameter; None keeps FieldEmbedding's init as is.
    max_embedding_std: float | None = None
    # The submodules whose outputs the logit sums, each linear in its own weights (a Linear(→ 1), an MLP's last
    # layer, LR's FirstOrder, FinalMLP's fusion): scaling those weights scales the logit (`scale_logit_`, for
    # `nasrec.train.calibration`). FM and DeepFM, whose inner products are quadratic in the embeddings, scale
    # theirs their own way.
    logit_parts: tuple[str, ...] = ()

    def __init__(self, num_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.num_dense = check_int(self.name, "num_dense", num_dense, 0)
        if isinstance(table_sizes, str | bytes) or not isinstance(table_sizes, Sequence) or not table_sizes:
            raise NasrecError(f"{self.name}: needs at least one embedding table, got table_sizes={table_sizes!r}")
        self.table_sizes = tuple(int(n) for n in table_sizes)
        self.num_sparse = len(self.table_sizes)

    def _add_embedding(self, embedding_dim: object, max_embedding_std: object) -> int:
        """Checks the embedding hyper-parameters, creates `self.embedding` and returns its dimension."""
        dim = check_int(self.name, "embedding_dim", embedding_dim, 1)
        self.max_embedding_std = check_std(self.name, max_embedding_std)
        self.embedding = FieldEmbedding(self.table_sizes, dim)
        return dim

    def _mlp(
        self, din: int, dims: object, dropout: object, batchnorm: object, out: int | None = 1, name: str = "mlp_dims"
    ) -> MLP:
        """An MLP (`din` → checked `dims` → `out`) with checked dropout and batch-norm settings."""
        return MLP(
            din,
            check_dims(self.name, name, dims),
            out=out,
            dropout=check_dropout(self.name, dropout),
            batchnorm=check_bool(self.name, "batchnorm", batchnorm),
        )

    def logit_bias(self) -> nn.Parameter | None:
        """The scalar bias added straight to the logit: the LR part's, else the last Linear(→ 1)'s of the head."""
        linear = getattr(self, "linear", None)
        if isinstance(linear, FirstOrder):
            return linear.bias
        for name in ("head", "fusion", "top", "mlp"):  # the module whose output the logit sums
            part = getattr(self, name, None)
            if not isinstance(part, nn.Module):
                continue
            last = [
                m for m in part.modules() if isinstance(m, nn.Linear) and m.out_features == 1 and m.bias is not None
            ]
            if last:
                return last[-1].bias
        return None

    def can_scale_logit(self) -> bool:
        """Whether `scale_logit_` can multiply the logit by a factor through the weights."""
        return bool(self.logit_parts)

    @torch.no_grad()
    def scale_logit_(self, factor: float) -> None:
        """Multiply every logit by `factor` through the weights: those of `logit_parts`' final layers."""
        if not self.can_scale_logit():
            raise NasrecError(f"{self.name}: its logit is not a sum of final layers, so it cannot be scaled")
        for name in self.logit_parts:
            part = getattr(self, name)
            if isinstance(part, MLP):
                part = part.layers[-1]
            for p in part.parameters():  # a final layer, or a module linear in its own weights (FinalMLP's fusion)
                p.mul_(factor)

    @torch.no_grad()
    def init_logit_bias(self, ctr: float) -> None:
        """Start `logit_bias` at the log-odds of `ctr` (the train split's click rate), the model at the base rate."""
        bias = self.logit_bias()
        if bias is None:
            raise NasrecError(f"{self.name}: no bias reaches its logit directly")
        bias.fill_(log_odds(ctr))

    def reset_parameters(self) -> None:
        """Embeddings: FieldEmbedding's xavier-normal per table; linears: xavier-uniform, zero bias; fresh BN.

        LR's first-order weights (`FirstOrder`) start at zero. With `max_embedding_std` set, every field
        embedding table (of `self.embedding` and any other FieldEmbedding) whose xavier-normal std
        sqrt(2 / (N + E)) exceeds it, and the dense field's projection (the dense features' embedding), are
        scaled down to that std.
        """
        for m in self.modules():
            if isinstance(m, FieldEmbedding | nn.BatchNorm1d):
                m.reset_parameters()
        init_linears(self)
        for m in self.modules():
            if isinstance(m, FirstOrder):  # its own rule (zeros) overrides the generic one
                m.reset_parameters()
        cap = self.max_embedding_std
        if cap is not None:
            with torch.no_grad():
                for embedding in self.modules():
                    if isinstance(embedding, FieldEmbedding):
                        embedding.cap_std(cap)
                for m in self.modules():
                    if isinstance(m, DenseField) and m.proj is not None:
                        w = m.proj.weight
                        std = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))  # xavier-uniform's std
                        if std > cap:
                            w.mul_(cap / std)
