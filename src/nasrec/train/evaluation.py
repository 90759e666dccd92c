"""Judging a model on a split: metrics in file order, a centred head's exact mean, and a supernet's paths."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.data.loader import Batch, BatchLoader
from nasrec.errors import NasrecError
from nasrec.model.layers import HeadLinear, calibrate_head
from nasrec.space.arch import Architecture
from nasrec.train.metrics import StreamingMetrics


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
    device = model_device(model)
    for batch in itertools.islice(loader, max_batches):
        batch = to_device(batch, device)
        logits = model(batch.dense, batch.sparse) if arch is None else model(batch.dense, batch.sparse, arch)
        metrics.update(batch.label, logits)
    model.train(was_training)
    return metrics.result()


@torch.no_grad()
def split_logits(
    model: nn.Module, cache: Cache, split: str, batch_size: int = 8192, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits (float64) of a model on every row of a split (the first `max_rows`), in file order."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    labels, logits = [], []
    limit = None if max_rows is None else -(-max_rows // batch_size)  # batches that cover max_rows
    for batch in itertools.islice(BatchLoader(cache, split, batch_size=batch_size), limit):
        batch = to_device(batch, device)
        labels.append(batch.label.double().cpu().numpy())
        logits.append(model(batch.dense, batch.sparse).double().cpu().numpy())
    model.train(was_training)
    if not labels:
        raise NasrecError(f"split {split!r} of {cache.path} has no rows")
    return np.concatenate(labels)[:max_rows], np.concatenate(logits)[:max_rows]


def evaluate_paths(
    model: nn.Module,
    cache: Cache,
    split: str,
    paths: list[Architecture],
    calib: Callable[[], list[Batch]] | None,
    batch_size: int = 8192,
    max_batches: int | None = None,
) -> dict[str, float]:
    """`evaluate`'s metrics averaged over a supernet's `paths`, each judged with its own exact head mean.

    A centred head's running mean mixes every path trained. Each path is judged with its own mean over the
    batches `calib()` returns (None: the running mean), as a search candidate is scored, and the
    supernet's buffers are put back afterwards.
    """
    head = model.head
    saved = {k: v.clone() for k, v in head.named_buffers()}
    results = []
    was_training = model.training
    model.eval()
    try:
        for arch in paths:
            if calib is not None:
                calibrate_head(lambda d, x, a=arch: model.features(d, x, a), head, calib())
            results.append(evaluate(model, cache, split, batch_size, max_batches, arch))
    finally:
        for k, v in head.named_buffers():
            v.copy_(saved[k])
        model.train(was_training)
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


class HeadCalibration:
    """The first train batches (file order, read once, kept on the device) a centred head's mean is measured on.

    The running mean follows the batch means of the last ~10 steps, taken under older weights; at a high
    learning rate that lag alone moved a validation loss from 0.309 to 0.355 (docs/design.md).
    """

    def __init__(self, model: nn.Module, cache: Cache, batch_size: int, count: int, device: torch.device) -> None:
        self.model, self.cache, self.batch_size, self.count, self.device = model, cache, batch_size, count, device
        self._batches: list[Batch] | None = None
        self.measured_at: int | None = None  # the step whose weights the whole model's head mean was measured for

    def batches(self) -> list[Batch]:
        """The calibration batches (read at the first call)."""
        if self._batches is None:
            loader = BatchLoader(self.cache, "train", batch_size=self.batch_size)
            self._batches = [to_device(b, self.device) for b in itertools.islice(loader, self.count)]
        return self._batches

    def whole_model(self, step: int) -> None:
        """Set a standalone model's centred head mean (and a nasrec architecture's batch-norm statistics)
        exactly for the weights of `step` (once per step)."""
        head = getattr(self.model, "head", None)
        centred = isinstance(head, HeadLinear) and head.centre
        # a nasrec architecture's batch norms (`arch_batchnorm`); zoo models keep their running statistics
        norms = bool(getattr(self.model, "batchnorm", False))
        if self.count == 0 or not (centred or norms):
            return
        if self.measured_at == step:  # these weights were measured already (val, then test)
            return
        was_training = self.model.training
        if norms:
            exact_batchnorm(self.model, self.batches())
        self.model.eval()
        if centred:
            calibrate_head(self.model.features, head, self.batches())
        self.model.train(was_training)
        self.measured_at = step


def exact_batchnorm(model: nn.Module, batches: list[Batch]) -> None:
    """Reset `model`'s batch norms' running statistics and measure them over `batches` with its current weights.

    The running statistics follow the batches of the last steps, taken under older weights. On a channel of
    near-zero variance the lag of its running mean is divided by sqrt(running variance + eps) in evaluation:
    one Frappe architecture trained to a train loss of 0.14 evaluated at a validation loss of 59 (AUC 0.30),
    and at 0.153 with its statistics measured so (BENCHMARKS.md, "The supernet's ranking on Frappe").
    Everything else runs in evaluation mode (no dropout); the weights do not change.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    with torch.no_grad():
        for b in batches:
            model(b.dense, b.sparse)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device` (the same tensors when it is there already)."""
    return Batch(batch.dense.to(device), batch.sparse.to(device), batch.label.to(device))


def train_size(cache: Cache) -> tuple[int, int]:
    """(rows, examples of the rarer label) of the train split: what a recipe's small-data settings look at."""
    rows = len(cache.split_index("train"))
    ctr = train_ctr(cache) if rows else 0.0
    return rows, round(min(ctr, 1.0 - ctr) * rows)


def train_ctr(cache: Cache) -> float:
    """The train split's click rate, as `prepare` recorded it (measured here for a cache without it)."""
    ctr = cache.meta.get("split", {}).get("ctr", {}).get("train")
    if ctr is None or not math.isfinite(ctr):
        ctr = float(np.mean(cache.label[cache.split_index("train")]))
    return float(ctr)
