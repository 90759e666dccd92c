"""`nasrec predict`: raw rows in, probabilities out, equal to the model on the prepared cache."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import small_synth_cache

from nasrec.data.cache import open_cache
from nasrec.data.loader import BatchLoader
from nasrec.errors import NasrecError
from nasrec.predict import predict
from nasrec.train.api import evaluate_run, train
from nasrec.train.loading import load_trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("predict")
    raw, _ = small_synth_cache(root, rows=5_000, seed=4, min_count=2, split="random")
    train(
        root / "cache",
        root / "run",
        model="deepfm",
        progress=False,
        overrides=dict(batch_size=256, max_steps=20, threads=1, lr=0.05),
    )
    return raw, root / "cache", root / "run"


def test_predictions_on_the_test_rows_equal_the_model_on_the_cache(trained, tmp_path: Path) -> None:
    raw, cache_dir, run = trained
    res = predict(run, [raw], tmp_path / "p.csv")
    df = pl.read_csv(tmp_path / "p.csv")
    assert df.columns == ["line", "label", "probability"] and res["rows"] == df.height == 5000
    cache = open_cache(cache_dir)
    test = np.asarray(cache.split_index("test"))
    lines = np.load(cache_dir / "source_line.npy")[test]
    by_line = dict(zip(df["line"].to_list(), df["probability"].to_list(), strict=True))
    predicted = np.array([by_line[int(x)] for x in lines])
    model, _ = load_trained(run)
    with torch.no_grad():
        logits = torch.cat([model(b.dense, b.sparse) for b in BatchLoader(cache, "test", batch_size=4096)])
    np.testing.assert_allclose(predicted, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-6)
    labels = np.array([dict(zip(df["line"], df["label"], strict=True))[int(x)] for x in lines])
    np.testing.assert_array_equal(labels, np.asarray(cache.label)[test])
    p = np.clip(predicted.astype(np.float64), 1e-12, 1 - 1e-12)
    ll = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    assert ll == pytest.approx(evaluate_run(run, cache_dir, "test")["logloss"], abs=1e-5)


@pytest.mark.slow
def test_unseen_categories_and_malformed_rows(trained, tmp_path: Path) -> None:
    raw, _, run = trained
    lines = raw.read_text().splitlines()[:5]
    fields = lines[0].split("\t")
    fields[-1] = "ffffffffffff"  # a category never seen in training: the out-of-vocabulary row
    bad = lines[1].split("\t")
    bad[0] = "7"  # not a 0/1 label
    f = tmp_path / "new.tsv"
    f.write_text("\n".join(["\t".join(fields), "\t".join(bad), *lines[2:]]) + "\n")
    with pytest.raises(NasrecError, match=r"new\.tsv.*line 2"):
        predict(run, [f], tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    res = predict(run, [f], tmp_path / "p.csv", on_error="skip", max_bad_fraction=0.2)
    assert res["rows"] == 4 and res["skipped"] == 1
    df = pl.read_csv(tmp_path / "p.csv")
    assert df["line"].to_list() == [1, 3, 4, 5] and all(0 < p < 1 for p in df["probability"])
    # 1 bad row of 5 is far over the default limit (0.01): an error naming the counts, and no output
    with pytest.raises(NasrecError, match=r"1 of 5 rows read \(20\.00%\) are malformed.*--max-bad-fraction"):
        predict(run, [f], tmp_path / "q.csv", on_error="skip")
    assert not (tmp_path / "q.csv").exists() and not list(tmp_path.glob(".q.csv*"))
    # nothing usable left: an error too, whatever the limit
    allbad = tmp_path / "allbad.tsv"
    allbad.write_text("\n".join(["\t".join(bad)] * 3) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "predict",
        "--model",
        str(run),
        "--input",
        str(allbad),
        "--out",
        str(tmp_path / "r.csv"),
        "--on-error",
        "skip",
        "--max-bad-fraction",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "all 3 rows read are malformed" in proc.stderr and f"{allbad}:1:label:" in proc.stderr
    assert not (tmp_path / "r.csv").exists()
    # the skipped rows on stderr as file:line:column: reason (no Python dicts)
    cmd[cmd.index(str(allbad))] = str(f)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {f}:2:label: label must be 0 or 1: '7'" in proc.stderr.splitlines()
    assert "{" not in proc.stderr


@pytest.mark.slow
def test_predict_cli(trained, tmp_path: Path) -> None:
    raw, _, run = trained
    out = tmp_path / "cli.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasrec.cli",
            "predict",
            "--model",
            str(run),
            "--input",
            str(raw),
            str(raw),
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rows"] == 10_000 and math.isfinite(summary["logloss"])
    df = pl.read_csv(out)
    assert df.columns == ["file", "line", "label", "probability"] and df.height == 10_000
