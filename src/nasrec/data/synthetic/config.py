"""The synthetic data's configuration (`SynthConfig`, the named presets), its result and file names."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasrec.errors import NasrecError

FORMAT_VERSION = 1
TRUTH_SUFFIX = ".truth.npy"
META_SUFFIX = ".synth.json"
# Fixed so that the per-row draws never depend on the caller's write batching.
BLOCK_ROWS = 32_768
# Every category's hex code is formatted up front, so vocabularies stay small enough to hold in memory.
MAX_CARDINALITY = 10_000_000


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
