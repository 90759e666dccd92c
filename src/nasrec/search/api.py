"""Python entry points of the search stage: `search` (with top-k retraining) and its presets.

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
import math
import sys
from pathlib import Path
from typing import Any

from nasrec import distributed
from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError
from nasrec.model.cost import arch_cost
from nasrec.search.budget import resolve_caps
from nasrec.search.evolution import RESULT_ONLY, CostFn, Search, SearchConfig
from nasrec.search.parallel import DistributedScoringPool, ScorerSpec, ScoringPool
from nasrec.search.scorer import ScoreConfig
from nasrec.space.arch import Architecture
from nasrec.space.space import SearchSpace

# name -> (search settings, scoring settings, training preset of the top-k retraining)
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # spec 4: 128 + 240 x 8 = 2,048 candidates; 500 head steps; 150 x 8192 validation rows
    "paper": ({}, {}, "paper-final"),
    # about an hour on a 2-core CPU for Criteo-shaped data: 32 + 24 x 8 = 224 candidates
    "cpu": (dict(population=32, sample=16, generations=24, keep_per_generation=None, top_k=3),
            dict(finetune_steps=50, warmup_steps=5, val_batches=4), "cpu-quick"),
    # minutes: the demo and quick checks
    "cpu-quick": (dict(population=16, sample=8, children=4, generations=8, keep_per_generation=None, top_k=2),
                  dict(finetune_steps=20, warmup_steps=2, val_batches=2, val_batch_size=4096), "cpu-quick"),
}  # fmt: skip


def resolve(preset: str | None, search: dict[str, Any] | None, score: dict[str, Any] | None) -> tuple[SearchConfig, ScoreConfig, str]:  # fmt: skip
    """Search and scoring configurations of a preset (default "paper") with overrides applied."""
    name = preset or "paper"
    if name not in PRESETS:
        raise NasrecError(f"unknown search preset {name!r} (expected one of: {', '.join(PRESETS)})")
    s, sc, train_preset = PRESETS[name]
    return (
        SearchConfig().updated(**{**s, **(search or {})}),
        ScoreConfig().updated(**{**sc, **(score or {})}),
        train_preset,
    )


def _split_overrides(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` keys go to the search or the scoring configuration by name."""
    search_keys = set(SearchConfig().to_dict())
    score_keys = set(ScoreConfig().to_dict())
    s, sc = {}, {}
    for k, v in (overrides or {}).items():
        if k in search_keys:
            s[k] = v
        elif k in score_keys:
            sc[k] = v
        else:
            raise NasrecError(f"unknown search setting {k!r} (search: {', '.join(sorted(search_keys))}; "
                              f"scoring: {', '.join(sorted(score_keys))})")  # fmt: skip
    return s, sc


def _progress_printer(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None

    def show(st: dict[str, Any]) -> None:
        gen = "init" if st["generation"] < 0 else f"gen {st['generation']}"
        print(f"\rsearch {gen}: {st['scored']}/{st['budget']} scored, best {st['best']:.5f}, "
              f"{st['per_minute']:.1f} candidates/min", end="", file=sys.stderr, flush=True)  # fmt: skip

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
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Search the supernet's space for the architecture with the lowest supernet-scored validation loss.

    `overrides` may set any `SearchConfig` or `ScoreConfig` field (e.g. strategy, max_mflops, pareto,
    finetune_steps); a cap may name a zoo model (`max_mflops="dcnv2"`: its MFLOPs on this data). With
    `retrain`, the top-k architectures are then trained from scratch with the preset's training recipe
    (with `train_overrides`) and the final one is chosen by validation loss, the mean over
    `retrain_seeds` training seeds each.
    """
    out = Path(out)
    s_over, sc_over = _split_overrides(resolve_caps(overrides, data))
    cfg, score_cfg, train_preset = resolve(preset, s_over, sc_over)
    if retrain and (distributed.launched() or distributed.is_initialized()):
        raise NasrecError("--retrain is not supported under torchrun: run the search under torchrun, then retrain "
                          "in one process by resuming the finished search (--resume --retrain)")  # fmt: skip
    with distributed.process_group() as active:  # under torchrun: scoring spread over its processes
        result = _search(supernet, data, out, cfg, score_cfg, train_preset, workers, resume, progress, active)
    if progress is not False and sys.stderr.isatty() and distributed.is_main():
        print(file=sys.stderr)
    if retrain:
        result["final"] = retrain_top(out, data, train_preset, train_overrides, seeds=retrain_seeds)
    return result


def _check_out(out: Path, resolved: dict[str, Any], resume: bool) -> str | None:
    """Why the search directory cannot be used (None if it can)."""
    saved = out / "search.json"
    if resume and saved.exists():
        # Settings only: a run directory that was moved keeps its search.
        same = ("search", "score", "train_preset")
        if _settings(json.loads(saved.read_text()), same) != _settings(resolved, same):
            return f"{out}: --resume continues a search with its own settings; drop the changed options"
    elif (out / "state.json").exists():
        return f"{out} already holds a search (use --resume to continue it)"
    return None


def _settings(resolved: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The settings of a search that must match to resume it.

    The scoring device may change, and so may top_k: it only picks the result from the history (a
    finished search resumed with another k rewrites top.json and retrains the new top k).
    """
    out = {k: resolved.get(k) for k in keys}
    if isinstance(out.get("score"), dict):
        out["score"] = {k: v for k, v in out["score"].items() if k != "device"}
    if isinstance(out.get("search"), dict):
        out["search"] = {k: v for k, v in out["search"].items() if k not in RESULT_ONLY}
    return out


def cost_function(data: str | Path) -> CostFn:
    """(MFLOPs, non-embedding params) of an architecture on a cache's shape: what constraints count."""
    cache = open_cache(data)
    num_dense, tables = len(cache.dense_fields), tuple(cache.table_sizes)

    def cost(arch: Architecture) -> tuple[float, int]:
        c = arch_cost(arch, num_dense, len(tables), tables)
        return c.mflops, c.dense_params

    return cost


def _search(supernet: str | Path, data: str | Path, out: Path, cfg: SearchConfig, score_cfg: ScoreConfig,
            train_preset: str, workers: int, resume: bool, progress: bool | None, active: bool) -> dict[str, Any]:  # fmt: skip
    """The search itself, inside the process group when there is one (`active`)."""
    main = distributed.is_main()
    saved = out / "search.json"
    resolved = {"search": cfg.to_dict(), "score": score_cfg.to_dict(), "supernet": str(supernet), "data": str(data),
                "train_preset": train_preset}  # fmt: skip
    # Only rank 0's directory counts; its verdict goes to every rank, so that all raise or none does.
    error = distributed.broadcast_object(_check_out(out, resolved, resume) if main else None)
    if error is not None:
        raise NasrecError(error)
    model_json = Path(supernet) / "model.json"
    if not model_json.exists():
        raise NasrecError(f"{supernet}: not a supernet run directory (no model.json)")
    model = json.loads(model_json.read_text())
    if model.get("kind") != "supernet":
        raise NasrecError(f"{supernet}: not a supernet run (its model is {model.get('kind')!r})")
    space = SearchSpace.from_dict(model["space"])
    cost = cost_function(data)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(resolved, indent=1) + "\n")
    spec = ScorerSpec(str(supernet), str(data), score_cfg.to_dict())
    pool: ScoringPool | DistributedScoringPool
    if active:
        if workers != 1 and main:
            print(f"note: --workers {workers} ignored under torchrun: scoring is spread over the "
                  f"{distributed.world_size()} ranks", file=sys.stderr)  # fmt: skip
        pool = DistributedScoringPool(spec)
    else:
        pool = ScoringPool(spec, workers)
    with pool:
        show = _progress_printer(progress) if main else None
        return Search(space, pool, cost, cfg, out, progress=show, writer=main).run(resume=resume)


def retrain_top(search_dir: str | Path, data: str | Path, preset: str = "paper-final",
                overrides: dict[str, Any] | None = None, seeds: int = 1) -> dict[str, Any]:  # fmt: skip
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
    top = json.loads((search_dir / "top.json").read_text())
    base_seed = train_preset(preset, **(overrides or {})).seed
    runs = []
    for rank, c in enumerate(top):
        per_seed = []
        for j in range(seeds):
            name = f"{rank:02d}-{c['hash'][:12]}" + (f"-s{j}" if j else "")  # seed 0's run keeps the 1-seed name
            run = search_dir / "retrain" / name
            if (run / "metrics.json").exists():
                m = json.loads((run / "metrics.json").read_text())
            else:  # resume=True also starts a run that has no checkpoint yet
                m = train(data, run, arch=Architecture.from_dict(c["arch"]), preset_name=preset,
                          overrides={**(overrides or {}), "seed": base_seed + j}, resume=True,
                          progress=False)  # fmt: skip
            per_seed.append({"seed": base_seed + j, "run": str(run), "val_logloss": (m.get("val") or {}).get("logloss"),
                             "test_logloss": (m.get("test") or {}).get("logloss"),
                             "test_auc": (m.get("test") or {}).get("auc"), "mflops": m["mflops"]})  # fmt: skip
        entry = {"rank": rank, "hash": c["hash"], "supernet_score": c["score"], "run": per_seed[0]["run"],
                 **{k: _mean([r[k] for r in per_seed]) for k in ("val_logloss", "test_logloss", "test_auc")},
                 "mflops": per_seed[0]["mflops"]}  # fmt: skip
        if seeds > 1:
            entry["seeds"] = per_seed
        runs.append(entry)
    scored = [r for r in runs if r["val_logloss"] is not None and math.isfinite(r["val_logloss"])]
    if not scored:
        raise NasrecError(f"{search_dir}: no retrained architecture has a finite validation loss")
    best = min(scored, key=lambda r: r["val_logloss"])
    arch = top[best["rank"]]["arch"]
    (search_dir / "final.json").write_text(json.dumps(arch, indent=1) + "\n")
    final = {"chosen": best, "runs": runs, "seeds": seeds}
    (search_dir / "final_metrics.json").write_text(json.dumps(final, indent=1) + "\n")
    return final


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values, None when any is missing (a run without that split), NaN when any diverged."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]
