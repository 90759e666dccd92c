"""Presets are data: YAML files in nasrec/presets, checked by type when read, listed from the folder."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import yaml

from nasrec import configfile
from nasrec.cli import build_parser
from nasrec.configfile import ConfigError, preset_names
from nasrec.errors import NasrecError
from nasrec.pipeline.config import resolve_config
from nasrec.search import auto
from nasrec.search.config import SearchConfig
from nasrec.search.presets import DEFAULT_PRESET, load_preset, resolve
from nasrec.search.scorer import ScoreConfig
from nasrec.train.config import TrainConfig, preset, preset_settings

SHIPPED = Path(configfile.__file__).parent / "presets"


@pytest.fixture
def presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped presets that the loaders read instead (tests add or break files in it)."""
    folder = tmp_path / "presets"
    shutil.copytree(SHIPPED, folder)
    monkeypatch.setattr(configfile, "PRESET_DIR", folder)
    return folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class _Rows:
    """A cache's split sizes alone: all `auto.data_budget` reads."""

    def __init__(self, train: int, val: int) -> None:
        self.rows = {"train": train, "val": val}

    def split_index(self, name: str) -> range:
        return range(self.rows[name])


def _choices(parser: argparse.ArgumentParser, command: str, option: str) -> tuple[str, ...]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return tuple(action.choices)


def test_shipped_presets_are_the_files() -> None:
    assert preset_names("train") == ("cpu-quick", "cpu-supernet", "paper-final", "paper-supernet")
    assert preset_names("search") == ("auto", "cpu", "cpu-quick", "paper")
    for kind in ("train", "search"):
        assert preset_names(kind) == tuple(sorted(p.stem for p in (SHIPPED / kind).glob("*.yaml")))


@pytest.mark.parametrize("name", preset_names("train"))
def test_training_preset_round_trips_through_the_validator(name: str) -> None:
    raw = yaml.safe_load((SHIPPED / "train" / f"{name}.yaml").read_text())
    settings = preset_settings(name)
    # the file already holds each value with its field's type: checking changes nothing (ints stay ints)
    assert [(k, type(v), v) for k, v in settings.items()] == [(k, type(v), v) for k, v in raw.items()]
    cfg = preset(name)
    assert {k: getattr(cfg, k) for k in settings} == settings
    assert cfg == TrainConfig().updated(**raw)


@pytest.mark.parametrize("name", preset_names("search"))
def test_search_preset_round_trips_through_the_validator(name: str) -> None:
    raw = yaml.safe_load((SHIPPED / "search" / f"{name}.yaml").read_text())
    p = load_preset(name)
    for section, values in (("search", p.search), ("score", p.score)):
        assert [(k, type(v), v) for k, v in values.items()] == [(k, type(v), v) for k, v in raw[section].items()]
    assert p.train_preset == raw["train_preset"] and p.train_preset in preset_names("train")
    cfg, score, train = resolve(name, None, None)
    assert cfg == SearchConfig().updated(**raw["search"]) and score == ScoreConfig().updated(**raw["score"])
    assert train == raw["train_preset"]


def test_auto_is_the_default_and_starts_from_the_papers_settings() -> None:
    assert DEFAULT_PRESET == "auto" and resolve(None, None, None) == resolve("auto", None, None)
    assert resolve("auto", None, None) == resolve("paper", None, None)
    assert resolve("auto", None, None)[:2] == (SearchConfig(), ScoreConfig())
    # the recipes auto chooses for the retraining, by the data's size, are presets
    chosen = [auto.data_budget(_Rows(rows, 5000), {})[1] for rows in (auto.PAPER_TRAIN_ROWS - 1, auto.PAPER_TRAIN_ROWS)]
    assert chosen == ["cpu-quick", "paper-final"] and set(chosen) <= set(preset_names("train"))


def test_cli_choices_are_the_preset_files() -> None:
    parser = build_parser()
    train, search = preset_names("train"), preset_names("search")
    assert _choices(parser, "train", "--preset") == train and _choices(parser, "supernet", "--preset") == train
    assert _choices(parser, "search", "--preset") == search and _choices(parser, "rankcheck", "--preset") == search
    assert _choices(parser, "rankcheck", "--train-preset") == train


def test_a_new_file_is_a_new_preset(presets: Path, tmp_path: Path) -> None:
    _write(presets / "train" / "tiny.yaml", "batch_size: 64\nlr: 0.05\nlayernorm: true\n")
    _write(presets / "search" / "tiny.yaml", "search: {population: 4, sample: 2}\ntrain_preset: tiny\n")
    assert "tiny" in preset_names("train") and "tiny" in preset_names("search")
    cfg = preset("tiny", epochs=3)
    assert (cfg.batch_size, cfg.lr, cfg.layernorm, cfg.epochs) == (64, 0.05, True, 3)
    s, sc, train = resolve("tiny", {"children": 2}, None)
    assert (s.population, s.sample, s.children, sc, train) == (4, 2, 2, ScoreConfig(), "tiny")
    parser = build_parser()
    assert "tiny" in _choices(parser, "train", "--preset") and "tiny" in _choices(parser, "search", "--preset")
    args = parser.parse_args(["search", "--supernet", "s", "--data", "d", "--out", "o", "--preset", "tiny"])
    assert args.preset == "tiny"
    given = {"data": {"format": "synthetic"}, "final": {"preset": "tiny"}, "search": {"preset": "tiny"}}
    cfg = resolve_config(given, tmp_path)
    assert cfg["final"]["preset"] == "tiny" and cfg["search"]["preset"] == "tiny"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("lr: '0.1'\n", "lr", "expected a number > 0 and <= 100"),
        # YAML 1.1 reads a number without a dot in the mantissa as a string: caught, not passed on
        ("lr: 1e-3\n", "lr", "got '1e-3'"),
        ("batch_size: 512.0\n", "batch_size", "expected an integer >= 1, got 512.0"),
        ("shuffle: 'yes'\n", "shuffle", "expected true or false, got 'yes'"),
        ("epochs: true\n", "epochs", "expected an integer >= 1, got true"),
        ("optimizer: adamw\n", "optimizer", "expected one of"),
        ("learning_rate: 0.1\n", "learning_rate", "unknown key (known: "),
        ("optimizer: sgd\neps: 0.001\n", "eps", "sgd has no eps"),
    ],
)
def test_a_bad_training_preset_is_one_line_naming_file_and_key(
    presets: Path, text: str, key: str, problem: str
) -> None:
    path = _write(presets / "train" / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        preset("bad")
    assert e.value.key == key and problem in e.value.problem
    assert str(e.value).startswith(f"training preset {path} {key}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("search: {population: '16'}\ntrain_preset: cpu-quick\n", "search.population", "expected an integer >= 1"),
        ("score: {finetune_steps: 2.5}\ntrain_preset: cpu-quick\n", "score.finetune_steps", "expected an integer"),
        ("search: {population: 4, sample: 8}\ntrain_preset: cpu-quick\n", "search.sample", "exceeds population"),
        ("search: {populaton: 4}\ntrain_preset: cpu-quick\n", "search.populaton", "unknown key"),
        ("search: [16]\ntrain_preset: cpu-quick\n", "search", "expected a mapping, got list"),
        ("search: null\ntrain_preset: cpu-quick\n", "search", "expected a mapping, got null"),
        ("train_preset: gpu\n", "train_preset", "expected one of cpu-quick, cpu-supernet, paper-final"),
        ("train_preset: 3\n", "train_preset", "got 3"),
        ("search: {}\n", "train_preset", "missing"),
        ("sarch: {}\ntrain_preset: cpu-quick\n", "sarch", "unknown key (known: score, search, train_preset)"),
    ],
)
def test_a_bad_search_preset_is_one_line_naming_file_and_key(presets: Path, text: str, key: str, problem: str) -> None:
    path = _write(presets / "search" / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        resolve("bad", None, None)
    assert e.value.key == key and problem in e.value.problem
    assert str(e.value).startswith(f"search preset {path} {key}: ") and "\n" not in str(e.value)


def test_unknown_and_malformed_preset_files(presets: Path) -> None:
    with pytest.raises(NasrecError, match=r"unknown preset 'gpu' \(expected one of: cpu-quick, cpu-supernet, "):
        preset("gpu")
    with pytest.raises(NasrecError, match=r"unknown search preset 'gpu' \(expected one of: auto, cpu, cpu-quick, "):
        resolve("gpu", None, None)
    _write(presets / "train" / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(NasrecError, match=r"list\.yaml: a training preset is a mapping of settings, not list"):
        preset("list")
    _write(presets / "train" / "broken.yaml", "lr: [0.1\n")
    with pytest.raises(NasrecError, match=r"broken\.yaml: cannot parse training preset"):
        preset("broken")
    _write(presets / "train" / "empty.yaml", "")
    assert preset("empty") == TrainConfig()
