"""Splits: the AutoCTR stratified folds equal scikit-learn's, and every method is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from nasrec.data.split import SplitSpec, assign_splits, stratified_folds
from nasrec.errors import NasrecError


def _sklearn_folds(y: np.ndarray, seed: int) -> np.ndarray:
    sklearn = pytest.importorskip("sklearn.model_selection")
    out = np.empty(len(y), np.int8)
    kfold = sklearn.StratifiedKFold(n_splits=10, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(kfold.split(np.zeros(len(y)), y)):
        out[test] = k
    return out


@pytest.mark.parametrize(
    ("n", "rate", "seed"), [(1000, 0.3, 2018), (12345, 0.02, 1), (57, 0.5, 3), (20001, 0.25, 2018)]
)
def test_stratified_folds_equal_sklearn(n: int, rate: float, seed: int) -> None:
    y = (np.random.default_rng(seed).random(n) < rate).astype(np.int8)
    np.testing.assert_array_equal(stratified_folds(y, seed), _sklearn_folds(y, seed))


def test_stratified_folds_class_order_of_first_appearance() -> None:
    y = np.array([1, 0] * 50 + [1] * 30, np.int8)  # class 1 appears first
    np.testing.assert_array_equal(stratified_folds(y, 2018), _sklearn_folds(y, 2018))


def test_autoctr_split_is_stratified_and_deterministic() -> None:
    y = (np.random.default_rng(0).random(50_000) < 0.2).astype(np.int8)
    a = assign_splits(y, SplitSpec("autoctr"))
    b = assign_splits(y, SplitSpec("autoctr"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.all(np.diff(a[k]) > 0)  # ascending, no duplicates
    assert [len(a[k]) for k in ("train", "val", "test")] == [40_000, 5_000, 5_000]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(50_000))
    rates = [y[a[k]].mean() for k in a]
    assert max(rates) - min(rates) < 2e-4  # stratified: same positive rate to within one row per fold


def test_autoctr_reference_off_by_one() -> None:
    y = (np.random.default_rng(1).random(1_000) < 0.3).astype(np.int8)
    folds = stratified_folds(y)
    ref = assign_splits(y, SplitSpec("autoctr-reference"))
    assert 0 not in np.concatenate(list(ref.values()))  # the first row is dropped, as the reference does
    np.testing.assert_array_equal(ref["val"], np.flatnonzero(folds[:-1] == 8) + 1)
    np.testing.assert_array_equal(ref["test"], np.flatnonzero(folds[:-1] == 9) + 1)


def test_random_and_sequential_splits() -> None:
    y = np.zeros(1000, np.int8)
    seq = assign_splits(y, SplitSpec("sequential", (0.7, 0.2, 0.1)))
    np.testing.assert_array_equal(seq["train"], np.arange(700))
    np.testing.assert_array_equal(seq["val"], np.arange(700, 900))
    np.testing.assert_array_equal(seq["test"], np.arange(900, 1000))
    r1 = assign_splits(y, SplitSpec("random", (0.7, 0.2, 0.1), seed=5))
    r2 = assign_splits(y, SplitSpec("random", (0.7, 0.2, 0.1), seed=5))
    r3 = assign_splits(y, SplitSpec("random", (0.7, 0.2, 0.1), seed=6))
    assert [len(r1[k]) for k in r1] == [700, 200, 100]
    assert all(np.array_equal(r1[k], r2[k]) for k in r1)
    assert not np.array_equal(r1["val"], r3["val"])
    assert np.array_equal(np.sort(np.concatenate(list(r1.values()))), np.arange(1000))


def test_split_errors() -> None:
    with pytest.raises(NasrecError, match="unknown split"):
        SplitSpec("kfold")
    with pytest.raises(NasrecError, match="summing to 1"):
        SplitSpec("random", (0.5, 0.1, 0.1))
    with pytest.raises(NasrecError, match="at least 10 rows"):
        assign_splits(np.array([0, 1, 0, 1], np.int8), SplitSpec("autoctr"))
