"""Platt scaling after training: a scale and a shift of the logit fitted on validation rows, folded into the weights."""

from __future__ import annotations

from dataclasses import replace
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
from nasrec.train.calibration import fold_calibration, platt_fit
from nasrec.train.evaluation import split_logits
from nasrec.train.loading import load_trained
from nasrec.zoo.registry import ZOO_MODELS, build_zoo_model

QUICK = dict(batch_size=256, epochs=1, lr=0.05, eval_every=10, eval_max_batches=2, log_every=10, checkpoint_every=10)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=4_000, seed=5)[1]


def log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def test_the_fit_recovers_a_planted_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, 200_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.6 * z - 1.0)))).astype(np.float64)
    scale, shift = platt_fit(z, y)
    assert scale == pytest.approx(0.6, abs=0.02) and shift == pytest.approx(-1.0, abs=0.02)
    # the optimum: no small move of either lowers the log loss
    best = log_loss(scale * z + shift, y)
    for ds, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        assert log_loss((scale + ds) * z + shift + db, y) > best


def test_calibrated_logits_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(-1.0, 2.0, 100_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(np.float64)
    scale, shift = platt_fit(z, y)
    assert scale == pytest.approx(1.0, abs=0.03) and shift == pytest.approx(0.0, abs=0.03)


def test_logits_that_rank_backwards_are_refused() -> None:
    z = np.linspace(-3, 3, 1_000)
    with pytest.raises(NasrecError, match="no increasing map"):
        platt_fit(z, (z < 0).astype(np.float64))
    with pytest.raises(NasrecError, match="single label"):
        platt_fit(z, np.zeros_like(z))


def test_a_model_whose_logits_do_not_rank_is_left_uncalibrated(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No increasing map: the run keeps its logits (scale 1, shift 0) with a warning instead of failing."""
    from nasrec.train import calibration

    z = np.linspace(-3, 3, 1_000)
    monkeypatch.setattr(calibration, "split_logits", lambda *a, **k: ((z < 0).astype(np.float64), z))
    model = build_zoo_model("lr", 3, (20, 30, 40))
    before = [p.detach().clone() for p in model.parameters()]
    with caplog.at_level("WARNING", logger="nasrec.train.calibration"):
        assert calibration.calibrate_logits(model, open_cache(cache_dir), 256, None) == (1.0, 0.0)
    assert "left uncalibrated" in caplog.text and "no increasing map" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", list(ZOO_MODELS))
def test_folding_scales_and_shifts_every_zoo_models_logit(name: str) -> None:
    torch.manual_seed(0)
    model = build_zoo_model(name, 3, (20, 30, 40)).eval()
    with torch.no_grad():
        for p in model.parameters():  # FirstOrder starts at zero: give every weight a part in the logit
            p.add_(0.1 * torch.randn_like(p))
    dense, sparse = torch.randn(16, 3), torch.randint(0, 20, (16, 3))
    with torch.no_grad():
        before = model(dense, sparse)
        fold_calibration(model, 0.7, -0.3)
        torch.testing.assert_close(model(dense, sparse), 0.7 * before - 0.3, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fm", "deepfm"])
def test_fm_models_scale_their_quadratic_term_through_the_embeddings(name: str) -> None:
    """FM's inner products take sqrt(scale) on the embeddings; DeepFM's MLP then sees the same hidden values."""
    torch.manual_seed(1)
    model = build_zoo_model(name, 3, (20, 30, 40)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    table = model.embedding.table.weight.clone()
    dense, sparse = torch.randn(8, 3), torch.randint(0, 20, (8, 3))
    hidden = (
        model.mlp.layers[0](torch.cat([dense, model.embedding(sparse).flatten(1)], 1)) if name == "deepfm" else None
    )
    with torch.no_grad():
        fold_calibration(model, 2.25, 0.0)
        torch.testing.assert_close(model.embedding.table.weight, 1.5 * table)
        if hidden is not None:
            after = model.mlp.layers[0](torch.cat([dense, model.embedding(sparse).flatten(1)], 1))
            torch.testing.assert_close(after, hidden, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("centre", "first_order"), [(False, False), (True, False), (False, True)])
def test_folding_scales_an_architectures_logit(centre: bool, first_order: bool) -> None:
    arch = replace(NASREC_SMALL.sample(np.random.default_rng(0), "default"), first_order=first_order)
    spec = ModelSpec(kind="nasrec", num_dense=13, table_sizes=(50,) * 26, arch=arch.to_dict(), layernorm=centre)
    model = spec.build().eval()
    dense, sparse = torch.randn(8, 13), torch.randint(0, 50, (8, 26))
    with torch.no_grad():
        if first_order:  # it starts at zero: give it a part in the logit
            for p in model.first_order.parameters():
                p.normal_()
        before = model(dense, sparse)
        fold_calibration(model, 1.3, 0.2)
        torch.testing.assert_close(model(dense, sparse), 1.3 * before + 0.2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("restore_best", [False, True])
def test_a_calibrated_run_keeps_its_ranking_lowers_its_validation_loss_and_serves_it(
    cache_dir: Path, tmp_path: Path, restore_best: bool
) -> None:
    cfg = dict(QUICK, calibrate_logits=True, restore_best=restore_best)
    res = train(cache_dir, tmp_path / "run", model="xdeepfm", overrides=cfg, progress=False)
    plain = train(cache_dir, tmp_path / "plain", model="xdeepfm", overrides=dict(cfg, calibrate_logits=False))
    assert "logit_scale" in res and "logit_scale" not in plain
    cache = open_cache(cache_dir)
    y, z = split_logits(load_trained(tmp_path / "run")[0], cache, "val", 1024)
    _, z0 = split_logits(load_trained(tmp_path / "plain")[0], cache, "val", 1024)
    # the served weights give the plain model's logits, scaled and shifted
    np.testing.assert_allclose(z, res["logit_scale"] * z0 + res["bias_shift"], rtol=1e-4, atol=1e-4)
    assert log_loss(z, y) < log_loss(z0, y)
    assert res["val"]["auc"] == pytest.approx(plain["val"]["auc"], abs=1e-9)
    assert res["test"]["auc"] == pytest.approx(plain["test"]["auc"], abs=1e-9)
    assert evaluate_run(tmp_path / "run", cache_dir)["logloss"] == pytest.approx(res["logloss"], abs=1e-6)
    # A run killed after its calibration (here: its final metrics removed) resumes without applying it twice.
    (tmp_path / "run" / "metrics.json").unlink()
    again = train(cache_dir, tmp_path / "run", model="xdeepfm", overrides=cfg, resume=True, progress=False)
    assert (again["logit_scale"], again["bias_shift"]) == (res["logit_scale"], res["bias_shift"])
    assert again["test"] == res["test"]


def test_calibration_is_refused_where_it_cannot_apply(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NasrecError, match="calibrate_logits applies to standalone models"):
        train_supernet(cache_dir, tmp_path / "sn", overrides=dict(QUICK, calibrate_logits=True), progress=False)
    both = dict(QUICK, calibrate_logits=True, refit_logit_bias=True)
    with pytest.raises(NasrecError, match="set one of them"):
        train(cache_dir, tmp_path / "both", model="lr", overrides=both, progress=False)
    # TorchRec's fused tables are not scaled in place: DeepFM's inner products need its embeddings scaled
    pytest.importorskip("torchrec")
    fused = dict(QUICK, calibrate_logits=True, embeddings="torchrec", optimizer="adagrad")
    with pytest.raises(NasrecError, match="deepfm's logit cannot be scaled through its weights"):
        train(cache_dir, tmp_path / "fm", model="deepfm", overrides=fused, progress=False)
