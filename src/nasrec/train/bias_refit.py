"""Refitting a trained model's output bias so that its mean prediction on training rows is their click rate.

The logistic loss's gradient with respect to a bias that reaches the logit directly is the mean of
(prediction − label): at its optimum the mean prediction equals the click rate. A run that early stopping
ends after an epoch or two has not reached it. With 0.3 % positives DCNv2's mean prediction stayed at
1.6 x the base rate (BENCHMARKS.md). With every other weight frozen, the bias's maximum-likelihood value
is one convex, one-dimensional problem on the model's logits, solved here to double precision.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.model.layers import HeadLinear
from nasrec.train.evaluation import split_logits
from nasrec.zoo.base import ZooModel

log = logging.getLogger(__name__)


def output_bias(model: nn.Module) -> nn.Parameter | None:
    """The scalar bias added straight to `model`'s logit (a zoo model's `logit_bias`, an architecture's head's)."""
    if isinstance(model, ZooModel):
        return model.logit_bias()
    head = getattr(model, "head", None)
    return head.bias if isinstance(head, HeadLinear) else None


def bias_shift(logits: torch.Tensor, ctr: float) -> float:
    """The shift d with mean(sigmoid(logits + d)) = ctr, by bisection (the mean is increasing in d)."""
    if not 0.0 < ctr < 1.0:
        raise NasrecError(f"cannot match a click rate of {ctr}: the rows hold a single label")
    z = logits.double()
    lo, hi = -60.0, 60.0  # sigmoid saturates in float64 beyond these
    for _ in range(100):  # each halves the bracket: 120 / 2^100 is far below float64's step
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(z + mid).mean()) < ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@torch.no_grad()
def refit_output_bias(model: nn.Module, cache: Cache, batch_size: int, max_rows: int | None) -> float:
    """Shift `model`'s output bias to the maximum-likelihood value on train rows; return the shift."""
    bias = output_bias(model)
    if bias is None:
        raise NasrecError(f"{type(model).__name__}: no bias reaches its logit directly, so none can be refitted")
    y, z = (torch.from_numpy(a) for a in split_logits(model, cache, "train", batch_size, max_rows))
    ctr = float(y.mean())
    shift = bias_shift(z, ctr)
    before = float(torch.sigmoid(z).mean())
    bias.add_(shift)
    log.info(
        "output bias refitted on %s train rows: mean prediction %.5g -> %.5g (click rate %.5g), shift %+.4f",
        f"{len(y):,}",
        before,
        float(torch.sigmoid(z + shift).mean()),
        ctr,
        shift,
    )
    return shift
