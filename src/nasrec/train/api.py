"""Python entry points of the training stage, one per CLI command (train, supernet, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasrec import distributed, rundir
from nasrec.configfile import ConfigError
from nasrec.data.cache import Cache, open_cache
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.space.arch import Architecture
from nasrec.train.config import TrainConfig, preset
from nasrec.train.evaluation import evaluate, split_logits, train_size
from nasrec.train.loading import load_trained
from nasrec.train.recipe import Recipe, apply_recipe, check_recipe
from nasrec.train.resume import same_run
from nasrec.train.trainer import Trainer


def _config(preset_name: str | None, overrides: dict[str, Any] | None, resume: bool, out: Path) -> TrainConfig:
    saved_dict = rundir.read_train_config(out) if resume else None
    if saved_dict is not None:
        # The device is not part of the run's configuration: a run resumes on the device asked for now
        # (default: its own), so a GPU run can continue on a CPU.
        overrides = dict(overrides or {})
        device = overrides.pop("device", None)
        if device is not None:
            saved_dict["device"] = device
        saved = TrainConfig.from_dict(saved_dict)
        if preset_name or overrides:
            wanted = preset(preset_name, **overrides, device=saved.device)
            if same_run(wanted, saved):  # what is kept may change (keep_optimizer), not what is trained
                return saved.updated(keep_optimizer=wanted.keep_optimizer)
            raise NasrecError(f"{out}: --resume continues with the run's own configuration; drop --preset/--set")
        return saved
    return preset(preset_name, **(overrides or {}))


def train(
    data: str | Path,
    out: str | Path,
    *,
    arch: str | Path | Architecture | None = None,
    model: str | None = None,
    hparams: dict[str, Any] | None = None,
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    recipe: Recipe | str | None = None,
) -> dict[str, Any]:
    """Train a nasrec architecture (`arch`) or a zoo baseline (`model`) from scratch on a cache (torchrun-aware).

    `recipe="default"` trains a zoo model with its default recipe (`nasrec.train.recipe`), as `nasrec train
    --model NAME` does; a `Recipe` gives its settings. `hparams` and `overrides` lie over the recipe's.
    Without a recipe the settings are `TrainConfig`'s defaults, a preset's, and `overrides`.
    """
    if (arch is None) == (model is None):
        raise NasrecError("give exactly one of --arch FILE.json or --model NAME")
    source = None
    if recipe is not None:
        check_recipe(recipe, model, preset_name)  # before the data is read
    cache = open_cache(data)
    if recipe is not None:  # on resume too: the run's saved settings must be what the recipe gives
        size = train_size(cache)  # a recipe's small-data settings depend on it
        hparams, overrides, source = apply_recipe(recipe, model, preset_name, hparams, overrides, *size)
    out = Path(out)
    with _writing(out, "training run"):
        cfg = _config(preset_name, overrides, resume, out)
        common = dict(num_dense=len(cache.dense_fields), table_sizes=tuple(cache.table_sizes))
        zoo_keys = (
            ("arch_dropout", "dropout"),
            ("arch_max_embedding_std", "max_embedding_std"),
            ("arch_batchnorm", "batchnorm"),
            ("arch_head_centre", None),
        )
        for key, hparam in zoo_keys:
            changed = getattr(cfg, key) != getattr(TrainConfig, key)
            if changed and arch is None:
                take = f"takes --hparam {hparam}" if hparam else "has its own head"
                raise ConfigError("training config", key, f"applies to nasrec architectures; a zoo model {take}")
        if arch is not None:
            a = arch if isinstance(arch, Architecture) else Architecture.load(arch)
            spec = ModelSpec(kind="nasrec", arch=a.to_dict(), **cfg.arch_model_options(), **common)
        else:
            spec = ModelSpec(kind="zoo", zoo=model, hparams=dict(hparams or {}), **common)
        with distributed.process_group():  # under torchrun: data-parallel over its processes
            trainer = Trainer(spec, cache, cfg, out)
            if source:  # the run's first log line says where its settings come from
                trainer.progress.what += f" ({source})"
            return trainer.fit(resume=resume, progress=progress)


def _writing(out: Path, what: str):
    """The run directory's writer lock, taken by the writing process (rank 0) before its config is read."""
    return rundir.exclusive(out, what, enabled=distributed.is_main())


def train_supernet(
    data: str | Path,
    out: str | Path,
    *,
    space: str | Path = "full",
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    semantics: str = "slice",
    embedding_dim: int | None = None,
) -> dict[str, Any]:
    """Train a weight-sharing supernet over a search space on a cache (torchrun-aware).

    `embedding_dim` sets the space's token width (its own, 16 for the built-in spaces, when None): every
    architecture the search draws from the supernet has it.

    `semantics="mask"` trains one that runs paths as the reference does (full widths, then masks), to
    measure what nasrec's slicing changes; it computes at full width whatever the path, so it is slower.
    """
    from nasrec.space.space import get_space
    from nasrec.zoo.budget import resolve_caps

    cache = open_cache(data)
    out = Path(out)
    with _writing(out, "supernet run"):
        overrides = resolve_caps(overrides, data)
        if isinstance(overrides.get("path_max_latency_ms"), str):  # a zoo model's name, checked but not timed
            raise ConfigError(
                "training config",
                "path_max_latency_ms",
                "a zoo model's name is timed by `nasrec supernet` and the pipeline; from Python give milliseconds "
                "(nasrec.export.latency_caps.supernet_latency_cap resolves a name)",
            )
        cfg = _config(preset_name, overrides, resume, out)
        spec = ModelSpec(
            kind="supernet",
            space=get_space(space).at_embedding_dim(embedding_dim).to_dict(),
            num_dense=len(cache.dense_fields),
            table_sizes=tuple(cache.table_sizes),
            layernorm=True,
            hparams={} if semantics == "slice" else {"semantics": semantics},
            max_embedding_std=cfg.arch_max_embedding_std,
        )
        with distributed.process_group():  # under torchrun: data-parallel over its processes
            return Trainer(spec, cache, cfg, out).fit(resume=resume, progress=progress)


def evaluate_run(
    model_dir: str | Path, data: str | Path, split: str = "test", which: str = "final", device: str | None = None
) -> dict:
    """Log loss, AUC and calibration of a trained run's model on a split of a cache (on `device`, default cpu)."""
    cache = open_cache(data)
    model, spec = _load_for(model_dir, cache, which, device)
    return {"split": split, **evaluate(model, cache, split), **spec.cost()}


def _load_for(run: str | Path, cache: Cache, which: str, device: str | None) -> tuple[Any, ModelSpec]:
    """A trained run's model (not a supernet) whose input shape fits the cache."""
    model, spec = load_trained(run, which, device=device)
    rundir.check_not_supernet(run, spec.kind, "a supernet is scored per architecture (see the search stage)")
    if len(cache.dense_fields) != spec.num_dense or tuple(cache.table_sizes) != spec.table_sizes:
        raise NasrecError(f"{cache.path}: this cache's fields and table sizes differ from those of {run}")
    return model, spec


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    data: str | Path,
    split: str = "test",
    which: str = "final",
    level: float = 0.95,
    device: str | None = None,
) -> dict[str, Any]:
    """Two trained models on the same rows of a split: log loss and AUC of a minus b, with intervals over the rows."""
    from nasrec.train.compare import delong, paired_logloss

    cache = open_cache(data)
    (y, za), (_, zb) = (split_logits(_load_for(run, cache, which, device)[0], cache, split) for run in (run_a, run_b))
    return {
        "a": str(run_a),
        "b": str(run_b),
        "split": split,
        "logloss": paired_logloss(y, za, zb, level),
        "auc": delong(y, za, zb, level),
    }
