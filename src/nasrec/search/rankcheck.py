"""How well the supernet ranks architectures: supernet scores against training from scratch.

`rankcheck` draws k distinct architectures of the supernet's space from a seed (optionally only those
within a search's MFLOPs / parameter constraints, where the search will look), scores each through
the supernet exactly as the search does, trains each from scratch with a short training preset, and
reports Kendall's tau and Spearman's rho between the supernet scores and the from-scratch validation
losses (scipy), with a scatter plot. The output directory holds `rankcheck.json`, `rankcheck.png` and
the training runs under `runs/`; finished runs are kept, so an interrupted check continues, and a check of
another supernet on the same architectures (same seed, space and caps) can start from a copy of `runs/`.
`train_workers` > 1 trains that many architectures at a time, each in its own process.

It also says how early training from scratch ranks (`by_evaluation`): Kendall's tau between each run's k-th
validation evaluation during training (its last, once it has stopped) and its final validation loss. A
successive-halving rung that stops at that point can rank no better (`nasrec search --halving`).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.rundir import RunMetrics
from nasrec.search.api import cost_function, served_layernorm
from nasrec.search.candidate import within
from nasrec.search.parallel import ScorerSpec, ScoringPool
from nasrec.search.presets import resolve
from nasrec.search.scorer import ScoreConfig
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_hash
from nasrec.space.space import SearchSpace
from nasrec.zoo.budget import resolve_cap

log = logging.getLogger(__name__)


BOOTSTRAP_RESAMPLES = 2000


def rank_correlation(x: list[float], y: list[float], level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Kendall's tau (tau-b) and Spearman's rho between two score lists, with p-values and tau's bootstrap interval.

    The interval is the percentile bootstrap over the pairs (`BOOTSTRAP_RESAMPLES` resamples drawn from
    `seed`). Resamples whose x or y are all tied have no tau and are left out, which scipy's `bootstrap`
    does not allow; with 30 architectures there are none.
    """
    from scipy.stats import kendalltau, spearmanr

    if len(x) != len(y) or len(x) < 3:
        raise NasrecError(f"rank correlation needs at least 3 pairs, got {min(len(x), len(y))}")
    tau = kendalltau(x, y)
    rho = spearmanr(x, y)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(xs), size=(BOOTSTRAP_RESAMPLES, len(xs)))
    taus = np.array([kendalltau(xs[i], ys[i]).statistic for i in picks])
    taus = taus[np.isfinite(taus)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(taus, [tail, 100 - tail]) if len(taus) else (math.nan, math.nan)
    return {
        "kendall_tau": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
        "kendall_ci_low": float(low),
        "kendall_ci_high": float(high),
        "kendall_ci_level": level,
        "spearman_rho": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
    }


def _scatter(path: Path, x: list[float], y: list[float], stats: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(x, y, s=18)
    ax.set_xlabel("supernet score (val log loss after head fine-tune)")
    ax.set_ylabel("trained from scratch (val log loss)")
    interval = f" [{stats['kendall_ci_low']:.2f}, {stats['kendall_ci_high']:.2f}]"
    ax.set_title(f"Kendall τ = {stats['kendall_tau']:.3f}{interval}, Spearman ρ = {stats['spearman_rho']:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rankcheck(
    supernet: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    k: int = 20,
    seed: int = 0,
    strategy: str = "uniform",
    preset: str | None = "cpu-quick",
    score_overrides: dict[str, Any] | None = None,
    train_preset: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    workers: int = 1,
    max_mflops: float | str | None = None,
    max_params: int | str | None = None,
    train_workers: int = 1,
) -> dict[str, Any]:
    """Score k sampled architectures through the supernet and from scratch; their rank correlations.

    `preset` is a search preset (its scoring budget and its retraining recipe, which `train_preset`
    replaces). `max_mflops` / `max_params` draw only architectures the search with those constraints
    could return, counted as the search counts them (a zoo model's name stands for its cost).
    """
    if k < 3:
        raise NasrecError(f"rankcheck needs k >= 3 architectures, got {k}")
    if train_workers < 1:
        raise NasrecError(f"rankcheck needs train_workers >= 1, got {train_workers}")
    out = Path(out)
    space = SearchSpace.from_dict(rundir.read_supernet(supernet)["space"])
    _, score_cfg, preset_train = resolve(preset, None, score_overrides)
    # counted as the from-scratch runs' metrics count their models (with their recipe's layer norms or not)
    cost = cost_function(data, layernorm=served_layernorm(train_preset or preset_train, train_overrides))
    max_mflops, max_params = resolve_cap("max_mflops", max_mflops, data), resolve_cap("max_params", max_params, data)
    rng = np.random.default_rng(seed)
    archs: dict[str, Architecture] = {}
    for _ in range(1000 * k):
        a = space.sample(rng, strategy)
        if within(cost(a), max_mflops, max_params):
            archs.setdefault(functional_hash(a), a)  # two that compute the same function are one point
        if len(archs) == k:
            break
    if len(archs) < k:
        raise NasrecError(
            f"fewer than {k} distinct architectures drawn in {1000 * k} tries under strategy "
            f"{strategy!r} (max_mflops={max_mflops}, max_params={max_params})"
        )
    arch_list = list(archs.values())
    with rundir.exclusive(out, "rank check"):
        return _rankcheck(
            out,
            arch_list,
            supernet,
            data,
            score_cfg,
            workers,
            train_preset or preset_train,
            train_overrides,
            train_workers,
            {"k": k, "seed": seed, "strategy": strategy, "max_mflops": max_mflops, "max_params": max_params},
        )


def _rankcheck(
    out: Path,
    arch_list: list[Architecture],
    supernet: str | Path,
    data: str | Path,
    score_cfg: ScoreConfig,
    workers: int,
    train_preset: str,
    train_overrides: dict[str, Any] | None,
    train_workers: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Score, train and compare the drawn architectures (the rank check's writer holds `out`'s lock)."""
    t0 = time.perf_counter()
    log.info("rank check %s: scoring %d architectures with the supernet", out, len(arch_list))
    with ScoringPool(ScorerSpec(str(supernet), str(data), score_cfg.to_dict()), workers) as pool:
        scores = pool(arch_list)
    log.info("rank check: scored in %.1f s; training each from scratch (%s)", time.perf_counter() - t0, train_preset)
    runs = [out / "runs" / f"{i:03d}-{a.hash()[:12]}" for i, a in enumerate(arch_list)]
    metrics = _train_all(runs, arch_list, scores, data, train_preset, dict(train_overrides or {}), train_workers)
    rows = []
    for a, s, m in zip(arch_list, scores, metrics, strict=True):
        rows.append(
            {
                "hash": a.hash(),
                "supernet_score": s,
                "scratch_val_logloss": m.split("val").logloss,
                "mflops": m.mflops,
                "arch": a.to_dict(),
            }
        )
    ok = [r for r in rows if _finite(r["supernet_score"]) and _finite(r["scratch_val_logloss"])]
    x = [r["supernet_score"] for r in ok]
    y = [r["scratch_val_logloss"] for r in ok]
    stats = rank_correlation(x, y)
    for r, run in zip(rows, runs, strict=True):
        r["scratch_val_history"] = _val_history(run)
    early = by_evaluation([r["scratch_val_history"] for r in ok], y)
    result = {
        **stats,
        "by_evaluation": early,
        "k": settings["k"],
        "pairs": len(ok),
        **{k: v for k, v in settings.items() if k != "k"},
        "score": score_cfg.to_dict(),
        "train_preset": train_preset,
        "candidates": rows,
    }
    rundir.atomic_write_json(out / rundir.RANKCHECK_JSON, result)
    _scatter(out / "rankcheck.png", x, y, stats)
    log.info(
        "rank check done: Kendall tau %.3f (95 %% bootstrap interval %.3f to %.3f), Spearman rho %.3f over %d pairs",
        stats["kendall_tau"],
        stats["kendall_ci_low"],
        stats["kendall_ci_high"],
        stats["spearman_rho"],
        len(ok),
    )
    for e in early:
        log.info(
            "rank check: from scratch at evaluation %d (step %d, %d runs there) against the end: Kendall tau %.3f",
            e["evaluation"], e["step"], e["reached"], e["kendall_tau"],
        )  # fmt: skip
    return result


def by_evaluation(histories: list[list[tuple[int, float]]], final: list[float]) -> list[dict[str, Any]]:
    """Kendall's tau of each run's k-th validation loss against its final loss, k = 1 .. the longest run's count.

    A run that ended earlier (early stopping) counts with its last evaluation, which is where it stopped;
    `reached` says how many runs had a k-th evaluation of their own. `step` is the median step of those
    (runs with different batch sizes evaluate at different steps). Empty when a run has no evaluation.
    """
    from scipy.stats import kendalltau

    out: list[dict[str, Any]] = []
    if len(histories) < 3 or any(not h for h in histories):
        return out
    for k in range(max(len(h) for h in histories)):
        at = [h[min(k, len(h) - 1)][1] for h in histories]
        if not all(math.isfinite(v) for v in at):
            break
        steps = [h[k][0] for h in histories if len(h) > k]
        tau = kendalltau(at, final).statistic
        out.append(
            {"evaluation": k + 1, "step": int(np.median(steps)), "kendall_tau": float(tau), "pairs": len(at),
             "reached": len(steps)}
        )  # fmt: skip
    return out


def _val_history(run: Path) -> list[tuple[int, float]]:
    """(step, validation log loss) of each evaluation during a run, in order (its metrics.jsonl)."""
    path = run / rundir.METRICS_JSONL
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("eval_split") == "val" and "eval_logloss" in rec:
            out.append((int(rec["step"]), float(rec["eval_logloss"])))
    return out


def _train_all(
    runs: list[Path],
    archs: list[Architecture],
    scores: list[float],
    data: str | Path,
    preset: str,
    overrides: dict[str, Any],
    workers: int,
) -> list[RunMetrics]:
    """Each architecture trained from scratch into its run (a finished run's metrics are read back)."""
    jobs = []
    for i, (run, a, s) in enumerate(zip(runs, archs, scores, strict=True)):
        if rundir.read_metrics(run) is None:
            log.info("rank check: architecture %d/%d, %s (supernet score %.5f)", i + 1, len(archs), a.hash()[:12], s)
            jobs.append((run, a))
    if workers > 1 and len(jobs) > 1:
        workers = min(workers, len(jobs))
        # the cores shared out between the processes, unless the settings say
        overrides = {"threads": max(1, (os.cpu_count() or 1) // workers), **overrides}
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            list(pool.map(_train_one, [(run, a.to_dict(), data, preset, overrides) for run, a in jobs]))
    else:
        for run, a in jobs:
            _train_one((run, a.to_dict(), data, preset, overrides))
    metrics = [rundir.read_metrics(run) for run in runs]
    missing = [str(run) for run, m in zip(runs, metrics, strict=True) if m is None]
    if missing:
        raise NasrecError(f"rank check: no metrics in {missing[0]} after training")
    return metrics


def _train_one(job: tuple[Path, dict[str, Any], str | Path, str, dict[str, Any]]) -> None:
    """One from-scratch run (in a worker process, or here)."""
    from nasrec.train.api import train

    run, arch, data, preset, overrides = job
    train(data, run, arch=Architecture.from_dict(arch), preset_name=preset, overrides=overrides, resume=True,
          progress=False)  # fmt: skip


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)
