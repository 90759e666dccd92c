"""The `auto` search preset: the paper's budget fitted to the data and to a wall-time budget.

The paper's search (the `paper` preset) scores 2,048 candidates, each after 500 fine-tune steps of 512
rows and on 150 validation batches of 8,192 rows: days on a laptop. `auto` keeps its procedure and
scales its budget in two steps, each recorded in `search.json` with the figures it was decided from:

1. From the data's size alone (deterministic): the fine-tune makes at most one pass over the train
   split (500 steps at most, 20 at least) with the paper's 10 % warm-up; validation reads the whole
   validation split up to the paper's 150 x 8,192 rows. The retraining recipe is `paper-final` from a
   million train rows up, else `cpu-quick` (layer norms on: without them small data diverges, see
   docs/design.md).
2. From a one-off calibration (the machine): a few candidates within the constraints are scored and
   timed; the candidate count is the largest of 16, 32, ..., 2,048 whose estimated time fits the time
   budget, in the paper's proportions (population 1/16 of the count, tournament half the population).
   Below 16 candidates' worth of time, the scoring budget itself is cut, down to 10 fine-tune steps
   and 2,048 validation rows.

Settings given explicitly (`--set`) are never changed. A resumed search reuses the recorded settings
and never decides again, so it ends as the uninterrupted search would. A fresh search on another
machine may decide another candidate count: `search.json` records the settings, and the same
settings given explicitly reproduce the search anywhere.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.search.candidate import CostFn, within
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_hash
from nasrec.space.space import SearchSpace

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET = 15 * 60.0  # seconds of candidate scoring (retraining not included)
PAPER_CANDIDATES = 2048  # 128 + 240 x 8
LADDER = (16, 32, 64, 128, 256, 512, 1024, PAPER_CANDIDATES)  # candidate counts auto may choose
PAPER_TRAIN_ROWS = 1_000_000  # from here on, the retraining recipe is the paper's
MIN_FINETUNE_STEPS, MIN_VAL_ROWS = 10, 2048  # the floor when even 16 candidates are too slow
SEARCH_KEYS = ("population", "sample", "children", "generations", "keep_per_generation", "top_k")
SCORE_KEYS = ("finetune_steps", "warmup_steps", "val_batches", "val_batch_size")


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds of a duration given as seconds (`900`) or with a unit (`90s`, `15m`, `1.5h`); None stays None."""
    if text is None or (isinstance(text, int | float) and not isinstance(text, bool)):
        value = None if text is None else float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
        if m is None:
            raise NasrecError(f"time budget {text!r}: expected seconds or a number with s, m or h (15m)")
        value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NasrecError(f"time budget must be > 0 seconds, not {text!r}")
    return value


def data_budget(cache: Cache, score: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Scoring settings and retraining preset fitted to the data's size; (settings, train preset, figures).

    `score` holds the scoring settings given explicitly, which are kept.
    """
    split = score.get("val_split", "val")
    train_rows, val_rows = len(cache.split_index("train")), len(cache.split_index(split))
    batch = int(score.get("finetune_batch_size", 512))
    steps = int(score.get("finetune_steps", min(500, max(20, train_rows // batch))))
    out = {"finetune_steps": steps, "warmup_steps": steps // 10, "val_batch_size": 8192}
    out.update({k: v for k, v in score.items() if k in ("warmup_steps", "val_batch_size")})
    out["val_batches"] = score.get("val_batches", max(1, min(150, math.ceil(val_rows / out["val_batch_size"]))))
    preset = "paper-final" if train_rows >= PAPER_TRAIN_ROWS else "cpu-quick"
    return out, preset, {"train_rows": train_rows, "val_rows": val_rows}


def calibration_archs(
    space: SearchSpace, cost: CostFn, max_mflops: float | None, max_params: int | None, seed: int, count: int
) -> list[Architecture]:
    """`count` distinct architectures within the constraints, drawn from a generator of their own.

    Their own generator: the search's draws do not depend on whether (or how often) it was calibrated.
    """
    rng = np.random.default_rng([seed, 0xCA1B])
    found: dict[str, Architecture] = {}
    for _ in range(10_000):
        a = space.sample(rng, "uniform")
        if within(cost(a), max_mflops, max_params):
            found.setdefault(functional_hash(a), a)
            if len(found) == count:
                break
    return list(found.values())


def seconds_per_candidate(
    score: Callable[[Sequence[Architecture]], list[float]], archs: Sequence[Architecture], parallel: int
) -> float:
    """Wall seconds per candidate of `score` over `archs` in batches of `parallel`.

    The first batch starts the workers and warms up torch, so it is timed only when it is all there is.
    """
    first, rest = list(archs[:parallel]), list(archs[parallel:])
    t0 = time.perf_counter()
    score(first)
    if not rest:
        return (time.perf_counter() - t0) / max(1, len(first))
    t0 = time.perf_counter()
    score(rest)
    return (time.perf_counter() - t0) / len(rest)


def candidate_budget(seconds: float, time_budget: float, given: dict[str, Any]) -> tuple[dict[str, Any], int, float]:
    """Search settings for the largest count on the ladder whose time fits; (settings, count, scale of scoring).

    The scale is below 1 when even the smallest count does not fit: the fraction of the scoring budget kept.
    """
    fit = time_budget / seconds if seconds > 0 else math.inf
    n = max([c for c in LADDER if c <= fit], default=LADDER[0])
    scale = min(1.0, fit / LADDER[0])
    if n == PAPER_CANDIDATES:
        shape = {
            "population": 128,
            "sample": 64,
            "children": 8,
            "generations": 240,
            "keep_per_generation": 2,
            "top_k": 15,
        }
    else:
        pop = max(8 if n < 64 else 16, n // 16)
        children = 8 if n >= 128 else 4
        # few generations: the result is chosen from every scored candidate (as the CPU presets do)
        shape = {
            "population": pop,
            "sample": pop // 2,
            "children": children,
            "generations": (n - pop) // children,
            "keep_per_generation": None,
            "top_k": max(3, min(15, n // 64)),
        }
    return {k: v for k, v in shape.items() if k not in given}, n, scale


def scaled_scoring(score: dict[str, Any], scale: float, given: dict[str, Any]) -> dict[str, Any]:
    """The scoring settings cut to `scale` of their rows (floors: 10 fine-tune steps, 2,048 validation rows)."""
    out = dict(score)
    if "finetune_steps" not in given:
        out["finetune_steps"] = max(MIN_FINETUNE_STEPS, int(score["finetune_steps"] * scale))
        if "warmup_steps" not in given:
            out["warmup_steps"] = out["finetune_steps"] // 10
    if "val_batches" not in given and "val_batch_size" not in given:
        rows = max(MIN_VAL_ROWS, int(score["val_batches"] * score["val_batch_size"] * scale))
        out["val_batch_size"] = min(score["val_batch_size"], rows)
        out["val_batches"] = math.ceil(rows / out["val_batch_size"])
    return out


def scoring_rows(score: dict[str, Any], val_rows: int) -> int:
    """Rows one candidate's scoring forwards: fine-tune steps x batch plus the validation rows read."""
    return int(score["finetune_steps"]) * int(score.get("finetune_batch_size", 512)) + min(
        val_rows, int(score["val_batches"]) * int(score["val_batch_size"])
    )
