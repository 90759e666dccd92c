"""The training engine: one loop for supernets, nasrec architectures and zoo baselines.

A run directory holds config.json, model.json, checkpoint.pt, best.pt, metrics.jsonl and metrics.json
(see `nasrec.rundir.names`).

Every choice that varies between steps is a pure function of the seed and the position: the data
order (seed, epoch), and for a supernet the path of step t (seed, t). Together with the checkpointed
optimizer and schedule state, a run that is killed and resumed ends exactly as an uninterrupted one.

Data parallelism (torchrun)
    Each rank trains on its 1/W of every global batch; gradients are averaged after backward
    (`nasrec.train.gradsync`, which explains the scheme), so the replicas stay equal. Rank 0 alone
    writes the run directory and evaluates, and broadcasts its numbers so that early stopping decides
    alike everywhere. Checkpoints count positions in global batches: a run resumes under any world size.
    Equality with one process needs models without batch normalisation and dropout.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nasrec.zoo  # noqa: F401 - registers the zoo's models with ModelSpec (see nasrec.model.spec)
from nasrec import distributed, rundir
from nasrec.backend.fused import use_torchrec
from nasrec.backend.shardfiles import check_world, drop_older_shards, load_shards, save_shards, shard_meta
from nasrec.configfile import ConfigError
from nasrec.console import Heartbeat
from nasrec.data.cache import Cache
from nasrec.data.loader import BatchLoader
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.model.embedding import deferred_tables
from nasrec.model.layers import init_head_bias, set_batch_group
from nasrec.model.memory import check_spec_fits
from nasrec.model.spec import ModelSpec
from nasrec.rundir import (
    BEST_PT,
    CHECKPOINT_PT,
    METRICS_JSON,
    METRICS_JSONL,
    load_checkpoint,
    save_checkpoint,
)
from nasrec.train.bias_refit import output_bias, refit_output_bias
from nasrec.train.calibration import calibrate_logits, check_calibratable, fold_calibration
from nasrec.train.clip import clip_grad_norm
from nasrec.train.config import TrainConfig
from nasrec.train.evaluation import HeadCalibration, evaluate, evaluate_paths, to_device, train_ctr
from nasrec.train.gradsync import CommMeter, GradientSync
from nasrec.train.optim import build_optimizer
from nasrec.train.progress import Progress, describe, progress_bar
from nasrec.train.regularize import EmbeddingL2, effective_l2, table_l2
from nasrec.train.resume import TrainState, json_default, restore_state, save_state, start_run, truncate_log
from nasrec.train.sampling import check_paths_config, path_sampler
from nasrec.train.schedule import at_lr_floor, build_schedule
from nasrec.zoo.base import ZooModel

log = logging.getLogger(__name__)


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
                raise NasrecError(
                    f"batch_size {cfg.batch_size} (the global batch) is not a multiple of the world size {self.world}"
                )
            distributed.check_same(
                {"config": cfg.to_dict(), "model": spec.to_dict(), "train_rows": len(cache.split_index("train"))},
                "the training run",
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        # TorchRec tables sharded over torchrun's processes: no process builds them whole, every process takes
        # part in every forward pass (evaluations included) and writes its own shards with each checkpoint
        # (`nasrec.backend.shardfiles`); TorchRec's planner checks that they fit
        self.sharded = cfg.embeddings == "torchrec" and self.world > 1
        if not self.sharded:
            # A model too large for this machine is refused before anything is allocated (`nasrec.model.memory`).
            check_spec_fits(spec, cfg.optimizer)
        # built on the CPU (the same initial weights for every device), then moved before the optimizer sees it
        with deferred_tables() if self.sharded else nullcontext():
            model = spec.build()
        if cfg.embeddings == "torchrec":  # before the move: deferred tables hold no data to move
            self._use_torchrec(model)
        self.model = model.to(self.device)
        ctr = train_ctr(cache)
        init_head_bias(self.model, ctr)
        if cfg.init_logit_bias and isinstance(self.model, ZooModel):
            self.model.init_logit_bias(ctr)
        l2 = effective_l2(cfg, ctr, warn=self.main)
        # a supernet trains a path per step; the sampler (`nasrec.model.paths`) says which
        check_paths_config(spec, cfg)
        if cfg.calibrate_logits:  # refused now, not after hours of training
            check_calibratable(self.model, cache)
        self.loader = BatchLoader(
            cache,
            "train",
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            drop_last=True,
            prefetch=2,
            rank=self.rank,
            world_size=self.world,
            shard="rows",
        )
        per_epoch = len(self.loader)
        if per_epoch == 0:
            raise NasrecError(
                f"{cache.path}: the train split has fewer rows ({len(cache.split_index('train')):,}) than one batch "
                f"({cfg.batch_size}): set a smaller batch_size"
            )
        self.eval_every = cfg.eval_interval(per_epoch)
        if (self.eval_every or cfg.restore_best or cfg.schedule == "plateau") and not len(
            cache.split_index(cfg.eval_split)
        ):  # evaluations on no rows give NaN metrics, which early stopping and the schedule would act on
            raise ConfigError("training config", "eval_split", f"the {cfg.eval_split} split of {cache.path} is empty")
        self.total_steps = per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.paths = path_sampler(self.model, spec, cfg, self.total_steps, warn=self.main)
        self.optimizer = build_optimizer(
            self.model,
            cfg.optimizer,
            lr=cfg.lr,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            embedding_lr=cfg.embedding_lr,
            first_order_lr=cfg.first_order_lr,
            sliced=self.paths.has_paths,
            table_l2=table_l2(self.model, cfg, warn=self.main, strength=l2),
        )
        plateau = dict(factor=cfg.plateau_factor, patience=cfg.plateau_patience)
        self.schedule = build_schedule(
            self.optimizer, cfg.schedule, total_steps=self.total_steps, warmup_fraction=cfg.warmup_fraction, **plateau
        )
        self.state = TrainState()
        self.progress = Progress(self.out, describe(spec), self.total_steps, per_epoch)
        self.calib = HeadCalibration(self.model, cache, cfg.batch_size, cfg.head_calib_batches, self.device)
        self._tb = None
        self.sync = GradientSync.for_model(self.model) if self.world > 1 else None
        if self.sync is not None:  # centred heads average over the global batch, as one process would
            import torch.distributed as dist

            set_batch_group(self.model, dist.group.WORLD)
        self.comm = CommMeter()
        self.embedding_l2 = EmbeddingL2.for_model(self.model, l2, cfg.embedding_l2_per)

    def _use_torchrec(self, model: nn.Module) -> None:
        cfg = self.cfg
        if self.world == 1 and cfg.sharding is not None:
            saved = self.out / CHECKPOINT_PT
            if saved.is_file():  # a sharded run resumed without torchrun: name both world sizes
                check_world(self.out, load_checkpoint(saved).get("shards"), 1, False)
            raise NasrecError(
                f"--sharding {cfg.sharding} spreads the tables over torchrun's processes: run "
                f"`torchrun --nproc_per_node N -m nasrec.cli train ... --embeddings torchrec --sharding {cfg.sharding}`"
            )
        name, lr, eps = cfg.fused_embedding_optimizer()
        sharding = (cfg.sharding or "table-wise") if self.sharded else None
        use_torchrec(model, name, lr, eps, cfg.first_order_lr, sharding, self.device)
        if cfg.clip and self.main:
            log.warning("clip %g bounds the dense gradients only: the TorchRec tables update inside backward", cfg.clip)

    # -- run directory -------------------------------------------------------------------------
    def _write_json(self, name: str, obj: Any) -> None:
        if self.main:
            rundir.atomic_write_json(self.out / name, obj, default=json_default)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        rundir.append_jsonl(self.out / METRICS_JSONL, record, default=json_default)
        self.state.log_lines = (self.state.log_lines or 0) + 1
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def _checkpoint(self, final: bool = False) -> None:
        """Write the run's state; a `final` one keeps the optimizer state only if asked (it can no longer resume)."""
        keep, step = not final or self.cfg.keep_optimizer, self.state.step
        if self.sharded:  # every process's shards first: checkpoint.pt then names a step whose shards all exist
            save_shards(self.out, "checkpoint", step, self.rank, self.world, self.model, optimizer=keep)
            distributed.barrier()
        if self.main:  # every rank holds the same state (but for sharded tables); one copy is written
            save_state(
                self.out / CHECKPOINT_PT,
                self.model,
                self.optimizer,
                self.schedule,
                self.state,
                self.cfg,
                self.device,
                keep_optimizer=keep,
                shards=shard_meta(self.model, step, self.world) if self.sharded else None,
            )
        if self.sharded:
            distributed.barrier()
            drop_older_shards(self.out, "checkpoint", step, self.rank, self.world)

    def _restore(self) -> None:
        m, opt, sched = self.model, self.optimizer, self.schedule
        self.state = restore_state(
            self.out / CHECKPOINT_PT,
            m,
            opt,
            sched,
            self.cfg,
            self.device,
            self.total_steps,
            self.out,
            self.world,
            self.sharded,
        )
        if self.sharded:
            load_shards(self.out, "checkpoint", self.state.step, self.rank, self.world, m, optimizer=True)
        if self.main:
            truncate_log(self.out / METRICS_JSONL, self.state)

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
                start = start_run(self.out, self.spec.to_dict(), self.cfg, self.cache.path, resume)
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
            self.progress.say_start(
                self.state.step, self.state.epoch, bool(start["resume"]), self.cache.path, cfg.batch_size, self.device
            )
        bar = progress_bar(progress, self.total_steps, self.state.step) if self.main else None
        s = self.state
        per_epoch = len(self.loader)
        beat, ep_loss, ep_steps, t_fit, step0 = Heartbeat(), 0.0, 0, time.perf_counter(), s.step
        self.model.train()
        try:
            while s.step < self.total_steps and not s.stopped:
                batches = self.loader.iter_epoch(s.epoch)
                for batch in itertools.islice(batches, s.batch, None):
                    t0 = time.perf_counter()
                    warm = self.paths.warm(s.step)
                    loss = self._train_step(batch)
                    dt, n = time.perf_counter() - t0, batch.label.shape[0] * self.world
                    s.train_seconds += dt
                    s.samples += n
                    self.progress.step_done(dt, n)
                    if self.paths.has_paths and not warm:
                        s.sampled_seconds += dt
                        s.sampled_samples += n
                    s.step += 1
                    s.batch += 1
                    s.loss_sum += loss
                    s.loss_count += 1
                    ep_loss, ep_steps = ep_loss + loss, ep_steps + 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{self.progress.rate():,.0f}")
                    if self.main and (s.batch == per_epoch or (bar is None and beat())):
                        # a line per epoch, and every 30 s in between when no bar shows the progress
                        left = (self.total_steps - s.step) * (time.perf_counter() - t_fit) / (s.step - step0)
                        self.progress.say_progress(
                            s.step, s.epoch, s.batch == per_epoch, ep_loss / ep_steps, left, bar is not None
                        )
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
        self._refit_bias()
        final = self._final()
        if self._tb is not None:
            self._tb.close()
        return final

    def _train_step(self, batch) -> float:
        cfg, s = self.cfg, self.state
        batch = to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        arch = self.paths.path(s.step)
        target = self._sandwich_ends(batch, s.step)  # backward of the largest and smallest paths, if any
        logits = self.model(batch.dense, batch.sparse) if arch is None else self.model(batch.dense, batch.sparse, arch)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if target is not batch.label:  # distilled: the reported loss is still the one on the labels
            loss_on_labels = F.binary_cross_entropy_with_logits(logits.detach(), batch.label)
        else:
            loss_on_labels = loss
        n = batch.label.shape[0]
        if self.sync is None:
            value = float(loss_on_labels.detach())
            if not math.isfinite(value):
                raise NasrecError(f"training diverged at step {s.step} (loss {value}); try a lower learning rate")
        loss.backward()
        self.embedding_l2(n)  # the per-lookup form: this rank's own examples, before anything coalesces
        if self.sync is not None:
            # A rank's own loss may be finite while another's is not: all ranks judge the global loss,
            # after the sync, so that they raise together instead of leaving the others in a collective.
            stats = self.sync(loss_on_labels, n)
            self.embedding_l2(n, synced=True)  # the per-row form, on the rows of the global batch
            value = stats.loss
            if not math.isfinite(value):
                raise NasrecError(f"training diverged at step {s.step} (loss {value}); try a lower learning rate")
            self.comm.add(stats)
        if cfg.clip:
            clip_grad_norm(self.model.parameters(), cfg.clip)  # on the synchronised gradient
        self.optimizer.step()
        self.schedule.step()
        return value

    def _sandwich_ends(self, batch, step: int) -> torch.Tensor:
        """Under the sandwich rule, backward the largest and smallest paths' losses; the sampled path's target.

        The target is the labels, or with `sandwich_distill` the largest path's predictions (detached),
        which the smallest path learns too. Gradients add up until the step's one update.
        """
        ends = self.paths.sandwich(step)
        if ends is None:
            return batch.label
        largest, smallest = ends
        big = self.model(batch.dense, batch.sparse, largest)
        F.binary_cross_entropy_with_logits(big, batch.label).backward()
        target = torch.sigmoid(big.detach()) if self.cfg.sandwich_distill else batch.label
        F.binary_cross_entropy_with_logits(self.model(batch.dense, batch.sparse, smallest), target).backward()
        return target

    def _after_step(self) -> None:
        cfg, s = self.cfg, self.state
        if s.step % cfg.log_every == 0:
            record = {
                "step": s.step,
                "epoch": s.epoch,
                "train_loss": s.loss_sum / max(s.loss_count, 1),
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": self.progress.rate(),
            }
            if self.paths.has_paths:
                record["path_warmup"] = self.paths.warm(s.step - 1)  # the step just trained
            if self.sync is not None:
                record["world_size"] = self.world
                record["comm_bytes_per_step"] = self.comm.window_per_step()
            self._log(record)
            s.loss_sum, s.loss_count = 0.0, 0
        if self.eval_every and s.step % self.eval_every == 0 and s.step < self.total_steps:
            self._evaluate_during_training()
        if s.step % cfg.checkpoint_every == 0 and s.step < self.total_steps:
            self._checkpoint()

    def _eval(self, split: str) -> dict[str, float]:
        """Rank 0 evaluates (exactly as a single process would) while the others wait for its numbers.

        With sharded tables every rank runs the same evaluation (each serves the lookups into its shards)
        and rank 0's numbers are kept.
        """
        self._calibrate_head()  # on every rank, so that their buffers stay equal
        return distributed.broadcast_object(self._eval_here(split) if self.main or self.sharded else None)

    def _calibrate_head(self) -> None:
        """Set a standalone model's centred head mean exactly for the current weights, before it is judged."""
        if not self.paths.has_paths:  # a supernet's evaluation measures it for each of its paths
            self.calib.whole_model(self.state.step)

    def _eval_here(self, split: str) -> dict[str, float]:
        cfg = self.cfg
        paths = self.paths.eval_paths()
        if not paths:
            return evaluate(self.model, self.cache, split, cfg.eval_batch_size, cfg.eval_max_batches)
        calib = self.calib.batches if cfg.head_calib_batches else None
        return evaluate_paths(self.model, self.cache, split, paths, calib, cfg.eval_batch_size, cfg.eval_max_batches)

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
            self.schedule.report(value)  # the early-stopping metric, lower is better
        if s.best is None or value < s.best:
            s.best, s.bad_evals = value, 0
            self._save_best({"step": s.step}, with_shards=True)
        else:
            s.bad_evals += 1
            if cfg.early_stop_metric and s.bad_evals >= cfg.patience:
                s.stopped = True
        if cfg.early_stop_metric and at_lr_floor(self.schedule):
            # Every lr is at the plateau's floor (1e-8): the weights no longer move, and evaluations that
            # differ in the 7th digit would otherwise count as gains and keep the run going to its last epoch
            s.stopped = True
        if self.main:
            self.progress.say_eval(s.step, cfg.eval_split, m, s.bad_evals, s.stopped)

    def _save_best(self, record: dict[str, Any], with_shards: bool) -> None:
        """Write best.pt: the current weights and `record` (its step); sharded tables as each process's shards."""
        step = record["step"]
        if self.sharded and with_shards:
            save_shards(self.out, "best", step, self.rank, self.world, self.model, optimizer=False)
            distributed.barrier()
        if self.main:
            shards = {"shards": shard_meta(self.model, step, self.world)} if self.sharded else {}
            save_checkpoint(self.out / BEST_PT, {"model": self.model.state_dict(), **record, **shards})
        if self.sharded and with_shards:
            distributed.barrier()
            drop_older_shards(self.out, "best", step, self.rank, self.world)

    def _restore_best(self) -> None:
        """Evaluate the last weights if they were not, then take the best evaluation's weights."""
        s = self.state
        if not s.evals or s.evals[-1]["step"] != s.step:
            self._evaluate_during_training()
        if self.main or self.sharded:  # only rank 0 evaluates the final model, unless every rank must
            ck = load_checkpoint(self.out / BEST_PT)
            self.model.load_state_dict(ck["model"])
            if self.sharded:
                load_shards(self.out, "best", int(ck["step"]), self.rank, self.world, self.model, optimizer=False)
            s.best_step = int(ck["step"])
            # set when a killed run had refitted or calibrated these weights already
            s.bias_shift, s.logit_scale = ck.get("bias_shift"), ck.get("logit_scale")
        self.calib.measured_at = None  # other weights now (rank 0 loaded its best): measure them again
        s.best_step, s.bias_shift, s.logit_scale = distributed.broadcast_object(
            (s.best_step, s.bias_shift, s.logit_scale)
        )

    def _refit_bias(self) -> None:
        """Refit the output bias on train rows (`refit_logit_bias`) or calibrate the logit on validation rows
        (`calibrate_logits`), once: a resumed run's weights may carry it."""
        cfg, s = self.cfg, self.state
        wanted = cfg.refit_logit_bias or cfg.calibrate_logits
        if not wanted or self.paths.has_paths or s.bias_shift is not None:
            return
        self._calibrate_head()  # centred heads: the logits fitted on are the ones evaluation gives
        # sharded tables: every rank runs the forward passes, and applies rank 0's figures in place of its own
        here = self.main or self.sharded
        if cfg.calibrate_logits:
            own = calibrate_logits(self.model, self.cache, cfg.eval_batch_size, cfg.refit_max_rows) if here else None
            s.logit_scale, s.bias_shift = distributed.broadcast_object(own)
            if own != (s.logit_scale, s.bias_shift):
                if own is not None:
                    fold_calibration(self.model, 1.0 / own[0], -own[1] / own[0])
                fold_calibration(self.model, s.logit_scale, s.bias_shift)
        else:
            own = refit_output_bias(self.model, self.cache, cfg.eval_batch_size, cfg.refit_max_rows) if here else 0.0
            s.bias_shift = distributed.broadcast_object(own)
            if not self.main:
                bias = output_bias(self.model)
                if bias is not None:
                    with torch.no_grad():
                        bias.add_(s.bias_shift - own)
        if cfg.restore_best:  # the run's model is best.pt
            record = {"step": s.best_step, "bias_shift": s.bias_shift, "logit_scale": s.logit_scale}
            self._save_best(record, with_shards=False)
        self._checkpoint(final=True)  # records the figures (and, without restore_best, the changed weights)

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
            **({"bias_shift": s.bias_shift} if s.bias_shift is not None else {}),
            **({"logit_scale": s.logit_scale} if s.logit_scale is not None else {}),
            "train_seconds": s.train_seconds,
        }
        if self.sync is not None:
            final["world_size"] = self.world
            final["comm_bytes_per_step"] = self.comm.per_step()
        self._log({"step": s.step, "final": True, **{f"{n}_{k}": v for n, r in results.items() for k, v in r.items()}})
        self._write_json(METRICS_JSON, final)
        if self.main:
            self.progress.say_done(s.step, s.train_seconds, final["samples_per_s"], results)
        # every rank returns rank 0's figures (its timings, the run's written result)
        return distributed.broadcast_object(final)
