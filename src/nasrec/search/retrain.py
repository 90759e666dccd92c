"""Retraining a search's top-k architectures from scratch, and the choice of the final one."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.rundir import RetrainedArch, RetrainResult, RunMetrics, SeedRun
from nasrec.space.arch import Architecture

log = logging.getLogger(__name__)


def retrain_top(
    search_dir: str | Path,
    data: str | Path,
    preset: str = "paper-final",
    overrides: dict[str, Any] | None = None,
    seeds: int = 1,
) -> dict[str, Any]:
    """Train the search's top-k architectures from scratch; the final one has the lowest validation loss.

    With `seeds` > 1 every architecture is trained with that many seeds (the recipe's seed, then the next
    ones) and judged by its mean validation loss: one run's loss varies with the seed by about as much
    as good architectures differ, so a single seed tends to crown a lucky run. Finished runs are kept
    and an interrupted one resumes, so re-running continues where it stopped.
    """
    from nasrec.train.api import train
    from nasrec.train.config import preset as train_preset

    if seeds < 1:
        raise NasrecError(f"retrain seeds must be >= 1, not {seeds}")
    search_dir = Path(search_dir)
    top = rundir.read_json(search_dir / rundir.TOP_JSON)
    if top is None:
        raise NasrecError(f"{search_dir}: no {rundir.TOP_JSON}; run the search there first")
    base_seed = train_preset(preset, **(overrides or {})).seed
    runs: list[RetrainedArch] = []
    for rank, c in enumerate(top):
        per_seed: list[SeedRun] = []
        for j in range(seeds):
            name = f"{rank:02d}-{c['hash'][:12]}" + (f"-s{j}" if j else "")  # seed 0's run keeps the 1-seed name
            run = search_dir / rundir.RETRAIN_DIR / name
            m = rundir.read_metrics(run)
            if m is None:  # resume=True also starts a run that has no checkpoint yet
                fresh = train(
                    data,
                    run,
                    arch=Architecture.from_dict(c["arch"]),
                    preset_name=preset,
                    overrides={**(overrides or {}), "seed": base_seed + j},
                    resume=True,
                    progress=False,
                )
                m = RunMetrics.from_dict(fresh)
            per_seed.append(SeedRun.of(base_seed + j, str(run), m))
        runs.append(
            RetrainedArch(
                rank=rank,
                hash=c["hash"],
                supernet_score=c["score"],
                run=per_seed[0].run,
                val_logloss=_mean([r.val_logloss for r in per_seed]),
                test_logloss=_mean([r.test_logloss for r in per_seed]),
                test_auc=_mean([r.test_auc for r in per_seed]),
                mflops=per_seed[0].mflops,
                seeds=per_seed if seeds > 1 else None,
            )
        )
    scored = [r for r in runs if r.val_logloss is not None and math.isfinite(r.val_logloss)]
    if not scored:
        raise NasrecError(f"{search_dir}: no retrained architecture has a finite validation loss")
    best = min(scored, key=lambda r: r.val_logloss)  # type: ignore[arg-type, return-value]
    rundir.atomic_write_json(search_dir / rundir.FINAL_JSON, top[best.rank]["arch"])
    final = RetrainResult(chosen=best, runs=runs, seeds=seeds)
    log.info(
        "retrained the top %d: chose %s (validation log loss %.5f, test log loss %s) as %s",
        len(runs),
        best.hash[:12],
        best.val_logloss,
        "n/a" if best.test_logloss is None else f"{best.test_logloss:.5f}",
        rundir.FINAL_JSON,
    )
    rundir.atomic_write_json(search_dir / rundir.FINAL_METRICS_JSON, final.to_dict())
    return final.to_dict()


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values, None when any is missing (a run without that split), NaN when any diverged."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]
