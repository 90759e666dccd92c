"""Refitting the output bias after training: the mean prediction on train rows becomes their click rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.space.space import NASREC_SMALL
from nasrec.train.api import evaluate_run, train, train_supernet
from nasrec.train.bias_refit import bias_shift, output_bias
from nasrec.train.evaluation import split_logits
from nasrec.train.loading import load_trained

QUICK = dict(batch_size=256, epochs=1, lr=0.05, eval_every=10, eval_max_batches=2, log_every=10, checkpoint_every=10)


def train_logits(model, cache, batch_size: int, max_rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and logits of the train rows the refit reads, as tensors."""
    y, z = split_logits(model, cache, "train", batch_size, max_rows)
    return torch.from_numpy(y), torch.from_numpy(z)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=4_000, seed=5)[1]


@pytest.mark.parametrize("ctr", [0.003, 0.3, 0.97])
def test_the_shift_matches_the_click_rate(ctr: float) -> None:
    z = torch.from_numpy(np.random.default_rng(0).normal(1.0, 2.0, 5_000))
    d = bias_shift(z, ctr)
    assert float(torch.sigmoid(z + d).mean()) == pytest.approx(ctr, rel=1e-12)


def test_a_single_label_has_no_shift() -> None:
    with pytest.raises(NasrecError, match="single label"):
        bias_shift(torch.zeros(10), 0.0)


@pytest.mark.parametrize("centre", [False, True])
def test_an_architectures_head_bias_moves_every_logit_alike(centre: bool) -> None:
    arch = NASREC_SMALL.sample(np.random.default_rng(0), "default")
    model = (
        ModelSpec(kind="nasrec", num_dense=13, table_sizes=(50,) * 26, arch=arch.to_dict(), layernorm=centre)
        .build()
        .eval()
    )
    dense, sparse = torch.randn(8, 13), torch.randint(0, 50, (8, 26))
    with torch.no_grad():
        before = model(dense, sparse)
        output_bias(model).add_(0.7)
        torch.testing.assert_close(model(dense, sparse), before + 0.7, rtol=0, atol=1e-5)


@pytest.mark.parametrize("restore_best", [False, True])
def test_a_refitted_run_predicts_the_train_click_rate_and_serves_it(
    cache_dir: Path, tmp_path: Path, restore_best: bool
) -> None:
    cfg = dict(QUICK, refit_logit_bias=True, restore_best=restore_best)
    res = train(cache_dir, tmp_path / "run", model="deepfm", overrides=cfg, progress=False)
    plain = train(cache_dir, tmp_path / "plain", model="deepfm", overrides=dict(cfg, refit_logit_bias=False))
    cache = open_cache(cache_dir)
    model, _ = load_trained(tmp_path / "run")  # the served weights carry the shift
    y, z = train_logits(model, cache, 1024, None)
    assert float(torch.sigmoid(z).mean()) == pytest.approx(float(y.mean()), rel=1e-5)
    _, z0 = train_logits(load_trained(tmp_path / "plain")[0], cache, 1024, None)
    assert res["bias_shift"] != 0 and "bias_shift" not in plain
    torch.testing.assert_close(z, z0 + res["bias_shift"], rtol=0, atol=1e-4)  # nothing but the bias moved
    assert evaluate_run(tmp_path / "run", cache_dir)["logloss"] == pytest.approx(res["logloss"], abs=1e-6)
    # A run killed after its refit (here: its final metrics removed) resumes without shifting twice.
    (tmp_path / "run" / "metrics.json").unlink()
    again = train(cache_dir, tmp_path / "run", model="deepfm", overrides=cfg, resume=True, progress=False)
    assert again["bias_shift"] == res["bias_shift"] and again["test"] == res["test"]


def test_the_refit_is_fitted_on_the_rows_asked_for(cache_dir: Path, tmp_path: Path) -> None:
    cfg = dict(QUICK, refit_logit_bias=True, refit_max_rows=300)
    train(cache_dir, tmp_path / "run", model="lr", overrides=cfg, progress=False)
    y, z = train_logits(load_trained(tmp_path / "run")[0], open_cache(cache_dir), 256, 300)
    assert len(y) == 300
    assert float(torch.sigmoid(z).mean()) == pytest.approx(float(y.mean()), rel=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["refit_max_rows"] == 300


def test_a_supernet_refuses_the_refit(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NasrecError, match="refit_logit_bias applies to standalone models"):
        train_supernet(cache_dir, tmp_path / "sn", overrides=dict(QUICK, refit_logit_bias=True), progress=False)
    assert not (tmp_path / "sn" / "checkpoint.pt").exists()
