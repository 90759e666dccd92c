"""`tune`: Optuna's TPE over a training recipe, with pruning, resumable from SQLite storage in the run directory.

A tune's run directory holds `tune.db` (the Optuna study: every trial's parameters, intermediate and final
validation scores), `trials/NNNN/` (each trial's training run), `best_recipe.yaml` (the best trial as a
recipe for `nasrec train --recipe`), `tune.json` (the summary) and `nasrec.log`.

Determinism: trial k draws its parameters from a TPE sampler seeded by (seed, k) over the trials before
it, so with one worker the same command gives the same trials, and a resumed tune draws as an
uninterrupted one would have from the same history. Trials that were running when a tune was killed are
marked failed on resume and retried with the same parameters; `trials` counts finished trials (complete
or pruned), the ones of earlier sessions included. With several workers (processes sharing the storage),
trials are drawn one at a time, but which history each sees depends on timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import logging.handlers
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.console import LOG_NAME, duration
from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError
from nasrec.space.arch import Architecture
from nasrec.train.config import preset
from nasrec.train.evaluation import train_size
from nasrec.train.recipe import Recipe, apply_recipe, write_recipe
from nasrec.tune.space import default_space, load_space, parse_space
from nasrec.tune.trial import Outcome, TuneSettings, run_trial

log = logging.getLogger(__name__)

TUNE_DB = "tune.db"
BEST_RECIPE = "best_recipe.yaml"
TUNE_JSON = "tune.json"
STUDY_NAME = "nasrec-tune"
METRICS = ("logloss", "auc")
_ASK_LOCK = ".tune-ask.lock"


def optuna_module() -> Any:
    """Optuna, imported on first use (an optional dependency); without it, a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise NasrecError("nasrec tune needs optuna: pip install 'nasrec[tune]' (or pip install 'optuna>=4')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tune reports its trials itself
    return optuna


def tune(
    data: str | Path,
    out: str | Path,
    *,
    arch: str | Path | None = None,
    model: str | None = None,
    hparams: dict[str, Any] | None = None,
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    space: str | Path | None = None,
    trials: int = 20,
    timeout: float | None = None,
    workers: int = 1,
    seed: int = 0,
    metric: str = "logloss",
    evals: int = 4,
    prune: bool = True,
    recipe: Recipe | str | None = None,
) -> dict[str, Any]:
    """Tune a training recipe of a zoo model (`model`) or architecture (`arch`) on a cache; the summary.

    `recipe="default"` starts from the zoo model's default recipe (as `nasrec tune --model NAME` does
    without --preset): its settings are the base, its hyper-parameters the centre of the space.
    """
    from nasrec.zoo.registry import default_hparams

    if (arch is None) == (model is None):
        raise NasrecError("give exactly one of --arch FILE.json or --model NAME")
    if metric not in METRICS:
        raise NasrecError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    for name, value, low in (("--trials", trials, 1), ("--workers", workers, 1), ("--evals", evals, 1)):
        if value < low:
            raise NasrecError(f"{name} must be >= {low}, not {value}")
    optuna = optuna_module()
    cache = open_cache(data)
    if "val" not in cache.split_names or not len(cache.split_index("val")):
        raise NasrecError(
            f"{cache.path}: no validation rows, and nasrec tune scores every trial on the val split "
            "(prepare the cache with a val share, e.g. --ratios 0.8 0.1 0.1)"
        )
    train_rows = len(cache.split_index("train"))
    if recipe is not None:  # as `nasrec train --model NAME`: the recipe is the base
        hparams, overrides, _ = apply_recipe(recipe, model, preset_name, hparams, overrides, *train_size(cache))
    base = preset(preset_name, **(overrides or {}))
    hparams = dict(hparams or {})
    if model is not None:
        known = default_hparams(model)
        unknown = [k for k in hparams if k not in known]
        if unknown:
            raise NasrecError(f"zoo model {model!r} has no hyper-parameter {unknown[0]!r} (it has: {', '.join(known)})")
        # the space centres on the values given (the recipe's, e.g. its embedding dim), not the constructor's
        defaults: dict[str, Any] | None = {**known, **hparams}
        a = None
    else:
        defaults, a = None, Architecture.load(arch)  # type: ignore[arg-type]
    the_space = load_space(space, defaults) if space is not None else default_space(defaults, base, train_rows)
    if not the_space.searched:
        raise NasrecError("the tuning space fixes every setting: nothing to search")
    out = Path(out)
    settings = TuneSettings(
        data=str(Path(cache.path).resolve()),
        out=str(out.resolve()),
        model=model,
        arch=a.to_dict() if a is not None else None,
        arch_file=str(Path(arch).resolve()) if arch is not None else None,
        arch_hash=a.hash() if a is not None else None,
        hparams=hparams,
        model_defaults=_plain(defaults),
        base=base.to_dict(),
        space=_plain(the_space.to_dict()),
        metric=metric,
        seed=seed,
        evals=evals,
        prune=prune,
    )
    with rundir.exclusive(out, "tune run"):
        _check_dir(out)
        study = _open_study(optuna, settings)
        retried = _retry_killed(optuna, study)
        done = _counted(optuna, study)
        what = model if model is not None else f"architecture {settings.arch_hash}"
        log.info(
            "tuning %s on %s into %s: %d trials (%d done%s), %s, %d worker%s, TPE seed %d, %s",
            what,
            cache.path,
            out,
            trials,
            done,
            f", {retried} interrupted one{'s' if retried != 1 else ''} to retry" if retried else "",
            f"validation {metric}" + (f", pruning from evaluation 2 of {evals}" if prune and evals > 2 else ""),
            workers,
            "s" if workers > 1 else "",
            seed,
            "searching " + ", ".join(p.name for p in the_space.searched),
        )
        t0 = time.perf_counter()
        deadline = time.time() + timeout if timeout else None
        _run_workers(settings, trials, deadline, workers)
        summary = summarize(optuna, study, settings, time.perf_counter() - t0)
        _write_best(optuna, study, settings)
        rundir.atomic_write_json(out / TUNE_JSON, {**summary, "trials_list": _trial_list(optuna, study, settings)})
    best = summary["best"]
    if best is not None:
        log.info(
            "tuned in %s: %d trials (%d complete, %d pruned), best trial %d: val log loss %s, AUC %s; recipe %s",
            duration(summary["seconds"]),
            summary["trials"],
            summary["complete"],
            summary["pruned"],
            best["trial"],
            _num(best["val_logloss"]),
            _num(best["val_auc"]),
            summary["recipe"],
        )
    else:
        log.warning("no trial completed: no best recipe written")
    return summary


def _plain(obj: Any) -> Any:
    """JSON's view of a value (tuples as lists), so that settings compare equal after a round trip."""
    return json.loads(json.dumps(obj))


def _num(x: Any, digits: int = 5) -> str:
    return "n/a" if not isinstance(x, int | float) or not math.isfinite(x) else f"{x:.{digits}f}"


def _check_dir(out: Path) -> None:
    """A tune's directory: new, empty, or holding a tune (which this one continues)."""
    if (out / TUNE_DB).exists():
        return
    other = [e.name for e in out.iterdir() if not e.name.startswith(".") and e.name != LOG_NAME]
    if other:
        raise NasrecError(f"{out} is not empty and holds no tune ({TUNE_DB}); use a new directory")


def _storage(optuna: Any, out: str | Path) -> Any:
    return optuna.storages.RDBStorage(f"sqlite:///{(Path(out) / TUNE_DB).resolve()}")


def _pruner(optuna: Any, settings: TuneSettings) -> Any:
    # The first 5 completed trials set the median. A trial's first evaluation (a quarter of its training by
    # default) is not judged: there the batch size and the warm-up decide more than the recipe's end (on
    # Frappe, trials 0.35 at the first evaluation and median there ended among the best at 0.28). Optuna
    # judges steps >= n_warmup_steps, and evaluation k is step k.
    if not settings.prune or settings.evals < 3:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def _sampler(optuna: Any, seed: int, index: int) -> Any:
    """The TPE sampler that draws trial `index`: seeded by (seed, index), so a resumed tune draws as one that ran on."""
    import numpy as np

    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def _open_study(optuna: Any, settings: TuneSettings) -> Any:
    """The study in the run directory: created, or continued if its settings are these."""
    direction = "minimize" if settings.metric == "logloss" else "maximize"
    study = optuna.create_study(
        storage=_storage(optuna, settings.out),
        study_name=STUDY_NAME,
        direction=direction,
        load_if_exists=True,
        pruner=_pruner(optuna, settings),
    )
    ident = _plain(settings.identity())
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", ident)
    elif saved != ident:
        key, then, now = _first_difference(saved, ident)
        raise NasrecError(
            f"{settings.out}: this tune was started with {key} {json.dumps(then)}, not {json.dumps(now)}; "
            "give the same options to continue it, or use another --out"
        )
    return study


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any]:
    """The first key (dotted path) where two JSON values differ, and its two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return path, a, b


def _retry_killed(optuna: Any, study: Any) -> int:
    """Trials left running by a killed tune (this process holds the lock: none runs now): failed, then retried."""
    states = optuna.trial.TrialState
    storage = study._storage  # the RDBStorage this study was opened with
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    stale = study.get_trials(deepcopy=False, states=(states.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, states.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return len(stale)


def _counted(optuna: Any, study: Any, running: bool = False) -> int:
    """Trials that count towards --trials: finished (complete or pruned), and with `running` those under way."""
    s = optuna.trial.TrialState
    states = (s.COMPLETE, s.PRUNED, s.RUNNING) if running else (s.COMPLETE, s.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


# -- workers ------------------------------------------------------------------------------------
def _run_workers(settings: TuneSettings, total: int, deadline: float | None, workers: int) -> None:
    """Trials until `total` are counted or the deadline passes: here, and in `workers - 1` more processes."""
    if workers == 1:
        work(settings, total, deadline, 0, None)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch state or threads inherited
    queue = ctx.Queue()
    listener = logging.handlers.QueueListener(queue, _ToCommandLog())
    listener.start()
    level = logging.getLogger("nasrec").getEffectiveLevel()
    procs = [
        ctx.Process(target=_child, args=(settings, total, deadline, i, threads, queue, level), daemon=True)
        for i in range(1, workers)
    ]
    try:
        for p in procs:
            p.start()
        try:
            work(settings, total, deadline, 0, threads)
        except BaseException:
            for p in procs:
                p.terminate()  # their running trials are retried when the tune resumes
            raise
        finally:
            for p in procs:
                p.join()
    finally:
        listener.stop()
    failed = [i for i, p in enumerate(procs, 1) if p.exitcode != 0]
    if failed:
        raise NasrecError(f"tune worker {failed[0]} stopped with an error (its line is above)")


class _ToCommandLog(logging.Handler):
    """Records of worker processes, handed to this process's `nasrec` logger (stderr and the run log)."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        logging.getLogger("nasrec").handle(record)
        return True


def _child(
    settings: TuneSettings, total: int, deadline: float | None, worker: int, threads: int, queue: Any, level: int
) -> None:
    """A worker process: its log records go to the parent through `queue`; an error is one line there."""
    logger = logging.getLogger("nasrec")
    logger.handlers = [logging.handlers.QueueHandler(queue)]
    logger.setLevel(level)
    logger.propagate = False
    try:
        work(settings, total, deadline, worker, threads)
    except NasrecError as e:
        log.error("tune worker %d: %s", worker, e)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception:
        log.exception("tune worker %d failed", worker)
        raise SystemExit(1) from None


@contextlib.contextmanager
def _asking(out: str) -> Iterator[None]:
    """One worker at a time counts the trials and draws the next one (a blocking file lock)."""
    with open(Path(out) / _ASK_LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def work(settings: TuneSettings, total: int, deadline: float | None, worker: int, threads: int | None) -> None:
    """One worker's loop: draw a trial, train it, tell the study; until `total` are counted or the deadline."""
    optuna = optuna_module()
    states = optuna.trial.TrialState
    if threads is not None and settings.base.get("threads") is None:
        import torch

        torch.set_num_threads(threads)  # workers share the cores
    cache = open_cache(settings.data)
    train_rows = len(cache.split_index("train"))
    space = parse_space(settings.space, settings.model_defaults, "tuning space")
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=_storage(optuna, settings.out), pruner=_pruner(optuna, settings)
    )
    parent = mp.parent_process()
    while True:
        with _asking(settings.out):
            if deadline is not None and time.time() >= deadline:
                break
            if parent is not None and not parent.is_alive():  # the tune was killed: leave the storage alone
                break
            if _counted(optuna, study, running=True) >= total:
                break
            # failed trials (killed ones, retried) take no index: a resumed tune draws as an unbroken one
            drawn_before = len([t for t in study.get_trials(deepcopy=False) if t.state != states.FAIL])
            study.sampler = _sampler(optuna, settings.seed, drawn_before)
            trial = study.ask()
            drawn = space.suggest(trial)  # drawn in turn, each seeing the trials asked before
        try:
            outcome = run_trial(settings, cache, trial, train_rows, drawn)
        except Exception:
            study.tell(trial, state=states.FAIL)
            raise
        for key, value in _plain(outcome.attrs).items():
            trial.set_user_attr(key, value)
        state = {"complete": states.COMPLETE, "pruned": states.PRUNED, "failed": states.FAIL}[outcome.state]
        study.tell(trial, outcome.value if outcome.state == "complete" else None, state=state)
        _say(optuna, study, settings, trial.number, outcome, total)
        if worker == 0:
            _write_best(optuna, study, settings)


def _say(optuna: Any, study: Any, settings: TuneSettings, number: int, o: Outcome, total: int) -> None:
    """The trial's line in the log: how it ended, its drawn settings, the best so far."""
    m = settings.metric
    if o.state == "complete":
        how = f"val log loss {_num(o.attrs.get('val_logloss'))}, AUC {_num(o.attrs.get('val_auc'))}"
    else:
        how = o.note
    drawn = study.get_trials(deepcopy=False)[number].params
    shown = ", ".join(f"{k} {_short(v)}" for k, v in drawn.items())
    best = _best_trial(optuna, study)
    tail = f"; best: trial {best.number}, {m} {_num(best.value)}" if best is not None else ""
    log.info(
        "trial %d [%d/%d]: %s in %s (%s)%s",
        number,
        _counted(optuna, study),
        total,
        how,
        duration(o.attrs.get("seconds", 0.0)),
        shown,
        tail,
    )
    if o.state == "failed":
        log.warning("trial %d failed: %s", number, o.note)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _best_trial(optuna: Any, study: Any) -> Any:
    """The best complete trial, or None."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# -- results ------------------------------------------------------------------------------------
def _write_best(optuna: Any, study: Any, settings: TuneSettings) -> None:
    """`best_recipe.yaml`: the best complete trial as a recipe for `nasrec train --recipe`."""
    best = _best_trial(optuna, study)
    if best is None:
        return
    a = best.user_attrs
    recipe = Recipe(
        model=settings.model,
        arch=settings.arch_file,
        arch_hash=settings.arch_hash,
        hparams=a["hparams"] if settings.model is not None else {},
        train=a["train"],
    )
    header = [
        f"nasrec training recipe: the best of {_counted(optuna, study)} trials of `nasrec tune` in {settings.out}",
        f"trial {best.number}: validation log loss {_num(a.get('val_logloss'))}, AUC {_num(a.get('val_auc'))} "
        f"on {settings.data}",
        "train it: nasrec train --data DIR --out DIR --recipe best_recipe.yaml (--set/--hparam override it)",
    ]
    write_recipe(Path(settings.out) / BEST_RECIPE, recipe, header)


def summarize(optuna: Any, study: Any, settings: TuneSettings, seconds: float) -> dict[str, Any]:
    """The tune's result: trial counts, the best trial (its settings and validation metrics), the recipe file."""
    s = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    count = {st: sum(t.state == st for t in trials) for st in (s.COMPLETE, s.PRUNED, s.FAIL)}
    best = _best_trial(optuna, study)
    recipe = Path(settings.out) / BEST_RECIPE
    return {
        "out": settings.out,
        "metric": settings.metric,
        "trials": count[s.COMPLETE] + count[s.PRUNED],
        "complete": count[s.COMPLETE],
        "pruned": count[s.PRUNED],
        "failed": count[s.FAIL],
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "val_logloss": best.user_attrs.get("val_logloss"),
            "val_auc": best.user_attrs.get("val_auc"),
            "params": _decoded(settings, best.params),
            "run": best.user_attrs.get("run"),
        },
        "recipe": str(recipe) if best is not None else None,
        "seconds": seconds,
    }


def _decoded(settings: TuneSettings, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's drawn values as its recipe holds them (Optuna stores a list choice as its JSON text)."""
    space = {p.name: p for p in parse_space(settings.space, settings.model_defaults, "tuning space").params}
    return {k: space[k].decode(v) if k in space else v for k, v in params.items()}


def _trial_list(optuna: Any, study: Any, settings: TuneSettings) -> list[dict[str, Any]]:
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": _decoded(settings, t.params),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            **{k: v for k, v in t.user_attrs.items() if k not in ("train",)},
        }
        for t in study.get_trials(deepcopy=False)
    ]
