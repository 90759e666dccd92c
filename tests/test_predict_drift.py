"""`nasrec predict`'s drift check: the share of categorical values unseen in training, per field."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_SYNTH, small_synth_cache

from nasrec.cli import main
from nasrec.data.cache import open_cache
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.data.synthetic import generate_synthetic, synth_schema
from nasrec.predict import DRIFT_POINTS, DRIFT_RATIO, UnseenCounter, drifted, predict, seen_rows
from nasrec.train.api import evaluate_run, train

ROWS_SEED = 4  # the training file's seed (its click model's too)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("drift")
    raw, cache = small_synth_cache(root, rows=5_000, seed=ROWS_SEED, min_count=2, split="random")
    train(cache, root / "run", model="lr", progress=False, overrides=dict(batch_size=256, max_steps=40, threads=1))
    return raw, cache, root / "run"


def _rows(path: Path, seed: int, model_seed: int) -> Path:
    generate_synthetic(path, rows=3_000, seed=seed, config=SMALL_SYNTH, model_seed=model_seed)
    return path


def test_rule_is_twice_the_validation_share_and_five_points_above_it() -> None:
    assert (DRIFT_RATIO, DRIFT_POINTS) == (2.0, 0.05)
    assert drifted(0.06, 0.0) and drifted(0.06, None) and not drifted(0.04, 0.0)
    assert drifted(0.45, 0.20) and not drifted(0.30, 0.20)  # 1.5x is not far, however many points
    assert not drifted(0.07, 0.03)  # more than twice, but only 4 points above


def test_rows_of_the_same_click_model_raise_no_warning(trained, tmp_path: Path, caplog) -> None:
    _, cache, run = trained
    new = _rows(tmp_path / "new.tsv", seed=ROWS_SEED + 1, model_seed=ROWS_SEED)
    with caplog.at_level(logging.WARNING, logger="nasrec.predict"):
        res = predict(run, [new], tmp_path / "p.csv")
    assert res["drift"] == [] and res["warning"] is None and not caplog.records
    fields = res["unseen"]["fields"]
    assert res["unseen"]["reference_split"] == "val" and list(fields) == [f"C{i}" for i in range(1, 7)]
    assert all(0 <= f["share"] < 0.05 and 0 <= f["reference"] < 0.05 for f in fields.values())
    assert res["auc"] == pytest.approx(evaluate_run(run, cache, "test")["auc"], abs=0.05)  # as good as on test


def test_rows_of_another_vocabulary_warn_naming_the_fields(trained, tmp_path: Path, caplog) -> None:
    _, _, run = trained
    other = _rows(tmp_path / "other.tsv", seed=7, model_seed=7)  # `nasrec synth --seed 7`: another click model
    with caplog.at_level(logging.WARNING, logger="nasrec.predict"):
        res = predict(run, [other], tmp_path / "p.csv")
    assert res["drift"] == [f"C{i}" for i in range(1, 7)]
    assert all(f["share"] > 0.9 for f in res["unseen"]["fields"].values())  # all but the missing values
    assert len(caplog.records) == 1 and "in 6 of 6 categorical fields" in caplog.records[0].getMessage()


def test_one_drifting_field_is_named_alone(trained, tmp_path: Path, caplog) -> None:
    _, _, run = trained
    new = _rows(tmp_path / "new.tsv", seed=ROWS_SEED + 2, model_seed=ROWS_SEED)
    lines = [line.split("\t") for line in new.read_text().splitlines()]
    column = 1 + SMALL_SYNTH.num_dense + 2  # C3
    rng = np.random.default_rng(0)
    for i, fields in enumerate(lines):
        if i % 5 == 0:  # a fifth of the rows get a C3 value never seen before
            fields[column] = f"{int(rng.integers(2**32)):08x}"
    new.write_text("\n".join("\t".join(f) for f in lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="nasrec.predict"):
        res = predict(run, [new], tmp_path / "p.csv")
    assert res["drift"] == ["C3"]
    assert res["unseen"]["fields"]["C3"]["share"] == pytest.approx(0.2, abs=0.03)
    message = caplog.records[0].getMessage()
    assert "in 1 of 6 categorical fields" in message and re.search(r": C3 \d+\.\d% \(val \d\.\d%\)\.", message)


def test_predict_cli_summary_names_the_drift(trained, tmp_path: Path, capsys) -> None:
    _, _, run = trained
    other = _rows(tmp_path / "other.tsv", seed=8, model_seed=8)
    assert main(["predict", "--model", str(run), "--input", str(other), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"values unseen in training: at most 9\d\.\d% per field \(C\d; val split 0\.0%\)", out)
    assert "warning: values unseen in training in 6 of 6 categorical fields" in out
    assert (
        main(["predict", "--model", str(run), "--input", str(other), "--out", str(tmp_path / "p.csv"), "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["drift"] == [f"C{i}" for i in range(1, 7)] and summary["unseen"]["fields"]["C1"]["share"] > 0.9
    assert (
        main(
            [
                "predict",
                "--model",
                str(run),
                "--input",
                str(other),
                "--out",
                str(tmp_path / "p.csv"),
                "--json",
                "--no-drift-check",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert "unseen" not in summary and "drift" not in summary and summary["rows"] == 3000


def test_seen_rows_mark_the_train_ids_of_a_hashed_cache(tmp_path: Path) -> None:
    raw = tmp_path / "synth.tsv"
    generate_synthetic(raw, rows=4_000, seed=3, config=SMALL_SYNTH)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(synth_schema(SMALL_SYNTH).to_dict()))
    prepare(
        PrepareConfig(
            inputs=(str(raw),),
            out=str(tmp_path / "cache"),
            format="schema",
            schema=str(schema),
            encoding="hash",
            split="random",
        )
    )
    cache = open_cache(tmp_path / "cache")
    seen = seen_rows(cache)
    train_ids = np.asarray(cache.sparse)[np.asarray(cache.split_index("train"))]
    for j, mask in enumerate(seen):
        assert mask.shape == (cache.table_sizes[j],)
        np.testing.assert_array_equal(np.flatnonzero(mask), np.unique(train_ids[:, j]))
    counter = UnseenCounter(seen)
    block = np.array([[0] * 6, [t - 1 for t in cache.table_sizes]], dtype=np.int32)
    block[0] = train_ids[0]  # a train row: every value seen
    counter.update(block)
    expected = [0.0 if seen[j][t - 1] else 0.5 for j, t in enumerate(cache.table_sizes)]
    assert counter.shares() == expected


def test_vocabulary_oov_row_counts_as_unseen(tmp_path: Path) -> None:
    _, cache_dir = small_synth_cache(tmp_path, rows=3_000, seed=2, min_count=50, split="random")
    cache = open_cache(cache_dir)
    train_ids = np.asarray(cache.sparse)[np.asarray(cache.split_index("train"))]
    rare = [j for j in range(6) if np.any(train_ids[:, j] == 1)]
    assert rare  # train rows with ids below min_count read the out-of-vocabulary row...
    seen = seen_rows(cache)
    assert not any(mask[1] for mask in seen)  # ...which counts as unseen all the same
    for j, mask in enumerate(seen):
        expected = np.unique(train_ids[:, j])
        np.testing.assert_array_equal(np.flatnonzero(mask), expected[expected != 1])
