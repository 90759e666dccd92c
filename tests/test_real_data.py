"""Prepare the real samples in ../shared/data and check every decoded value against a plain-Python
reading of the raw files (the formulas of the NASRec reference, applied row by row)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from nasrec.data.cache import open_cache
from nasrec.data.formats import AVAZU_TABLE_SIZES, CRITEO_TABLE_SIZES
from nasrec.data.prepare import PrepareConfig, prepare


def _rows(path: Path, delimiter: str, skip_header: bool = False) -> list[list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    return rows[1:] if skip_header else rows


def _nasrec_hash(value: int, table_size: int) -> int:
    return math.fmod(value, table_size - 1) + 1


def _expected_criteo(rows: list[list[str]], cap: int | None = None):
    sizes = [min(n, cap) if cap else n for n in CRITEO_TABLE_SIZES]
    label = np.array([float(r[0]) for r in rows], np.float32)
    dense = np.array([[math.log(max(float(x or 0), 0) + 1) for x in r[1:14]] for r in rows], np.float32)
    sparse = np.array(
        [[int(_nasrec_hash(int(x, 16) if x else -1, n)) for x, n in zip(r[14:40], sizes, strict=True)] for r in rows]
    )
    return label, dense, sparse


def _check_all_rows(cache_dir: Path, label, dense, sparse) -> None:
    c = open_cache(cache_dir)
    assert c.rows == len(label)
    np.testing.assert_array_equal(c.label, label)
    np.testing.assert_allclose(c.dense, dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(c.sparse, sparse)


@pytest.mark.shared
def test_criteo_kaggle_8k(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "criteo_kaggle_8k"
    files = [d / "train.csv", d / "dev.csv", d / "test.csv"]
    res = prepare(PrepareConfig(inputs=tuple(map(str, files)), out=str(tmp_path / "c"), format="criteo"))
    rows = [r for f in files for r in _rows(f, "\t")]
    assert len(rows) == 8000 and sum(res.rows.values()) == 8000
    label, dense, sparse = _expected_criteo(rows)
    assert int(label.sum()) == 1728  # SOURCE.md: 1,549 + 93 + 86 positives
    _check_all_rows(tmp_path / "c", label, dense, sparse)
    meta = open_cache(tmp_path / "c").meta
    assert [s["rows"] for s in meta["sources"]] == [7200, 409, 391]
    assert meta["sources"][0]["sha256"] == "2b0614035f6c931dc4ac2c1a1a26fa954f2b9231703f3a77bcdd53d9d9f29872"
    # The first row by hand: label 0, I1 = 1 -> log(2); C1 = 68fd1e64 -> fmod(0x68fd1e64, 1460) + 1
    assert rows[0][0] == "0" and rows[0][1] == "1" and rows[0][14] == "68fd1e64"
    c = open_cache(tmp_path / "c")
    assert c.dense[0, 0] == pytest.approx(math.log(2))
    assert c.sparse[0, 0] == 0x68FD1E64 % 1460 + 1 == 393
    # autoctr split: 8/1/1 stratified
    assert res.rows == {"train": 6400, "val": 800, "test": 800}
    for name in ("train", "val", "test"):
        assert abs(res.ctr[name] - 0.216) < 0.002


@pytest.mark.shared
def test_criteo_1tb_capped_tables(shared_data: Path, tmp_path: Path) -> None:
    f = shared_data / "criteo_1tb_day0_1k" / "criteoTab.csv"
    cfg = PrepareConfig(inputs=(str(f),), out=str(tmp_path / "c"), format="criteo", max_table_size=500_000)
    res = prepare(cfg)
    rows = _rows(f, "\t")
    label, dense, sparse = _expected_criteo(rows, cap=500_000)
    assert len(rows) == 1000 and int(label.sum()) == 21
    _check_all_rows(tmp_path / "c", label, dense, sparse)
    assert max(res.table_sizes.values()) == 500_000
    assert open_cache(tmp_path / "c").table_sizes == [min(n, 500_000) for n in CRITEO_TABLE_SIZES]


def _avazu_id(x: str) -> int:
    return (int(x) if x.isdigit() else int(x, 16)) % 2147483647


@pytest.mark.shared
def test_avazu_9k(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "avazu_9k"
    files = [d / "train.csv", d / "dev.csv", d / "test.csv"]  # only train.csv has a header
    res = prepare(PrepareConfig(inputs=tuple(map(str, files)), out=str(tmp_path / "a"), format="avazu"))
    rows = _rows(files[0], ",", skip_header=True) + _rows(files[1], ",") + _rows(files[2], ",")
    assert len(rows) == 8999 and sum(res.rows.values()) == 8999
    label = np.array([float(r[1]) for r in rows], np.float32)
    assert int(label.sum()) == 1563
    cats = [r[:1] + r[2:] for r in rows]
    sparse = np.array(
        [[int(_nasrec_hash(_avazu_id(x), n)) for x, n in zip(r, AVAZU_TABLE_SIZES, strict=True)] for r in cats]
    )
    _check_all_rows(tmp_path / "a", label, np.zeros((len(rows), 1), np.float32), sparse)


@pytest.mark.shared
def test_deepctr_samples_with_schema(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "deepctr_examples"
    schema = tmp_path / "criteo_sample.yaml"
    schema.write_text(
        "name: deepctr-criteo\nlabel: label\nseparator: ','\nheader: true\nsparse_kind: hex\n"
        f"dense: [{', '.join(f'I{i}' for i in range(1, 14))}]\n"
        "sparse:\n" + "".join(f"  - {{column: C{i}, table_size: {n}}}\n" for i, n in enumerate(CRITEO_TABLE_SIZES, 1))
    )
    cfg = PrepareConfig(
        inputs=(str(d / "criteo_sample.txt"),),
        out=str(tmp_path / "c"),
        format="schema",
        schema=str(schema),
        split="random",
        seed=7,
    )
    prepare(cfg)
    rows = _rows(d / "criteo_sample.txt", ",", skip_header=True)
    label, dense, sparse = _expected_criteo(rows)  # dense written as floats ("260.0") parse the same
    assert len(rows) == 200 and int(label.sum()) == 49
    _check_all_rows(tmp_path / "c", label, dense, sparse)

    res = prepare(
        PrepareConfig(
            inputs=(str(d / "avazu_sample.txt"),), out=str(tmp_path / "a"), format="avazu", split="sequential"
        )
    )
    assert sum(res.rows.values()) == 100
    assert res.rows == {"train": 80, "val": 10, "test": 10}
    c = open_cache(tmp_path / "a")
    assert float(c.label.sum()) == 20
    # these 100 rows are all in avazu_9k (in another order): look each up by its id
    a9k = shared_data / "avazu_9k"
    all9k = _rows(a9k / "train.csv", ",", skip_header=True) + _rows(a9k / "dev.csv", ",") + _rows(a9k / "test.csv", ",")
    rows9k = {r[0]: r for r in all9k}
    sample = _rows(d / "avazu_sample.txt", ",", skip_header=True)
    expected = np.array(
        [
            [
                int(_nasrec_hash(_avazu_id(x), n))
                for x, n in zip(rows9k[r[0]][:1] + rows9k[r[0]][2:], AVAZU_TABLE_SIZES, strict=True)
            ]
            for r in sample
        ]
    )
    np.testing.assert_array_equal(c.sparse, expected)


@pytest.mark.shared
def test_vocab_on_real_data_fits_train_only(shared_data: Path, tmp_path: Path) -> None:
    f = shared_data / "criteo_kaggle_8k" / "train.csv"
    prepare(PrepareConfig(inputs=(str(f),), out=str(tmp_path / "v"), format="criteo", encoding="vocab", min_count=2))
    c = open_cache(tmp_path / "v")
    rows = _rows(f, "\t")
    train = c.split_index("train")
    for j in (2, 8, 20):  # a large, a tiny and a medium field
        raw = [r[14 + j] for r in rows]
        counts: dict[str, int] = {}
        for i in train:
            if raw[i]:
                counts[raw[i]] = counts.get(raw[i], 0) + 1
        kept = {v for v, k in counts.items() if k >= 2}
        assert c.table_sizes[j] == 2 + len(kept)
        col = c.sparse[:, j]
        for i in range(len(rows)):
            if not raw[i]:
                assert col[i] == 0
            elif raw[i] in kept:
                assert col[i] >= 2
            else:
                assert col[i] == 1
