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
The reference evaluates a subnet through its supernet at about 1,600 (NASRec-Small) and 630
(NASRec-Full) samples/s forward only on this machine kind (../shared/docs/benchmarking.md); its
candidates/min is that rate over the same examples per candidate.
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
from _machine import LoadSample, machine_info  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.data.loader import Batch
from nasrec.model.supernet import Supernet
from nasrec.search.scorer import ScoreConfig, SupernetScorer
from nasrec.space.space import NASREC_FULL, NASREC_SMALL

REFERENCE_SAMPLES_PER_S = {"small": 1600, "full": 630}
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


_STATE: dict = {}


def _init(space: str, cfg: dict, threads: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    score_cfg = ScoreConfig().updated(**cfg, threads=threads)
    supernet = Supernet(SPACES[space], 13, TABLES)
    _STATE["scorer"] = SupernetScorer(supernet, None, score_cfg, data=MemoryData(score_cfg))  # type: ignore[arg-type]


def _score(arch_seed: int, space: str) -> float:
    """One candidate, scored as `nasrec search` scores it."""
    return _STATE["scorer"].score(SPACES[space].sample(np.random.default_rng(arch_seed), "uniform"))


def measure(space: str, workers: int, threads: int, candidates: int, cfg: dict) -> dict:
    """Wall-clock candidates/min of `candidates` candidates over `workers` processes."""
    seeds = list(range(1000, 1000 + candidates))
    load = LoadSample()
    if workers == 1:
        _init(space, cfg, threads)
        _score(999, space)  # warm-up
        load.start()
        t0 = time.perf_counter()
        scores = [_score(s, space) for s in seeds]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(space, cfg, threads)) as pool:
            list(pool.map(_score, [999] * workers, [space] * workers))  # warm-up, one per worker (best effort)
            load.start()
            t0 = time.perf_counter()
            scores = list(pool.map(_score, seeds, [space] * len(seeds)))
    seconds = time.perf_counter() - t0
    per_candidate = cfg["finetune_steps"] * cfg["finetune_batch_size"] + cfg["val_batches"] * cfg["val_batch_size"]
    rate = candidates * per_candidate / seconds
    ref_per_min = 60 * REFERENCE_SAMPLES_PER_S[space] / per_candidate
    return {"space": space, "layout": f"{workers}x{threads}", "candidates": candidates,
            "seconds": round(seconds, 1), "candidates_per_min": round(60 * candidates / seconds, 3),
            "samples_per_s": round(rate), "reference_candidates_per_min": round(ref_per_min, 4),
            "speedup": round(rate / REFERENCE_SAMPLES_PER_S[space], 1), "other_share": round(load.stop(), 3),
            "scores_finite": all(np.isfinite(scores))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", nargs="+", choices=list(SPACES), default=list(SPACES))
    ap.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--finetune-steps", type=int, default=500)
    ap.add_argument("--val-batches", type=int, default=150)
    args = ap.parse_args(argv)
    cfg = dict(finetune_steps=args.finetune_steps, finetune_batch_size=512, warmup_steps=50,
               val_batches=args.val_batches, val_batch_size=8192)  # fmt: skip
    results = []
    for space in args.space:
        for layout in args.layouts:
            w, t = (int(x) for x in layout.split("x"))
            row = measure(space, w, t, args.candidates, cfg)
            results.append(row)
            print(json.dumps(row), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"bench": "search", "machine": machine_info(), "results": results,
                      "peak_rss_mb": round(peak), "peak_rss_worker_mb": round(peak_children)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
