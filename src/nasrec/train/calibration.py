"""Platt scaling of a trained model's logit on the validation split: logit' = scale x logit + shift.

Early stopping on validation AUC keeps weights from after the point where the validation log loss
started to rise: the ranking is still improving, the probabilities are already over-confident (xDeepFM
on Frappe: AUC 0.9828, log loss 0.1637, against 0.9818 / 0.1534 when it stops on log loss;
BENCHMARKS.md). A scale and a shift fitted by maximum likelihood on held-out rows undo the
over-confidence and leave every ranking metric unchanged, since the map is increasing.

Both are folded into the weights, so evaluate, predict and export need nothing new: the model's logit
must be a sum of parts that are each linear in their last layer's weights (`logit_parameters`), and
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
from nasrec.zoo.layers import MLP
from nasrec.zoo.registry import ZOO_MODELS

log = logging.getLogger(__name__)


def logit_parameters(model: nn.Module) -> list[nn.Parameter] | None:
    """The parameters the logit is linear and homogeneous in (scaling them all scales it), or None."""
    if isinstance(model, ZooModel):
        names = model.logit_parts
        if not names:
            return None
        params: list[nn.Parameter] = []
        for name in names:
            part = getattr(model, name)
            if isinstance(part, MLP):
                part = part.layers[-1]
            params.extend(part.parameters())  # a final layer, or a module linear in its own weights (FinalMLP's fusion)
        return params
    head = getattr(model, "head", None)
    return list(head.parameters()) if isinstance(head, HeadLinear) else None


def check_calibratable(model: nn.Module, cache: Cache) -> None:
    """Refuse `calibrate_logits` for a model whose logit cannot be scaled, or data without validation rows."""
    if logit_parameters(model) is None:
        name = model.name if isinstance(model, ZooModel) else type(model).__name__
        able = ", ".join(n for n, cls in ZOO_MODELS.items() if cls.logit_parts)
        raise NasrecError(
            f"training config: calibrate_logits: {name}'s logit is not a sum of final layers, so it cannot be "
            f"calibrated (zoo models that can: {able}, and nasrec architectures)"
        )
    if "val" not in cache.split_names or not len(cache.split_index("val")):
        raise NasrecError(f"training config: calibrate_logits fits on the val split, and {cache.path} has none")


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
        raise NasrecError(f"calibration found no increasing map (scale {w[0]:.4g}): the logits do not rank the rows")
    return float(w[0]), float(w[1])


@torch.no_grad()
def fold_calibration(model: nn.Module, scale: float, shift: float) -> None:
    """Fold logit' = scale x logit + shift into `model`'s weights."""
    params = logit_parameters(model)
    bias = output_bias(model)
    if params is None or bias is None:
        raise NasrecError(f"{type(model).__name__}: its logit is not a sum of final layers, so it cannot be calibrated")
    if not any(p is bias for p in params):  # the shift below assumes the bias was scaled with the rest
        raise NasrecError(f"{type(model).__name__}: its output bias is not among its final layers' weights")
    for p in params:
        p.mul_(scale)
    bias.add_(shift)


@torch.no_grad()
def calibrate_logits(model: nn.Module, cache: Cache, batch_size: int, max_rows: int | None) -> tuple[float, float]:
    """Fit (scale, shift) on the validation split, fold them into `model` and return them."""
    y, z = split_logits(model, cache, "val", batch_size, max_rows)
    scale, shift = platt_fit(z, y)
    fold_calibration(model, scale, shift)
    _, after = split_logits(model, cache, "val", batch_size, min(batch_size, len(y)))
    expected = scale * z[: len(after)] + shift
    if not np.allclose(after, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max())):
        fold_calibration(model, 1.0 / scale, -shift / scale)  # back to the trained weights
        raise NasrecError(f"{type(model).__name__}: its logit did not scale with its final layers; calibration undone")
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
