"""The --device option: cpu is the default and changes nothing; an unavailable CUDA fails before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

from nasrec.cli import main
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.rundir import load_checkpoint
from nasrec.search.parallel import ScorerSpec
from nasrec.search.scorer import ScoreConfig
from nasrec.space.space import NASREC_SMALL
from nasrec.train.api import evaluate_run, train, train_supernet
from nasrec.train.config import TrainConfig
from nasrec.train.loading import load_trained

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
TINY = dict(batch_size=256, max_steps=12, lr=0.05, eval_max_batches=2, log_every=4, checkpoint_every=4, threads=1)
TINY_SCORE = dict(finetune_steps=4, warmup_steps=1, finetune_batch_size=128, val_batches=2, val_batch_size=256)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=4_000, seed=5)[1]


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    NASREC_SMALL.sample(np.random.default_rng(0), "default").save(path)
    return path


def test_resolve_device_names() -> None:
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    for bad in ("gpu", "cuda:x", "CPU", "mps", ""):
        with pytest.raises(NasrecError, match="device must be one of"):
            resolve_device(bad)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(name: str) -> None:
    message = re.escape(
        f"cuda requested but torch.cuda.is_available() is False (this torch build: {torch.__version__})"
    )
    with pytest.raises(NasrecError, match=message):
        resolve_device(name)
    with pytest.raises(NasrecError, match=message):
        TrainConfig(device=name)
    with pytest.raises(NasrecError, match=message):
        ScoreConfig(device=name)


@no_cuda
def test_cli_rejects_cuda_before_any_work(
    cache_dir: Path, arch_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Paths are checked first (cheaply, before torch is imported): these look like a run and an input file.
    given = tmp_path / "given"
    (given / "run").mkdir(parents=True)
    (given / "run" / "model.json").write_text("{}")
    (given / "rows.tsv").write_text("")
    run = str(given / "run")
    commands = [
        ["train", "--arch", str(arch_file), "--data", str(cache_dir), "--out", str(tmp_path / "t")],
        ["supernet", "--space", "small", "--data", str(cache_dir), "--out", str(tmp_path / "s")],
        ["evaluate", "--model", run, "--data", str(cache_dir)],
        ["search", "--supernet", run, "--data", str(cache_dir), "--out", str(tmp_path / "x")],
        ["rankcheck", "--supernet", run, "--data", str(cache_dir), "--out", str(tmp_path / "r")],
        ["predict", "--model", run, "--input", str(given / "rows.tsv"), "--out", str(tmp_path / "p.csv")],
    ]
    for argv in commands:
        assert main([*argv, "--device", "cuda"]) == 2, argv[0]
        err = capsys.readouterr().err
        assert "cuda requested but torch.cuda.is_available() is False" in err, (argv[0], err)
    assert [p.name for p in tmp_path.iterdir()] == ["given"]  # nothing was written
    assert sorted(p.name for p in given.rglob("*")) == ["model.json", "rows.tsv", "run"]
    assert (
        main(
            [
                "train",
                "--arch",
                str(arch_file),
                "--data",
                str(cache_dir),
                "--out",
                str(tmp_path / "t"),
                "--device",
                "tpu",
            ]
        )
        == 2
    )
    assert "device must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_explicit_cpu_trains_exactly_as_the_default(cache_dir: Path, arch_file: Path, tmp_path: Path) -> None:
    default = train(cache_dir, tmp_path / "a", arch=arch_file, overrides=TINY, progress=False)
    cpu = train(cache_dir, tmp_path / "b", arch=arch_file, overrides={**TINY, "device": "cpu"}, progress=False)
    assert cpu["test"] == default["test"] and cpu["steps"] == default["steps"]
    for name in ("a", "b"):
        ck = load_checkpoint(tmp_path / name / "checkpoint.pt")  # read with map_location="cpu"
        assert all(t.device.type == "cpu" for t in ck["model"].values())
    model, _ = load_trained(tmp_path / "b", device="cpu")
    assert next(model.parameters()).device == torch.device("cpu")
    assert evaluate_run(tmp_path / "b", cache_dir, "test", device="cpu") == evaluate_run(tmp_path / "a", cache_dir)


@pytest.mark.slow
def test_resume_may_change_the_device(cache_dir: Path, arch_file: Path, tmp_path: Path) -> None:
    # A run's device is not part of its configuration: a run (e.g. one trained on a GPU) resumes on another.
    out = tmp_path / "run"
    train(cache_dir, out, arch=arch_file, overrides={**TINY, "max_steps": 8}, progress=False)
    saved = json.loads((out / "config.json").read_text())
    saved["train"]["device"] = "auto"  # as written by a run on another device
    (out / "config.json").write_text(json.dumps(saved))
    res = train(cache_dir, out, arch=arch_file, overrides={"device": "cpu"}, resume=True, progress=False)
    assert res["steps"] == 8


@pytest.mark.slow
def test_explicit_cpu_scores_exactly_as_the_default(cache_dir: Path, tmp_path: Path) -> None:
    train_supernet(
        cache_dir,
        tmp_path / "sn",
        space="small",
        preset_name="cpu-supernet",
        overrides=dict(batch_size=256, max_steps=6, path_warmup_steps=2, threads=1),
        progress=False,
    )
    archs = [NASREC_SMALL.sample(np.random.default_rng(s), "default") for s in range(2)]
    default = ScorerSpec(str(tmp_path / "sn"), str(cache_dir), TINY_SCORE).build()
    cpu = ScorerSpec(str(tmp_path / "sn"), str(cache_dir), {**TINY_SCORE, "device": "cpu"}).build()
    assert [cpu.score(a) for a in archs] == [default.score(a) for a in archs]
    assert all(b.dense.device.type == "cpu" for b in cpu.data.train + cpu.data.val)


@no_cuda
def test_pipeline_config_rejects_cuda_at_the_key() -> None:
    import copy

    from nasrec.pipeline.config import DEMO, resolve_config

    for section in ("supernet", "search", "final"):
        cfg = copy.deepcopy(DEMO)
        cfg[section]["set"]["device"] = "cuda"
        with pytest.raises(NasrecError, match=rf"{section}\.set\.device: cuda requested but"):
            resolve_config(cfg)
    cfg = copy.deepcopy(DEMO)
    cfg["final"]["set"]["device"] = "cpu"
    assert resolve_config(cfg)["final"]["set"]["device"] == "cpu"
