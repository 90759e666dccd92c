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
    small_data:                   # optional: what changes when the train split is small
      below_rows: 50000           #   applies when the train split has fewer rows than this,
      below_positives: 12500      #   or (optional) fewer examples of its rarer label
      hparams: {batchnorm: false}
      train: {batch_size: 256}

Every key is checked when the file is read, in one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nasrec.configfile import PRESET_DIR, ConfigError, check_mapping, read_config_file
from nasrec.errors import NasrecError
from nasrec.rundir import atomic_write_text
from nasrec.space.arch import Architecture
from nasrec.train.config import RULES, TrainConfig

KEYS = ("model", "arch", "arch_hash", "hparams", "train", "small_data")
SMALL_KEYS = ("below_rows", "below_positives", "hparams", "train")
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
    # {"below_rows": N, "below_positives": P, "hparams": {...}, "train": {...}}: laid over the rest when the
    # train split is small, in rows or in examples of its rarer label (0.3 % clicks in 160,000 rows: 462)
    small_data: dict[str, Any] | None = None

    def small(self, train_rows: int | None, train_positives: int | None = None) -> bool:
        """Whether the small-data settings apply to a train split of `train_rows` rows, `train_positives` of the rarer label."""
        if self.small_data is None or train_rows is None:
            return False
        below = self.small_data.get("below_positives")
        few = below is not None and train_positives is not None and train_positives < below
        return train_rows < self.small_data["below_rows"] or few

    def for_rows(self, train_rows: int | None, train_positives: int | None = None) -> Recipe:
        """The recipe for a train split of that size: with its small-data settings merged in where they apply."""
        if not self.small(train_rows, train_positives):
            return replace(self, small_data=None)
        assert self.small_data is not None
        return replace(
            self,
            hparams={**self.hparams, **self.small_data.get("hparams", {})},
            train={**self.train, **self.small_data.get("train", {})},
            small_data=None,
        )

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
        if self.small_data is not None:
            out["small_data"] = dict(self.small_data)
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
    train = _train_settings(what, _mapping(what, raw, "train"), "train", {})
    small = _small_data(what, raw, model, known if model is not None else {}, train)
    return Recipe(model=model, arch=arch, arch_hash=arch_hash, hparams=hparams, train=train, small_data=small)


def _train_settings(what: str, values: dict[str, Any], key: str, under: dict[str, Any]) -> dict[str, Any]:
    """Training settings `values` (named `key` in errors), checked; with those of `under`, a valid configuration."""
    train = check_mapping(what, key, values, TrainConfig, RULES, exclude=NOT_IN_RECIPE)
    try:
        TrainConfig().updated(**{**under, **train})  # the combinations too (eps with sgd)
    except ConfigError as e:
        raise ConfigError(what, f"{key}.{e.key}", e.problem) from None
    return train


def _small_data(
    what: str, raw: dict[str, Any], model: str | None, known: dict[str, Any], train: dict[str, Any]
) -> dict[str, Any] | None:
    """The checked `small_data` section: below_rows (required), hparams and train laid over the recipe's."""
    if "small_data" not in raw:
        return None
    section = _mapping(what, raw, "small_data")
    for key in section:
        if key not in SMALL_KEYS:
            raise ConfigError(what, f"small_data.{key}", f"unknown key (known: {', '.join(SMALL_KEYS)})")
    rows = section.get("below_rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(what, "small_data.below_rows", f"expected a number of training rows >= 1, got {rows!r}")
    hparams = _mapping(what, section, "hparams", "small_data.hparams")
    for k in hparams:
        if model is None:
            raise ConfigError(what, "small_data.hparams", "a nasrec architecture has no hyper-parameters")
        if k not in known:
            raise ConfigError(what, f"small_data.hparams.{k}", f"unknown key (known: {', '.join(known) or 'none'})")
    small_train = _train_settings(what, _mapping(what, section, "train", "small_data.train"), "small_data.train", train)
    out = {"below_rows": rows, "hparams": hparams, "train": small_train}
    if "below_positives" in section:
        positives = section["below_positives"]
        if isinstance(positives, bool) or not isinstance(positives, int) or positives < 1:
            raise ConfigError(
                what, "small_data.below_positives", f"expected a number of training examples >= 1, got {positives!r}"
            )
        out["below_positives"] = positives
    return out


def _mapping(what: str, raw: dict[str, Any], key: str, name: str | None = None) -> dict[str, Any]:
    """`raw[key]`, a mapping ({} when absent); `name` is the key as errors give it (default `key`)."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(what, name or key, f"expected a mapping, got {type(value).__name__}")
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


def merged(
    recipe: Recipe,
    hparams: dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    train_rows: int | None = None,
    train_positives: int | None = None,
) -> tuple[dict, dict]:
    """(hparams, training settings) of a recipe for a train split of that size, with the caller's on top."""
    recipe = recipe.for_rows(train_rows, train_positives)
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
    recipe: Recipe | str,
    model: str | None,
    preset_name: str | None,
    hparams: dict | None,
    overrides: dict | None,
    train_rows: int | None = None,
    train_positives: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(hparams, overrides, source) of a recipe with the caller's on top; "default" is the zoo model's own.

    `train_rows` and `train_positives` (examples of the rarer label): the train split's size, which decides
    whether the recipe's small-data settings apply.
    """
    size = (train_rows, train_positives)
    check_recipe(recipe, model, preset_name)
    if recipe == "default":
        found = default_recipe(model) if model is not None else None
        if found is None:
            return dict(hparams or {}), dict(overrides or {}), None
        source = f"its default recipe, nasrec/presets/recipes/{model}.yaml" + _small_note(found, *size)
        return (*merged(found, hparams, overrides, *size), source)
    assert isinstance(recipe, Recipe)
    note = _small_note(recipe, *size)
    return *merged(recipe, hparams, overrides, *size), (f"the recipe{note}" if note else None)


def check_recipe(recipe: Recipe | str, model: str | None, preset_name: str | None) -> None:
    """Errors of a recipe choice that need no data: a preset as well, or a recipe for another model."""
    if preset_name is not None:
        raise NasrecError("give a recipe or a preset, not both (a recipe holds the training settings)")
    if recipe == "default":
        return
    if not isinstance(recipe, Recipe):
        raise NasrecError(f"recipe must be 'default' or a Recipe, got {recipe!r}")
    if recipe.model != model:
        raise NasrecError(f"a recipe for {recipe.kind}, not for zoo model {model!r}")


def _small_note(recipe: Recipe, train_rows: int | None, train_positives: int | None = None) -> str:
    """Where the small-data settings apply, the words that say so."""
    if not recipe.small(train_rows, train_positives):
        return ""
    assert recipe.small_data is not None and train_rows is not None
    if train_rows < recipe.small_data["below_rows"]:
        return f", small-data settings: {train_rows:,} training rows < {recipe.small_data['below_rows']:,}"
    return (
        f", small-data settings: {train_positives:,} training examples of the rarer label"
        f" < {recipe.small_data['below_positives']:,}"
    )
