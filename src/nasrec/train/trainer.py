"""The training engine: one loop for supernets, nasrec architectures and zoo baselines.

A run directory holds config.json, model.json, checkpoint.pt, best.pt, metrics.jsonl and metrics.json
(see `nasrec.rundir.names`).

Every choice that varies between steps is a pure function of the seed and the position: the data
order (seed, epoch), and for a supernet the path of step t (seed, t). Together with the checkpointed
optimizer and schedule state, a run that is killed and resumed ends exactly as an uninterrupted one.

Data parallelism (torchrun)
    Under a torch.distributed process group (joined from torchrun's environment, see
    `nasrec.distributed`), each of the W ranks holds a full replica and trains on its contiguous 1/W of
    every global batch (`batch_size` stays the global batch and must be a multiple of W). After
    backward the gradients are averaged over the ranks (`nasrec.train.gradsync`), so clipping and the
    optimizer see the single-process gradient and the replicas stay equal. Rank 0 alone writes the run
    directory and evaluates while the others wait; the evaluation's numbers are then broadcast, so that
    early stopping and plateau schedules decide alike everywhere. Checkpoints hold the full state with
    positions counted in global batches, so a run resumes under any world size (or none). Equivalence
    with one process needs models without batch normalisation and dropout (per-rank batch statistics and
    dropout masks would differ from the single-process ones).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import nasrec.zoo  # noqa: F401 - registers the zoo's models with ModelSpec (see nasrec.model.spec)
from nasrec import distributed, rundir
from nasrec.configfile import ConfigError
from nasrec.console import Heartbeat, bar_extra, duration
from nasrec.data.cache import Cache
from nasrec.data.loader import Batch, BatchLoader
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.model.cost import ServedCost
from nasrec.model.layers import HeadLinear, calibrate_head, init_head_bias, set_batch_group
from nasrec.model.memory import check_spec_fits
from nasrec.model.spec import ModelSpec
from nasrec.rundir import (
    BEST_PT,
    CHECKPOINT_PT,
    CONFIG_JSON,
    METRICS_JSON,
    METRICS_JSONL,
    MODEL_JSON,
    load_checkpoint,
    save_checkpoint,
)
from nasrec.space.arch import Architecture
from nasrec.train.clip import clip_grad_norm
from nasrec.train.config import TrainConfig, default_eps_as_none
from nasrec.train.gradsync import GradientSync
from nasrec.train.metrics import StreamingMetrics
from nasrec.train.optim import build_optimizer
from nasrec.train.schedule import build_schedule

log = logging.getLogger(__name__)

_EVAL_SEED = 7919  # distinct stream for the fixed architectures a supernet is evaluated on
_RATE_WINDOW = 50  # steps over which the logged and displayed samples/s are measured
_PATH_TRIES = 10_000  # draws allowed to find a path within the budget (6 % of Full's are under 0.5 MFLOPs)


def supernet_path(space: Any, seed: int, step: int, strategy: str, warmup_steps: int,
                  within: Callable[[Architecture], bool] | None = None) -> Architecture:  # fmt: skip
    """The path trained at `step`: a pure function of (seed, step), so every rank draws the same one.

    After the warm-up, paths for which `within` is false are redrawn (from the same generator).
    """
    prob = max(0.0, 1.0 - step / warmup_steps) if warmup_steps > 0 else 0.0
    rng = np.random.default_rng([seed, step])
    if prob > 0:
        return space.sample(rng, strategy, full_path_prob=prob)
    return sample_within(space, rng, strategy, within)


def sample_within(space: Any, rng: np.random.Generator, strategy: str,
                  within: Callable[[Architecture], bool] | None, tries: int = _PATH_TRIES) -> Architecture:  # fmt: skip
    """The first architecture drawn with `strategy` for which `within` holds (the first drawn if None)."""
    for _ in range(tries):
        arch = space.sample(rng, strategy)
        if within is None or within(arch):
            return arch
    raise NasrecError(f"no {strategy} path within the budget in {tries} draws: raise path_max_mflops")


def mflops_budget(
    max_mflops: float | None, num_dense: int, table_sizes: Sequence[int], layernorm: bool = False
) -> Callable[[Architecture], bool] | None:
    """The test "at most `max_mflops`" for a served model with or without layer norms (None without a budget)."""
    if max_mflops is None:
        return None
    cost = ServedCost(num_dense, tuple(table_sizes), layernorm)
    return lambda arch: cost(arch)[0] <= max_mflops


def path_warmup(cfg: TrainConfig, total_steps: int, warn: bool = True) -> int:
    """The full-path warm-up in steps: the absolute one capped to the training length, or the fraction of it."""
    if cfg.path_warmup_fraction:
        return round(cfg.path_warmup_fraction * total_steps)
    if cfg.path_warmup_steps > total_steps:
        if warn:
            log.warning("path_warmup_steps %d exceeds the %d training steps: capped at %d, so the whole run is "
                        "warm-up; path_warmup_fraction gives it as a share of training", cfg.path_warmup_steps,
                        total_steps, total_steps)  # fmt: skip
        return total_steps
    return cfg.path_warmup_steps


@torch.no_grad()
def evaluate(
    model: nn.Module,
    cache: Cache,
    split: str,
    batch_size: int = 8192,
    max_batches: int | None = None,
    arch: Architecture | None = None,
) -> dict[str, float]:
    """Log loss, AUC, mean prediction and CTR of a model (or a supernet path) on a split, in file order.

    Batches go to the device of the model's parameters.
    """
    was_training = model.training
    model.eval()
    metrics = StreamingMetrics()
    loader = BatchLoader(cache, split, batch_size=batch_size)
    device = _model_device(model)
    for batch in itertools.islice(loader, max_batches):
        batch = _to(batch, device)
        logits = model(batch.dense, batch.sparse) if arch is None else model(batch.dense, batch.sparse, arch)
        metrics.update(batch.label, logits)
    model.train(was_training)
    return metrics.result()


@torch.no_grad()
def split_logits(model: nn.Module, cache: Cache, split: str, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits (float64) of a model on every row of a split, in file order."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    labels, logits = [], []
    for batch in BatchLoader(cache, split, batch_size=batch_size):
        batch = _to(batch, device)
        labels.append(batch.label.double().cpu().numpy())
        logits.append(model(batch.dense, batch.sparse).double().cpu().numpy())
    model.train(was_training)
    if not labels:
        raise NasrecError(f"split {split!r} of {cache.path} has no rows")
    return np.concatenate(labels), np.concatenate(logits)


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device` (the same tensors when it is there already)."""
    return Batch(batch.dense.to(device), batch.sparse.to(device), batch.label.to(device))


@dataclass
class _State:
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
    evals: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains one model on a prepared cache into a run directory (see module docstring)."""

    def __init__(self, spec: ModelSpec, cache: Cache, cfg: TrainConfig, out: Path | str) -> None:
        self.spec, self.cache, self.cfg, self.out = spec, cache, cfg, Path(out)
        if len(cache.dense_fields) != spec.num_dense or tuple(cache.table_sizes) != spec.table_sizes:
            raise NasrecError(f"{cache.path}: the model's input shape does not match this cache")
        self.device = resolve_device(cfg.device)  # cuda:LOCAL_RANK under torchrun
        # nccl for CUDA, gloo otherwise; a no-op without torchrun, or when the caller made the group already
        distributed.init_from_env(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        if self.world > 1:
            if cfg.batch_size % self.world:
                raise NasrecError(f"batch_size {cfg.batch_size} (the global batch) is not a multiple of the world "
                                  f"size {self.world}")  # fmt: skip
            distributed.check_same({"config": cfg.to_dict(), "model": spec.to_dict(),
                                    "train_rows": len(cache.split_index("train"))}, "the training run")  # fmt: skip
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        # A model too large for this machine is refused before anything is allocated (`nasrec.model.memory`).
        check_spec_fits(spec, cfg.optimizer)
        # built on the CPU (the same initial weights for every device), then moved before the optimizer sees it
        self.model = spec.build().to(self.device)
        init_head_bias(self.model, _train_ctr(cache))
        self.space = None
        if spec.kind == "supernet":
            self.space = self.model.space
        elif cfg.path_max_mflops is not None:
            raise NasrecError("training config: path_max_mflops applies to supernets only")
        self._within = mflops_budget(cfg.path_max_mflops, spec.num_dense, spec.table_sizes, cfg.path_count_layernorm)
        self.loader = BatchLoader(cache, "train", batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
                                  drop_last=True, prefetch=2, rank=self.rank, world_size=self.world,
                                  shard="rows")  # fmt: skip
        per_epoch = len(self.loader)
        if per_epoch == 0:
            raise NasrecError(f"{cache.path}: the train split has fewer rows than one batch ({cfg.batch_size})")
        if (cfg.eval_every or cfg.restore_best or cfg.schedule == "plateau") and not len(
            cache.split_index(cfg.eval_split)
        ):  # evaluations on no rows give NaN metrics, which early stopping and the schedule would act on
            raise ConfigError("training config", "eval_split", f"the {cfg.eval_split} split of {cache.path} is empty")
        self.total_steps = per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.path_warmup = path_warmup(cfg, self.total_steps, warn=self.main) if self.space is not None else 0
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=cfg.lr, eps=cfg.eps,
                                         weight_decay=cfg.weight_decay, embedding_lr=cfg.embedding_lr,
                                         sliced=self.space is not None)  # fmt: skip
        self.schedule = build_schedule(self.optimizer, cfg.schedule, total_steps=self.total_steps,
                                       warmup_fraction=cfg.warmup_fraction)  # fmt: skip
        self.state = _State()
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=_RATE_WINDOW)
        self._calib: list[Batch] | None = None  # the head calibration batches, read at the first evaluation
        self._calibrated_at: int | None = None  # the step whose weights the head's mean was measured for
        self._tb = None
        self.sync = GradientSync.for_model(self.model) if self.world > 1 else None
        if self.sync is not None:  # centred heads average over the global batch, as one process would
            import torch.distributed as dist

            set_batch_group(self.model, dist.group.WORLD)
        self._comm_bytes = 0  # sent since the last log line
        self._comm_steps = 0
        self._comm_total = 0  # over the whole (possibly resumed) process
        self._comm_total_steps = 0

    # -- run directory -------------------------------------------------------------------------
    def _write_json(self, name: str, obj: Any) -> None:
        if self.main:
            rundir.atomic_write_json(self.out / name, obj, default=_json_default)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        rundir.append_jsonl(self.out / METRICS_JSONL, record, default=_json_default)
        self.state.log_lines = (self.state.log_lines or 0) + 1
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def _checkpoint(self, final: bool = False) -> None:
        """Write the run's state; a `final` one keeps the optimizer state only if asked (it can no longer resume)."""
        if not self.main:
            return  # every rank holds the same state; one copy is written
        s = self.state
        keep = not final or self.cfg.keep_optimizer
        payload = {
            "model": self.model.state_dict(),
            # Adagrad / Adam state is as large as the weights (twice for Adam): a finished run drops it
            "optimizer": self.optimizer.state_dict() if keep else None,
            "schedule": self.schedule.state_dict() if keep else None,
            "torch_rng": torch.get_rng_state(),
            # dropout on a GPU draws from its own generator; restored only when resuming on a GPU
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "state": {k: v for k, v in vars(s).items() if k != "evals"},
            "evals_json": json.dumps(s.evals, default=_json_default),
            "config_json": json.dumps(self.cfg.to_dict()),
        }
        save_checkpoint(self.out / CHECKPOINT_PT, payload)

    def _restore(self) -> None:
        ck = load_checkpoint(self.out / CHECKPOINT_PT)
        if _identity(json.loads(ck["config_json"])) != _identity(self.cfg.to_dict()):
            raise NasrecError(f"{self.out}: the run was started with another configuration; cannot resume")
        # The checkpoint is read onto the CPU; loading copies it to the model's device, and the optimizer
        # moves its state next to each parameter, so a run resumes on any device.
        self.model.load_state_dict(ck["model"])
        self.state = _State(**{"log_lines": None, **ck["state"]}, evals=json.loads(ck["evals_json"]))
        if ck["optimizer"] is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
            self.schedule.load_state_dict(ck["schedule"])
        elif self.state.step < self.total_steps and not self.state.stopped:
            raise NasrecError(f"{self.out}: its checkpoint holds the final weights only; the run cannot continue")
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"], self.device)
        if self.main:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint (they will be written again), and a torn last line."""
        s = self.state
        if s.log_lines is not None:  # the checkpoint counts the lines it covers
            seen = itertools.count()
            rundir.read_jsonl(self.out / METRICS_JSONL, keep=lambda r: next(seen) < s.log_lines)
        else:  # written by an older nasrec: keep by step, and drop the final record (written again)
            kept = rundir.read_jsonl(self.out / METRICS_JSONL, keep=lambda r: r.get("step", 0) <= s.step
                                     and not r.get("final"))  # fmt: skip
            s.log_lines = len(kept)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
        """Train (or continue an interrupted run), evaluate, and return the final metrics."""
        # One writer per run directory (rank 0); a second one fails here, before touching anything.
        with rundir.exclusive(self.out, "run", enabled=self.main):
            return self._fit(resume, progress)

    def _fit(self, resume: bool, progress: bool | None) -> dict[str, Any]:
        cfg = self.cfg
        # Rank 0 decides from its view of the run directory; the others follow (and, to resume, read
        # the same checkpoint: the run directory must be on a file system every rank sees).
        start = None
        if self.main:
            try:
                start = self._start(resume)
            except OSError as e:  # reported by every rank, rather than leaving the others in the broadcast
                start = {"resume": False, "error": f"{self.out}: cannot write the run directory ({e})"}
        start = distributed.broadcast_object(start)
        if start["error"]:
            raise NasrecError(start["error"])
        if start["resume"]:
            self._restore()
            distributed.barrier()  # rank 0 may write a new checkpoint only once every rank has read this one
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise NasrecError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        if self.main:
            self._say_start(bool(start["resume"]))
        bar = _progress(progress, self.total_steps, self.state.step) if self.main else None
        s = self.state
        per_epoch = len(self.loader)
        beat, ep_loss, ep_steps, t_fit, step0 = Heartbeat(), 0.0, 0, time.perf_counter(), s.step
        self.model.train()
        try:
            while s.step < self.total_steps and not s.stopped:
                batches = self.loader.iter_epoch(s.epoch)
                for batch in itertools.islice(batches, s.batch, None):
                    t0 = time.perf_counter()
                    warm = s.step < self.path_warmup
                    loss = self._train_step(batch)
                    dt, n = time.perf_counter() - t0, batch.label.shape[0] * self.world
                    s.train_seconds += dt
                    s.samples += n
                    self._recent.append((dt, n))
                    if self.space is not None and not warm:
                        s.sampled_seconds += dt
                        s.sampled_samples += n
                    s.step += 1
                    s.batch += 1
                    s.loss_sum += loss
                    s.loss_count += 1
                    ep_loss, ep_steps = ep_loss + loss, ep_steps + 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{self._recent_rate():,.0f}")
                    if self.main and (s.batch == per_epoch or (bar is None and beat())):
                        # a line per epoch, and every 30 s in between when no bar shows the progress
                        left = (self.total_steps - s.step) * (time.perf_counter() - t_fit) / (s.step - step0)
                        self._say_progress(s.batch == per_epoch, ep_loss / ep_steps, left, bar is not None)
                        if s.batch == per_epoch:
                            ep_loss, ep_steps = 0.0, 0
                            beat.reset()
                    self._after_step()
                    if s.step >= self.total_steps or s.stopped:
                        break
                else:
                    s.epoch += 1
                    s.batch = 0
        finally:
            if bar is not None:
                bar.close()
        self._calibrate_head()  # the saved final weights carry the mean their evaluation uses
        self._checkpoint(final=True)
        if cfg.restore_best:
            self._restore_best()
        final = self._final()
        if self._tb is not None:
            self._tb.close()
        return final

    # -- log lines (rank 0) ---------------------------------------------------------------------
    def _what(self) -> str:
        if self.spec.kind == "supernet":
            return "supernet"
        if self.spec.kind == "zoo":
            return f"{self.spec.zoo} model"
        return f"architecture {self.spec.architecture().hash()[:12]}"

    def _say_start(self, resumed: bool) -> None:
        cfg, s, per_epoch = self.cfg, self.state, len(self.loader)
        epochs = -(-self.total_steps // per_epoch)
        if resumed:
            log.info("%s: resuming the %s at step %s of %s (epoch %d of %d)", self.out, self._what(), f"{s.step:,}",
                     f"{self.total_steps:,}", min(s.epoch + 1, epochs), epochs)  # fmt: skip
        else:
            if self.total_steps == epochs * per_epoch:
                plan = f"{epochs} epoch{'s' if epochs > 1 else ''} of {per_epoch:,} steps"
            else:
                plan = f"max_steps; an epoch is {per_epoch:,} steps"
            log.info("%s: training the %s on %s: %s steps (%s, batch %s) on %s", self.out, self._what(), self.cache.path,
                     f"{self.total_steps:,}", plan, f"{cfg.batch_size:,}", self.device)  # fmt: skip

    def _recent_rate(self) -> float:
        """Samples per second over the last steps (at most `_RATE_WINDOW`): what the run does now."""
        seconds = sum(dt for dt, _ in self._recent)
        return sum(n for _, n in self._recent) / seconds if seconds > 0 else 0.0

    def _say_progress(self, epoch_end: bool, loss: float, seconds_left: float, bar_shown: bool) -> None:
        s, per_epoch = self.state, len(self.loader)
        epochs = -(-self.total_steps // per_epoch)
        sps = self._recent_rate()
        head = f"epoch {s.epoch + 1}/{epochs} done" if epoch_end else f"epoch {s.epoch + 1}/{epochs}"
        left = f", about {duration(seconds_left)} left" if s.step < self.total_steps else ""
        log.info("%s: step %s/%s, train loss %.5f, %s samples/s%s", head, f"{s.step:,}", f"{self.total_steps:,}",
                 loss, f"{sps:,.0f}", left, extra=bar_extra(bar_shown))  # fmt: skip

    def _start(self, resume: bool) -> dict[str, Any]:
        """Rank 0's decision: resume from the checkpoint, or start afresh (preparing the directory)."""
        if resume and (self.out / CHECKPOINT_PT).exists():
            saved = rundir.read_model(self.out)
            if saved != json.loads(json.dumps(self.spec.to_dict())):
                why = "its model.json differs: another architecture, data shape or supernet semantics"
                return {"resume": True, "error": f"{self.out} holds another model ({why}); use a new directory"}
            return {"resume": True, "error": None}
        if not rundir.is_empty(self.out) and not resume:
            return {"resume": False, "error": f"{self.out} is not empty (use --resume to continue the run there)"}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / METRICS_JSONL).unlink(missing_ok=True)  # killed before its first checkpoint
        self._write_json(CONFIG_JSON, {"train": self.cfg.to_dict(), "model": self.spec.to_dict(),
                                       "data": str(self.cache.path)})  # fmt: skip
        self._write_json(MODEL_JSON, self.spec.to_dict())
        return {"resume": False, "error": None}

    def _train_step(self, batch) -> float:
        cfg, s = self.cfg, self.state
        batch = _to(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if self.space is not None:
            arch = supernet_path(self.space, cfg.seed, s.step, cfg.strategy, self.path_warmup, self._within)
            logits = self.model(batch.dense, batch.sparse, arch)
        else:
            logits = self.model(batch.dense, batch.sparse)
        loss = F.binary_cross_entropy_with_logits(logits, batch.label)
        if self.sync is None:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NasrecError(f"training diverged at step {s.step} (loss {value}); try a lower learning rate")
            loss.backward()
        else:
            # A rank's own loss may be finite while another's is not: all ranks judge the global loss,
            # after the sync, so that they raise together instead of leaving the others in a collective.
            loss.backward()
            stats = self.sync(loss, batch.label.shape[0])
            value = stats.loss
            if not math.isfinite(value):
                raise NasrecError(f"training diverged at step {s.step} (loss {value}); try a lower learning rate")
            self._comm_bytes += stats.comm_bytes
            self._comm_steps += 1
            self._comm_total += stats.comm_bytes
            self._comm_total_steps += 1
        if cfg.clip:
            clip_grad_norm(self.model.parameters(), cfg.clip)  # on the synchronised gradient
        self.optimizer.step()
        self.schedule.step()
        return value

    def _after_step(self) -> None:
        cfg, s = self.cfg, self.state
        if s.step % cfg.log_every == 0:
            record = {"step": s.step, "epoch": s.epoch, "train_loss": s.loss_sum / max(s.loss_count, 1),
                      "lr": self.optimizer.param_groups[0]["lr"],
                      "samples_per_s": self._recent_rate()}  # fmt: skip
            if self.space is not None:
                record["path_warmup"] = s.step <= self.path_warmup
            if self.sync is not None:
                record["world_size"] = self.world
                record["comm_bytes_per_step"] = self._comm_bytes / max(self._comm_steps, 1)
                self._comm_bytes, self._comm_steps = 0, 0
            self._log(record)
            s.loss_sum, s.loss_count = 0.0, 0
        if cfg.eval_every and s.step % cfg.eval_every == 0 and s.step < self.total_steps:
            self._evaluate_during_training()
        if s.step % cfg.checkpoint_every == 0 and s.step < self.total_steps:
            self._checkpoint()

    def _eval(self, split: str) -> dict[str, float]:
        """Rank 0 evaluates (exactly as a single process would) while the others wait for its numbers."""
        self._calibrate_head()  # on every rank, so that their buffers stay equal
        return distributed.broadcast_object(self._eval_here(split) if self.main else None)

    def _calibrate_head(self) -> None:
        """Set a standalone model's centred head mean exactly, over fixed train batches, before it is judged.

        The running mean follows the batch means of the last ~10 steps, taken under older weights; at a
        high learning rate that lag alone moved a validation loss from 0.309 to 0.355 (docs/design.md).
        """
        head = getattr(self.model, "head", None)
        n = self.cfg.head_calib_batches
        if self.space is not None or n == 0 or not (isinstance(head, HeadLinear) and head.centre):
            return
        if self._calibrated_at == self.state.step:  # these weights were measured already (val, then test)
            return
        was_training = self.model.training
        self.model.eval()
        calibrate_head(self.model.features, head, self._calib_batches())
        self.model.train(was_training)
        self._calibrated_at = self.state.step

    def _calib_batches(self) -> list[Batch]:
        """The first `head_calib_batches` train batches in file order (read once, kept on the device)."""
        if self._calib is None:
            loader = BatchLoader(self.cache, "train", batch_size=self.cfg.batch_size)
            self._calib = [_to(b, self.device) for b in itertools.islice(loader, self.cfg.head_calib_batches)]
        return self._calib

    def _eval_here(self, split: str) -> dict[str, float]:
        cfg = self.cfg
        if self.space is None:
            return evaluate(self.model, self.cache, split, cfg.eval_batch_size, cfg.eval_max_batches)
        rng = np.random.default_rng([cfg.seed, _EVAL_SEED])
        head = self.model.head
        # A centred head's running mean mixes every path trained. Each path is judged with its own exact
        # mean, as a candidate is scored, and the supernet's buffers are put back afterwards.
        saved = {k: v.clone() for k, v in head.named_buffers()}
        results = []
        was_training = self.model.training
        self.model.eval()
        try:
            for _ in range(cfg.supernet_eval_archs):
                arch = sample_within(self.space, rng, "default", self._within)
                if cfg.head_calib_batches:
                    calibrate_head(lambda d, x, a=arch: self.model.features(d, x, a), head, self._calib_batches())
                results.append(evaluate(self.model, self.cache, split, cfg.eval_batch_size, cfg.eval_max_batches,
                                        arch))  # fmt: skip
        finally:
            for k, v in head.named_buffers():
                v.copy_(saved[k])
            self.model.train(was_training)
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]}

    def _evaluate_during_training(self) -> None:
        cfg, s = self.cfg, self.state
        m = self._eval(cfg.eval_split)
        self._log(
            {"step": s.step, "epoch": s.epoch, "eval_split": cfg.eval_split, **{f"eval_{k}": v for k, v in m.items()}}
        )
        s.evals.append({"step": s.step, **m})
        metric = cfg.early_stop_metric or "logloss"
        value = m[metric] if metric == "logloss" else -m[metric]
        if hasattr(self.schedule, "report"):
            self.schedule.report(m["logloss"])
        if s.best is None or value < s.best:
            s.best, s.bad_evals = value, 0
            if self.main:
                save_checkpoint(self.out / BEST_PT, {"model": self.model.state_dict(), "step": s.step})
        else:
            s.bad_evals += 1
            if cfg.early_stop_metric and s.bad_evals >= cfg.patience:
                s.stopped = True
        if self.main:
            verdict = "best so far" if s.bad_evals == 0 else f"no better for {s.bad_evals} evaluation(s)"
            log.info("step %s/%s: %s log loss %.5f, AUC %.5f (%s)%s", f"{s.step:,}", f"{self.total_steps:,}",
                     cfg.eval_split, m["logloss"], m["auc"], verdict,
                     "; early stop" if s.stopped else "")  # fmt: skip

    def _restore_best(self) -> None:
        """Evaluate the last weights if they were not, then take the best evaluation's weights."""
        s = self.state
        if not s.evals or s.evals[-1]["step"] != s.step:
            self._evaluate_during_training()
        if self.main:  # only rank 0 evaluates the final model
            ck = load_checkpoint(self.out / BEST_PT)
            self.model.load_state_dict(ck["model"])
            s.best_step = int(ck["step"])
        self._calibrated_at = None  # other weights now (rank 0 loaded its best): measure them again
        s.best_step = distributed.broadcast_object(s.best_step)

    def _final(self) -> dict[str, Any]:
        s = self.state
        splits = [n for n in ("val", "test") if n in self.cache.split_names and len(self.cache.split_index(n))]
        results = {n: self._eval(n) for n in splits}
        main = results.get("test") or results.get(self.cfg.eval_split) or {}
        final = {
            **{k: main.get(k) for k in ("logloss", "auc")},
            **results,
            **self.spec.cost(),
            "samples_per_s": s.samples / max(s.train_seconds, 1e-9),
            **({"samples_per_s_sampled": s.sampled_samples / s.sampled_seconds} if s.sampled_seconds else {}),
            "steps": s.step,
            "epochs": s.epoch + (1 if s.batch else 0),
            "early_stopped": s.stopped,
            "weights": "best" if self.cfg.restore_best else "final",
            "best_step": s.best_step,
            "train_seconds": s.train_seconds,
        }
        if self.sync is not None:
            final["world_size"] = self.world
            final["comm_bytes_per_step"] = self._comm_total / max(self._comm_total_steps, 1)
        self._log({"step": s.step, "final": True, **{f"{n}_{k}": v for n, r in results.items() for k, v in r.items()}})
        self._write_json(METRICS_JSON, final)
        if self.main:
            scores = "; ".join(f"{n} log loss {r['logloss']:.5f}, AUC {r['auc']:.5f}" for n, r in results.items())
            log.info("%s: done, %s steps in %s (%s samples/s)%s", self.out, f"{s.step:,}", duration(s.train_seconds),
                     f"{final['samples_per_s']:,.0f}", f"; {scores}" if scores else "")  # fmt: skip
        # every rank returns rank 0's figures (its timings, the run's written result)
        return distributed.broadcast_object(final)


def _train_ctr(cache: Cache) -> float:
    """The train split's click rate, as `prepare` recorded it (measured here for a cache without it)."""
    ctr = cache.meta.get("split", {}).get("ctr", {}).get("train")
    if ctr is None or not math.isfinite(ctr):
        ctr = float(np.mean(cache.label[cache.split_index("train")]))
    return float(ctr)


def load_trained(run: Path | str, which: str = "final", device: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model of a run directory with its final (`checkpoint.pt`) or best (`best.pt`) weights, on `device` (cpu)."""
    target = resolve_device(device)  # before any work: an unavailable device fails at once
    run = Path(run)
    spec = ModelSpec.from_dict(rundir.read_model(run))
    model = spec.build()
    # a run that restores its best evaluation's weights has them as its final model (TrainConfig.restore_best)
    ck = load_checkpoint(rundir.weights_path(run, which))
    try:
        model.load_state_dict(ck["model"])  # read onto the CPU whatever device the run trained on
    except RuntimeError as e:  # e.g. a model with layer norms saved before the head was centred
        first = str(e).splitlines()[0]
        raise NasrecError(f"{run}: its weights do not fit the model built from its model.json ({first}); "
                          "was it saved by an older nasrec?") from None  # fmt: skip
    return model.to(target).eval(), spec


_NOT_IDENTITY = ("device", "keep_optimizer")


def _identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result: not the device (a GPU run may resume on a CPU) nor what is kept.

    A setting added after the run was saved counts with its default, and eps is compared as TrainConfig keeps
    it (`default_eps_as_none`), so that older runs still resume.
    """
    return {k: v for k, v in default_eps_as_none({**TrainConfig().to_dict(), **cfg}).items() if k not in _NOT_IDENTITY}


def same_run(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configurations train the same run (they may differ in device and in what is kept)."""
    return _identity(a.to_dict()) == _identity(b.to_dict())




def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _progress(enabled: bool | None, total: int, initial: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, leave=False)
