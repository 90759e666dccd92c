"""Python entry point of the search stage: `search` (with top-k retraining, `nasrec.search.retrain`).

The default preset, `auto`, fits the paper's budget to the data and to a time budget
(`nasrec.search.auto`); `paper` is the paper's. MFLOPs and params are counted for the model that will be
served (`nasrec.model.cost.ServedCost`): with layer norms when the retraining recipe has them, unless
`count_layernorm` says otherwise (the pipeline sets it from its final recipe).

A search directory holds `search.json` (the resolved configuration), `history.jsonl`, `state.json`,
and at the end `result.json`, `best.json` (architecture JSON), `top.json` and `pareto.json`; with
retraining, `retrain/NN-HASH/` training runs and `final.json` (the architecture chosen by validation
loss among the retrained ones) with `final_metrics.json`.

Under torchrun (or inside a process group the caller made) candidate scoring is spread over the ranks
(`DistributedScoringPool`) and `workers` is ignored; rank 0 alone writes the search directory. Retraining
is refused there: it would train top-k models one after another on one rank while the others idle, so a
distributed search is retrained afterwards by resuming the finished search with `retrain` in one process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrec import distributed, rundir
from nasrec.console import duration, progress_bar, progress_enabled
from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError
from nasrec.export.latency_caps import resolve_latency_cap
from nasrec.latency.budget import check_latency_cap, latency_model
from nasrec.model.cost import ServedCost
from nasrec.search import auto
from nasrec.search.candidate import CostFn
from nasrec.search.config import SearchConfig, trajectory
from nasrec.search.evolution import Search
from nasrec.search.parallel import DistributedScoringPool, ScorerSpec, ScoringPool
from nasrec.search.presets import DEFAULT_PRESET, resolve, split_overrides
from nasrec.search.retrain import Halving, retrain_top
from nasrec.search.scorer import ScoreConfig
from nasrec.space.space import SearchSpace
from nasrec.zoo.budget import resolve_caps

log = logging.getLogger(__name__)


def _progress_printer(enabled: bool | None):
    if not progress_enabled(enabled):
        return None
    bar: Any = None

    def show(st: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(
                True,
                total=st["budget"],
                desc="search",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {postfix}]",
            )
        gen = "init" if st["generation"] < 0 else f"gen {st['generation']}"
        eta = f", {duration(st['eta_s'])} left" if st.get("eta_s") is not None else ""
        bar.n = st["scored"]
        bar.set_postfix_str(f"{gen}, best {st['best']:.5f}, {st['per_minute']:.1f}/min{eta}", refresh=False)
        bar.refresh()
        if st["scored"] >= st["budget"]:
            bar.close()

    return show


def search(
    supernet: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    workers: int = 1,
    retrain: bool = False,
    train_overrides: dict[str, Any] | None = None,
    retrain_seeds: int = 1,
    halving: Halving | None = None,
    resume: bool = False,
    progress: bool | None = None,
    time_budget: float | str | None = None,
) -> dict[str, Any]:
    """Search the supernet's space for the architecture with the lowest supernet-scored validation loss.

    `overrides` may set any `SearchConfig` or `ScoreConfig` field (e.g. strategy, max_mflops, pareto,
    finetune_steps); a cap may name a zoo model (`max_mflops="dcnv2"`: its MFLOPs on this data). The
    `auto` preset (the default) fits its budget to `time_budget` (seconds, or "15m"; default 15 minutes).
    With `retrain`, the top-k architectures are then trained from scratch with the preset's training
    recipe (with `train_overrides`) and the final one is chosen by validation loss, the mean over
    `retrain_seeds` training seeds each; with `halving`, after successive halving of the top k
    (`nasrec.search.retrain`). A resumed search keeps the settings recorded in `search.json`.
    """
    out = Path(out)
    saved = (_saved_settings(out) or {}).get("search", {}) if resume else {}
    s_over, sc_over = split_overrides(
        resolve_latency_cap(resolve_caps(overrides, data), data, saved.get("max_latency_ms"))
    )
    resolve(preset, s_over, sc_over)  # an unknown preset or a bad value fails before any work
    budget = auto.parse_duration(time_budget)
    if budget is not None and preset not in (None, "auto"):
        raise NasrecError(f"a time budget applies to the auto preset only, not to {preset!r}")
    if retrain and (distributed.launched() or distributed.is_initialized()):
        raise NasrecError(
            "--retrain is not supported under torchrun: run the search under torchrun, then retrain "
            "in one process by resuming the finished search (--resume --retrain)"
        )
    asked = _Asked(preset, s_over, sc_over, dict(train_overrides or {}), budget)
    # One writer per search directory (rank 0), for the search and its retraining alike.
    with rundir.exclusive(out, "search", enabled=distributed.is_main()):
        with distributed.process_group() as active:  # under torchrun: scoring spread over its processes
            result, train_preset = _search(supernet, data, out, asked, workers, resume, progress, active)
        if retrain:
            result["final"] = retrain_top(
                out, data, train_preset, train_overrides, seeds=retrain_seeds, halving=halving
            )
    return result


def _saved_settings(out: Path) -> dict[str, Any] | None:
    """A search directory's recorded settings (search.json), if it has them."""
    path = out / rundir.SEARCH_JSON
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class _Asked:
    """What the caller asked for: a preset (or none), the settings given explicitly, the time budget."""

    preset: str | None
    search: dict[str, Any]
    score: dict[str, Any]
    train: dict[str, Any]  # the retraining overrides (their layernorm is the served model's)
    time_budget: float | None


def _check_out(out: Path, resolved: dict[str, Any], resume: bool) -> str | None:
    """Why the search directory cannot be used (None if it can)."""
    saved = out / rundir.SEARCH_JSON
    if resume and saved.exists():
        # Settings only: a run directory that was moved keeps its search.
        same = ("search", "score", "train_preset")
        if _settings(json.loads(saved.read_text()), same) != _settings(resolved, same):
            return f"{out}: --resume continues a search with its own settings; drop the changed options"
    elif (out / rundir.STATE_JSON).exists():
        return f"{out} already holds a search (use --resume to continue it)"
    return None


def _settings(resolved: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The settings of a search that must match to resume it.

    The scoring device may change, and so may top_k: it only picks the result from the history (a
    finished search resumed with another k rewrites top.json and retrains the new top k). A setting
    added after the search was saved counts with its default.
    """
    out = {k: resolved.get(k) for k in keys}
    if isinstance(out.get("score"), dict):
        out["score"] = {k: v for k, v in out["score"].items() if k != "device"}
    if isinstance(out.get("search"), dict):
        out["search"] = trajectory(out["search"])
    return out


def cost_function(data: str | Path, *, layernorm: bool) -> CostFn:
    """(MFLOPs, non-embedding params) of an architecture's served model on a cache's shape: what constraints count.

    `layernorm`: whether the served model has layer norms (its training recipe's `layernorm`).
    """
    cache = open_cache(data)
    return ServedCost(len(cache.dense_fields), tuple(cache.table_sizes), layernorm)


def served_layernorm(train_preset: str, train_overrides: dict[str, Any] | None) -> bool:
    """Whether the models a training recipe trains have layer norms: the count of their MFLOPs and params."""
    from nasrec.train.config import preset as train_config

    return train_config(train_preset, **(train_overrides or {})).layernorm


def _settle(asked: _Asked, saved: dict[str, Any] | None, cache: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The search's settings before any calibration: (resolved search.json content, auto figures or None).

    A resumed search starts from its recorded settings (the explicit ones applied on top, so that a
    changed one is refused), and never decides again; a fresh one from its preset's.
    """
    if saved is not None:
        name = saved.get("preset")  # None: a search written before presets were recorded
        if asked.preset is not None and name is not None and asked.preset != name:
            raise NasrecError(
                f"--resume continues a search with its own settings (preset {name}, not {asked.preset}); drop --preset"
            )
        cfg = SearchConfig().updated(**{**saved["search"], **asked.search})
        score = ScoreConfig().updated(**{**saved["score"], **asked.score})
        train_preset = saved["train_preset"]
        if asked.preset not in (None, "auto") and name is None:  # compare with what that preset resolves to now
            fresh, fresh_score, fresh_train = resolve(asked.preset, asked.search, asked.score)
            fresh = fresh.updated(count_layernorm=asked.search.get("count_layernorm", cfg.count_layernorm))
            mine = {"search": cfg.to_dict(), "score": score.to_dict(), "train_preset": train_preset}
            theirs = {"search": fresh.to_dict(), "score": fresh_score.to_dict(), "train_preset": fresh_train}
            keys = ("search", "score", "train_preset")
            if _settings(mine, keys) != _settings(theirs, keys):
                raise NasrecError("--resume continues a search with its own settings; drop the changed options")
        resolved = {
            "preset": name or asked.preset,
            "search": cfg.to_dict(),
            "score": score.to_dict(),
            "train_preset": train_preset,
        }
        if "auto" in saved:
            resolved["auto"] = saved["auto"]
        return resolved, None
    name = asked.preset or DEFAULT_PRESET
    cfg, score, train_preset = resolve(name, asked.search, asked.score)
    figures = None
    if name == "auto":
        fitted, train_preset, figures = auto.data_budget(cache, asked.score)
        score = score.updated(**fitted)
    if "count_layernorm" not in asked.search:
        cfg = cfg.updated(count_layernorm=served_layernorm(train_preset, asked.train))
    resolved = {"preset": name, "search": cfg.to_dict(), "score": score.to_dict(), "train_preset": train_preset}
    return resolved, figures


def _search(
    supernet: str | Path,
    data: str | Path,
    out: Path,
    asked: _Asked,
    workers: int,
    resume: bool,
    progress: bool | None,
    active: bool,
) -> tuple[dict[str, Any], str]:
    """The search itself, inside the process group when there is one (`active`); (result, retraining preset)."""
    main = distributed.is_main()
    saved_path = out / rundir.SEARCH_JSON
    space = SearchSpace.from_dict(rundir.read_supernet(supernet)["space"])
    cache = open_cache(data)
    # Only rank 0's directory counts; what it read goes to every rank, so that all raise or none does.
    saved = None
    if main:
        if resume and saved_path.exists():
            saved = json.loads(saved_path.read_text())
        elif not resume and (out / rundir.STATE_JSON).exists():
            saved = {"error": f"{out} already holds a search (use --resume to continue it)"}
    saved = distributed.broadcast_object(saved)
    if saved is not None and "error" in saved:
        raise NasrecError(saved["error"])
    resolved, figures = _settle(asked, saved, cache)
    resolved = {**resolved, "supernet": str(supernet), "data": str(data)}
    error = distributed.broadcast_object(_check_out(out, resolved, resume) if main else None)
    if error is not None:
        raise NasrecError(error)
    cfg, score_cfg = SearchConfig().updated(**resolved["search"]), ScoreConfig().updated(**resolved["score"])
    cost = cost_function(data, layernorm=cfg.count_layernorm)
    shape = (len(cache.dense_fields), len(cache.table_sizes))
    timing = latency_model(cfg.to_dict(), space, shape, cfg.count_layernorm)
    check_latency_cap(cfg.max_latency_ms, space, timing)
    if timing is not None and timing.warnings:
        for w in timing.warnings:
            log.warning("%s", w)
        resolved["latency_warnings"] = timing.warnings
    pool = _pool(supernet, data, score_cfg, workers, active)
    try:
        if figures is not None:  # a fresh auto search: time a few candidates, then decide the budget
            pool, cfg, score_cfg, resolved["auto"] = _fit_to_time(
                pool, space, cost, cfg, score_cfg, asked, figures, (supernet, data, workers, active)
            )
            resolved.update(search=cfg.to_dict(), score=score_cfg.to_dict())
        if main:
            _explain(resolved, saved is not None, pool_size=_parallel(workers, active))
            out.mkdir(parents=True, exist_ok=True)
            rundir.atomic_write_json(saved_path, resolved)
        show = _progress_printer(progress) if main else None
        predict = None if timing is None else timing.predict
        result = Search(space, pool, cost, cfg, out, progress=show, writer=main, latency=predict).run(resume=resume)
        if timing is not None and timing.warnings:
            result["latency_warnings"] = timing.warnings
    finally:
        pool.close()
    return result, resolved["train_preset"]


def _parallel(workers: int, active: bool) -> int:
    """Candidates scored at once: the ranks under torchrun, else the workers."""
    return distributed.world_size() if active else workers


def _pool(
    supernet: str | Path, data: str | Path, score_cfg: ScoreConfig, workers: int, active: bool
) -> ScoringPool | DistributedScoringPool:
    spec = ScorerSpec(str(supernet), str(data), score_cfg.to_dict())
    if active:
        if workers != 1 and distributed.is_main():
            log.warning(
                "--workers %d ignored under torchrun: scoring is spread over the %d ranks",
                workers,
                distributed.world_size(),
            )
        return DistributedScoringPool(spec)
    return ScoringPool(spec, workers)


def _fit_to_time(
    pool: Any,
    space: SearchSpace,
    cost: CostFn,
    cfg: SearchConfig,
    score_cfg: ScoreConfig,
    asked: _Asked,
    figures: dict[str, Any],
    where: tuple[Any, ...],
) -> tuple[Any, SearchConfig, ScoreConfig, dict[str, Any]]:
    """The auto preset's second step: the candidate count (and, if need be, a smaller scoring budget) for the time budget."""
    supernet, data, workers, active = where
    parallel = _parallel(workers, active)
    budget = asked.time_budget or auto.DEFAULT_TIME_BUDGET
    if all(k in asked.search for k in ("population", "children", "generations")):  # the count is given: no timing
        record = {"time_budget_s": budget, **figures, "candidates": cfg.budget, "given": True}
        return pool, cfg, score_cfg, record
    archs = auto.calibration_archs(space, cost, cfg.max_mflops, cfg.max_params, cfg.seed, 3 * parallel)
    seconds = auto.seconds_per_candidate(pool, archs, parallel)
    # every rank scored the same architectures; rank 0's clock decides for all
    seconds = float(distributed.broadcast_object(seconds if distributed.is_main() else None))
    shape, count, scale = auto.candidate_budget(seconds, budget, asked.search)
    record = {
        "time_budget_s": budget,
        **figures,
        "calibration_candidates": len(archs),
        "parallel": parallel,
        "seconds_per_candidate": seconds,
        "candidates": count,
    }
    if scale < 1:
        before = auto.scoring_rows(score_cfg.to_dict(), figures["val_rows"])
        smaller = score_cfg.updated(**auto.scaled_scoring(score_cfg.to_dict(), scale, asked.score))
        if smaller != score_cfg:
            pool.close()
            pool = _pool(supernet, data, smaller, workers, active)
            record["scoring_scale"] = auto.scoring_rows(smaller.to_dict(), figures["val_rows"]) / before
            record["seconds_per_candidate_scaled"] = seconds * record["scoring_scale"]
            score_cfg = smaller
    return pool, cfg.updated(**shape), score_cfg, record


def _explain(resolved: dict[str, Any], resumed: bool, pool_size: int) -> None:
    """Log which preset the search runs and why (with the figures an auto preset was decided from)."""
    s, sc = resolved["search"], resolved["score"]
    budget = SearchConfig().updated(**s).budget
    counted = "with" if s.get("count_layernorm") else "without"
    what = (
        f"{budget:,} candidates (population {s['population']}, {s['generations']} generations of "
        f"{s['children']}), each fine-tuned {sc['finetune_steps']} steps of {sc['finetune_batch_size']} and "
        f"validated on {sc['val_batches']} x {sc['val_batch_size']} rows; MFLOPs and params counted {counted} "
        f"layer norms (the served model's); retraining recipe {resolved['train_preset']}"
    )
    if resumed:
        log.info("search: resuming with its recorded settings (preset %s): %s", resolved.get("preset"), what)
        return
    a = resolved.get("auto")
    if a is None or a.get("given"):
        log.info("search preset %s: %s", resolved["preset"], what)
        return
    per = a.get("seconds_per_candidate_scaled", a["seconds_per_candidate"])
    why = (
        f"{a['train_rows']:,} train and {a['val_rows']:,} validation rows; {a['seconds_per_candidate']:.2f} s "
        f"per candidate measured on {a['calibration_candidates']} candidates, {pool_size} at a time; time "
        f"budget {duration(a['time_budget_s'])}"
    )
    if "scoring_scale" in a:
        why += f"; scoring cut to {a['scoring_scale']:.0%} of its rows to fit"
    est = per * budget  # measured with the workers at work: seconds of wall time per candidate
    log.info("search preset auto (%s): %s; about %s", why, what, duration(est))
    if est > 1.5 * a["time_budget_s"]:
        log.warning(
            "search: about %s even at the smallest budget, over the time budget of %s",
            duration(est),
            duration(a["time_budget_s"]),
        )
    keys = [*auto.SEARCH_KEYS, *auto.SCORE_KEYS]
    sets = " ".join(f"--set {k}={'null' if v is None else v}" for k, v in {**s, **sc}.items() if k in keys)
    log.info("search: the same settings on another machine: --preset auto %s", sets)
