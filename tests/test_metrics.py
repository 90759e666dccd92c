"""Log loss, exact tie-aware AUC (against scikit-learn) and streaming evaluation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasrec.errors import NasrecError
from nasrec.train.metrics import StreamingMetrics, auc, log_loss, log_loss_from_logits


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_log_loss_matches_the_formula_and_clips() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.3).astype(np.float32)
    p = rng.uniform(0.01, 0.99, 1000)
    assert log_loss(y, p) == pytest.approx(_bce(y, p), rel=1e-12)
    assert log_loss(torch.tensor(y), torch.tensor(p)) == pytest.approx(_bce(y, p), rel=1e-12)
    # A certain wrong prediction costs about -log(1e-15) (1 - 1e-15 is inexact in float64), not infinity.
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-15), rel=1e-4)
    assert log_loss([1, 0], [1.0, 0.0]) < 1e-14
    assert math.isnan(log_loss([], []))
    with pytest.raises(NasrecError):
        log_loss([1, 0, 1], [0.5, 0.5])


def test_log_loss_from_logits_is_stable() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.5).astype(np.float64)
    z = rng.normal(0, 3, 500)
    expected = _bce(y, 1 / (1 + np.exp(-z)))
    assert log_loss_from_logits(y, z) == pytest.approx(expected, rel=1e-12)
    torch_value = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y))
    assert log_loss_from_logits(y, z) == pytest.approx(float(torch_value), rel=1e-12)
    # Extreme logits: exact where probabilities would overflow or be clipped.
    assert log_loss_from_logits([0.0], [1000.0]) == pytest.approx(1000.0)
    assert log_loss_from_logits([1.0], [-800.0]) == pytest.approx(800.0)
    assert log_loss_from_logits([1.0, 0.0], [50.0, -50.0]) == pytest.approx(math.exp(-50), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_sklearn_with_many_ties(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5000))
    y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(np.float32)
    y[0], y[-1] = 0, 1  # both classes present
    # Few distinct scores: most examples tie with many others, of both classes.
    levels = int(rng.integers(1, 30))
    scores = rng.integers(0, levels, n).astype(np.float32) + 0.3 * y * rng.random(n).round(0).astype(np.float32)
    assert auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores), abs=1e-12)
    continuous = rng.normal(size=n) + y
    assert auc(y, continuous) == pytest.approx(sklearn_metrics.roc_auc_score(y, continuous), abs=1e-12)
    assert auc(torch.tensor(y), torch.tensor(continuous)) == pytest.approx(auc(y, continuous), abs=0)


def test_auc_edge_cases() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [5, 5, 5, 5]) == 0.5
    assert auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([0, 1], [0.1, float("nan")]))


def test_streaming_metrics_equal_whole_set_metrics() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(10_000, generator=gen) < 0.25).float()
    logits = (torch.randn(10_000, generator=gen) + 2 * labels - 1.5).round(decimals=1)  # ties
    metrics = StreamingMetrics()
    for start in range(0, 10_000, 1024):
        # Column-shaped logits, as a model's head returns them.
        metrics.update(labels[start : start + 1024], logits[start : start + 1024, None])
    res = metrics.result()
    probs = torch.sigmoid(logits.double()).numpy()
    y = labels.double().numpy()
    assert res["count"] == 10_000
    assert res["logloss"] == pytest.approx(_bce(y, probs), rel=1e-9)
    assert res["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, probs), abs=1e-12)
    assert res["mean_pred"] == pytest.approx(probs.mean(), rel=1e-9)
    assert res["ctr"] == pytest.approx(y.mean(), rel=1e-12)
    assert res["calibration"] == pytest.approx(probs.mean() / y.mean(), rel=1e-9)
    assert res["accuracy"] == pytest.approx(np.mean((probs > 0.5) == (y > 0.5)))


def test_streaming_metrics_copies_inputs_and_resets() -> None:
    metrics = StreamingMetrics()
    buf_y, buf_z = np.array([0.0, 1.0], np.float32), np.array([-1.0, 1.0], np.float32)
    metrics.update(buf_y, buf_z)
    buf_z[:] = [1.0, -1.0]  # a reused buffer must not change what was recorded
    metrics.update(np.array([1.0, 0.0]), np.array([2.0, -2.0]))
    assert metrics.result()["auc"] == 1.0
    metrics.reset()
    empty = metrics.result()
    assert empty["count"] == 0 and math.isnan(empty["logloss"]) and math.isnan(empty["auc"])
    no_auc = StreamingMetrics(compute_auc=False)
    no_auc.update(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))
    res = no_auc.result()
    assert math.isnan(res["auc"]) and res["logloss"] == pytest.approx(math.log(2))
    assert math.isnan(res["calibration"])  # no clicks: CTR 0
    with pytest.raises(NasrecError):
        no_auc.update(torch.zeros(3), torch.zeros(4))
