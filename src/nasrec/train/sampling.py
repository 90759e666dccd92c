"""The path sampler a training configuration asks for: a supernet's paths, or the whole model.

The trainer asks the sampler (`nasrec.model.paths.PathSampler`) for each step's path and for the paths an
evaluation averages over; what a supernet is and how its paths are drawn stays on the model side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

from torch import nn

from nasrec.errors import NasrecError
from nasrec.latency.budget import check_latency_cap, latency_model
from nasrec.model.cost import ServedCost
from nasrec.model.paths import PathSampler, SupernetPaths, WholeModel, mflops_budget
from nasrec.model.spec import ModelSpec
from nasrec.space.arch import Architecture
from nasrec.space.space import SearchSpace
from nasrec.train.config import TrainConfig

log = logging.getLogger(__name__)


def check_paths_config(spec: ModelSpec, cfg: TrainConfig) -> None:
    """Refuse settings of supernet paths for a model without paths, and a bias refit or calibration for a supernet."""
    for key in ("path_max_mflops", "path_max_latency_ms"):
        if spec.kind != "supernet" and getattr(cfg, key) is not None:
            raise NasrecError(f"training config: {key} applies to supernets only")
    if spec.kind != "supernet" and cfg.sandwich:
        raise NasrecError("training config: sandwich applies to supernets only")
    for key in ("refit_logit_bias", "calibrate_logits"):
        if spec.kind == "supernet" and getattr(cfg, key):
            raise NasrecError(f"training config: {key} applies to standalone models, not to a supernet's paths")
    if cfg.refit_logit_bias and cfg.calibrate_logits:
        raise NasrecError(
            "training config: refit_logit_bias and calibrate_logits both move the output bias; set one of them"
        )


def path_warmup(cfg: TrainConfig, total_steps: int, warn: bool = True) -> int:
    """The full-path warm-up in steps: the absolute one capped to the training length, or the fraction of it."""
    if cfg.path_warmup_fraction:
        return round(cfg.path_warmup_fraction * total_steps)
    if cfg.path_warmup_steps > total_steps:
        if warn:
            log.warning(
                "path_warmup_steps %d exceeds the %d training steps: capped at %d, so the whole run is "
                "warm-up; path_warmup_fraction gives it as a share of training",
                cfg.path_warmup_steps,
                total_steps,
                total_steps,
            )
        return total_steps
    return cfg.path_warmup_steps


def latency_budget(
    within: Callable[[Architecture], bool] | None, space: SearchSpace, spec: ModelSpec, cfg: TrainConfig
) -> Callable[[Architecture], bool]:
    """`within` (an MFLOPs budget, or None) and "predicted serving latency at most path_max_latency_ms"."""
    shape = (spec.num_dense, len(spec.table_sizes))
    model = latency_model(asdict(cfg), space, shape, cfg.path_count_layernorm, cap_key="path_max_latency_ms")
    assert model is not None  # a cap without a table raised
    cap = cfg.path_max_latency_ms
    check_latency_cap(cap, space, model, cap_key="path_max_latency_ms")
    for w in model.warnings:
        log.warning("%s", w)
    if within is None:
        return lambda arch: model.predict(arch) <= cap
    return lambda arch: within(arch) and model.predict(arch) <= cap


def path_sampler(
    model: nn.Module, spec: ModelSpec, cfg: TrainConfig, total_steps: int, warn: bool = True
) -> PathSampler:
    """`SupernetPaths` of `cfg` (strategy, warm-up, budget, evaluation paths) for a supernet, else `WholeModel`.

    `warn`: log that an absolute warm-up is capped to the training length (rank 0 says it once).
    """
    check_paths_config(spec, cfg)
    if spec.kind != "supernet":
        return WholeModel()
    within = mflops_budget(cfg.path_max_mflops, spec.num_dense, spec.table_sizes, cfg.path_count_layernorm)
    if cfg.path_max_latency_ms is not None:
        within = latency_budget(within, model.space, spec, cfg)
    ends = None
    if cfg.sandwich:
        cost = ServedCost(spec.num_dense, spec.table_sizes, cfg.path_count_layernorm)
        ends = (model.space.full_path(), model.space.smallest_path(lambda a: cost(a)[0]))
    return SupernetPaths(
        model.space,
        cfg.seed,
        cfg.strategy,
        path_warmup(cfg, total_steps, warn=warn),
        within,
        cfg.supernet_eval_archs,
        ends,
    )
