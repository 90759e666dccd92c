"""A training run's state between steps: what a checkpoint holds, how it is restored, and which runs are one.

Every choice that varies between steps is a pure function of the seed and the position, so the counters,
the weights, the optimizer and schedule state and the torch RNG are all a run needs to continue exactly as
an uninterrupted one. Positions are counted in global batches, so a run resumes under any world size.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec import rundir
from nasrec.backend.shardfiles import check_world
from nasrec.errors import NasrecError
from nasrec.train.config import TrainConfig, default_eps_as_none

# Settings a run may change when it resumes. Threads as devices: the same computation, on other hardware
# (a pipeline resumed with another `final.workers` shares the cores out otherwise)
NOT_IDENTITY = ("device", "keep_optimizer", "threads")


@dataclass
class TrainState:
    """The counters of a run, checkpointed with its weights."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of `epoch` already consumed
    loss_sum: float = 0.0
    loss_count: int = 0
    best: float | None = None
    bad_evals: int = 0
    best_step: int | None = None
    stopped: bool = False
    train_seconds: float = 0.0
    samples: int = 0  # examples of the global batches trained on
    # The same after a supernet's full-path warm-up: sampled paths run several times faster than the
    # warm-up's full path, so a rate averaged from step 0 says little about the rest of the run
    sampled_seconds: float = 0.0
    sampled_samples: int = 0
    log_lines: int | None = 0  # metrics.jsonl lines written (None: a checkpoint of an older nasrec)
    bias_shift: float | None = None  # what refit_logit_bias / calibrate_logits added to the output bias (None: not yet)
    logit_scale: float | None = None  # what calibrate_logits multiplied the logit by
    evals: list[dict[str, Any]] = field(default_factory=list)


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: Any,
    schedule: Any,
    state: TrainState,
    cfg: TrainConfig,
    device: torch.device,
    keep_optimizer: bool = True,
    shards: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint; without `keep_optimizer` it holds no optimizer or schedule state (it cannot resume).

    `shards`: the tables are sharded, and each process wrote its own (`nasrec.backend.shardfiles.shard_meta`).
    """
    payload = {
        "model": model.state_dict(),
        # Adagrad / Adam state is as large as the weights (twice for Adam): a finished run drops it
        "optimizer": optimizer.state_dict() if keep_optimizer else None,
        "schedule": schedule.state_dict() if keep_optimizer else None,
        "torch_rng": torch.get_rng_state(),
        # dropout on a GPU draws from its own generator; restored only when resuming on a GPU
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "state": {k: v for k, v in vars(state).items() if k != "evals"},
        "evals_json": json.dumps(state.evals, default=json_default),
        "config_json": json.dumps(cfg.to_dict()),
        **({"shards": shards} if shards else {}),
    }
    rundir.save_checkpoint(path, payload)


def restore_state(
    path: Path,
    model: nn.Module,
    optimizer: Any,
    schedule: Any,
    cfg: TrainConfig,
    device: torch.device,
    total_steps: int,
    run: Path,
    world: int = 1,
    sharded: bool = False,
) -> TrainState:
    """Load a checkpoint into the model, optimizer, schedule and torch RNG; its counters are returned.

    Refused when the checkpoint was written with another configuration, or holds only the final weights of
    a run that has steps left.
    """
    ck = rundir.load_checkpoint(path)
    if run_identity(json.loads(ck["config_json"])) != run_identity(cfg.to_dict()):
        raise NasrecError(f"{run}: the run was started with another configuration; cannot resume")
    check_world(run, ck.get("shards"), world, sharded)  # sharded tables resume on as many processes only
    # The checkpoint is read onto the CPU; loading copies it to the model's device, and the optimizer
    # moves its state next to each parameter, so a run resumes on any device.
    model.load_state_dict(ck["model"])
    state = TrainState(**{"log_lines": None, **ck["state"]}, evals=json.loads(ck["evals_json"]))
    if ck["optimizer"] is not None:
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["schedule"])
    elif state.step < total_steps and not state.stopped:
        raise NasrecError(f"{run}: its checkpoint holds the final weights only; the run cannot continue")
    torch.set_rng_state(ck["torch_rng"])
    if ck.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return state


def truncate_log(path: Path, state: TrainState) -> None:
    """Drop log lines written after the checkpoint (they will be written again), and a torn last line."""
    if state.log_lines is not None:  # the checkpoint counts the lines it covers
        seen = itertools.count()
        rundir.read_jsonl(path, keep=lambda r: next(seen) < state.log_lines)
    else:  # written by an older nasrec: keep by step, and drop the final record (written again)
        kept = rundir.read_jsonl(path, keep=lambda r: r.get("step", 0) <= state.step and not r.get("final"))
        state.log_lines = len(kept)


def start_run(out: Path, spec: dict[str, Any], cfg: TrainConfig, data: Path | str, resume: bool) -> dict[str, Any]:
    """Rank 0's decision: resume from the checkpoint, or start afresh (writing config.json and model.json).

    Returns {"resume": bool, "error": message or None}, which rank 0 broadcasts to the others.
    """
    if resume and (out / rundir.CHECKPOINT_PT).exists():
        saved = rundir.read_model(out)
        if saved != json.loads(json.dumps(spec)):
            why = "its model.json differs: another architecture, data shape or supernet semantics"
            return {"resume": True, "error": f"{out} holds another model ({why}); use a new directory"}
        return {"resume": True, "error": None}
    if not rundir.is_empty(out) and not resume:
        return {"resume": False, "error": f"{out} is not empty (use --resume to continue the run there)"}
    out.mkdir(parents=True, exist_ok=True)
    (out / rundir.METRICS_JSONL).unlink(missing_ok=True)  # killed before its first checkpoint
    rundir.atomic_write_json(
        out / rundir.CONFIG_JSON, {"train": cfg.to_dict(), "model": spec, "data": str(data)}, default=json_default
    )
    rundir.atomic_write_json(out / rundir.MODEL_JSON, spec, default=json_default)
    return {"resume": False, "error": None}


def run_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result: not the device (a GPU run may resume on a CPU) nor what is kept.

    A setting added after the run was saved counts with its default, and eps is compared as TrainConfig keeps
    it (`default_eps_as_none`), so that older runs still resume.
    """
    return {k: v for k, v in default_eps_as_none({**TrainConfig().to_dict(), **cfg}).items() if k not in NOT_IDENTITY}


def same_run(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configurations train the same run (they may differ in device and in what is kept)."""
    return run_identity(a.to_dict()) == run_identity(b.to_dict())


def json_default(o: Any) -> Any:
    """JSON for what a run's records hold besides plain values: numpy scalars (a non-finite float: null)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
