"""Train / validation / test splits of a prepared dataset, as ascending row-id arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nasrec.errors import NasrecError

SPLIT_METHODS = ("autoctr", "autoctr-reference", "random", "sequential")
AUTOCTR_SEED = 2018
AUTOCTR_FOLDS = 10


@dataclass(frozen=True)
class SplitSpec:
    """How rows are divided into train, val and test.

    ``autoctr``: stratified 10-fold (shuffled, seed 2018), folds 0-7 train, 8 val, 9 test, as the
    AutoCTR / BARS-x4 protocol. ``autoctr-reference`` additionally reproduces the NASRec reference
    tools' off-by-one (fold of label i given to row i+1, the first row dropped) for byte-identical
    splits of Criteo and KDD. ``random``: a seeded permutation cut by ``ratios``. ``sequential``: file
    order cut by ``ratios``.
    """

    method: str = "autoctr"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = AUTOCTR_SEED

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise NasrecError(f"unknown split {self.method!r} (expected one of: {', '.join(SPLIT_METHODS)})")
        r = self.ratios
        if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
            raise NasrecError(f"split ratios must be three non-negative numbers summing to 1, not {r}")

    def to_dict(self) -> dict:
        """JSON-serialisable description (what the cache records)."""
        d: dict = {"method": self.method}
        if self.method.startswith("autoctr"):
            d.update(folds=AUTOCTR_FOLDS, seed=self.seed, train_folds=list(range(8)), val_fold=8, test_fold=9)
        else:
            d["ratios"] = list(self.ratios)
            if self.method == "random":
                d["seed"] = self.seed
        return d


def stratified_folds(labels: np.ndarray, seed: int = AUTOCTR_SEED, folds: int = AUTOCTR_FOLDS) -> np.ndarray:
    """Fold number of every row, identical to scikit-learn's StratifiedKFold(folds, shuffle=True, seed).

    The same allocation and the same RandomState draws as scikit-learn (tested against it), computed
    directly as one int8 array instead of materialising every fold's train and test index arrays.
    """
    y = np.asarray(labels)
    n = len(y)
    classes = np.unique(y)
    if len(classes) > 127:
        raise NasrecError(f"the autoctr split stratifies class labels, found {len(classes)} distinct values")
    # classes are numbered in order of first appearance, as scikit-learn does; int8 codes keep the
    # memory at a few bytes per row
    first = np.array([np.argmax(y == c) for c in classes])
    encoded = np.empty(n, dtype=np.int8)
    for k, c in enumerate(classes[np.argsort(first, kind="stable")]):
        encoded[y == c] = k
    counts = np.bincount(encoded, minlength=len(classes))
    if n == 0 or (counts < folds).all():
        raise NasrecError(f"the autoctr split needs at least {folds} rows of one class (have {counts.tolist()})")
    # Round-robin allocation over the rows sorted by class: fold i gets rows i, i+folds, ...
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    allocation = np.zeros((folds, len(classes)), dtype=np.int64)
    for i in range(folds):
        # how many of positions i, i+folds, ... fall inside each class's block [start, start+count)
        def upto(x: np.ndarray, i: int = i) -> np.ndarray:
            return np.maximum(0, (x - i + folds - 1) // folds)

        allocation[i] = upto(starts + counts) - upto(starts)
    rng = np.random.RandomState(seed)
    out = np.empty(n, dtype=np.int8)
    for k in range(len(classes)):
        # int8 folds: RandomState.shuffle draws depend on the length only, not on the dtype
        folds_for_class = np.arange(folds, dtype=np.int8).repeat(allocation[:, k])
        rng.shuffle(folds_for_class)
        out[encoded == k] = folds_for_class
    return out


def assign_splits(labels: np.ndarray, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Row ids (ascending int64) of train, val and test for the given labels."""
    n = len(labels)
    if spec.method in ("autoctr", "autoctr-reference"):
        folds = stratified_folds(labels, spec.seed)
        if spec.method == "autoctr-reference":
            # The reference writes physical line i+1 with the fold of label i and skips line 0.
            folds = np.concatenate(([-1], folds[:-1])).astype(np.int8)
        return {
            "train": np.flatnonzero((folds >= 0) & (folds < 8)).astype(np.int64),
            "val": np.flatnonzero(folds == 8).astype(np.int64),
            "test": np.flatnonzero(folds == 9).astype(np.int64),
        }
    cut1 = round(spec.ratios[0] * n)
    cut2 = min(n, cut1 + round(spec.ratios[1] * n))
    order = np.arange(n, dtype=np.int64)
    if spec.method == "random":
        order = np.random.default_rng(spec.seed).permutation(n).astype(np.int64)
    return {
        "train": np.sort(order[:cut1]),
        "val": np.sort(order[cut1:cut2]),
        "test": np.sort(order[cut2:]),
    }
