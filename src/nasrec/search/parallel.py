"""Candidate scoring in-process or over worker processes, each loading the supernet once.

Scores are cached in the parent by functional hash, so an architecture that computes a function already
scored (`nasrec.space.liveness`) is never sent out again. Results come back in submission order and
every worker scores with the same fixed thread count (`ScoreConfig.threads`), so a search gives the
same result for any number of workers.

Under torchrun, `DistributedScoringPool` spreads each batch over the ranks of the process group instead:
every rank holds one scorer, scores its share in-process and the scores are gathered to every rank, so
each rank's search loop sees the same scores (and draws the same candidates) as a single process would.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from nasrec import distributed, rundir
from nasrec.errors import NasrecError
from nasrec.search.scorer import ScoreConfig, SupernetScorer
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_hash


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a process needs to build the scorer (picklable)."""

    supernet_dir: str
    data_dir: str
    score: dict[str, Any]
    checkpoint: str = "final"

    def build(self) -> SupernetScorer:
        """Load the supernet and the scoring batches."""
        from nasrec.data.cache import open_cache
        from nasrec.train.loading import load_trained

        model, spec = load_trained(self.supernet_dir, self.checkpoint)
        rundir.check_supernet(self.supernet_dir, spec.kind)
        cache = open_cache(self.data_dir)
        if len(cache.dense_fields) != spec.num_dense or tuple(cache.table_sizes) != spec.table_sizes:
            raise NasrecError(f"{self.data_dir}: this cache's fields and table sizes differ from the supernet's")
        return SupernetScorer(model, cache, ScoreConfig().updated(**self.score))


_WORKER: SupernetScorer | None = None


def _exit_with_parent(parent: int) -> None:
    # A killed parent (SIGKILL) cannot stop its pool, and a worker blocked on the task queue would
    # then live on, holding a supernet in memory: poll the parent and leave with it.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(spec: ScorerSpec, parent: int) -> None:
    global _WORKER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _WORKER = spec.build()


def _score(arch: dict[str, Any]) -> float:
    assert _WORKER is not None
    return _WORKER.score(Architecture.from_dict(arch))


class ScoringPool:
    """`pool(archs) -> scores`; `workers` 1 scores in this process."""

    def __init__(self, spec: ScorerSpec, workers: int = 1) -> None:
        if workers < 1:
            raise NasrecError(f"--workers must be >= 1, not {workers}")
        self.workers = workers
        self.cache: dict[str, float] = {}
        self._local: SupernetScorer | None = None
        self._pool: ProcessPoolExecutor | None = None
        if workers == 1:
            self._local = spec.build()
        else:
            # spawn: a forked copy of a process that already ran torch ops can deadlock in its thread pools.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(spec, os.getpid())
            )

    def __call__(self, archs: Sequence[Architecture]) -> list[float]:
        """Scores of `archs`, in order."""
        keyed = [(functional_hash(a), a) for a in archs]
        todo = {k: a for k, a in keyed if k not in self.cache}
        if todo:
            keys = list(todo)
            if self._local is not None:
                scores = [self._local.score(todo[k]) for k in keys]
            else:
                assert self._pool is not None
                scores = list(self._pool.map(_score, [todo[k].to_dict() for k in keys]))
            self.cache.update(zip(keys, scores, strict=True))
        return [self.cache[k] for k, _ in keyed]

    def samples_per_candidate(self) -> int | None:
        """Examples forwarded per candidate (known in-process only)."""
        return self._local.samples_per_candidate() if self._local is not None else None

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DistributedScoringPool:
    """`pool(archs) -> scores` over the ranks of the active process group: rank r scores archs[i] for i % world == r."""

    def __init__(self, spec: ScorerSpec) -> None:
        if not distributed.is_initialized():
            raise NasrecError("DistributedScoringPool needs an active process group (launch with torchrun)")
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.cache: dict[str, float] = {}
        self._local: SupernetScorer | None = spec.build()

    def __call__(self, archs: Sequence[Architecture]) -> list[float]:
        """Scores of `archs`, in order, on every rank (a collective: every rank must call it with the same list)."""
        import torch.distributed as dist

        # Every rank holds the same cache (all scores are gathered), so every rank computes the same `todo`.
        keyed = [(functional_hash(a), a) for a in archs]
        todo = {k: a for k, a in keyed if k not in self.cache}
        if todo:
            assert self._local is not None
            keys = list(todo)
            mine = {i: self._local.score(todo[keys[i]]) for i in range(self.rank, len(keys), self.world)}
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, mine)
            scores = {i: float(v) for part in gathered for i, v in part.items()}
            if len(scores) != len(keys):  # a rank scored another share: the ranks' candidate lists differ
                raise NasrecError("distributed scoring: the ranks were given different candidate lists")
            self.cache.update((k, scores[i]) for i, k in enumerate(keys))
        return [self.cache[k] for k, _ in keyed]

    def samples_per_candidate(self) -> int | None:
        """Examples forwarded per candidate."""
        return self._local.samples_per_candidate() if self._local is not None else None

    def close(self) -> None:
        """Drop the scorer (the process group is left to its owner)."""
        self._local = None

    def __enter__(self) -> DistributedScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
