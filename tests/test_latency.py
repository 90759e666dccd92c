"""Serving latency on this machine (`nasrec latency measure`, `nasrec.export.latency`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import small_synth_cache

from nasrec.errors import NasrecError
from nasrec.export.latency import measure_model_latency, measure_run_latency, time_calls
from nasrec.space.space import NASREC_SMALL
from nasrec.train.api import train
from nasrec.zoo.registry import build_zoo_model

pytest.importorskip("onnxruntime")
QUICK = dict(warmup=2, reps=5)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=2_000, seed=4)[1]


def test_time_calls_counts_every_call_and_orders_its_quantiles() -> None:
    calls = []
    stats = time_calls(lambda: calls.append(1), warmup=3, reps=7)
    assert len(calls) == 10
    assert 0 <= stats["p50_ms"] <= stats["p99_ms"] and stats["mean_ms"] >= 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_a_model_is_timed_per_batch_and_thread_count_with_the_machine(runtime: str) -> None:
    sizes = [7, 30, 5]
    model = build_zoo_model("deepfm", 2, sizes, embedding_dim=8, mlp_dims=[16])
    res = measure_model_latency(model, 2, sizes, runtime=runtime, batches=(1, 4), threads=(1,), **QUICK)
    assert {"cpu", "cpu_capability", "nproc"} <= set(res["machine"])
    assert [(r["batch"], r["threads"], r["runtime"]) for r in res["results"]] == [(1, 1, runtime), (4, 1, runtime)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in res["results"])


def test_an_architecture_and_a_run_are_timed(cache_dir: Path, tmp_path: Path) -> None:
    arch = NASREC_SMALL.sample(np.random.default_rng(0), "default")
    arch.save(tmp_path / "arch.json")
    run = tmp_path / "run"
    train(cache_dir, run, arch=tmp_path / "arch.json", overrides=dict(max_steps=2, batch_size=64), progress=False)
    res = measure_run_latency(run, batches=(2,), **QUICK)
    assert res["model"] == str(run) and res["results"][0]["batch"] == 2
    from nasrec.cli import main

    out = tmp_path / "lat.json"
    code = main(["latency", "measure", "--arch", str(tmp_path / "arch.json"), "--data", str(cache_dir), "--reps", "3",
                 "--warmup", "1", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0 and json.loads(out.read_text())["results"][0]["runtime"] == "onnxruntime"


def test_bad_requests_are_one_line_errors(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_zoo_model("lr", 1, [3])
    with pytest.raises(NasrecError, match="runtime must be one of onnxruntime, torchscript"):
        measure_model_latency(model, 1, [3], runtime="tvm")
    with pytest.raises(NasrecError, match=r"batch sizes must be integers >= 1, got \[0\]"):
        measure_model_latency(model, 1, [3], batches=(0,))
    from nasrec.cli import main

    assert main(["latency", "measure", "--zoo", "deepfm"]) != 0
    assert "--zoo needs --data DIR" in capsys.readouterr().err
    assert main(["latency", "measure", "--model", str(cache_dir), "--data", str(cache_dir)]) != 0
    assert "--data goes with --arch or --zoo" in capsys.readouterr().err
