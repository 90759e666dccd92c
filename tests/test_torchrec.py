"""The TorchRec embedding backend (`embeddings: torchrec`): parity with nasrec's tables, checkpoints, errors."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
import torch
from conftest import small_synth_cache

from nasrec.backend import torchrec_available
from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.train.api import evaluate_run, train
from nasrec.train.config import TrainConfig
from nasrec.train.trainer import Trainer

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="needs the torchrec extra (README.md, TorchRec)")

# adagrad without clipping: fbgemm's exact Adagrad is torch's sparse Adagrad, so the runs must agree
RUN = dict(
    optimizer="adagrad",
    lr=0.05,
    batch_size=256,
    max_steps=24,
    eval_every=0,
    eval_max_batches=2,
    log_every=4,
    checkpoint_every=8,
    clip=None,
    seed=3,
    threads=1,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=8_000, seed=5)[1]


def _losses(run: Path) -> list[float]:
    lines = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    return [r["train_loss"] for r in lines if "train_loss" in r]


@needs_torchrec
@pytest.mark.slow
@pytest.mark.parametrize("model", ["dlrm", "deepfm"])
def test_torchrec_tables_follow_the_same_loss_curve(cache_dir: Path, tmp_path: Path, model: str) -> None:
    hp = {"embedding_dim": 16 if model == "dlrm" else 8}  # DLRM's bottom MLP ends at its embedding width
    ours = train(cache_dir, tmp_path / "ours", model=model, hparams=hp, overrides=RUN, progress=False)
    fused = train(
        cache_dir,
        tmp_path / "trec",
        model=model,
        hparams=hp,
        overrides=dict(RUN, embeddings="torchrec"),
        progress=False,
    )
    a, b = _losses(tmp_path / "ours"), _losses(tmp_path / "trec")
    assert len(a) == len(b) == 6
    # fbgemm sums a row's gradients in another order than torch's coalesce: float rounding, 2e-5 by step 24
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert fused["test"]["logloss"] == pytest.approx(ours["test"]["logloss"], rel=1e-4)
    assert fused["test"]["auc"] == pytest.approx(ours["test"]["auc"], abs=1e-4)


@needs_torchrec
@pytest.mark.slow
def test_a_torchrec_run_evaluates_with_nasrec_tables_and_resumes_exactly(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dict(RUN, embeddings="torchrec", embedding_optimizer="rowwise_adagrad", embedding_lr=0.2)
    whole = train(cache_dir, tmp_path / "whole", model="dlrm", overrides=cfg, progress=False)
    # the checkpoint holds the tables in nasrec's layout: `evaluate` builds the model with its own tables
    again = evaluate_run(tmp_path / "whole", cache_dir, split="test")
    assert again["logloss"] == pytest.approx(whole["test"]["logloss"], rel=1e-6)

    after = Trainer._after_step

    def killed(self: Trainer) -> None:
        after(self)
        if self.state.step == 13:  # after the checkpoint of step 8: steps 9-13 are lost and redone
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_after_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cache_dir, tmp_path / "cut", model="dlrm", overrides=cfg, progress=False)
    monkeypatch.setattr(Trainer, "_after_step", after)
    resumed = train(cache_dir, tmp_path / "cut", model="dlrm", overrides=cfg, resume=True, progress=False)
    # the fused tables' Adagrad state came back with the weights: the same curve, the same model
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-6)
    assert resumed["test"]["logloss"] == pytest.approx(whole["test"]["logloss"], rel=1e-6)


def test_settings_the_fused_tables_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError, match="embedding_optimizer: only TorchRec"):
        TrainConfig(embedding_optimizer="rowwise_adagrad")
    for bad in (dict(embedding_l2=0.01), dict(sandwich=True)):
        with pytest.raises(ConfigError, match="not available with embeddings: torchrec"):
            TrainConfig(embeddings="torchrec", **bad)
    with pytest.raises(ConfigError, match="fuses adam on GPUs only"):
        TrainConfig(embeddings="torchrec", optimizer="adam")
    # an adam run whose tables take a fused optimizer fbgemm has on CPU is fine
    cfg = TrainConfig(
        embeddings="torchrec", optimizer="adam", lr=1e-3, embedding_optimizer="rowwise_adagrad", embedding_lr=0.1
    )
    assert cfg.fused_embedding_optimizer() == ("rowwise_adagrad", 0.1, 1e-2)


def test_asking_for_torchrec_without_it_says_how_to_install(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_torchrec(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in ("torchrec", "fbgemm_gpu"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchrec)
    from nasrec.cli import main

    code = main(
        ["train", "--data", str(cache_dir), "--out", str(tmp_path / "r"), "--model", "dlrm", "--embeddings", "torchrec"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert 'pip install "nasrec[torchrec]"' in err[0] and "--no-deps torchrec" in err[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(NasrecError, match="needs TorchRec"):
        train(cache_dir, tmp_path / "r2", model="dlrm", overrides=dict(RUN, embeddings="torchrec"), progress=False)


@needs_torchrec
def test_the_fused_tables_keep_the_embedding_weights_and_layout() -> None:
    from nasrec.backend.fused import TorchRecEmbedding, use_torchrec
    from nasrec.zoo.registry import build_zoo_model

    torch.manual_seed(0)
    model = build_zoo_model("deepfm", num_dense=3, table_sizes=[5, 9, 4], embedding_dim=8)
    before = model.state_dict()
    ids = torch.tensor([[0, 8, 3], [4, 0, 1]])
    dense = torch.randn(2, 3)
    with torch.no_grad():
        expected = model(dense, ids)
    assert use_torchrec(model, "adagrad", lr=0.1, eps=1e-2) == 1
    assert isinstance(model.embedding, TorchRecEmbedding)
    after = model.state_dict()
    assert set(after) == set(before)  # the LR part's width-1 table stays nasrec's
    for key in before:
        assert torch.equal(after[key], before[key]), key
    with torch.no_grad():
        assert torch.allclose(model(dense, ids), expected, atol=1e-6)
    # the tables are not the optimizer's parameters: they update inside backward
    assert all(p.shape != (18, 8) for p in model.parameters())


def test_pipeline_configs_take_the_backend_in_their_set_sections(tmp_path: Path) -> None:
    from nasrec.pipeline.config import resolve_config

    cfg = resolve_config({"data": {"format": "synthetic"}, "final": {"set": {"embeddings": "torchrec"}}}, tmp_path)
    assert cfg["final"]["set"]["embeddings"] == "torchrec"
    with pytest.raises(NasrecError, match=r"config supernet\.set\.sharding: .*set embeddings: torchrec"):
        resolve_config({"data": {"format": "synthetic"}, "supernet": {"set": {"sharding": "table-wise"}}}, tmp_path)


@needs_torchrec
@pytest.mark.slow
def test_a_supernet_trains_on_torchrec_tables_as_on_its_own(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.train.api import train_supernet

    # A supernet's sampled paths amplify float rounding faster than a fixed model (its EFC weights differ by
    # 7e-5 after 3 steps at lr 0.05, its loss by 1 % after 10): at lr 0.01 the curves stay within 1e-4
    cfg = dict(RUN, lr=0.01, path_warmup_steps=4, supernet_eval_archs=1)
    ours = train_supernet(cache_dir, tmp_path / "ours", space="small", overrides=cfg, progress=False)
    fused = train_supernet(
        cache_dir, tmp_path / "trec", space="small", overrides=dict(cfg, embeddings="torchrec"), progress=False
    )
    assert _losses(tmp_path / "trec") == pytest.approx(_losses(tmp_path / "ours"), rel=1e-4)
    assert fused["test"]["logloss"] == pytest.approx(ours["test"]["logloss"], rel=1e-4)
