"""The zoo by name: building models, their default hyper-parameters and their measured cost.

FLOPs follow nasrec's analytic convention (`nasrec.model.cost`): one multiply-accumulate is one FLOP;
linear layers and batched matrix products are counted, LayerNorms at 5 FLOPs per element; element-wise
operations (activations, FM's pairwise term, CIN's outer products, DCN's x_0 scaling, FinalMLP's gates,
pooling, batch-norm at inference), embedding lookups and gathers are not. They are measured rather than derived: the model runs on one
example under `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-accumulate as 2
(hence halved) and does not see LayerNorm (hence a forward hook per LayerNorm). Zoo models write
attention, pairwise inner products (DLRM, IPNN) and FinalMLP's bilinear fusion with explicit matrix
products, which the counter sees on every device.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasrec.errors import NasrecError
from nasrec.model.cost import LN_FLOPS_PER_ELEMENT
from nasrec.model.embedding import FieldEmbedding
from nasrec.model.spec import register_zoo
from nasrec.zoo.autoint import AutoIntPlus
from nasrec.zoo.base import ZooModel
from nasrec.zoo.dcn import DCN, DCNv2
from nasrec.zoo.deepfm import DeepFM
from nasrec.zoo.dnn import DLRM, DNN
from nasrec.zoo.finalmlp import FinalMLP
from nasrec.zoo.linear import FM, LR
from nasrec.zoo.pnn import IPNN
from nasrec.zoo.widedeep import WideAndDeep
from nasrec.zoo.xdeepfm import XDeepFM

ZOO_MODELS: dict[str, type[ZooModel]] = {
    cls.name: cls for cls in (LR, FM, DNN, DLRM, DeepFM, DCNv2, AutoIntPlus, XDeepFM, WideAndDeep, IPNN, DCN, FinalMLP)
}


def _model_class(name: str) -> type[ZooModel]:
    try:
        return ZOO_MODELS[name]
    except (KeyError, TypeError):
        raise NasrecError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO_MODELS)}") from None


def _hparam_names(cls: type[ZooModel]) -> list[str]:
    params = list(inspect.signature(cls.__init__).parameters.values())
    return [p.name for p in params[3:]]  # after self, num_dense, table_sizes


def default_hparams(name: str) -> dict[str, Any]:
    """The hyper-parameters of zoo model `name` and their defaults, in constructor order."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: params[k].default for k in _hparam_names(cls)}


def build_zoo_model(name: str, num_dense: int, table_sizes: Sequence[int], **hparams: Any) -> ZooModel:
    """A freshly initialised zoo model; unknown names, hyper-parameters or bad values raise NasrecError."""
    cls = _model_class(name)
    known = _hparam_names(cls)
    unknown = [k for k in hparams if k not in known]
    if unknown:
        choices = ", ".join(known) if known else "none"
        raise NasrecError(f"zoo model {name!r} has no hyper-parameter {unknown[0]!r} (it has: {choices})")
    return cls(num_dense, table_sizes, **hparams)


@dataclass(frozen=True)
class ZooCost:
    """FLOPs per example (1 multiply-accumulate = 1 FLOP) and parameter counts of a model."""

    flops: int
    dense_params: int  # every parameter outside the FieldEmbedding tables
    embedding_params: int

    @property
    def mflops(self) -> float:
        """FLOPs per example in millions."""
        return self.flops / 1e6

    @property
    def params(self) -> int:
        """All parameters: dense plus embeddings."""
        return self.dense_params + self.embedding_params

    def to_dict(self) -> dict[str, Any]:
        """All fields and derived values, for JSON reports."""
        return {
            "flops": self.flops,
            "mflops": self.mflops,
            "dense_params": self.dense_params,
            "embedding_params": self.embedding_params,
            "params": self.params,
        }


def _measure_flops(model: nn.Module, num_dense: int, num_sparse: int, device: torch.device) -> int:
    ln_flops = 0

    def count_ln(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal ln_flops
        ln_flops += LN_FLOPS_PER_ELEMENT * output.numel()

    hooks = [m.register_forward_hook(count_ln) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    # Inference mode: dropout off and batch-norm on running statistics, which also accepts one example.
    was_training = model.training
    model.eval()
    try:
        dense = torch.zeros(1, num_dense, device=device)
        sparse = torch.zeros(1, num_sparse, dtype=torch.int64, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(dense, sparse)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return counter.get_total_flops() // 2 + ln_flops  # the counter counts a multiply-accumulate as 2


def _param_counts(model: nn.Module) -> tuple[int, int]:
    embedding = {id(p) for m in model.modules() if isinstance(m, FieldEmbedding) for p in m.parameters()}
    dense = emb = 0
    for p in model.parameters():
        if id(p) in embedding:
            emb += p.numel()
        else:
            dense += p.numel()
    return dense, emb


def zoo_cost(name_or_model: str | nn.Module, num_dense: int, table_sizes: Sequence[int], **hparams: Any) -> ZooCost:
    """FLOPs per example and parameter counts of a zoo model (by name and hyper-parameters) or a model.

    A name is built on the meta device, so the cost of Criteo-sized tables is known without allocating
    them. A model is measured where its parameters live, on one example of zero features and ids.
    """
    if isinstance(name_or_model, nn.Module):
        if hparams:
            raise NasrecError("zoo_cost: hyper-parameters apply only to a model given by name")
        model = name_or_model
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    else:
        with torch.device("meta"):
            model = build_zoo_model(name_or_model, num_dense, table_sizes, **hparams)
        device = torch.device("meta")
    flops = _measure_flops(model, num_dense, len(table_sizes), device)
    dense, emb = _param_counts(model)
    return ZooCost(flops=flops, dense_params=dense, embedding_params=emb)


# `ModelSpec` (the layer below) builds and costs kind "zoo" through these once the zoo is imported
register_zoo(build_zoo_model, zoo_cost)
