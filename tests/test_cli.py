"""The `nasrec` command: synth then prepare end to end, summaries, and one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nasrec.cli import main
from nasrec.data.cache import open_cache
from nasrec.data.synthetic import bayes_logloss


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasrec.cli", *args], capture_output=True, text=True)


def test_synth_then_prepare_records_the_bayes_floor(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "synth.tsv"
    assert main(["synth", "--rows", "3000", "--out", str(raw), "--seed", "4"]) == 0
    assert "nasrec prepare --format criteo" in capsys.readouterr().out
    assert (
        main(["prepare", "--format", "criteo", "--input", str(raw), "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert "train" in out and "rows/s" in out and "Bayes-optimal log loss" in out
    cache = open_cache(tmp_path / "c")
    truth = np.load(f"{raw}.truth.npy")
    for name in ("train", "val", "test"):
        idx = cache.split_index(name)
        expected = bayes_logloss(truth[idx], cache.label[idx])  # no header: row i is line i+1
        assert cache.meta["bayes_logloss"][name] == pytest.approx(expected, rel=1e-12)
    assert sum(cache.meta["split"]["rows"].values()) == 3000


@pytest.mark.slow
def test_synth_other_shape_writes_a_schema(tmp_path: Path) -> None:
    raw = tmp_path / "s.tsv"
    assert main(["synth", "--rows", "500", "--out", str(raw), "--num-dense", "2", "--num-sparse", "3"]) == 0
    r = _run(
        "prepare",
        "--format",
        "schema",
        "--schema",
        f"{raw}.schema.json",
        "--input",
        str(raw),
        "--out",
        str(tmp_path / "c"),
        "--split",
        "random",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert sum(summary["rows"].values()) == 500
    cache = open_cache(tmp_path / "c")
    assert cache.dense.shape == (500, 2) and cache.sparse.shape == (500, 3)


@pytest.mark.slow
def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (["prepare", "--format", "parquetish", "--input", "x", "--out", "y"], ["prepare", "--input", "x"]):
        r = _run(*args)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("nasrec prepare: error:")


def test_halving_without_retraining_is_one_line(tmp_path: Path) -> None:
    r = _run(
        "search", "--supernet", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--halving", "3"
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("--halving chooses among the retrained top k: give --retrain too")


@pytest.mark.slow
def test_existing_output_needs_force(tmp_path: Path) -> None:
    raw = tmp_path / "s.tsv"
    assert main(["synth", "--rows", "300", "--out", str(raw)]) == 0  # in-process: only the refusal needs a process
    args = ["prepare", "--format", "criteo", "--input", str(raw), "--out", str(tmp_path / "c"), "--split", "sequential"]
    assert main(args) == 0
    r = _run(*args)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert main([*args, "--force", "--split", "random"]) == 0
    assert open_cache(tmp_path / "c").meta["split"]["method"] == "random"
