"""One trial: a recipe drawn from the space, trained into its own run directory, its validation score.

The trial evaluates on the validation split `evals - 1` times during training, at the same fractions of its
training whatever its batch size (evaluation k of every trial is comparable), and reports each to Optuna,
whose pruner may stop it. The trainer has no public evaluation callback: `_ReportingTrainer` hooks the one
method every periodic evaluation goes through, so the trainer itself is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.train.config import TrainConfig
from nasrec.train.recipe import recipe_train_settings
from nasrec.train.trainer import Trainer
from nasrec.tune.space import tie_widths

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TuneSettings:
    """Everything that decides a tune's trials (plain values, so that worker processes receive it)."""

    data: str
    out: str
    model: str | None  # a zoo model, or
    arch: dict[str, Any] | None  # a nasrec architecture (canonical form)
    arch_file: str | None
    arch_hash: str | None
    hparams: dict[str, Any]  # the zoo model's hyper-parameters that are not searched (--hparam)
    model_defaults: dict[str, Any] | None  # the zoo model's hyper-parameters and defaults
    base: dict[str, Any]  # the base training configuration (preset and --set)
    space: dict[str, Any]  # the space, in its mapping form (`nasrec.tune.space`)
    metric: str = "logloss"
    seed: int = 0
    evals: int = 4
    prune: bool = True

    def identity(self) -> dict[str, Any]:
        """What a resumed tune must share with the tune it continues (not the trial count, time or workers)."""
        base = {k: v for k, v in self.base.items() if k != "device"}
        return {
            "data": self.data,
            "model": self.model,
            "arch_hash": self.arch_hash,
            "hparams": self.hparams,
            "train": base,
            "space": self.space,
            "metric": self.metric,
            "seed": self.seed,
            "evals": self.evals,
            "prune": self.prune,
        }


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: its state ("complete", "pruned", "failed"), value and what the summary shows."""

    state: str
    value: float | None
    attrs: dict[str, Any]
    note: str = ""


def trial_dir(out: str | Path, number: int) -> Path:
    """The run directory of trial `number`."""
    return Path(out) / TRIALS_DIR / f"{number:04d}"


def train_steps(cfg: TrainConfig, train_rows: int) -> int:
    """The optimizer steps of a (single-process) run: whole batches per epoch, capped by max_steps."""
    steps = (train_rows // cfg.batch_size) * cfg.epochs
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def trial_config(settings: TuneSettings, train: dict[str, Any], train_rows: int) -> TrainConfig:
    """The training configuration of a trial: the base, the drawn settings, validation evaluations for pruning."""
    cfg = TrainConfig.from_dict(settings.base).updated(**train)
    if cfg.evals_per_epoch:  # a recipe that evaluates each epoch (early stopping): the pruner sees those
        return cfg.updated(eval_split="val")
    total = train_steps(cfg, train_rows)
    # evaluation k of every trial at the same share of its training (-(-a // b): a / b rounded up)
    every = -(-total // settings.evals) if settings.evals > 1 else 0
    return cfg.updated(eval_split="val", eval_every=every)


class _ReportingTrainer(Trainer):
    """A Trainer that hands every periodic validation evaluation to `on_eval(index, metrics)`."""

    def __init__(self, *args: Any, on_eval: Callable[[int, dict[str, Any]], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_eval = on_eval

    def _evaluate_during_training(self) -> None:
        super()._evaluate_during_training()
        if self.state.step < self.total_steps:  # restore_best's closing evaluation is not a periodic one
            self._on_eval(len(self.state.evals), self.state.evals[-1])


class Pruned(Exception):
    """Raised from an evaluation the pruner judged not promising; carries the index of that evaluation."""

    def __init__(self, index: int, value: float) -> None:
        super().__init__(f"pruned at evaluation {index}")
        self.index, self.value = index, value


def run_trial(
    settings: TuneSettings,
    cache: Cache,
    trial: Any,
    train_rows: int,
    drawn: tuple[dict[str, Any], dict[str, Any]],
) -> Outcome:
    """Train the recipe `drawn` for an Optuna trial and say how it ended (the caller tells the study)."""
    model_hp, train = drawn
    hparams = tie_widths({**settings.hparams, **model_hp}, settings.model_defaults or {})
    cfg = trial_config(settings, train, train_rows)
    out = trial_dir(settings.out, trial.number)
    if out.exists():  # left by a tune whose storage was removed: the number is this trial's now
        shutil.rmtree(out)
    common = dict(num_dense=len(cache.dense_fields), table_sizes=tuple(cache.table_sizes))
    if settings.arch is not None:
        spec = ModelSpec(kind="nasrec", arch=settings.arch, **cfg.arch_model_options(), **common)
    else:
        spec = ModelSpec(kind="zoo", zoo=settings.model, hparams=hparams, **common)
    attrs: dict[str, Any] = {"hparams": hparams, "train": recipe_train_settings(cfg), "run": str(out)}

    def on_eval(index: int, metrics: dict[str, Any]) -> None:
        value = float(metrics[settings.metric])
        if not math.isfinite(value):
            return
        trial.report(value, index)
        if settings.prune and trial.should_prune():
            raise Pruned(index, value)

    t0 = time.perf_counter()
    try:
        with _trial_lines(trial.number):
            res = _ReportingTrainer(spec, cache, cfg, out, on_eval=on_eval).fit(progress=False)
    except Pruned as p:
        attrs.update(seconds=time.perf_counter() - t0, pruned_at=p.index)
        return Outcome("pruned", p.value, attrs, f"pruned at evaluation {p.index} ({settings.metric} {p.value:.5f})")
    except NasrecError as e:
        if "diverged" not in str(e):
            raise
        # a region of the space where training blows up: a result for the sampler, not an error of the tune
        attrs.update(seconds=time.perf_counter() - t0, diverged=str(e))
        return Outcome("pruned", None, attrs, "diverged")
    val = res.get("val") or {}
    attrs.update(
        seconds=time.perf_counter() - t0,
        val_logloss=val.get("logloss"),
        val_auc=val.get("auc"),
        steps=res.get("steps"),
        mflops=res.get("mflops"),
        model_params=res.get("params"),
    )
    value = val.get(settings.metric)
    if value is None or not math.isfinite(value):
        return Outcome("failed", None, attrs, f"validation {settings.metric} is not a number")
    return Outcome("complete", float(value), attrs)


class _TrialLines(logging.Handler):
    """A trial's training lines, passed to the command's log one level down (DEBUG) and with the trial's number."""

    def __init__(self, number: int) -> None:
        super().__init__(logging.DEBUG)
        self.number = number

    def emit(self, record: logging.LogRecord) -> None:
        r = logging.makeLogRecord(record.__dict__)
        r.msg, r.args = f"trial {self.number}: {record.getMessage()}", None
        if r.levelno == logging.INFO:
            r.levelno, r.levelname = logging.DEBUG, "DEBUG"
        logging.getLogger("nasrec").handle(r)


@contextlib.contextmanager
def _trial_lines(number: int) -> Iterator[None]:
    """During a trial, its training's lines go to the run log (debug) rather than filling stderr."""
    logger = logging.getLogger("nasrec.train")
    handler = _TrialLines(number)
    saved = logger.propagate
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved
