"""Platt scaling of a trained model's logit on the validation split: logit' = scale x logit + shift.

Early stopping on validation AUC keeps weights from after the point where the validation log loss
started to rise: the ranking is still improving, the probabilities are already over-confident (xDeepFM
on Frappe: AUC 0.9828, log loss 0.1637, against 0.9818 / 0.1534 when it stops on log loss;
BENCHMARKS.md). A scale and a shift fitted by maximum likelihood on held-out rows undo the
over-confidence and leave every ranking metric unchanged, since the map is increasing.

Both are folded into the weights, so evaluate, predict and export need nothing new: a zoo model scales its
logit through its own weights (`ZooModel.scale_logit_`), an architecture through its head, and
`calibrate_logits` checks on a batch that the folded model gives scale x logit + shift.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.model.layers import HeadLinear
from nasrec.train.bias_refit import output_bias
from nasrec.train.evaluation import split_logits
from nasrec.zoo.base import ZooModel

log = logging.getLogger(__name__)


def can_calibrate(model: nn.Module) -> bool:
    """Whether `fold_calibration` can fold a scale and a shift of the logit into `model`'s weights."""
    if isinstance(model, ZooModel):
        return model.can_scale_logit() and model.logit_bias() is not None
    return isinstance(getattr(model, "head", None), HeadLinear)


def check_calibratable(model: nn.Module, cache: Cache) -> None:
    """Refuse `calibrate_logits` for a model whose logit cannot be scaled, or data without validation rows."""
    if not can_calibrate(model):
        name = model.name if isinstance(model, ZooModel) else type(model).__name__
        raise NasrecError(
            f"training config: calibrate_logits: {name}'s logit cannot be scaled through its weights, so it cannot "
            "be calibrated (every zoo model and nasrec architecture can, with nasrec's own embedding tables)"
        )
    if "val" not in cache.split_names or not len(cache.split_index("val")):
        raise NasrecError(f"training config: calibrate_logits fits on the val split, and {cache.path} has none")


class NoIncreasingMap(NasrecError):
    """The logits rank the validation rows backwards or not at all: no scale > 0 lowers the log loss."""


def platt_fit(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(scale, shift) minimising the mean log loss of sigmoid(scale x logit + shift), by Newton's method."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if y.min() == y.max():
        raise NasrecError("cannot calibrate on rows with a single label")
    x = np.stack([z, np.ones_like(z)], axis=1)

    def loss(w: np.ndarray) -> float:
        t = x @ w
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    w = np.array([1.0, 0.0])
    current = loss(w)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))  # sigmoid, without overflow on large logits
        grad = x.T @ (p - y) / len(y)
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:  # backtracking: the log loss is convex, a short enough Newton step lowers it
            trial = w - t * step
            value = loss(trial)
            if value <= current:
                break
            t *= 0.5
        else:
            break
        w, gain, current = trial, current - value, value
        if gain < 1e-15 or np.abs(t * step).max() < 1e-12:
            break
    if not all(math.isfinite(v) for v in w) or w[0] <= 0:
        raise NoIncreasingMap(
            f"calibration found no increasing map (scale {w[0]:.4g}): the logits do not rank the rows"
        )
    return float(w[0]), float(w[1])


@torch.no_grad()
def fold_calibration(model: nn.Module, scale: float, shift: float) -> None:
    """Fold logit' = scale x logit + shift into `model`'s weights (the logit's own scaling, then its bias)."""
    if not can_calibrate(model):
        raise NasrecError(f"{type(model).__name__}: its logit cannot be scaled through its weights")
    if isinstance(model, ZooModel):
        model.scale_logit_(scale)
    else:  # an architecture: the logit is its head's, plus its first-order term's
        for layer in model.logit_layers():
            for p in layer.parameters():
                p.mul_(scale)
    output_bias(model).add_(shift)  # type: ignore[union-attr]  # can_calibrate checked it exists


@torch.no_grad()
def calibrate_logits(model: nn.Module, cache: Cache, batch_size: int, max_rows: int | None) -> tuple[float, float]:
    """Fit (scale, shift) on the validation split, fold them into `model` and return them.

    A model whose logits do not rank the rows (a training run that diverged or collapsed) keeps them as they
    are, (1, 0), with a warning: its metrics then say what it is, and a search or rank check that trains many
    architectures goes on (one of 30 capped architectures on Frappe stopped a rank check this way).
    """
    y, z = split_logits(model, cache, "val", batch_size, max_rows)
    try:
        scale, shift = platt_fit(z, y)
    except NoIncreasingMap as e:
        log.warning("logits left uncalibrated: %s", e)
        return 1.0, 0.0
    fold_calibration(model, scale, shift)
    # A zoo model scales its logit through its own layers (scale_logit_): checked on a batch. An architecture's
    # logit is its head, one Linear whose weight and bias are scaled: exact but for float rounding, which an
    # architecture with large head inputs (a batch-normed channel of ~1e5 whose running mean cancels it in
    # the head's bias) makes larger than any fixed tolerance, so it is not checked numerically.
    if not isinstance(model, ZooModel):
        return _logged(y, z, scale, shift)
    _, after = split_logits(model, cache, "val", batch_size, min(batch_size, len(y)))
    expected = scale * z[: len(after)] + shift
    if not np.allclose(after, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max())):
        fold_calibration(model, 1.0 / scale, -shift / scale)  # back to the trained weights
        raise NasrecError(f"{type(model).__name__}: its logit did not scale with its final layers; calibration undone")
    return _logged(y, z, scale, shift)


def _logged(y: np.ndarray, z: np.ndarray, scale: float, shift: float) -> tuple[float, float]:
    """Log the calibration's effect on the validation log loss; return (scale, shift)."""
    before_ll = float(np.mean(np.logaddexp(0.0, z) - y * z))
    t = scale * z + shift
    log.info(
        "logits calibrated on %s validation rows: x %.4f %+.4f, validation log loss %.5f -> %.5f",
        f"{len(y):,}",
        scale,
        shift,
        before_ll,
        float(np.mean(np.logaddexp(0.0, t) - y * t)),
    )
    return scale, shift
