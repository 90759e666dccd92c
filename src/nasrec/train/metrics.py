"""Evaluation metrics of CTR models: log loss, exact tie-aware AUC, calibration; batch by batch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nasrec.errors import NasrecError

PROB_EPS = 1e-15


def _as_flat(values: Any, dtype: type | None = np.float64) -> np.ndarray:
    """A 1-d numpy array of `values` (numpy, torch on any device, or a sequence); `dtype=None` keeps floats."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype not in (torch.float32, torch.float64, torch.bool):
            values = values.float()  # numpy has no bfloat16, and ints would only be cast later anyway
        values = values.numpy()
    arr = np.asarray(values, dtype=dtype)
    return arr.reshape(-1)


def _pair(labels: Any, values: Any, name: str, dtype: type | None = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions as flat arrays of one length."""
    y = _as_flat(labels, dtype)
    v = _as_flat(values, dtype)
    if y.shape != v.shape:
        raise NasrecError(f"labels and {name} differ in size: {y.size} vs {v.size}")
    return y, v


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function; the tanh form cannot overflow for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bce_sum(y: np.ndarray, z: np.ndarray) -> float:
    """Sum of binary cross-entropies of logits `z` (float64)."""
    # Both terms as softplus keeps full precision for confident predictions and also accepts soft labels.
    return float(np.sum(y * _softplus(-z) + (1.0 - y) * _softplus(z)))


def log_loss(labels: Any, probs: Any) -> float:
    """Mean binary cross-entropy of probabilities clipped to [1e-15, 1 - 1e-15] (float64; NaN when empty)."""
    y, p = _pair(labels, probs, "probs")
    if y.size == 0:
        return math.nan
    p = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(labels: Any, logits: Any) -> float:
    """Mean binary cross-entropy of logits, computed stably with softplus (float64; NaN when empty)."""
    y, z = _pair(labels, logits, "logits")
    if y.size == 0:
        return math.nan
    return _bce_sum(y, z) / y.size


def auc(labels: Any, scores: Any) -> float:
    """Exact area under the ROC curve, ties counted one half (the Mann-Whitney U statistic).

    Labels above 0.5 are positives. Returns NaN when only one class is present or a score is NaN.
    Equal to scikit-learn's `roc_auc_score`; the count is done in int64, so it is exact up to billions
    of examples, and costs one sort.
    """
    y, s = _pair(labels, scores, "scores", dtype=None)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    pos = y > 0.5 if y.dtype != np.bool_ else y
    n = s.size
    n_pos = int(np.count_nonzero(pos))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return math.nan
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    pos_sorted = pos[order].astype(np.int64)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    pos_g = np.add.reduceat(pos_sorted, starts)
    neg_g = np.diff(np.append(starts, n)) - pos_g
    neg_below = np.cumsum(neg_g) - neg_g
    # Twice U: each positive beats every negative scored lower (2 each) and ties those scored equal (1 each);
    # an integer, so the AUC is exact whatever the number of ties.
    twice_u = int(np.sum(pos_g * (2 * neg_below + neg_g)))
    return twice_u / (2.0 * n_pos * n_neg)


class StreamingMetrics:
    """Metrics of a whole evaluation set fed batch by batch as (labels, logits).

    Log loss, mean prediction, CTR and accuracy are running float64 sums. The AUC is exact, not binned:
    every logit is kept (float32) with its label (bool), 5 bytes per example (about 23 MB for Criteo's
    4.6 M validation rows); pass `compute_auc=False` to keep nothing and report NaN for it. The AUC is
    computed on logits, which rank examples as the sigmoid does but without the ties float32
    probabilities acquire when they saturate at 0 or 1.
    """

    def __init__(self, compute_auc: bool = True) -> None:
        self.compute_auc = compute_auc
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.count = 0
        self._loss_sum = 0.0
        self._pred_sum = 0.0
        self._label_sum = 0.0
        self._correct = 0
        self._logits: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, labels: Any, logits: Any) -> None:
        """Add one batch of labels (0/1) and logits (torch tensors on any device, or numpy)."""
        y, z32 = _pair(labels, logits, "logits", dtype=np.float32)
        if y.size == 0:
            return
        y64, z = y.astype(np.float64), z32.astype(np.float64)
        self.count += int(y.size)
        self._loss_sum += _bce_sum(y64, z)
        self._pred_sum += float(np.sum(_sigmoid(z)))
        self._label_sum += float(np.sum(y64))
        self._correct += int(np.count_nonzero((z > 0.0) == (y > 0.5)))
        if self.compute_auc:
            # Copies, so that a caller reusing its buffers cannot change what was recorded.
            self._logits.append(np.array(z32, copy=True))
            self._labels.append(y > 0.5)

    def result(self) -> dict[str, float]:
        """Metrics so far: logloss, auc, mean_pred, ctr, calibration (mean_pred / ctr), accuracy, count."""
        n = self.count
        if n == 0:
            return {
                **dict.fromkeys(("logloss", "auc", "mean_pred", "ctr", "calibration", "accuracy"), math.nan),
                "count": 0,
            }
        mean_pred = self._pred_sum / n
        ctr = self._label_sum / n
        area = auc(np.concatenate(self._labels), np.concatenate(self._logits)) if self.compute_auc else math.nan
        return {
            "logloss": self._loss_sum / n,
            "auc": area,
            "mean_pred": mean_pred,
            "ctr": ctr,
            "calibration": mean_pred / ctr if ctr > 0 else math.nan,
            "accuracy": self._correct / n,
            "count": n,
        }
