"""A training recipe: which model, its hyper-parameters and the training settings, as one YAML file.

`nasrec tune` writes its best trial as one (`best_recipe.yaml`); `nasrec train --recipe FILE` trains it.
Every zoo model has a default recipe, `nasrec/presets/recipes/<model>.yaml`: what `nasrec train --model
NAME` trains with when given no --preset or --recipe (`default_recipe`). Its training settings lie over
`TrainConfig`'s defaults; a tuned recipe holds every setting.

    # comments: where the recipe comes from (tune, trial, validation metrics)
    model: deepfm                 # a zoo model; or, for a nasrec architecture:
    # arch: /abs/path/arch.json   #   its file,
    # arch_hash: 3f2a...          #   and the hash of its canonical form (the file must still hold it)
    hparams: {embedding_dim: 16, mlp_dims: [400, 400], dropout: 0.1}   # zoo models only
    train: {lr: 0.05, batch_size: 512, ...}                            # TrainConfig fields

Every key is checked when the file is read, in one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasrec.configfile import PRESET_DIR, ConfigError, check_mapping, read_config_file
from nasrec.errors import NasrecError
from nasrec.rundir import atomic_write_text
from nasrec.space.arch import Architecture
from nasrec.train.config import RULES, TrainConfig

KEYS = ("model", "arch", "arch_hash", "hparams", "train")
# Where a run happens is not part of its recipe (a run may move between machines).
NOT_IN_RECIPE = ("device",)


@dataclass(frozen=True)
class Recipe:
    """A model (zoo name, or architecture file and hash), its hyper-parameters and its training settings."""

    model: str | None = None
    arch: str | None = None
    arch_hash: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The model it is for, in words: `zoo model 'deepfm'` or `architecture 3f2a... (arch.json)`."""
        if self.model is not None:
            return f"zoo model {self.model!r}"
        return f"architecture {self.arch_hash} ({self.arch})"

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (keys in KEYS order, absent ones left out)."""
        out: dict[str, Any] = {"model": self.model} if self.model is not None else {}
        if self.arch is not None:
            out.update(arch=self.arch, arch_hash=self.arch_hash)
        if self.hparams:
            out["hparams"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        out["train"] = dict(self.train)
        return out


def recipe_train_settings(cfg: TrainConfig) -> dict[str, Any]:
    """A configuration's fields as a recipe keeps them: all of them (defaults may change), less the device."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RECIPE}


def write_recipe(path: str | Path, recipe: Recipe, header: list[str] | None = None) -> None:
    """Write a recipe as YAML (atomically), with `header` lines as comments on top."""
    import yaml

    text = "".join(f"# {line}\n" for line in header or [])
    text += yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=False)
    atomic_write_text(Path(path), text)


def read_recipe(path: str | Path) -> Recipe:
    """A recipe file, checked: known keys, one model, known hyper-parameters, valid training settings."""
    from nasrec.zoo.registry import default_hparams

    what = f"recipe {path}"
    raw = read_config_file(path, "recipe")
    if not isinstance(raw, dict):
        raise ConfigError(what, "(top level)", "expected a mapping with model or arch, hparams and train")
    for key in raw:
        if key not in KEYS:
            raise ConfigError(what, str(key), f"unknown key (known: {', '.join(KEYS)})")
    model, arch, arch_hash = raw.get("model"), raw.get("arch"), raw.get("arch_hash")
    if (model is None) == (arch is None):
        raise ConfigError(what, "model", "give exactly one of model (a zoo name) or arch (an architecture file)")
    for key, value in (("model", model), ("arch", arch), ("arch_hash", arch_hash)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(what, key, f"expected a string, got {type(value).__name__}")
    if arch is not None and arch_hash is None:
        raise ConfigError(what, "arch_hash", "missing (the hash of the architecture the recipe was made for)")
    hparams = _mapping(what, raw, "hparams")
    if model is not None:
        try:
            known = default_hparams(model)
        except NasrecError as e:
            raise ConfigError(what, "model", str(e)) from None
        for k in hparams:
            if k not in known:
                raise ConfigError(what, f"hparams.{k}", f"unknown key (known: {', '.join(known) or 'none'})")
    elif hparams:
        raise ConfigError(what, "hparams", "a nasrec architecture has no hyper-parameters (its file says it all)")
    train = check_mapping(what, "train", _mapping(what, raw, "train"), TrainConfig, RULES, exclude=NOT_IN_RECIPE)
    try:
        TrainConfig().updated(**train)  # the combinations too (eps with sgd)
    except ConfigError as e:
        raise ConfigError(what, f"train.{e.key}", e.problem) from None
    return Recipe(model=model, arch=arch, arch_hash=arch_hash, hparams=hparams, train=train)


def _mapping(what: str, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(what, key, f"expected a mapping, got {type(value).__name__}")
    return value


def recipe_model(
    path: str | Path, recipe: Recipe, arch: str | None, model: str | None
) -> tuple[str | None, str | None]:
    """The (arch, model) to train with a recipe: the recipe's, or the one given, which must be the recipe's kind."""
    if arch is None and model is None:
        if recipe.arch is not None:
            _check_hash(path, recipe, Architecture.load(recipe.arch), recipe.arch)
        return recipe.arch, recipe.model
    if model is not None:
        if recipe.model != model:
            raise NasrecError(f"{path}: a recipe for {recipe.kind}, not for zoo model {model!r}")
        return None, model
    a = Architecture.load(arch)  # type: ignore[arg-type]
    if recipe.arch is None:
        raise NasrecError(f"{path}: a recipe for {recipe.kind}, not for architecture {a.hash()} ({arch})")
    _check_hash(path, recipe, a, arch)  # type: ignore[arg-type]
    return arch, None


def _check_hash(path: str | Path, recipe: Recipe, a: Architecture, arch_file: str) -> None:
    if a.hash() != recipe.arch_hash:
        raise NasrecError(f"{path}: a recipe for {recipe.kind}, not for architecture {a.hash()} ({arch_file})")


# Settings of which a run takes one: the caller's choice of one drops the recipe's other.
EXCLUSIVE = (("eval_every", "evals_per_epoch"), ("path_warmup_steps", "path_warmup_fraction"))


def merged(recipe: Recipe, hparams: dict[str, Any] | None, overrides: dict[str, Any] | None) -> tuple[dict, dict]:
    """(hparams, training settings) of a recipe with the caller's on top."""
    train, given = dict(recipe.train), dict(overrides or {})
    for a, b in EXCLUSIVE:
        for mine, other in ((a, b), (b, a)):
            if mine in given:
                train.pop(other, None)
    return {**recipe.hparams, **(hparams or {})}, {**train, **given}


RECIPE_DIR = PRESET_DIR / "recipes"


def default_recipe(model: str) -> Recipe | None:
    """The default recipe of zoo model `model` (nasrec/presets/recipes/<model>.yaml), or None without one."""
    path = RECIPE_DIR / f"{model}.yaml"
    if not path.is_file():
        return None
    recipe = read_recipe(path)
    if recipe.model != model:  # a packaging mistake, not a user's: say which file
        raise NasrecError(f"{path}: the default recipe of {model!r} is for {recipe.kind}")
    return recipe


def apply_recipe(
    recipe: Recipe | str, model: str | None, preset_name: str | None, hparams: dict | None, overrides: dict | None
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(hparams, overrides, source) of a recipe with the caller's on top; "default" is the zoo model's own."""
    if preset_name is not None:
        raise NasrecError("give a recipe or a preset, not both (a recipe holds the training settings)")
    if recipe == "default":
        found = default_recipe(model) if model is not None else None
        if found is None:
            return dict(hparams or {}), dict(overrides or {}), None
        return (*merged(found, hparams, overrides), f"its default recipe, nasrec/presets/recipes/{model}.yaml")
    if not isinstance(recipe, Recipe):
        raise NasrecError(f"recipe must be 'default' or a Recipe, got {recipe!r}")
    if recipe.model != model:
        raise NasrecError(f"a recipe for {recipe.kind}, not for zoo model {model!r}")
    return *merged(recipe, hparams, overrides), None
