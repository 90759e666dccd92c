"""Candidates scored per minute through the supernet, with the reference's fine-tune and validation budget.

Usage::

    python bench/bench_search.py                        # both spaces, 1 worker x 2 threads and 2 x 1
    python bench/bench_search.py --space small --candidates 4 --layouts 1x2

Criteo shape (13 dense, 26 sparse fields, tables capped at 500,000 rows, embedding dim 16, layer
norms on), an untrained supernet (speed does not depend on the weights). Each candidate is scored as
`nasrec search` scores it (`nasrec.search.scorer`): the head fine-tuned for 500 steps of batch 512,
then log loss on 150 validation batches of 8192, i.e. 1,484,800 examples through the body per
candidate, the reference's budget (spec 4). Candidates are drawn as the EA's initial population
("uniform" sampling) from a fixed seed. Batches are random and held in memory. A layout "WxT" runs W
worker processes of T threads each; candidates/min is over the wall time of all candidates.
The fine-tune (training steps of batch 512) and the validation (forward only, batch 8192) are timed
apart and reported as two rates per worker: fine-tune samples/s and validation forward samples/s. Only
the validation rate has a like-for-like reference figure: the published implementation evaluates a
subnet through its supernet forward only (../shared/docs/benchmarking.md, per CPU capability); a ratio
is printed only against a figure measured on a CPU of this machine's capability, for the 1 x 2 layout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import LoadSample, machine_info, machine_line, reference, reference_text  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.data.loader import Batch
from nasrec.model.supernet import Supernet
from nasrec.search.scorer import ScoreConfig, SupernetScorer
from nasrec.space.space import NASREC_FULL, NASREC_SMALL

SPACES = {"small": NASREC_SMALL, "full": NASREC_FULL}
TABLES = [min(n, 500_000) for n in CRITEO_TABLE_SIZES]


class MemoryData:
    """Random scoring batches with the shape of `nasrec.search.scorer.ScoringData`."""

    def __init__(self, cfg: ScoreConfig, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)

        def batch(n: int) -> Batch:
            sparse = torch.stack([torch.randint(0, t, (n,), generator=g) for t in TABLES], 1)
            return Batch(torch.rand(n, 13, generator=g) * 3, sparse, torch.randint(0, 2, (n,), generator=g).float())

        self.cfg = cfg
        self.train = [batch(cfg.finetune_batch_size) for _ in range(cfg.finetune_steps)]
        self.calib = self.train[: cfg.calib_batches]  # as ScoringData: the first fine-tune batches
        self.val = [batch(cfg.val_batch_size) for _ in range(cfg.val_batches)]
        self.val_rows = cfg.val_batches * cfg.val_batch_size


class TimedBatches(list):
    """A list of batches that adds the seconds from its first batch to the end of each pass to `seconds`."""

    def __init__(self, items: list, seconds: dict, key: str) -> None:
        super().__init__(items)
        self.seconds, self.key = seconds, key

    def __iter__(self):
        t0 = time.perf_counter()
        yield from super().__iter__()
        self.seconds[self.key] = self.seconds.get(self.key, 0.0) + time.perf_counter() - t0


_STATE: dict = {}


def _init(space: str, cfg: dict, threads: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    score_cfg = ScoreConfig().updated(**cfg, threads=threads)
    supernet = Supernet(SPACES[space], 13, TABLES)
    scorer = SupernetScorer(supernet, None, score_cfg, data=MemoryData(score_cfg))  # type: ignore[arg-type]
    # the scorer iterates these lists: the fine-tune steps run between the train batches, the forward
    # passes between the validation ones
    seconds: dict[str, float] = {}
    scorer.data.train = TimedBatches(scorer.data.train, seconds, "finetune")
    scorer.data.val = TimedBatches(scorer.data.val, seconds, "val")
    _STATE["scorer"], _STATE["seconds"] = scorer, seconds


def _score(arch_seed: int, space: str) -> tuple[float, float, float]:
    """One candidate, scored as `nasrec search` scores it: (score, fine-tune seconds, validation seconds)."""
    seconds = _STATE["seconds"]
    seconds.clear()
    score = _STATE["scorer"].score(SPACES[space].sample(np.random.default_rng(arch_seed), "uniform"))
    return score, seconds.get("finetune", 0.0), seconds.get("val", 0.0)


def measure(space: str, workers: int, threads: int, candidates: int, cfg: dict) -> dict:
    """Wall-clock candidates/min of `candidates` candidates over `workers` processes."""
    seeds = list(range(1000, 1000 + candidates))
    load = LoadSample()
    if workers == 1:
        _init(space, cfg, threads)
        _score(999, space)  # warm-up
        load.start()
        t0 = time.perf_counter()
        scored = [_score(s, space) for s in seeds]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(space, cfg, threads)) as pool:
            list(pool.map(_score, [999] * workers, [space] * workers))  # warm-up, one per worker (best effort)
            load.start()
            t0 = time.perf_counter()
            scored = list(pool.map(_score, seeds, [space] * len(seeds)))
    seconds = time.perf_counter() - t0
    other = round(load.stop(), 3)
    scores = [sc for sc, _, _ in scored]
    finetune_rows = cfg["finetune_steps"] * cfg["finetune_batch_size"] * candidates
    val_rows = cfg["val_batches"] * cfg["val_batch_size"] * candidates
    finetune_s, val_s = sum(f for _, f, _ in scored), sum(v for _, _, v in scored)  # summed over the workers
    # per worker: rows over the seconds the workers spent in that phase (each worker runs one candidate at a time)
    finetune_rate = finetune_rows / finetune_s if finetune_s else float("nan")
    val_rate = val_rows / val_s if val_s else float("nan")
    row = {
        "space": space,
        "layout": f"{workers}x{threads}",
        "candidates": candidates,
        "seconds": round(seconds, 1),
        "candidates_per_min": round(60 * candidates / seconds, 3),
        "finetune_samples_per_s_per_worker": round(finetune_rate),
        "val_forward_samples_per_s_per_worker": round(val_rate),
        "finetune_seconds": round(finetune_s, 1),
        "val_seconds": round(val_s, 1),
        "other_share": other,
        "scores_finite": all(np.isfinite(scores)),
    }
    if workers == 1 and threads == 2:  # the reference's figure is one process with 2 threads
        key = f"eval {space} b{cfg['val_batch_size']}"
        row.update(reference(key, val_rate))
        row["reference_note"] = reference_text(key, val_rate)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", nargs="+", choices=list(SPACES), default=list(SPACES))
    ap.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--finetune-steps", type=int, default=500)
    ap.add_argument("--val-batches", type=int, default=150)
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    cfg = dict(
        finetune_steps=args.finetune_steps,
        finetune_batch_size=512,
        warmup_steps=50,
        val_batches=args.val_batches,
        val_batch_size=8192,
    )
    results = []
    for space in args.space:
        for layout in args.layouts:
            w, t = (int(x) for x in layout.split("x"))
            row = measure(space, w, t, args.candidates, cfg)
            results.append(row)
            print(json.dumps(row), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "search",
                "machine": machine_info(),
                "results": results,
                "peak_rss_mb": round(peak),
                "peak_rss_worker_mb": round(peak_children),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
