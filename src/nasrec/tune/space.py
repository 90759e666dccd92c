"""What a tune searches over: a recipe's training settings and model hyper-parameters, each a distribution.

A space is a mapping from a name (a `TrainConfig` field, or a hyper-parameter of the model being tuned)
to one of:

    lr: {log: [0.01, 0.3]}            # a number, uniform in log scale
    dropout: {uniform: [0.0, 0.5]}    # a number
    cross_layers: {int: [1, 4]}       # an integer, both ends included
    batch_size: {choice: [256, 512]}  # one of the values (lists too: mlp_dims: {choice: [[400, 400], [200]]})
    weight_decay: 0.0                 # a fixed value (any value that is not one of the mappings above)

`default_space` derives one from the model's hyper-parameters (`nasrec.zoo.registry.default_hparams`) and
the base training configuration; `load_space` reads a user's YAML file, and refuses an unknown name or
form in one line naming the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrec.configfile import ConfigError, check_value, read_config_file
from nasrec.train.config import RULES, TrainConfig

KINDS = ("choice", "int", "log", "uniform")
# Set by the tune for every trial (its evaluations feed the pruner), so not searchable.
RESERVED = ("eval_every", "eval_split", "device")
# A bottom MLP's last width is DLRM's interacting vector: it follows embedding_dim (`nasrec.zoo.dnn.DLRM`).
_TIED_TO_EMBEDDING = ("bottom_mlp",)


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting: `kind` is one of KINDS or "fixed"; `where` is "train" or "model"."""

    name: str
    where: str
    kind: str
    values: tuple[Any, ...]  # (low, high) for int/log/uniform, the choices for choice, (value,) for fixed

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (as a user writes it)."""
        if self.kind == "fixed":
            return {self.name: _plain(self.values[0])}
        return {self.name: {self.kind: [_plain(v) for v in self.values]}}

    def suggest(self, trial: Any) -> Any:
        """This setting's value for an Optuna trial (lists as lists; a fixed value is not suggested)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "log":
            return trial.suggest_float(self.name, *self.values, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, *self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, *self.values)
        labels = [_label(v) for v in self.values]
        return self.decode(trial.suggest_categorical(self.name, labels))

    def decode(self, stored: Any) -> Any:
        """A value as Optuna stored it (a list choice is stored as its JSON text) back to the setting's value."""
        if self.kind == "choice" and any(isinstance(v, list | tuple | dict) for v in self.values):
            return json.loads(stored)
        return stored


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _label(v: Any) -> Any:
    """Optuna's categorical values are scalars: a list choice is stored as its JSON text."""
    return json.dumps(_plain(v)) if isinstance(v, list | tuple | dict) else v


@dataclass(frozen=True)
class TuneSpace:
    """The settings a tune searches, in order (the order Optuna is asked in, which its seeded draws follow)."""

    params: tuple[Param, ...]

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form of the whole space."""
        out: dict[str, Any] = {}
        for p in self.params:
            out.update(p.to_dict())
        return out

    @property
    def searched(self) -> tuple[Param, ...]:
        """The settings that vary (not fixed)."""
        return tuple(p for p in self.params if p.kind != "fixed")

    def suggest(self, trial: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model hyper-parameters, training settings) for a trial."""
        return self.values({p.name: p.suggest(trial) for p in self.params})

    def from_params(self, stored: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model hyper-parameters, training settings) of a finished trial, from Optuna's stored params."""
        return self.values(
            {p.name: p.values[0] if p.kind == "fixed" else p.decode(stored[p.name]) for p in self.params}
        )

    def values(self, chosen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split chosen values into (model hyper-parameters, training settings), with tied widths made to agree."""
        model = {p.name: _plain(chosen[p.name]) for p in self.params if p.where == "model"}
        train = {p.name: chosen[p.name] for p in self.params if p.where == "train"}
        return model, train


def tie_widths(hparams: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Model hyper-parameters with a bottom MLP that ends in the embedding width (DLRM), whatever was drawn."""
    out = dict(hparams)
    for name in _TIED_TO_EMBEDDING:
        if name in defaults and "embedding_dim" in out:
            dims = list(out.get(name, defaults[name]))
            if dims:
                out[name] = [*dims[:-1], out["embedding_dim"]]
    return out


def default_space(model_defaults: dict[str, Any] | None, base: TrainConfig, train_rows: int) -> TuneSpace:
    """The space searched when no --space is given: lr, batch size, embedding L2, and the model's sizes.

    Around the base configuration: lr from a tenth to 3x its own (log), batch size half, same or double
    (those that fit the train split), embedding L2 from a thirtieth to 10x the base's (1e-7 to 1e-3 when
    the base has none). For a zoo model (`model_defaults`, its hyper-parameters): each dropout 0-0.5,
    embedding dim half, same or double, and for each MLP (a tuple of widths: mlp_dims, top_mlp, cin_dims)
    its default, half the widths, or one layer fewer. For a nasrec architecture (`model_defaults` None): the
    dropout on its blocks' dense outputs (`arch_dropout`), 0-0.5.
    """
    params = [Param("lr", "train", "log", (base.lr / 10, min(base.lr * 3, RULES["lr"].le or math.inf)))]
    sizes = [b for b in (base.batch_size // 2, base.batch_size, base.batch_size * 2) if 1 <= b <= train_rows]
    if len(sizes) > 1:
        params.append(Param("batch_size", "train", "choice", tuple(sizes)))
    if "embedding_l2" in TrainConfig.__dataclass_fields__:
        # around a base that has one (a recipe's), else the per-lookup form's useful range
        l2 = base.embedding_l2
        params.append(Param("embedding_l2", "train", "log", (l2 / 30, min(l2 * 10, 1.0)) if l2 else (1e-7, 1e-3)))
    # a nasrec architecture: its dropout is a training setting (a zoo model's, a hyper-parameter)
    if model_defaults is None:
        params.append(Param("arch_dropout", "train", "uniform", (0.0, 0.5)))
    for name, default in (model_defaults or {}).items():
        if name == "dropout" or name.endswith("_dropout"):
            params.append(Param(name, "model", "uniform", (0.0, 0.5)))
        elif name == "embedding_dim" and isinstance(default, int):
            params.append(Param(name, "model", "choice", (max(1, default // 2), default, default * 2)))
        elif _is_widths(default) and name not in _TIED_TO_EMBEDDING:
            dims = list(default)
            choices = [dims, [max(1, d // 2) for d in dims]] + ([dims[:-1]] if len(dims) > 1 else [])
            params.append(Param(name, "model", "choice", tuple(choices)))
    return TuneSpace(tuple(params))


def _is_widths(v: Any) -> bool:
    return isinstance(v, tuple | list) and len(v) > 0 and all(isinstance(d, int) for d in v)


def load_space(path: str | Path, model_defaults: dict[str, Any] | None) -> TuneSpace:
    """A user's space file (YAML/JSON), checked: known names, known forms, values of the right type and range."""
    what = f"tuning space {path}"
    raw = read_config_file(path, "tuning space")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(what, "(top level)", "expected a mapping of setting name to distribution")
    return parse_space(raw, model_defaults, what)


def parse_space(raw: dict[str, Any], model_defaults: dict[str, Any] | None, what: str) -> TuneSpace:
    """A space from its mapping form (see the module docstring); ConfigError names `what` and the key."""
    train_fields = [f for f in TrainConfig.__dataclass_fields__ if f not in RESERVED]
    model_names = list(model_defaults or {})
    params = []
    for key, spec in raw.items():
        name = str(key)
        if name in RESERVED:
            raise ConfigError(what, name, "set by nasrec tune for every trial, not searchable")
        if name in model_names:
            where = "model"
        elif name in train_fields:
            where = "train"
        else:
            known = ", ".join(sorted(set(train_fields) | set(model_names)))
            raise ConfigError(what, name, f"unknown key (known: {known})")
        p = _param(what, name, where, spec)
        if where == "train":
            for v in p.values:
                _check_train_value(what, name, v)
        params.append(p)
    return TuneSpace(tuple(params))


def _param(what: str, name: str, where: str, spec: Any) -> Param:
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        if isinstance(spec, dict) and len(spec) == 1:
            kind = next(iter(spec))
            raise ConfigError(what, f"{name}.{kind}", f"unknown distribution (expected one of {', '.join(KINDS)})")
        if isinstance(spec, dict):
            raise ConfigError(what, name, f"expected one of {', '.join(KINDS)} as the only key, or a fixed value")
        return Param(name, where, "fixed", (spec,))
    kind, values = next(iter(spec.items()))
    key = f"{name}.{kind}"
    if not isinstance(values, list) or not values:
        raise ConfigError(what, key, "expected a non-empty list")
    if kind == "choice":
        return Param(name, where, kind, tuple(values))
    if len(values) != 2:
        raise ConfigError(what, key, f"expected [low, high], got {len(values)} values")
    number = int if kind == "int" else float
    low, high = (check_value(what, key, v, number) for v in values)
    if not low < high:
        raise ConfigError(what, key, f"expected low < high, got {low} and {high}")
    if kind == "log" and low <= 0:
        raise ConfigError(what, key, f"a log scale needs low > 0, got {low}")
    return Param(name, where, kind, (low, high))


def _check_train_value(what: str, name: str, value: Any) -> None:
    """A training setting's value checked as TrainConfig would (type from its annotation, range from RULES)."""
    try:
        TrainConfig().updated(**{name: value})
    except ConfigError as e:
        if e.key == name:
            raise ConfigError(what, name, e.problem) from None
        # a combination with a default (eps with sgd): the trial's full configuration decides
