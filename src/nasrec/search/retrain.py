"""Retraining a search's top-k architectures from scratch, and the choice of the final one.

Two ways to choose (`retrain_top`):

- every one of the top k trained with the whole recipe, the lowest validation loss chosen;
- successive halving (`Halving`, after Hyperband's inner loop): all k trained for `min_steps` steps, the
  best 1/eta of them kept and trained again from scratch for eta times as many steps, and so on while
  more than eta remain; those last ones train with the whole recipe and the best of them is chosen. The
  supernet's pre-ranking decides which k enter, and short real trainings, not the supernet, decide
  which of them reach the costly full runs: k full runs cost about as much as k / eta + a rung per
  halving.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.rundir import RetrainedArch, RetrainResult, Rung, RunMetrics, SeedRun
from nasrec.space.arch import Architecture

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Halving:
    """Successive halving: keep the best 1/`eta` at each rung; the first rung trains `min_steps` steps."""

    eta: int = 3
    min_steps: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.eta, int) or isinstance(self.eta, bool) or self.eta < 2:
            raise NasrecError(f"halving eta must be an integer >= 2, not {self.eta!r}")
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 1:
            raise NasrecError(f"halving min_steps must be an integer >= 1, not {self.min_steps!r}")

    def to_dict(self) -> dict[str, int]:
        """JSON form (as the pipeline config and `search.json` hold it)."""
        return {"eta": self.eta, "min_steps": self.min_steps}


def retrain_top(
    search_dir: str | Path,
    data: str | Path,
    preset: str = "paper-final",
    overrides: dict[str, Any] | None = None,
    seeds: int = 1,
    halving: Halving | None = None,
) -> dict[str, Any]:
    """Train the search's top-k architectures from scratch; the final one has the lowest validation loss.

    With `seeds` > 1 every architecture is trained with that many seeds (the recipe's seed, then the next
    ones) and judged by its mean validation loss: one run's loss varies with the seed by about as much
    as good architectures differ, so a single seed tends to crown a lucky run. With `halving`, the top k
    go through successive halving first (module docstring). Finished runs are kept and an interrupted one
    resumes, so re-running continues where it stopped.
    """
    from nasrec.train.config import preset as train_preset

    if seeds < 1:
        raise NasrecError(f"retrain seeds must be >= 1, not {seeds}")
    search_dir = Path(search_dir)
    top = rundir.read_json(search_dir / rundir.TOP_JSON)
    if top is None:
        raise NasrecError(f"{search_dir}: no {rundir.TOP_JSON}; run the search there first")
    base_seed = train_preset(preset, **(overrides or {})).seed
    trainer = _Trainer(search_dir, data, preset, dict(overrides or {}), base_seed, seeds)
    alive = list(range(len(top)))
    rungs: list[Rung] = []
    steps = halving.min_steps if halving else None
    while halving is not None and len(alive) > halving.eta:
        runs = [trainer.arch(rank, top[rank], steps, f"rung{len(rungs)}") for rank in alive]
        kept = _best(runs, math.ceil(len(runs) / halving.eta), search_dir)
        rungs.append(Rung(len(rungs), steps, runs, [r.hash for r in kept]))
        log.info(
            "halving rung %d: %d architectures trained %d steps each, kept %d",
            len(rungs) - 1,
            len(runs),
            steps,
            len(kept),
        )
        alive = sorted(r.rank for r in kept)  # type: ignore[misc]
        steps *= halving.eta
    runs = [trainer.arch(rank, top[rank], None) for rank in alive]
    if halving is not None:
        rungs.append(Rung(len(rungs), None, runs, []))
    best = _best(runs, 1, search_dir)[0]
    rundir.atomic_write_json(search_dir / rundir.FINAL_JSON, top[best.rank]["arch"])  # type: ignore[index]
    final = RetrainResult(chosen=best, runs=runs, seeds=seeds, rungs=rungs or None)
    log.info(
        "retrained the top %d%s: chose %s (validation log loss %.5f, test log loss %s) as %s",
        len(top),
        f" (successive halving, the last {len(runs)} with the whole recipe)" if halving else "",
        best.hash[:12],
        best.val_logloss,
        "n/a" if best.test_logloss is None else f"{best.test_logloss:.5f}",
        rundir.FINAL_JSON,
    )
    rundir.atomic_write_json(search_dir / rundir.FINAL_METRICS_JSON, final.to_dict())
    return final.to_dict()


@dataclass(frozen=True)
class _Trainer:
    """Trains one architecture of the top k with every seed, in its own run directories (resumable)."""

    search_dir: Path
    data: str | Path
    preset: str
    overrides: dict[str, Any]
    base_seed: int
    seeds: int

    def arch(self, rank: int, c: dict[str, Any], max_steps: int | None, folder: str = "") -> RetrainedArch:
        """Train (or read the finished runs of) `c`, capped at `max_steps` steps; its mean losses over the seeds."""
        from nasrec.train.api import train

        per_seed: list[SeedRun] = []
        over = {**self.overrides, **({"max_steps": max_steps} if max_steps is not None else {})}
        for j in range(self.seeds):
            name = f"{rank:02d}-{c['hash'][:12]}" + (f"-s{j}" if j else "")  # seed 0's run keeps the 1-seed name
            run = self.search_dir / rundir.RETRAIN_DIR / folder / name
            m = rundir.read_metrics(run)
            if m is None:  # resume=True also starts a run that has no checkpoint yet
                fresh = train(
                    self.data,
                    run,
                    arch=Architecture.from_dict(c["arch"]),
                    preset_name=self.preset,
                    overrides={**over, "seed": self.base_seed + j},
                    resume=True,
                    progress=False,
                )
                m = RunMetrics.from_dict(fresh)
            per_seed.append(SeedRun.of(self.base_seed + j, str(run), m))
        return RetrainedArch(
            rank=rank,
            hash=c["hash"],
            supernet_score=c["score"],
            run=per_seed[0].run,
            val_logloss=_mean([r.val_logloss for r in per_seed]),
            test_logloss=_mean([r.test_logloss for r in per_seed]),
            test_auc=_mean([r.test_auc for r in per_seed]),
            mflops=per_seed[0].mflops,
            seeds=per_seed if self.seeds > 1 else None,
        )


def _best(runs: list[RetrainedArch], n: int, search_dir: Path) -> list[RetrainedArch]:
    """The `n` runs of lowest validation loss (ties: the supernet's order); diverged runs never count."""
    scored = [r for r in runs if r.val_logloss is not None and math.isfinite(r.val_logloss)]
    if not scored:
        raise NasrecError(f"{search_dir}: no retrained architecture has a finite validation loss")
    return sorted(scored, key=lambda r: (r.val_logloss, r.rank))[:n]


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values, None when any is missing (a run without that split), NaN when any diverged."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]
