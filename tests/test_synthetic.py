"""Tests of the synthetic Criteo-format generator and its ground-truth sidecars."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from nasrec.data.synthetic import (
    BLOCK_ROWS,
    SynthConfig,
    SynthResult,
    bayes_logloss,
    click_model_of,
    generate_synthetic,
    meta_path,
    truth_path,
)
from nasrec.errors import NasrecError

HEX = re.compile(r"[0-9a-f]{8}")
INT = re.compile(r"-?[0-9]+")


def _read(path: Path, cfg: SynthConfig) -> pl.DataFrame:
    """Parse a generated file with every column typed explicitly (hex strings must stay strings)."""
    schema = {"label": pl.Int8}
    schema |= {f"I{k + 1}": pl.Int64 for k in range(cfg.num_dense)}
    schema |= {f"C{f + 1}": pl.String for f in range(cfg.num_sparse)}
    return pl.read_csv(path, separator="\t", has_header=False, schema=schema, quote_char=None)


def _files(path: Path) -> list[bytes]:
    return [path.read_bytes(), truth_path(path).read_bytes(), meta_path(path).read_bytes()]


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a.tsv", 3000, seed=7)
    b = generate_synthetic(tmp_path / "b.tsv", 3000, seed=7)
    c = generate_synthetic(tmp_path / "c.tsv", 3000, seed=8)
    assert _files(a.path)[:2] == _files(b.path)[:2]
    meta_a, meta_b = json.loads(_files(a.path)[2]), json.loads(_files(b.path)[2])
    assert meta_a.pop("files") != meta_b.pop("files")  # only the file names differ
    assert meta_a == meta_b
    assert a.path.read_bytes() != c.path.read_bytes()
    assert not np.array_equal(np.load(a.truth_path), np.load(c.truth_path))


def test_raw_criteo_format(tmp_path: Path) -> None:
    rows = 4000
    res = generate_synthetic(tmp_path / "d.tsv", rows, seed=1)
    assert isinstance(res, SynthResult)
    lines = res.path.read_text().split("\n")
    assert lines[-1] == ""  # newline-terminated, no trailing partial line
    lines = lines[:-1]
    assert len(lines) == rows == res.rows
    missing_dense = missing_sparse = negatives = 0
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 40
        assert fields[0] in ("0", "1")
        for i, v in enumerate(fields[1:14]):
            if v == "":
                missing_dense += 1
            else:
                assert INT.fullmatch(v), v
                if v.startswith("-"):
                    negatives += 1
                    assert v == "-1" and i == 1  # only I2 carries Criteo's -1 marker
        for v in fields[14:]:
            if v == "":
                missing_sparse += 1
            else:
                assert HEX.fullmatch(v), v
    assert missing_dense / (13 * rows) == pytest.approx(0.1, abs=0.01)
    assert missing_sparse / (26 * rows) == pytest.approx(0.05, abs=0.01)
    assert 0 < negatives < 0.1 * rows
    assert res.positives == sum(line[0] == "1" for line in lines)
    assert res.ctr == res.positives / rows


def test_per_field_missing_rates_and_distinct_codes(tmp_path: Path) -> None:
    dense_rates = (0.0, 0.3, 0.6)
    sparse_rates = (0.0, 0.2, 0.5, 0.05)
    cfg = SynthConfig(
        num_dense=3,
        num_sparse=4,
        cardinalities=(3, 50, 400, 2),
        dense_missing_rate=dense_rates,
        sparse_missing_rate=sparse_rates,
        negative_dense_field=None,
        num_dense_linear=2,
        num_interactions=2,
        num_gated=1,
    )
    rows = 6000
    res = generate_synthetic(tmp_path / "m.tsv", rows, seed=3, config=cfg)
    df = _read(res.path, cfg)
    assert df.shape == (rows, 8)
    for k, rate in enumerate(dense_rates):
        col = df[f"I{k + 1}"]
        assert col.null_count() / rows == pytest.approx(rate, abs=0.03)
        assert col.min() >= 0
    for f, rate in enumerate(sparse_rates):
        col = df[f"C{f + 1}"]
        assert col.null_count() / rows == pytest.approx(rate, abs=0.03)
        assert col.drop_nulls().n_unique() <= cfg.cardinalities[f]
    # The smallest fields are common enough to show every category.
    assert df["C1"].drop_nulls().n_unique() == 3
    assert df["C4"].drop_nulls().n_unique() == 2


def test_truth_file_matches_rows(tmp_path: Path) -> None:
    rows = 20_000
    res = generate_synthetic(tmp_path / "t.tsv", rows, seed=2)
    truth = np.load(res.truth_path)
    assert truth.dtype == np.float64 and truth.shape == (rows,)
    assert np.all((truth > 0) & (truth < 1))
    tolerance = 4 * math.sqrt(0.25 * 0.75 / rows)
    assert truth.mean() == pytest.approx(res.ctr, abs=tolerance)
    assert truth.mean() == pytest.approx(SynthConfig().base_ctr, abs=0.02)
    # Clicks follow the truth: the rows it ranks highest click far more often.
    labels = _read(res.path, SynthConfig())["label"].to_numpy()
    order = np.argsort(truth)
    assert labels[order[-rows // 10 :]].mean() > 3 * labels[order[: rows // 10]].mean()


@pytest.mark.slow
def test_meta_json_and_bayes_logloss_agree_with_files(tmp_path: Path) -> None:
    res = generate_synthetic(tmp_path / "j.tsv", 5000, seed=4)
    meta = json.loads(res.meta_path.read_text())
    truth = np.load(res.truth_path)
    labels = _read(res.path, SynthConfig())["label"].to_numpy()
    assert meta["rows"] == 5000 and meta["seed"] == 4
    assert meta["positives"] == int(labels.sum()) == res.positives
    assert meta["ctr"] == pytest.approx(labels.mean(), rel=1e-12)
    assert meta["bayes_logloss"] == pytest.approx(bayes_logloss(truth, labels), rel=1e-12)
    assert res.bayes_logloss == meta["bayes_logloss"]
    entropy = -(truth * np.log(truth) + (1 - truth) * np.log1p(-truth))
    assert meta["expected_logloss"] == pytest.approx(entropy.mean(), rel=1e-12)
    # Realised and expected loss agree to within sampling noise, and sit well below the constant-CTR loss.
    assert meta["bayes_logloss"] == pytest.approx(meta["expected_logloss"], abs=0.03)
    ctr = labels.mean()
    assert meta["bayes_logloss"] < -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr)) - 0.05
    # The recorded config rebuilds the same dataset.
    cfg = SynthConfig(**meta["config"])
    assert cfg == SynthConfig()
    again = generate_synthetic(tmp_path / "j2.tsv", 5000, seed=4, config=cfg)
    assert again.path.read_bytes() == res.path.read_bytes()


def test_output_independent_of_chunk_rows_and_prefix_stable(tmp_path: Path) -> None:
    cfg = SynthConfig(num_dense=2, num_sparse=3, cardinalities=(5, 60, 900), num_dense_linear=1, num_interactions=2)
    rows = BLOCK_ROWS + 1500  # spans a block boundary
    big = generate_synthetic(tmp_path / "big.tsv", rows, seed=5, config=cfg)
    small_chunks = generate_synthetic(tmp_path / "chunks.tsv", rows, seed=5, config=cfg, chunk_rows=777)
    assert big.path.read_bytes() == small_chunks.path.read_bytes()
    assert big.truth_path.read_bytes() == small_chunks.truth_path.read_bytes()
    # A shorter file is exactly the head of a longer one.
    head = generate_synthetic(tmp_path / "head.tsv", 1000, seed=5, config=cfg)
    big_lines = big.path.read_text().splitlines()
    assert head.path.read_text().splitlines() == big_lines[:1000]
    np.testing.assert_array_equal(np.load(head.truth_path), np.load(big.truth_path)[:1000])


def test_bayes_logloss_values() -> None:
    truth = np.array([0.5, 0.9, 0.2, 0.0, 1.0])
    labels = np.array([1, 0, 0, 1, 1])
    eps = 1e-15
    expected = -np.mean([math.log(0.5), math.log(0.1), math.log(0.8), math.log(eps), math.log(1 - eps)])
    assert bayes_logloss(truth, labels) == pytest.approx(expected, rel=1e-12)
    assert bayes_logloss(truth.astype(np.float32), labels.astype(np.float32)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(NasrecError):
        bayes_logloss(truth, labels[:3])
    with pytest.raises(NasrecError):
        bayes_logloss(np.array([]), np.array([]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows"),
        ({"rows": 10, "seed": -1}, "seed"),
        ({"rows": 10, "chunk_rows": 0}, "chunk_rows"),
        ({"rows": 10, "config": {"num_sparse": 2}}, "config"),
    ],
)
def test_invalid_generate_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(NasrecError, match=message):
        generate_synthetic(tmp_path / "x.tsv", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sparse": 2, "cardinalities": (10, 1)}, "cardinality"),
        ({"num_sparse": 3, "cardinalities": (10, 20)}, "cardinalities"),
        ({"dense_missing_rate": 1.0}, "dense_missing_rate"),
        ({"sparse_missing_rate": (0.1,) * 5}, "sparse_missing_rate"),
        ({"base_ctr": 0.0}, "base_ctr"),
        ({"num_sparse": 3, "num_interactions": 4}, "num_interactions"),
        ({"num_dense": 0}, "num_dense"),
        ({"interaction_rank": 0}, "interaction_rank"),
        ({"negative_dense_field": 13}, "negative_dense_field"),
    ],
)
def test_invalid_config(kwargs: dict, message: str) -> None:
    with pytest.raises(NasrecError, match=message):
        SynthConfig(**kwargs)


@pytest.mark.slow
def test_interaction_model_beats_linear_model(tmp_path: Path) -> None:
    cfg = SynthConfig(
        num_dense=2,
        num_sparse=6,
        cardinalities=(8, 12, 20, 10, 15, 6),
        num_dense_linear=2,
        num_interactions=3,
        num_gated=0,
    )
    res = generate_synthetic(tmp_path / "x.tsv", 40_000, seed=11, config=cfg)
    meta = json.loads(res.meta_path.read_text())
    df = _read(res.path, cfg).with_columns(pl.col(pl.String).fill_null("<missing>"))
    truth = np.load(res.truth_path)
    y = df["label"].to_numpy()

    dense = [
        (pl.col(c).clip(lower_bound=0) + 1).log().round(0).cast(pl.String).fill_null("<missing>") for c in ("I1", "I2")
    ]
    sparse = [f"C{f + 1}" for f in range(cfg.num_sparse)]
    first_order = df.select(*dense, *sparse).to_numpy()
    crosses = df.select(
        [
            pl.concat_str(f"C{i + 1}", f"C{j + 1}", separator="|").alias(f"C{i + 1}xC{j + 1}")
            for i, j in meta["planted"]["pairs"]
        ]
    ).to_numpy()

    train, test = slice(0, 30_000), slice(30_000, None)

    def heldout_logloss(x: np.ndarray) -> float:
        enc = OneHotEncoder(handle_unknown="ignore").fit(x[train])
        model = LogisticRegression(C=1.0, max_iter=2000).fit(enc.transform(x[train]), y[train])
        return bayes_logloss(model.predict_proba(enc.transform(x[test]))[:, 1], y[test])

    linear = heldout_logloss(first_order)
    crossed = heldout_logloss(np.hstack([first_order, crosses]))
    floor = bayes_logloss(truth[test], y[test])
    print(f"held-out log loss: linear {linear:.4f}, crossed {crossed:.4f}, Bayes {floor:.4f}")
    # Seen at seed 11: linear 0.507, crossed 0.473, Bayes 0.463 (default interaction strength).
    assert crossed < linear - 0.02, (linear, crossed, floor)
    assert floor < crossed
    # Crossing the planted pairs closes most of the linear model's gap to the floor.
    assert linear - crossed > 2 * (crossed - floor), (linear, crossed, floor)


def test_model_seed_shares_the_click_model_across_row_seeds(tmp_path: Path) -> None:
    # no dense terms, so that the click probability is a function of the categorical values alone
    cfg = SynthConfig(
        num_dense=3, num_sparse=4, cardinalities=(5, 9, 20, 7), num_dense_linear=0, num_interactions=2, num_gated=0
    )
    a = generate_synthetic(tmp_path / "a.tsv", 3000, seed=5, config=cfg)
    same = generate_synthetic(tmp_path / "same.tsv", 3000, seed=5, config=cfg, model_seed=5)
    assert _files(a.path)[:2] == _files(same.path)[:2]  # the default model seed is the row seed
    b = generate_synthetic(tmp_path / "b.tsv", 3000, seed=6, config=cfg, model_seed=5)
    other = generate_synthetic(tmp_path / "other.tsv", 3000, seed=6, config=cfg)
    ma, mb, mo = (json.loads(meta_path(r.path).read_text()) for r in (a, b, other))
    assert (ma["seed"], ma["model_seed"], mb["seed"], mb["model_seed"]) == (5, 5, 6, 5)
    assert ma["planted"] == mb["planted"] and ma["planted"] != mo["planted"]  # one click model, another one
    da, db, do = (_read(r.path, cfg) for r in (a, b, other))
    assert not da.equals(db)  # new rows
    for f in range(1, 5):
        codes = set(da[f"C{f}"].drop_nulls())
        assert set(db[f"C{f}"].drop_nulls()) == codes  # the same category codes (small vocabularies: all drawn)
        assert not set(do[f"C{f}"].drop_nulls()) & codes  # another click model shares none
    # the same click probability wherever the two files hold the same features
    feats = [f"C{f}" for f in range(1, 5)]
    ta = da.select(feats).with_columns(p=pl.Series(np.load(a.truth_path))).unique(subset=feats)
    tb = db.select(feats).with_columns(p=pl.Series(np.load(b.truth_path))).unique(subset=feats)
    joined = ta.join(tb, on=feats, nulls_equal=True)
    assert joined.height > 100
    np.testing.assert_allclose(joined["p"], joined["p_right"], rtol=1e-12)


def test_click_model_of_reads_the_sidecar(tmp_path: Path) -> None:
    cfg = SynthConfig(
        num_dense=2,
        num_sparse=3,
        cardinalities=(4, 6, 8),
        num_dense_linear=1,
        num_interactions=1,
        num_gated=1,
        sparse_missing_rate=(0.0, 0.1, 0.2),
    )
    res = generate_synthetic(tmp_path / "a.tsv", 100, seed=3, config=cfg, model_seed=11)
    assert click_model_of(res.path) == (cfg, 11, 3)
    assert click_model_of(meta_path(res.path)) == (cfg, 11, 3)
    meta = json.loads(meta_path(res.path).read_text())
    del meta["model_seed"]  # a file written before model seeds existed: its click model came from its seed
    meta_path(res.path).write_text(json.dumps(meta))
    assert click_model_of(res.path) == (cfg, 3, 3)
    with pytest.raises(NasrecError, match=r"nope\.tsv: no nope\.tsv\.synth\.json beside it"):
        click_model_of(tmp_path / "nope.tsv")


def test_synth_cli_like_draws_new_rows_from_the_files_click_model(tmp_path: Path, capsys) -> None:
    from nasrec.cli import main

    first = tmp_path / "a.tsv"
    assert main(["synth", "--rows", "500", "--out", str(first), "--preset", "interactions", "--seed", "2"]) == 0
    assert main(["synth", "--rows", "300", "--out", str(tmp_path / "b.tsv"), "--like", str(first)]) == 0
    out = capsys.readouterr().out
    assert f"click model of {first} (model seed 2), rows drawn with seed 3" in out and "nasrec predict" in out
    cfg, model_seed, seed = click_model_of(tmp_path / "b.tsv")
    assert (model_seed, seed) == (2, 3) and cfg == click_model_of(first)[0]
    assert main(["synth", "--rows", "300", "--out", str(tmp_path / "c.tsv"), "--like", str(first), "--seed", "2"]) == 0
    assert "these rows repeat its first rows" in capsys.readouterr().out
    assert (tmp_path / "c.tsv").read_text().splitlines() == first.read_text().splitlines()[:300]
    assert (
        main(["synth", "--rows", "10", "--out", str(tmp_path / "d.tsv"), "--like", str(first), "--num-sparse", "3"])
        == 2
    )
    assert "--like takes the click model from" in capsys.readouterr().err
