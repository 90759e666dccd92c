"""The known click model of the synthetic data: its parameters, feature draws and Bayes-optimal log loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from nasrec.data.synthetic.config import BLOCK_ROWS, SynthConfig, _per_field
from nasrec.errors import NasrecError

# Separate seed streams: model parameters, intercept calibration sample, row blocks.
_STREAM_PARAMS = 0
_STREAM_CALIBRATION = 1
_STREAM_ROWS = 2
_CALIBRATION_ROWS = 4 * BLOCK_ROWS
_EPS = 1e-15


@dataclass
class _Model:
    """Drawn parameters of the click model and the sampling tables of every field."""

    cdfs: list[np.ndarray]  # per sparse field: cumulative marginal over [missing, 1..card]
    marginals: list[np.ndarray]
    vocab: list[pl.Series]  # per sparse field: hex string of each category, null for missing
    dense_missing: np.ndarray
    dense_mu: np.ndarray
    dense_sigma: np.ndarray
    first_order: list[np.ndarray]
    linear_fields: np.ndarray
    linear_weight: np.ndarray
    linear_missing_weight: np.ndarray
    pairs: list[tuple[int, int]]
    pair_u: list[np.ndarray]
    pair_v: list[np.ndarray]
    gates: list[tuple[int, int]]
    gate_weight: list[np.ndarray]
    intercept: float = 0.0


def _centred_scaled(table: np.ndarray, marginal: np.ndarray, std: float) -> np.ndarray:
    """Centre a per-category table under the field's marginal and scale its row-level std to ``std``."""
    table = table - marginal @ table
    var = float(marginal @ (table**2 if table.ndim == 1 else (table**2).sum(axis=1)))
    return table * (std / math.sqrt(var)) if var > 0 else table * 0.0


def _build_model(cfg: SynthConfig, seed: int) -> _Model:
    """Draw every parameter of the click model from the seed's parameter stream."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_PARAMS,)))
    cards = cfg.cardinalities
    assert cards is not None
    sparse_missing = _per_field(cfg.sparse_missing_rate, cfg.num_sparse)

    cdfs, marginals, vocab = [], [], []
    for f, card in enumerate(cards):
        zipf = np.arange(1, card + 1, dtype=np.float64) ** -cfg.zipf_exponent
        marginal = np.concatenate(([sparse_missing[f]], (1 - sparse_missing[f]) * zipf / zipf.sum()))
        cdf = np.cumsum(marginal)
        cdf[-1] = 1.0  # guard against a draw landing past the last category through rounding
        cdfs.append(cdf)
        marginals.append(marginal)
        codes = rng.choice(2**32, size=card, replace=False)
        vocab.append(pl.Series(f"C{f + 1}", [None, *(f"{c:08x}" for c in codes.tolist())], dtype=pl.String))

    lo, hi = cfg.dense_mu_range
    dense_mu = rng.uniform(lo, hi, cfg.num_dense) if hi > lo else np.full(cfg.num_dense, lo)
    lo, hi = cfg.dense_sigma_range
    dense_sigma = rng.uniform(lo, hi, cfg.num_dense) if hi > lo else np.full(cfg.num_dense, lo)

    first_order = [
        _centred_scaled(rng.standard_normal(card + 1), marginals[f], cfg.first_order_scale)
        for f, card in enumerate(cards)
    ]

    linear_fields = np.sort(rng.choice(cfg.num_dense, size=cfg.num_dense_linear, replace=False))
    linear_weight = rng.normal(0.0, cfg.dense_weight_scale, cfg.num_dense_linear)
    linear_missing_weight = rng.normal(0.0, cfg.dense_weight_scale, cfg.num_dense_linear)

    all_pairs = [(i, j) for i in range(cfg.num_sparse) for j in range(i + 1, cfg.num_sparse)]
    chosen = np.sort(rng.choice(len(all_pairs), size=cfg.num_interactions, replace=False))
    pairs = [all_pairs[k] for k in chosen]
    pair_u, pair_v = [], []
    for i, j in pairs:
        u = _centred_scaled(rng.standard_normal((cards[i] + 1, cfg.interaction_rank)), marginals[i], 1.0)
        v = _centred_scaled(rng.standard_normal((cards[j] + 1, cfg.interaction_rank)), marginals[j], 1.0)
        # Var of u[c_i].v[c_j] over independent c_i, c_j is <U'QU, V'QV>; rescale it to the strength.
        var = float(np.sum((u.T * marginals[i]) @ u * ((v.T * marginals[j]) @ v)))
        scale = math.sqrt(cfg.interaction_strength / math.sqrt(var)) if var > 0 else 0.0
        pair_u.append(u * scale)
        pair_v.append(v * scale)

    chosen = np.sort(rng.choice(cfg.num_dense * cfg.num_sparse, size=cfg.num_gated, replace=False))
    gates = [(int(k // cfg.num_sparse), int(k % cfg.num_sparse)) for k in chosen]
    gate_weight = [
        _centred_scaled(rng.standard_normal(cards[m] + 1), marginals[m], cfg.gate_strength) for _, m in gates
    ]

    return _Model(
        cdfs=cdfs,
        marginals=marginals,
        vocab=vocab,
        dense_missing=_per_field(cfg.dense_missing_rate, cfg.num_dense),
        dense_mu=dense_mu,
        dense_sigma=dense_sigma,
        first_order=first_order,
        linear_fields=linear_fields,
        linear_weight=linear_weight,
        linear_missing_weight=linear_missing_weight,
        pairs=pairs,
        pair_u=pair_u,
        pair_v=pair_v,
        gates=gates,
        gate_weight=gate_weight,
    )


@dataclass
class _Block:
    sparse: np.ndarray  # int64 [num_sparse, n], 0 = missing
    dense: np.ndarray  # int64 [num_dense, n]
    dense_missing: np.ndarray  # bool [num_dense, n]
    logit: np.ndarray  # float64 [n], without the intercept


def _draw_features(model: _Model, cfg: SynthConfig, rng: np.random.Generator, n: int) -> _Block:
    """Draw one block of feature rows and their logits (intercept excluded)."""
    u = rng.random((cfg.num_sparse, n))
    sparse = np.empty((cfg.num_sparse, n), dtype=np.int64)
    for f, cdf in enumerate(model.cdfs):
        sparse[f] = np.searchsorted(cdf, u[f], side="right")

    normal = rng.standard_normal((cfg.num_dense, n))
    dense_missing = rng.random((cfg.num_dense, n)) < model.dense_missing[:, None]
    dense = np.floor(np.exp(model.dense_mu[:, None] + model.dense_sigma[:, None] * normal)).astype(np.int64)
    if cfg.negative_dense_field is not None:
        negative = rng.random(n) < cfg.negative_rate
        dense[cfg.negative_dense_field, negative] = -1

    # Standardised log counts; a missing or negative value reads as a zero count.
    z = (np.log1p(np.maximum(dense, 0)) - model.dense_mu[:, None]) / model.dense_sigma[:, None]
    z_zero = -model.dense_mu / model.dense_sigma
    z[dense_missing] = np.broadcast_to(z_zero[:, None], z.shape)[dense_missing]

    logit = np.zeros(n)
    for f, w in enumerate(model.first_order):
        logit += w[sparse[f]]
    for k, a, a_missing in zip(model.linear_fields, model.linear_weight, model.linear_missing_weight, strict=True):
        logit += np.where(dense_missing[k], a_missing, a * z[k])
    for (i, j), u_tab, v_tab in zip(model.pairs, model.pair_u, model.pair_v, strict=True):
        logit += np.einsum("nr,nr->n", u_tab[sparse[i]], v_tab[sparse[j]])
    for (k, m), g in zip(model.gates, model.gate_weight, strict=True):
        logit += _sigmoid(cfg.gate_slope * z[k]) * g[sparse[m]]
    return _Block(sparse=sparse, dense=dense, dense_missing=dense_missing, logit=logit)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))


def _calibrate_intercept(model: _Model, cfg: SynthConfig, seed: int) -> float:
    """Intercept that gives the configured mean click probability on a fixed calibration sample."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_CALIBRATION,)))
    logit = _draw_features(model, cfg, rng, _CALIBRATION_ROWS).logit
    lo, hi = -40.0, 40.0
    # Mean probability is monotone in the intercept, so bisection always converges.
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + logit).mean() < cfg.base_ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _logloss_terms(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -np.where(np.asarray(labels) > 0.5, np.log(p), np.log1p(-p))


def _entropy_terms(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def bayes_logloss(truth: np.ndarray, labels: np.ndarray) -> float:
    """Mean log loss of predicting the true probabilities ``truth`` for the 0/1 ``labels``."""
    truth = np.asarray(truth)
    labels = np.asarray(labels)
    if truth.shape != labels.shape or truth.ndim != 1:
        raise NasrecError(f"truth and labels must be 1-d arrays of one length, got {truth.shape}, {labels.shape}")
    if truth.shape[0] == 0:
        raise NasrecError("cannot compute a log loss over zero rows")
    return float(np.mean(_logloss_terms(truth, labels)))
