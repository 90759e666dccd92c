"""Reading a trained run back: its model description, configuration, metrics and weights, and its kind.

This layer reads files only; building the model from its description is `nasrec.train`'s `load_trained`.
The model kinds are `ModelSpec`'s (nasrec, zoo, supernet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError
from nasrec.rundir import names
from nasrec.rundir.io import read_json
from nasrec.rundir.results import RunMetrics

SUPERNET = "supernet"  # ModelSpec.kind of a weight-sharing supernet


def read_model(run: Path | str, what: str = "a training run") -> dict[str, Any]:
    """The model description (`model.json`) of a run; an error naming `what` the run should be when it has none."""
    model = read_json(Path(run) / names.MODEL_JSON)
    if model is None:
        raise NasrecError(f"{run}: not {what} (no {names.MODEL_JSON})")
    return model


def model_kind(run: Path | str) -> str | None:
    """The kind of model a run trained (nasrec, zoo, supernet), None when it is not a training run."""
    model = read_json(Path(run) / names.MODEL_JSON)
    return model.get("kind") if isinstance(model, dict) else None


def is_supernet(run: Path | str) -> bool:
    """Whether `run` is a supernet's training run."""
    return model_kind(run) == SUPERNET


def read_supernet(run: Path | str) -> dict[str, Any]:
    """The model description of a supernet run; an error for a directory that holds none, or another model."""
    model = read_model(run, "a supernet run directory")
    check_supernet(run, model.get("kind"))
    return model


def check_supernet(run: Path | str, kind: str | None) -> None:
    """Raise unless `kind` (the kind of `run`'s model) is a supernet's."""
    if kind != SUPERNET:
        raise NasrecError(f"{run}: not a supernet run (its model is {kind!r})")


def check_not_supernet(run: Path | str, kind: str | None, why: str) -> None:
    """Raise, saying `why`, when `run`'s model is a supernet (scored per architecture, not as one model)."""
    if kind == SUPERNET:
        raise NasrecError(f"{run}: {why}")


def read_train_config(run: Path | str) -> dict[str, Any] | None:
    """The `train` section of a run's config.json (its resolved TrainConfig), None when it has none."""
    config = read_json(Path(run) / names.CONFIG_JSON)
    return None if config is None else config["train"]


def trained_on(run: Path | str) -> Path:
    """The cache a training run was trained on (from its config.json)."""
    config = read_json(Path(run) / names.CONFIG_JSON)
    if config is None:
        raise NasrecError(f"{run}: not a training run (no {names.CONFIG_JSON})")
    return Path(config["data"])


def restores_best(run: Path | str) -> bool:
    """Whether a run's final model is its best evaluation's weights (TrainConfig.restore_best)."""
    try:
        return bool(json.loads((Path(run) / names.CONFIG_JSON).read_text())["train"].get("restore_best", False))
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return False


def weights_path(run: Path | str, which: str = "final") -> Path:
    """The checkpoint holding a run's `final` model (its best weights if it restores them) or its `best` one."""
    if which == "final" and restores_best(run):
        which = "best"
    return Path(run) / (names.BEST_PT if which == "best" else names.CHECKPOINT_PT)


def is_finished(run: Path | str) -> bool:
    """Whether a training run finished (it wrote its final metrics)."""
    return (Path(run) / names.METRICS_JSON).exists()


def read_metrics(run: Path | str) -> RunMetrics | None:
    """A finished run's final metrics (`metrics.json`), None when it has not finished."""
    d = read_json(Path(run) / names.METRICS_JSON)
    return None if d is None else RunMetrics.from_dict(d)
