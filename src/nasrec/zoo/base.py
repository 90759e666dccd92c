"""What every zoo model shares: input checks, hyper-parameter validation and initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding
from nasrec.zoo.layers import DenseField


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


def check_dropout(model: str, value: object) -> float:
    """A dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise NasrecError(f"{model}: dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def check_std(model: str, value: object) -> float | None:
    """An initial embedding standard deviation: None (FieldEmbedding's own init) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise NasrecError(f"{model}: embedding_std must be a positive number or None, got {value!r}")
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
    # Set by models with an `embedding_std` hyper-parameter; None keeps FieldEmbedding's init.
    embedding_std: float | None = None

    def __init__(self, num_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.num_dense = check_int(self.name, "num_dense", num_dense, 0)
        if isinstance(table_sizes, str | bytes) or not isinstance(table_sizes, Sequence) or not table_sizes:
            raise NasrecError(f"{self.name}: needs at least one embedding table, got table_sizes={table_sizes!r}")
        self.table_sizes = tuple(int(n) for n in table_sizes)
        self.num_sparse = len(self.table_sizes)

    def reset_parameters(self) -> None:
        """Embeddings: FieldEmbedding's xavier-normal per table; linears: xavier-uniform, zero bias; fresh BN.

        With `embedding_std` set, the field embeddings (`self.embedding`) and the dense field's projection
        weights, which play the role of the dense features' embeddings, are drawn from N(0, std²)
        instead; LR's per-category scalar weights keep FieldEmbedding's init either way.
        """
        for m in self.modules():
            if isinstance(m, FieldEmbedding | nn.BatchNorm1d):
                m.reset_parameters()
        init_linears(self)
        if self.embedding_std is not None:
            with torch.no_grad():
                embedding = self.get_submodule("embedding")
                assert isinstance(embedding, FieldEmbedding)
                embedding.table.weight.normal_(0.0, self.embedding_std)
                for m in self.modules():
                    if isinstance(m, DenseField) and m.proj is not None:
                        m.proj.weight.normal_(0.0, self.embedding_std)
