"""Recipes: evaluations per epoch, the plateau schedule's knobs, and every zoo model's default recipe."""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import small_synth_cache

from nasrec.cli import main
from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.train.api import train
from nasrec.train.config import TrainConfig, preset
from nasrec.train.recipe import RECIPE_DIR, apply_recipe, default_recipe, merged, read_recipe
from nasrec.zoo.registry import ZOO_MODELS, build_zoo_model

QUICK = dict(batch_size=64, lr=0.05, checkpoint_every=10**6, log_every=10**6, threads=1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("recipes"), rows=2_000, seed=3, split="random")[1]


def _evals(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval_logloss" in x]


@pytest.mark.slow
def test_evals_per_epoch_evaluates_at_that_share_of_every_epoch(cache_dir: Path, tmp_path: Path) -> None:
    m = train(cache_dir, tmp_path / "r", model="lr", overrides=dict(QUICK, epochs=2, evals_per_epoch=2), progress=False)
    every = m["steps"] // 2 // 2  # floor(steps per epoch / 2)
    steps = [x["step"] for x in _evals(tmp_path / "r")]
    # every `every` steps before the end (the final evaluation is the run's own, not a periodic one)
    assert every > 1 and steps == list(range(every, m["steps"], every))
    assert (
        TrainConfig(evals_per_epoch=4).eval_interval(10) == 2 and TrainConfig(evals_per_epoch=40).eval_interval(10) == 1
    )
    assert TrainConfig(eval_every=7).eval_interval(10) == 7 and TrainConfig().eval_interval(10) == 0
    # a floor in steps for small data, where an epoch is a few steps
    assert TrainConfig(evals_per_epoch=1, eval_min_steps=50).eval_interval(3) == 50
    assert TrainConfig(evals_per_epoch=1, eval_min_steps=50).eval_interval(78) == 78


@pytest.mark.parametrize(
    ("key", "value"), [("evals_per_epoch", -1), ("plateau_factor", 1.0), ("plateau_factor", 0), ("plateau_patience", 0)]
)
def test_bad_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        preset(None, **{key: value})
    assert info.value.key == key and "\n" not in str(info.value)


def test_eval_every_and_evals_per_epoch_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="eval_every or evals_per_epoch") as info:
        preset(None, eval_every=5, evals_per_epoch=2)
    assert info.value.key == "evals_per_epoch"


@pytest.mark.slow
def test_plateau_lowers_the_lrs_by_its_factor_on_the_early_stopping_metric(cache_dir: Path, tmp_path: Path) -> None:
    # a high lr that overshoots: evaluations stop improving, so the plateau schedule must cut the lr
    cfg = dict(
        QUICK,
        lr=0.5,
        epochs=3,
        evals_per_epoch=2,
        schedule="plateau",
        warmup_fraction=0.0,
        plateau_factor=0.1,
        plateau_patience=1,
        early_stop_metric="auc",
        patience=50,
        log_every=1,
    )
    train(cache_dir, tmp_path / "p", model="fm", overrides=cfg, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    lrs = sorted({round(x["lr"], 12) for x in lines if "lr" in x}, reverse=True)
    assert lrs[0] == 0.5 and len(lrs) > 1
    for a, b in itertools.pairwise(lrs):
        assert b == pytest.approx(a * 0.1, rel=1e-6)  # each cut is the factor, not the default 0.5
    # the cuts follow AUC: an lr is cut right after an evaluation whose AUC is no better than the best so far
    evals = _evals(tmp_path / "p")
    best, expected_cuts = None, 0
    for e in evals:
        if best is None or e["eval_auc"] > best + 1e-4:
            best = max(e["eval_auc"], best or 0)
        else:
            expected_cuts += 1
    assert len(lrs) - 1 == expected_cuts


# -- default recipes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", list(ZOO_MODELS))
def test_every_zoo_model_has_a_valid_default_recipe(model: str) -> None:
    recipe = default_recipe(model)
    assert recipe is not None and recipe.model == model
    cfg = TrainConfig().updated(**recipe.train)  # every setting valid, and together
    assert cfg.early_stop_metric and cfg.restore_best and cfg.evals_per_epoch >= 1 and cfg.epochs > 1
    assert not cfg.warmup_fraction  # a warm-up over `epochs` (an upper bound) would last for most of the run
    m = build_zoo_model(model, 2, (5, 7, 3), **recipe.hparams)
    assert m(torch.zeros(4, 2), torch.zeros(4, 3, dtype=torch.int64)).shape == (4,)


def test_a_recipe_file_for_another_model_is_refused(tmp_path: Path) -> None:
    text = (RECIPE_DIR / "deepfm.yaml").read_text().replace("model: deepfm", "model: nosuch")
    (tmp_path / "nosuch.yaml").write_text(text)
    with pytest.raises(ConfigError, match="model"):
        read_recipe(tmp_path / "nosuch.yaml")
    with pytest.raises(NasrecError, match=r"zoo model 'deepfm'.*not for zoo model 'lr'"):
        train("unused", tmp_path / "x", model="lr", recipe=default_recipe("deepfm"))
    with pytest.raises(NasrecError, match="a recipe or a preset"):
        train("unused", tmp_path / "x", model="lr", recipe="default", preset_name="cpu-quick")


@pytest.mark.slow
def test_train_with_no_options_uses_the_models_default_recipe(cache_dir: Path, tmp_path: Path) -> None:
    recipe = default_recipe("fm")
    assert (
        main(
            [
                "train",
                "--data",
                str(cache_dir),
                "--model",
                "fm",
                "--out",
                str(tmp_path / "a"),
                "-q",
                "--set",
                "epochs=3",
                "--set",
                "batch_size=512",  # 1,600 training rows
                "--hparam",
                "embedding_dim=4",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg, model = saved["train"], saved["model"]
    for k, v in recipe.train.items():
        assert cfg[k] == {"epochs": 3, "batch_size": 512}.get(k, v), k  # the recipe, under the options given
    assert model["hparams"] == {**recipe.hparams, "embedding_dim": 4}
    # the Python API gives the same with recipe="default"; without it, TrainConfig's own defaults
    over = {"epochs": 3, "batch_size": 512, "threads": saved["train"]["threads"]}
    api = train(cache_dir, tmp_path / "b", model="fm", hparams={"embedding_dim": 4}, overrides=over, recipe="default")
    cli = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert api["test"] == cli["test"]
    # a preset replaces the recipe
    assert (
        main(
            [
                "train",
                "--data",
                str(cache_dir),
                "--model",
                "fm",
                "--out",
                str(tmp_path / "c"),
                "-q",
                "--preset",
                "cpu-quick",
                "--set",
                "max_steps=2",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["optimizer"] != "adam"


def test_the_callers_choice_of_one_exclusive_setting_drops_the_recipes_other() -> None:
    recipe = default_recipe("deepfm")
    assert recipe.train["evals_per_epoch"] == 1
    _, train_set = merged(recipe, None, {"eval_every": 5})
    assert train_set["eval_every"] == 5 and "evals_per_epoch" not in train_set
    TrainConfig().updated(**train_set)  # a valid combination
    hp, train_set = merged(recipe, {"dropout": 0.5}, {"evals_per_epoch": 3})
    assert train_set["evals_per_epoch"] == 3 and hp["dropout"] == 0.5 and hp["mlp_dims"] == recipe.hparams["mlp_dims"]


@pytest.mark.slow
def test_tune_starts_from_the_default_recipe(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.tune.api import tune

    recipe = default_recipe("fm")
    over = {"epochs": 2, "threads": 1, "batch_size": 256}  # 1,600 training rows
    res = tune(cache_dir, tmp_path / "t", model="fm", overrides=over, trials=2, seed=1, recipe="default")
    assert res["complete"] + res["pruned"] == 2
    best = read_recipe(tmp_path / "t" / "best_recipe.yaml")
    for k, v in recipe.train.items():  # the base: every setting the tune did not search
        if k not in ("lr", "batch_size", "embedding_l2", "epochs"):
            assert best.train[k] == v, k
    assert best.hparams["max_embedding_std"] == recipe.hparams["max_embedding_std"]
    assert best.hparams["embedding_dim"] in (5, 10, 20)  # around the recipe's 10, not the constructor's 16
    l2 = best.train["embedding_l2"]
    assert recipe.train["embedding_l2"] / 30 <= l2 <= recipe.train["embedding_l2"] * 10
    with pytest.raises(NasrecError, match="a recipe or a preset"):
        tune(cache_dir, tmp_path / "u", model="fm", preset_name="cpu-quick", recipe="default")


# -- small-data settings --------------------------------------------------------------------------------
def test_small_data_settings_apply_below_their_row_count_only() -> None:
    recipe = default_recipe("deepfm")
    small = recipe.small_data
    assert small is not None and small["below_rows"] == 50_000
    hp, few = merged(recipe, None, None, train_rows=6_400)
    assert not hp["batchnorm"] and few["batch_size"] == 256 and few["embedding_l2_per"] == "row"
    assert few["early_stop_metric"] == "logloss"
    assert hp["mlp_dims"] == recipe.hparams["mlp_dims"]  # the rest stays the recipe's
    hp, many = merged(recipe, None, None, train_rows=161_622)
    assert (
        hp["batchnorm"] and many == merged(recipe, None, None)[1] and many["batch_size"] == recipe.train["batch_size"]
    )
    # the caller's options still lie over the small-data settings
    hp, given = merged(recipe, {"batchnorm": True}, {"batch_size": 64}, train_rows=10)
    assert hp["batchnorm"] and given["batch_size"] == 64 and given["embedding_l2_per"] == "row"
    assert default_recipe("fm").small_data is None and default_recipe("lr").small_data is None


def test_small_data_settings_apply_to_few_examples_of_the_rarer_label() -> None:
    """Many rows but few clicks (0.3 % of 160,000 rows: 462) is small data too; so are few non-clicks."""
    recipe = default_recipe("dcnv2")
    assert recipe.small_data is not None and recipe.small_data["below_positives"] == 12_500
    assert recipe.small(160_000, 462) and recipe.small(160_000, 12_499) and not recipe.small(160_000, 12_500)
    assert not recipe.small(161_622, None)  # the count unknown: rows alone decide
    hp, few = merged(recipe, None, None, 160_000, 462)
    assert few["batch_size"] == 256 and few["early_stop_metric"] == "logloss" and not hp["batchnorm"]
    _, _, source = apply_recipe("default", "dcnv2", None, None, None, 160_000, 462)
    assert source is not None and "462 training examples of the rarer label < 12,500" in source
    _, _, source = apply_recipe("default", "dcnv2", None, None, None, 6_400, 1_600)
    assert source is not None and "6,400 training rows < 50,000" in source


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("{below_rows: 0}", "small_data.below_rows"),
        ("{train: {batch_size: 8}}", "small_data.below_rows"),
        ("{below_rows: 10, colour: red}", "small_data.colour"),
        ("{below_rows: 10, hparams: {nosuch: 1}}", "small_data.hparams.nosuch"),
        ("{below_rows: 10, hparams: [1]}", "small_data.hparams"),
        ("{below_rows: 10, train: {batch_size: -1}}", "small_data.train.batch_size"),
        ("{below_rows: 10, train: {nosuch: 1}}", "small_data.train.nosuch"),
        ("{below_rows: 10, below_positives: 0}", "small_data.below_positives"),
        ("{below_rows: 10, below_positives: many}", "small_data.below_positives"),
        ("[1, 2]", "small_data"),
    ],
)
def test_a_bad_small_data_section_names_the_key(tmp_path: Path, section: str, key: str) -> None:
    text = (RECIPE_DIR / "deepfm.yaml").read_text().split("small_data:")[0] + f"small_data: {section}\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        read_recipe(tmp_path / "r.yaml")
    assert info.value.key == key and "\n" not in str(info.value)


def test_training_on_small_data_uses_the_small_data_settings(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    over = {"max_steps": 2, "threads": 1}
    with caplog.at_level(logging.INFO, logger="nasrec"):
        train(cache_dir, tmp_path / "a", model="dnn", hparams={"mlp_dims": [8]}, overrides=over, recipe="default")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["train"]["batch_size"] == 256 and saved["train"]["embedding_l2_per"] == "row"
    assert saved["model"]["hparams"]["batchnorm"] is False
    assert "small-data settings: 1,600 training rows < 50,000" in caplog.text
    # a recipe file's section applies through `nasrec train --recipe` too, where the train split is small enough
    for below, batch, bn in ((5000, 256, False), (1000, 2048, True)):  # the cache has 1,600 training rows
        recipe = (RECIPE_DIR / "dnn.yaml").read_text().replace("below_rows: 50000", f"below_rows: {below}")
        recipe = re.sub(r"\n  below_positives: .*", "", recipe)  # rows alone decide here
        (tmp_path / "dnn.yaml").write_text(recipe)
        out = tmp_path / f"b{below}"
        args = ["train", "--data", str(cache_dir), "--out", str(out), "--recipe", str(tmp_path / "dnn.yaml"), "-q"]
        over = [] if bn is False else ["--set", "batch_size=512"]
        assert main([*args, "--set", "max_steps=2", "--hparam", "mlp_dims=[8]", *over]) == 0
        saved = json.loads((out / "config.json").read_text())
        assert saved["train"]["batch_size"] == (batch if bn is False else 512)
        assert saved["model"]["hparams"]["batchnorm"] is bn
