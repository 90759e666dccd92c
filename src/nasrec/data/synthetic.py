"""Criteo-shaped synthetic click logs drawn from a known ground-truth click model.

The generator writes three files:

``<path>``
    The raw Criteo Kaggle format: tab-separated, no header, one row per line with the label
    (``0``/``1``), ``num_dense`` integer counts (empty when missing) and ``num_sparse`` categorical
    values, each an 8-character lowercase hex string (empty when missing).
``<path>.truth.npy``
    float64 ``[rows]``: the true click probability of every row, in file order. Predicting it is
    Bayes-optimal, so its log loss on any subset of rows is the floor a model can reach there.
``<path>.synth.json``
    The configuration, seed, row and positive counts, the planted structure of the click model and
    the Bayes-optimal log loss (realised and expected) over the whole file.

The click model is ``p = sigmoid(logit)`` with

    logit = intercept
          + sum_f  w_f[c_f]                                    first order, every sparse field
          + sum_k  a_k * (log1p(x_k) - mu_k) / sigma_k         a few dense fields
          + sum_(i,j) u_ij[c_i] . v_ij[c_j]                    planted low-rank field pairs
          + sum_(k,m) sigmoid(s * (log1p(x_k) - mu_k) / sigma_k) * g_km[c_m]   gated dense-sparse

where a missing categorical value is a category of its own (index 0) with its own weights, and a
missing dense value contributes its own weight to the linear term and ``log1p(x) = 0`` to a gate.
Every table is centred under the field's marginal distribution, so the pair and gate terms carry no
first-order signal a purely additive model could pick up, and scaled so that each term's standard
deviation over rows equals the configured strength.

Rows are drawn in fixed blocks of ``BLOCK_ROWS`` rows, each from its own generator derived from the
seed and the block number, so the output does not depend on how it is written out, and the first
``n`` rows of a larger file are exactly the ``n``-row file.

The click model (vocabularies, weights, intercept) comes from ``model_seed`` and the rows from ``seed``;
by default the two are the same. New rows from the click model of an existing file, e.g. to predict
on with a model trained on it, take that file's configuration and model seed with another row seed
(``click_model_of``; ``nasrec synth --like FILE``). Another ``seed`` alone draws another click model:
other category codes, other weights, so a model trained on the first file has nothing to go on.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from nasrec.data.schema import DenseField, Schema, SparseField
from nasrec.errors import NasrecError

FORMAT_VERSION = 1
TRUTH_SUFFIX = ".truth.npy"
META_SUFFIX = ".synth.json"
# Fixed so that the per-row draws never depend on the caller's write batching.
BLOCK_ROWS = 32_768
# Every category's hex code is formatted up front, so vocabularies stay small enough to hold in memory.
MAX_CARDINALITY = 10_000_000

# Separate seed streams: model parameters, intercept calibration sample, row blocks.
_STREAM_PARAMS = 0
_STREAM_CALIBRATION = 1
_STREAM_ROWS = 2
_CALIBRATION_ROWS = 4 * BLOCK_ROWS
_EPS = 1e-15


def _default_cardinalities(num_sparse: int) -> tuple[int, ...]:
    """Geometric spread of vocabulary sizes from 4 to 50,000, interleaved so big fields are not all last."""
    if num_sparse == 1:
        return (1000,)
    sizes = np.rint(np.geomspace(4, 50_000, num_sparse)).astype(int)
    # Striding by a number coprime to num_sparse visits every size once in a mixed order.
    stride = next(s for s in (7, 5, 3, 1) if math.gcd(s, num_sparse) == 1)
    return tuple(int(sizes[(i * stride) % num_sparse]) for i in range(num_sparse))


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer argument, naming it and the allowed range in the error."""
    ok = not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise NasrecError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def truth_path(path: str | Path) -> Path:
    """Path of the per-row true click probabilities written next to a synthetic data file."""
    return Path(f"{path}{TRUTH_SUFFIX}")


def meta_path(path: str | Path) -> Path:
    """Path of the JSON description written next to a synthetic data file."""
    return Path(f"{path}{META_SUFFIX}")


@dataclass(frozen=True)
class SynthConfig:
    """Shape of the synthetic data and parameters of its ground-truth click model."""

    num_dense: int = 13
    num_sparse: int = 26
    # None: a geometric spread of sizes between 4 and 50,000 (filled in on construction).
    cardinalities: tuple[int, ...] | None = None
    zipf_exponent: float = 1.2
    # A single rate for every field, or one per field.
    dense_missing_rate: float | tuple[float, ...] = 0.1
    sparse_missing_rate: float | tuple[float, ...] = 0.05
    # Each dense field is floor(lognormal(mu, sigma)) with mu and sigma drawn uniformly from these ranges.
    dense_mu_range: tuple[float, float] = (0.0, 4.0)
    dense_sigma_range: tuple[float, float] = (0.6, 1.6)
    # Like Criteo's I2, one dense field occasionally holds -1 (None: no such field).
    negative_dense_field: int | None = 1
    negative_rate: float = 0.03
    base_ctr: float = 0.25
    # Standard deviation (over rows) of each sparse field's first-order term.
    first_order_scale: float = 0.25
    num_dense_linear: int = 4
    dense_weight_scale: float = 0.3
    num_interactions: int = 6
    interaction_rank: int = 4
    # Standard deviation (over rows) of each planted pair's term.
    interaction_strength: float = 0.45
    num_gated: int = 2
    gate_strength: float = 0.6
    gate_slope: float = 2.5

    def __post_init__(self) -> None:
        _check_int("num_dense", self.num_dense, 1)
        _check_int("num_sparse", self.num_sparse, 1)
        cards = _default_cardinalities(self.num_sparse) if self.cardinalities is None else self.cardinalities
        cards = tuple(cards)
        if len(cards) != self.num_sparse:
            raise NasrecError(f"cardinalities has {len(cards)} entries, expected num_sparse={self.num_sparse}")
        for i, c in enumerate(cards):
            _check_int(f"cardinality of sparse field {i}", c, 2, MAX_CARDINALITY)
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in cards))
        object.__setattr__(
            self,
            "dense_missing_rate",
            _check_rates("dense_missing_rate", self.dense_missing_rate, self.num_dense),
        )
        object.__setattr__(
            self,
            "sparse_missing_rate",
            _check_rates("sparse_missing_rate", self.sparse_missing_rate, self.num_sparse),
        )
        if not self.zipf_exponent >= 0:
            raise NasrecError(f"zipf_exponent must be >= 0, got {self.zipf_exponent!r}")
        for name in ("dense_mu_range", "dense_sigma_range"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise NasrecError(f"{name} must be (low, high) with low <= high, got {(lo, hi)!r}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if not self.dense_sigma_range[0] > 0:
            raise NasrecError(f"dense_sigma_range must be positive, got {self.dense_sigma_range!r}")
        if self.negative_dense_field is not None:
            _check_int("negative_dense_field", self.negative_dense_field, 0, self.num_dense - 1)
        if not 0 <= self.negative_rate < 1:
            raise NasrecError(f"negative_rate must be in [0, 1), got {self.negative_rate!r}")
        if not 0 < self.base_ctr < 1:
            raise NasrecError(f"base_ctr must be in (0, 1), got {self.base_ctr!r}")
        for name in ("first_order_scale", "dense_weight_scale", "interaction_strength", "gate_strength"):
            if not getattr(self, name) >= 0:
                raise NasrecError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        _check_int("num_dense_linear", self.num_dense_linear, 0, self.num_dense)
        _check_int("num_interactions", self.num_interactions, 0, self.num_sparse * (self.num_sparse - 1) // 2)
        _check_int("interaction_rank", self.interaction_rank, 1)
        _check_int("num_gated", self.num_gated, 0, self.num_dense * self.num_sparse)


def _check_rates(name: str, rate: float | tuple[float, ...], n: int) -> tuple[float, ...] | float:
    """Validate a missing rate given once or per field; keep the caller's form for the JSON record."""
    rates = (rate,) * n if isinstance(rate, int | float) else tuple(rate)
    if len(rates) != n:
        raise NasrecError(f"{name} has {len(rates)} entries, expected {n}")
    for r in rates:
        if not 0 <= r < 1:
            raise NasrecError(f"{name} values must be in [0, 1), got {r!r}")
    return float(rate) if isinstance(rate, int | float) else tuple(float(r) for r in rates)


def _per_field(rate: float | tuple[float, ...], n: int) -> np.ndarray:
    return np.full(n, rate, dtype=np.float64) if isinstance(rate, float) else np.asarray(rate, np.float64)


@dataclass(frozen=True)
class SynthResult:
    """Summary of one generated synthetic data file."""

    path: Path
    rows: int
    positives: int
    ctr: float
    bayes_logloss: float
    expected_logloss: float
    seconds: float

    @property
    def truth_path(self) -> Path:
        """Path of the per-row true click probabilities."""
        return truth_path(self.path)

    @property
    def meta_path(self) -> Path:
        """Path of the JSON description."""
        return meta_path(self.path)


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


def synth_schema(cfg: SynthConfig) -> Schema:
    """The schema of a generated file (the Criteo layout with the configured field counts)."""
    dense = tuple(DenseField(f"I{i}", f"I{i}") for i in range(1, cfg.num_dense + 1))
    sparse = tuple(
        SparseField(f"C{i}", f"C{i}", "hex", table_size=max(2 * card + 2, 16))
        for i, card in enumerate(cfg.cardinalities, 1)
    )
    columns = ("label", *(f.column for f in dense), *(f.column for f in sparse))
    return Schema(name="synthetic", label="label", dense=dense, sparse=sparse, separator="\t", header=False,
                  columns=columns, quote=None)  # fmt: skip


def bayes_logloss(truth: np.ndarray, labels: np.ndarray) -> float:
    """Mean log loss of predicting the true probabilities ``truth`` for the 0/1 ``labels``."""
    truth = np.asarray(truth)
    labels = np.asarray(labels)
    if truth.shape != labels.shape or truth.ndim != 1:
        raise NasrecError(f"truth and labels must be 1-d arrays of one length, got {truth.shape}, {labels.shape}")
    if truth.shape[0] == 0:
        raise NasrecError("cannot compute a log loss over zero rows")
    return float(np.mean(_logloss_terms(truth, labels)))


def _block_frame(model: _Model, cfg: SynthConfig, block: _Block, labels: np.ndarray) -> pl.DataFrame:
    """The Criteo text columns of one block: label, I1..In with nulls, C1..Cn as hex strings."""
    columns: list[pl.Series] = [pl.Series("label", labels.astype(np.int8))]
    for k in range(cfg.num_dense):
        s = pl.Series(f"I{k + 1}", block.dense[k])
        if block.dense_missing[k].any():
            s = s.set(pl.Series(block.dense_missing[k]), None)
        columns.append(s)
    for f, vocab in enumerate(model.vocab):
        columns.append(vocab.gather(block.sparse[f]))
    return pl.DataFrame(columns)


def _flush(fh: BinaryIO, frames: list[pl.DataFrame]) -> None:
    pl.concat(frames, rechunk=False).write_csv(fh, separator="\t", include_header=False, null_value="")
    frames.clear()


def generate_synthetic(
    path: str | Path,
    rows: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    chunk_rows: int = 250_000,
    model_seed: int | None = None,
) -> SynthResult:
    """Write ``rows`` synthetic Criteo-format rows to ``path`` plus the truth and JSON sidecars.

    Existing files are replaced. ``chunk_rows`` only sets how many rows are buffered per write (it
    bounds memory); the rows themselves depend on nothing but ``seed``, ``model_seed`` and ``config``.
    ``model_seed`` (default ``seed``) draws the click model, ``seed`` the rows: files with the same
    configuration and model seed share one click model whatever their row seeds.
    """
    start = time.perf_counter()
    rows = _check_int("rows", rows, 1)
    seed = _check_int("seed", seed, 0)
    model_seed = seed if model_seed is None else _check_int("model_seed", model_seed, 0)
    chunk_rows = _check_int("chunk_rows", chunk_rows, 1)
    if config is not None and not isinstance(config, SynthConfig):
        raise NasrecError(f"config must be a SynthConfig, got {type(config).__name__}")
    cfg = config or SynthConfig()
    path = Path(path)
    if path.is_dir():
        raise NasrecError(f"{path} is a directory, expected a file path for the synthetic data")
    path.parent.mkdir(parents=True, exist_ok=True)

    model = _build_model(cfg, model_seed)
    model.intercept = _calibrate_intercept(model, cfg, model_seed)

    # Everything goes to temporary siblings first, so a crash never leaves a file set that looks whole.
    tag = f".part-{os.getpid()}"
    final = [path, truth_path(path), meta_path(path)]
    tmp = [p.with_name(p.name + tag) for p in final]
    positives = 0
    loss_sum = 0.0
    entropy_sum = 0.0
    try:
        truth = np.lib.format.open_memmap(tmp[1], mode="w+", dtype=np.float64, shape=(rows,))
        with open(tmp[0], "wb") as fh:
            pending: list[pl.DataFrame] = []
            pending_rows = 0
            for b in range(-(-rows // BLOCK_ROWS)):
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_ROWS, b)))
                # Always draw a whole block and cut the last one, so a file is a prefix of any longer one.
                block = _draw_features(model, cfg, rng, BLOCK_ROWS)
                p = _sigmoid(model.intercept + block.logit)
                labels = rng.random(BLOCK_ROWS) < p
                n = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
                if n < BLOCK_ROWS:
                    block = _Block(block.sparse[:, :n], block.dense[:, :n], block.dense_missing[:, :n], block.logit[:n])
                    p, labels = p[:n], labels[:n]
                truth[b * BLOCK_ROWS : b * BLOCK_ROWS + n] = p
                positives += int(labels.sum())
                loss_sum += float(_logloss_terms(p, labels).sum())
                entropy_sum += float(_entropy_terms(p).sum())
                pending.append(_block_frame(model, cfg, block, labels))
                pending_rows += n
                if pending_rows >= chunk_rows:
                    _flush(fh, pending)
                    pending_rows = 0
            if pending:
                _flush(fh, pending)
        truth.flush()
        del truth

        result = SynthResult(
            path=path,
            rows=rows,
            positives=positives,
            ctr=positives / rows,
            bayes_logloss=loss_sum / rows,
            expected_logloss=entropy_sum / rows,
            seconds=0.0,
        )
        meta = _meta(cfg, seed, model_seed, model, result)
        with open(tmp[2], "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
        # The JSON goes last: its presence marks a complete set.
        for src, dst in zip(tmp, final, strict=True):
            os.replace(src, dst)
    except BaseException:
        for part in tmp:
            part.unlink(missing_ok=True)
        raise
    return replace(result, seconds=time.perf_counter() - start)


def _meta(cfg: SynthConfig, seed: int, model_seed: int, model: _Model, result: SynthResult) -> dict[str, Any]:
    """The JSON record: config, counts, loss floors and the planted structure of the click model."""
    return {
        "format_version": FORMAT_VERSION,
        "format": "criteo-kaggle-tsv",
        "seed": seed,
        "model_seed": model_seed,
        "rows": result.rows,
        "positives": result.positives,
        "ctr": result.ctr,
        "bayes_logloss": result.bayes_logloss,
        "expected_logloss": result.expected_logloss,
        "block_rows": BLOCK_ROWS,
        "config": asdict(cfg),
        "columns": ["label"]
        + [f"I{k + 1}" for k in range(cfg.num_dense)]
        + [f"C{f + 1}" for f in range(cfg.num_sparse)],
        "planted": {
            "intercept": model.intercept,
            "dense_linear": [
                {"dense": int(k), "weight": float(a), "missing_weight": float(am)}
                for k, a, am in zip(model.linear_fields, model.linear_weight, model.linear_missing_weight, strict=True)
            ],
            "pairs": [[i, j] for i, j in model.pairs],
            "gates": [[k, m] for k, m in model.gates],
            "dense_mu": model.dense_mu.tolist(),
            "dense_sigma": model.dense_sigma.tolist(),
        },
        "files": {"truth": truth_path(result.path).name, "data": result.path.name},
    }


def click_model_of(path: str | Path) -> tuple[SynthConfig, int, int]:
    """The configuration, click-model seed and row seed of a synthetic file (read from its sidecar).

    `path` is the data file (or its ``.synth.json``). ``generate_synthetic(out, rows, seed=s,
    config=config, model_seed=model_seed)`` with another ``s`` then draws new rows from the same click
    model: same fields, same category codes, same weights.
    """
    path = Path(path)
    meta = path if path.name.endswith(META_SUFFIX) else meta_path(path)
    try:
        record = json.loads(meta.read_text())
    except FileNotFoundError:
        raise NasrecError(f"{path}: no {meta.name} beside it (not a file written by nasrec synth)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise NasrecError(f"{meta}: unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise NasrecError(f"{meta}: not a synthetic data description of format version {FORMAT_VERSION}")
    known = {f.name for f in fields(SynthConfig)}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items() if k in known}
    seed = int(record["seed"])
    return SynthConfig(**options), int(record.get("model_seed", seed)), seed


__all__ = [
    "BLOCK_ROWS",
    "MAX_CARDINALITY",
    "META_SUFFIX",
    "TRUTH_SUFFIX",
    "SynthConfig",
    "SynthResult",
    "bayes_logloss",
    "click_model_of",
    "generate_synthetic",
    "meta_path",
    "truth_path",
]


# Named configurations. "criteo-like" is the default: Criteo's shape and skew, a weak signal per row
# and up to 50,000 categories per field, so that hundreds of thousands of rows are needed to approach
# the Bayes floor. "interactions" plants strong pairwise interactions and gates over few categories
# per field (3 to 12, skewed), so that tens of thousands of rows pin them down: interaction models
# clearly beat LR there, and the demo and the quality benchmarks finish in minutes.
SYNTH_PRESETS: dict[str, SynthConfig] = {
    "criteo-like": SynthConfig(),
    "interactions": SynthConfig(
        cardinalities=tuple([3, 6, 12] * 8 + [4, 8]),
        zipf_exponent=2.0,
        sparse_missing_rate=0.0,
        first_order_scale=0.1,
        num_dense_linear=2,
        num_interactions=4,
        interaction_strength=1.5,
        num_gated=4,
        gate_strength=1.0,
    ),
}
