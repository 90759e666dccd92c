"""Recipe settings: evaluations per epoch, the plateau schedule's knobs and the metric it follows."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import small_synth_cache

from nasrec.configfile import ConfigError
from nasrec.train.api import train
from nasrec.train.config import TrainConfig, preset

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
