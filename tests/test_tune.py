"""`nasrec tune`: the space and recipe files, a short tune of FM, its determinism, resume and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import small_synth_cache

from nasrec.cli import main
from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.train.config import TrainConfig
from nasrec.train.recipe import Recipe, read_recipe, write_recipe
from nasrec.tune.space import default_space, load_space

pytest.importorskip("optuna")

# tiny trainings: one epoch of 800 rows in batches of 32-128, three validation evaluations for the pruner
BASE = {"epochs": 1, "batch_size": 64, "eval_batch_size": 512, "log_every": 1000, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("tune-data"), 1000, 3, split="random")[1]


def _tune(cache: Path, out: Path, trials: int, **kwargs: Any) -> dict[str, Any]:
    from nasrec.tune.api import tune

    return tune(cache, out, model="fm", overrides=BASE, trials=trials, seed=7, **kwargs)


def _trials(out: Path) -> list[tuple[int, str, dict[str, Any], float | None]]:
    rows = json.loads((out / "tune.json").read_text())["trials_list"]
    return [(t["trial"], t["state"], t["params"], t["value"]) for t in rows]


@pytest.fixture(scope="module")
def tuned(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("tune") / "fm"
    return out, _tune(cache, out, 3)


@pytest.mark.slow
def test_three_trials_write_a_recipe_that_train_runs(
    tuned: tuple[Path, dict[str, Any]], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, res = tuned
    assert res["trials"] == res["complete"] == 3 and res["best"] is not None
    trials = _trials(out)
    assert [t[1] for t in trials] == ["complete"] * 3
    assert set(trials[0][2]) == {"lr", "batch_size", "embedding_dim"} | (
        {"embedding_l2"} if "embedding_l2" in TrainConfig.__dataclass_fields__ else set()
    )
    # each trial reported its evaluations at a quarter, half and three quarters of its training
    listed = json.loads((out / "tune.json").read_text())["trials_list"]
    assert all(set(t["intermediate"]) == {"1", "2", "3"} for t in listed)
    recipe = read_recipe(out / "best_recipe.yaml")
    assert recipe.model == "fm" and recipe.hparams["embedding_dim"] == res["best"]["params"]["embedding_dim"]
    assert recipe.train["lr"] == res["best"]["params"]["lr"] and "device" not in recipe.train

    # the recipe trains the best trial again: the same validation loss
    run = tmp_path / "again"
    argv = ["train", "--data", str(cache), "--out", str(run), "--recipe", str(out / "best_recipe.yaml"), "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    again = json.loads((run / "metrics.json").read_text())
    assert again["val"]["logloss"] == pytest.approx(res["best"]["val_logloss"], abs=1e-6)
    # the command line overrides the recipe
    assert main([*argv[:4], str(tmp_path / "b"), *argv[5:], "--set", "max_steps=3", "--hparam", "embedding_dim=4"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 3
    assert json.loads((tmp_path / "b" / "model.json").read_text())["hparams"]["embedding_dim"] == 4


@pytest.mark.slow
def test_the_same_seed_with_one_worker_gives_the_same_trials(
    tuned: tuple[Path, dict[str, Any]], cache: Path, tmp_path: Path
) -> None:
    _tune(cache, tmp_path / "again", 3)
    assert _trials(tmp_path / "again") == _trials(tuned[0])


@pytest.mark.slow
def test_a_killed_tune_resumes_to_the_total_and_retries_the_running_trial(
    tuned: tuple[Path, dict[str, Any]], cache: Path, tmp_path: Path
) -> None:
    import optuna

    out = tmp_path / "resumed"
    _tune(cache, out, 2)
    first = _trials(out)
    assert first == _trials(tuned[0])[:2]
    # a third trial was running when the tune was killed: it stays RUNNING in the storage
    study = optuna.load_study(study_name="nasrec-tune", storage=f"sqlite:///{out / 'tune.db'}")
    low, high = study.user_attrs["settings"]["space"]["lr"]["log"]
    killed = study.ask()
    killed.suggest_float("lr", low, high, log=True)
    res = _tune(cache, out, 3)
    trials = _trials(out)
    assert res["trials"] == 3 and trials[:2] == first  # the total counts the earlier session's trials
    assert trials[2][1] == "fail" and trials[3][1] == "complete"
    assert trials[3][2]["lr"] == killed.params["lr"]  # retried with its parameters
    # with everything done, the same command runs no trial
    assert _tune(cache, out, 3)["trials"] == 3 and len(_trials(out)) == 4


@pytest.mark.slow
def test_two_workers_share_the_count(cache: Path, tmp_path: Path) -> None:
    res = _tune(cache, tmp_path / "two", 2, workers=2)
    assert res["trials"] == res["complete"] == 2 and len(_trials(tmp_path / "two")) == 2


def test_a_cache_without_validation_rows_is_refused_before_any_trial(tmp_path: Path) -> None:
    cache = small_synth_cache(tmp_path, 200, 0, split="random", ratios=(0.9, 0.0, 0.1))[1]
    with pytest.raises(NasrecError, match="no validation rows"):
        _tune(cache, tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()


def test_a_recipe_for_another_model_is_refused(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "r.yaml"
    write_recipe(recipe, Recipe(model="deepfm", hparams={"dropout": 0.1}, train={"lr": 0.05}))
    argv = ["train", "--data", str(cache), "--out", str(tmp_path / "run"), "--recipe", str(recipe)]
    assert main([*argv, "--model", "fm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("a recipe for zoo model 'deepfm', not for zoo model 'fm'") and "\n" not in err
    assert main([*argv, "--preset", "cpu-quick"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "lr: {log: [0.01, 0.1]}\nlearning_rate: 0.1\n",
            "learning_rate: unknown key (known: arch_batchnorm, arch_dropout, arch_head_centre, arch_max_embedding_std, ",
        ),
        ("lr: {logg: [0.01, 0.1]}\n", "lr.logg: unknown distribution (expected one of choice, int, log, uniform)"),
        ("lr: {log: [0.0, 0.1]}\n", "lr.log: a log scale needs low > 0"),
        ("lr: {uniform: [0.1]}\n", "lr.uniform: expected [low, high], got 1 values"),
        ("batch_size: {choice: [64, 0]}\n", "batch_size: expected an integer >= 1, got 0"),
        ("dropout: {uniform: [0.0, 0.5]}\n", "dropout: unknown key"),  # FM has no dropout
        ("eval_every: 10\n", "eval_every: set by nasrec tune"),
        ("[1, 2]\n", "(top level): expected a mapping"),
    ],
)
def test_a_bad_space_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    from nasrec.zoo.registry import default_hparams

    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_space(path, default_hparams("fm"))
    assert f"tuning space {path} {message}" in str(e.value) and "\n" not in str(e.value)


def test_a_space_file_round_trips_and_lists_choices_are_decoded(tmp_path: Path) -> None:
    from nasrec.zoo.registry import default_hparams

    path = tmp_path / "space.yaml"
    path.write_text("lr: {log: [0.01, 0.1]}\nmlp_dims: {choice: [[64, 32], [16]]}\nweight_decay: 0.0\n")
    space = load_space(path, default_hparams("deepfm"))
    assert [p.name for p in space.searched] == ["lr", "mlp_dims"]
    assert space.from_params({"lr": 0.05, "mlp_dims": "[16]"}) == (
        {"mlp_dims": [16]},
        {"lr": 0.05, "weight_decay": 0.0},
    )
    assert yaml.safe_load(yaml.safe_dump(space.to_dict())) == yaml.safe_load(path.read_text())
    # the summary and tune.json show the drawn list, not Optuna's stored text
    from nasrec.tune.api import _decoded
    from nasrec.tune.trial import TuneSettings

    settings = TuneSettings("d", "o", "deepfm", None, None, None, {}, default_hparams("deepfm"), {}, space.to_dict())
    assert _decoded(settings, {"lr": 0.05, "mlp_dims": "[16]"}) == {"lr": 0.05, "mlp_dims": [16]}


def test_the_default_space_follows_the_model() -> None:
    from nasrec.zoo.registry import default_hparams

    names = lambda model: [p.name for p in default_space(default_hparams(model), TrainConfig(), 10_000).params]  # noqa: E731
    assert {"lr", "batch_size"} <= set(names("lr")) and "dropout" not in names("lr")
    assert {"dropout", "embedding_dim", "mlp_dims"} <= set(names("deepfm"))
    assert {"top_mlp", "mlp_dims"} & set(names("dlrm")) == {"top_mlp"} and "bottom_mlp" not in names("dlrm")
    # batch sizes that do not fit the train split are left out
    sizes = {p.name: p.values for p in default_space(None, TrainConfig(batch_size=512), 600).params}["batch_size"]
    assert sizes == (256, 512)
    arch = {p.name: p for p in default_space(None, TrainConfig(), 10_000).params}
    assert arch["arch_dropout"].where == "train" and arch["arch_dropout"].values == (0.0, 0.5)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            {"model": "fm", "trian": {}},
            "trian: unknown key (known: model, arch, arch_hash, hparams, train, small_data)",
        ),
        ({"model": "fm", "hparams": {"dropout": 0.1}}, "hparams.dropout: unknown key (known: embedding_dim"),
        ({"model": "fm", "train": {"lr": -1}}, "train.lr: expected a number > 0"),
        ({"train": {"lr": 0.1}}, "model: give exactly one of model"),
        ({"model": "nope"}, "model: unknown zoo model 'nope'"),
    ],
)
def test_a_bad_recipe_is_one_line_naming_the_key(tmp_path: Path, recipe: dict, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as e:
        read_recipe(path)
    assert f"recipe {path} {message}" in str(e.value)


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from nasrec.tune.api import optuna_module

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(NasrecError, match=r"pip install 'nasrec\[tune\]'"):
        optuna_module()


def test_the_pruner_never_judges_a_first_evaluation() -> None:
    import optuna

    from nasrec.tune.api import _pruner
    from nasrec.tune.trial import TuneSettings

    settings = TuneSettings("d", "o", "fm", None, None, None, {}, None, {}, {}, evals=4)
    study = optuna.create_study(pruner=_pruner(optuna, settings))
    for _ in range(5):
        t = study.ask()
        t.report(0.3, 1)
        t.report(0.2, 2)
        study.tell(t, 0.2)
    t = study.ask()
    t.report(9.0, 1)
    assert not t.should_prune()  # the first evaluation is not judged
    t.report(9.0, 2)
    assert t.should_prune()
    no_prune = TuneSettings("d", "o", "fm", None, None, None, {}, None, {}, {}, evals=4, prune=False)
    assert isinstance(_pruner(optuna, no_prune), optuna.pruners.NopPruner)
