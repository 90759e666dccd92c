"""Regularized (aging) evolution and random search over a search space, resumable after a kill.

Evolution (spec 4): an initial population of `population` random architectures ("uniform" sampling);
then per generation g, `sample` members drawn without replacement, the best of them (lowest score) is
the parent of `children` children, each mutated `mutation_count(g, generations)` times; a child that
computes the same function as a candidate already drawn (equal `functional_hash`: it differs at most
where nothing reaches the head), or that breaks a constraint, keeps mutating. The children join the
population and as many of its oldest members leave. Random search draws `population + generations * children`
architectures the same way as the initial population. In Pareto mode the parent is drawn uniformly
from the sample's non-dominated members in (score, MFLOPs), and the result is the Pareto front.

Every random choice comes from one numpy generator seeded with `seed` and used only here; scores come
from a `score_batch` callable and must depend on nothing but the architecture, so the result does not
depend on how scoring is spread over workers. Architectures over `max_mflops` or `max_params`
(non-embedding parameters: the tables are the same for every candidate) are never scored.

State on disk (`out`): `history.jsonl`, one line per scored candidate, and `state.json`, written
atomically after every step: the generator state, the population (hashes, oldest first) and the
candidates drawn but not yet scored. A search killed at any point resumes from the last state,
re-scores the pending candidates and ends exactly as an uninterrupted one.

Under a process group (torchrun) every rank runs the same loop with the same seed, so every rank draws
the same candidates; `writer` is True on one rank only (rank 0), which alone writes the directory. On
resume that rank reads the saved state and broadcasts it, so the other ranks need not see the files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nasrec import distributed, rundir
from nasrec.console import duration
from nasrec.errors import NasrecError
from nasrec.search.candidate import Candidate, CostFn, ScoreBatch, score_key, summary, top_k, within
from nasrec.search.config import SearchConfig, trajectory
from nasrec.search.pareto import pareto_front
from nasrec.space.arch import EMBEDDING_DIM, Architecture
from nasrec.space.liveness import functional_hash
from nasrec.space.space import SearchSpace, mutation_count

log = logging.getLogger(__name__)


class Search:
    """One search run in a directory (see module docstring); `run()` returns the summary."""

    def __init__(
        self,
        space: SearchSpace,
        score_batch: ScoreBatch,
        cost: CostFn,
        cfg: SearchConfig,
        out: Path | str,
        progress: Callable[[dict[str, Any]], None] | None = None,
        writer: bool = True,
        latency: Callable[[Architecture], float] | None = None,
    ) -> None:
        self.writer = writer
        # predicted serving milliseconds (`nasrec.latency.model`); needed by cfg.max_latency_ms
        self.latency = latency
        if cfg.max_latency_ms is not None and latency is None:
            raise NasrecError(
                "search config: max_latency_ms needs a latency table (latency_table)"
            )  # False: a non-main rank of a distributed search, which writes nothing
        self.space, self.score_batch, self.cost, self.cfg = space, score_batch, cost, cfg
        self.out = Path(out)
        self.progress = progress
        self.rng = np.random.default_rng(cfg.seed)
        self.history: list[Candidate] = []
        self.by_hash: dict[str, Candidate] = {}
        self.functions: set[str] = set()  # functional hashes of the history (see nasrec.space.liveness)
        self.population: list[str] = []  # hashes, oldest first
        self.pending: list[dict[str, Any]] = []  # drawn, not yet scored: {"arch", "parent"}
        self.step = 0  # steps completed: initial chunks, then generations
        self.seconds = 0.0
        self.seeds = [Architecture.from_dict(d) for d in cfg.seed_archs]
        self.seeds_given = list(self.seeds)  # at their own embedding_dim, as keep_seed_archs retrains them
        for i, a in enumerate(self.seeds):
            if a.embedding_dim != space.embedding_dim:  # an encoding of blocks: it takes the space's token width
                log.info(
                    "seed architecture %d (embedding_dim %d) scored at the space's %d%s",
                    i + 1,
                    a.embedding_dim,
                    space.embedding_dim,
                    f", retrained at its own {a.embedding_dim}"
                    if cfg.keep_seed_archs and a.embedding_dim != EMBEDDING_DIM
                    else "",
                )
                self.seeds[i] = a = replace(a, embedding_dim=space.embedding_dim)
            if not space.contains(a):
                raise NasrecError(f"seed architecture {i + 1} ({a.hash()[:16]}) is not in the {space.name!r} space")
            if not self._feasible(a) and writer:
                log.warning("seed architecture %d (%s) is outside the constraints: passed over", i + 1, a.hash()[:16])

    # -- persistence -----------------------------------------------------------------------------
    def _write_state(self) -> None:
        if not self.writer:
            return
        state = {
            "config": self.cfg.to_dict(),
            "space": self.space.to_dict(),
            "step": self.step,
            "scored": len(self.history),
            "population": self.population,
            "pending": self.pending,
            "rng": self.rng.bit_generator.state,
            "seconds": self.seconds,
        }
        rundir.atomic_write_text(self.out / rundir.STATE_JSON, json.dumps(state))

    def _read_saved(self) -> tuple[dict[str, Any], list[str]]:
        """The saved state and the history lines (of the writing rank's directory)."""
        state = rundir.read_json(self.out / rundir.STATE_JSON)
        history = self.out / rundir.HISTORY_JSONL
        lines = history.read_text().splitlines() if history.exists() else []
        return state, lines

    def _restore(self, state: dict[str, Any], lines: list[str]) -> None:
        if trajectory(state["config"]) != trajectory(self.cfg.to_dict()) or state["space"] != self.space.to_dict():
            raise NasrecError(f"{self.out}: --resume continues a search with its own configuration and space")
        if len(lines) < state["scored"]:
            raise NasrecError(f"{self.out}: history.jsonl holds fewer candidates than state.json records")
        lines = lines[: state["scored"]]  # lines written after the last state belong to pending candidates
        if self.writer:
            rundir.atomic_write_text(self.out / rundir.HISTORY_JSONL, "".join(ln + "\n" for ln in lines))
        for ln in lines:
            self._add(Candidate.from_dict(json.loads(ln)), write=False)
        self.population, self.pending, self.step = state["population"], state["pending"], state["step"]
        self.rng.bit_generator.state = state["rng"]
        self.seconds = state["seconds"]

    def _add(self, c: Candidate, write: bool = True) -> None:
        self.history.append(c)
        self.by_hash[c.hash] = c
        self.functions.add(functional_hash(c.arch))
        if write and self.writer:
            rundir.append_jsonl(self.out / rundir.HISTORY_JSONL, c.to_dict())

    # -- drawing candidates ----------------------------------------------------------------------
    def _feasible(self, arch: Architecture) -> bool:
        if not within(self.cost(arch), self.cfg.max_mflops, self.cfg.max_params):
            return False
        cap = self.cfg.max_latency_ms
        return cap is None or self.latency(arch) <= cap  # type: ignore[misc]  # set whenever cap is

    def _caps(self) -> str:
        """The constraints, as the errors and the log name them."""
        cfg = self.cfg
        caps = [("max_mflops", cfg.max_mflops), ("max_params", cfg.max_params), ("max_latency_ms", cfg.max_latency_ms)]
        return ", ".join(f"{k}={v}" for k, v in caps if v is not None or k != "max_latency_ms")

    def _new(self, arch: Architecture, taken: set[str]) -> bool:
        # A candidate that differs from one already drawn only where nothing reaches the head is the same
        # model: drawing it would spend a score on a known result.
        if not self._feasible(arch):  # first: the cheaper test, and the one most draws fail under a cap
            return False
        f = functional_hash(arch)
        return f not in self.functions and f not in taken

    def _draw_random(self, taken: set[str]) -> Architecture:
        for _ in range(self.cfg.max_tries):
            arch = self.space.sample(self.rng, "uniform")
            if self._new(arch, taken):
                return arch
        raise NasrecError(f"no new architecture within the constraints in {self.cfg.max_tries} draws ({self._caps()})")

    def _next_seed(self, taken: set[str]) -> Architecture | None:
        """The first seed architecture not yet drawn (nor an equal function) and within the constraints."""
        if self.seeds and len(self.history) < self.cfg.population:  # seeds fill the initial population only
            for arch in self.seeds:
                if self._new(arch, taken):
                    return arch
        return None

    def _draw_child(self, parent: Architecture, mutations: int, taken: set[str]) -> Architecture:
        # A walk that only takes feasible steps: an infeasible mutation is redrawn, not walked through.
        # Under a tight cap most mutations leave the feasible region, and a walk through infeasible
        # children rarely finds its way back (tens of thousands of draws per child at 0.05 MFLOPs).
        child, steps = parent, 0
        for _ in range(self.cfg.max_tries):
            step = self.space.mutate(child, self.rng)
            if not self._feasible(step):
                continue
            child, steps = step, steps + 1
            if steps >= mutations:
                f = functional_hash(child)
                if f not in self.functions and f not in taken:
                    return child
        return self._draw_random(taken)  # the parent's neighbourhood is exhausted or infeasible

    def _select_parent(self) -> Candidate:
        cfg = self.cfg
        idx = sorted(int(i) for i in self.rng.choice(len(self.population), size=cfg.sample, replace=False))
        members = [self.by_hash[self.population[i]] for i in idx]
        if not cfg.pareto:
            return min(members, key=lambda c: score_key(c.score))  # ties: the oldest
        front = pareto_front([(score_key(c.score), self._pareto_cost(c)) for c in members])
        if not front:  # every member diverged
            return members[0]
        return members[sorted(front)[int(self.rng.integers(len(front)))]]

    def _pareto_cost(self, c: Candidate) -> float:
        """The cost a Pareto front weighs against the score: predicted latency with a latency table, else MFLOPs."""
        return c.mflops if c.latency_ms is None else c.latency_ms

    def _plan_step(self) -> None:
        """Draw the next step's candidates into `pending` (the only place the generator is used)."""
        cfg = self.cfg
        taken: set[str] = set()
        n_init = min(cfg.children, cfg.population - len(self.history))
        if cfg.strategy == "random" or n_init > 0:
            n = n_init if n_init > 0 else min(cfg.children, cfg.budget - len(self.history))
            for _ in range(n):
                arch = self._next_seed(taken) or self._draw_random(taken)
                taken.add(functional_hash(arch))
                self.pending.append({"arch": arch.to_dict(), "parent": None})
            return
        parent = self._select_parent()
        m = mutation_count(self._generation(), cfg.generations)
        for _ in range(cfg.children):
            arch = self._draw_child(parent.arch, m, taken)
            taken.add(functional_hash(arch))
            self.pending.append({"arch": arch.to_dict(), "parent": parent.hash})

    def _generation(self) -> int:
        """The generation of the next step (-1 while the initial population is being scored)."""
        n = len(self.history)
        if n < self.cfg.population:
            return -1
        return (n - self.cfg.population) // self.cfg.children

    def _score_pending(self) -> None:
        gen = self._generation()
        archs = [Architecture.from_dict(p["arch"]) for p in self.pending]
        scores = self.score_batch(archs)
        new = []
        for p, arch, score in zip(self.pending, archs, scores, strict=True):
            mflops, params = self.cost(arch)
            ms = None if self.latency is None else round(self.latency(arch), 6)
            c = Candidate(len(self.history), gen, arch, arch.hash(), float(score), mflops, params, p["parent"], ms)
            self._add(c)
            new.append(c.hash)
        self.pending = []
        if self.cfg.strategy == "evolution":
            self.population = (self.population + new)[-self.cfg.population :]  # the oldest leave

    # -- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Search until the budget is scored; returns the summary also written to `result.json`."""
        self._start(resume)
        if self.writer:
            cfg = self.cfg
            plan = f"{cfg.budget:,} random candidates"
            if cfg.strategy != "random":
                plan = (
                    f"{cfg.budget:,} candidates: a population of {cfg.population}, then {cfg.generations} generations "
                    f"of {cfg.children} children"
                )
            named = (("max MFLOPs", cfg.max_mflops), ("max params", cfg.max_params), ("max ms", cfg.max_latency_ms))
            caps = [f"{k} {v}" for k, v in named if v]
            done = f"; resuming with {len(self.history):,} scored" if self.history else ""
            log.info("search %s: %s%s%s", self.out, plan, f" ({', '.join(caps)})" if caps else "", done)
        estimated = False
        while len(self.history) < self.cfg.budget or self.pending:
            t0 = time.perf_counter()
            if not self.pending:
                self._plan_step()
                self._write_state()
            self._score_pending()
            self.step += 1
            self.seconds += time.perf_counter() - t0
            self._write_state()
            st = self.status()
            if not estimated and self.writer and st["eta_s"] is not None:
                estimated = True  # once, from the first candidates this process scored
                log.info(
                    "search: %d of %d candidates scored in %s: about %s in all, %s left",
                    st["scored"],
                    st["budget"],
                    duration(self.seconds),
                    duration(st["total_s"]),
                    duration(st["eta_s"]),
                )
            if self.writer:
                self._say_step(st)
            if self.progress is not None:
                self.progress(st)
        return self._finish()

    def _say_step(self, st: dict[str, Any]) -> None:
        """A line per search step (a generation's children, or a batch of the initial population)."""
        from nasrec.console import bar_extra, duration

        cfg, last = self.cfg, self.history[-1]
        if cfg.strategy == "random":
            where = "random"
        elif last.generation < 0:
            where = "initial population"
        else:
            where = f"generation {last.generation + 1}/{cfg.generations}"
        left = f", about {duration(st['eta_s'])} left" if st.get("eta_s") else ""
        log.info(
            "search %s: %s/%s scored, best %.5f, %.1f candidates/min%s",
            where,
            f"{st['scored']:,}",
            f"{st['budget']:,}",
            st["best"],
            st["per_minute"],
            left,
            extra=bar_extra(self.progress is not None),
        )

    def _start(self, resume: bool) -> None:
        """Restore the saved search or start a new one; the writer decides and tells the other ranks."""
        error, saved = None, None
        if self.writer:
            if resume and (self.out / rundir.STATE_JSON).exists():
                saved = self._read_saved()
            elif (self.out / rundir.STATE_JSON).exists():
                error = f"{self.out} already holds a search (use --resume to continue it)"
            else:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / rundir.HISTORY_JSONL).write_text("")
        # Every rank raises or goes on together: a rank left alone in the next collective would hang.
        error, saved = distributed.broadcast_object((error, saved))
        if error is not None:
            raise NasrecError(error)
        if saved is not None:
            self._restore(*saved)
        else:
            self._write_state()

    def status(self) -> dict[str, Any]:
        """Progress figures: generation, candidates scored, best score so far, candidates per minute."""
        scores = [score_key(c.score) for c in self.history]
        n, budget = len(self.history), self.cfg.budget
        per = self.seconds / n if n and self.seconds else None  # the search's own time per candidate so far
        return {
            "generation": self._generation(),
            "scored": n,
            "budget": budget,
            "best": min(scores) if scores else math.nan,
            "per_minute": 60 / per if per else 0.0,
            "total_s": per * budget if per else None,
            "eta_s": per * max(0, budget - n) if per else None,
        }

    # -- results ---------------------------------------------------------------------------------
    def kept(self) -> list[Candidate]:
        """The candidates the result is chosen from (see `SearchConfig.keep_per_generation`)."""
        k = self.cfg.keep_per_generation
        if k is None or self.cfg.strategy == "random":
            return list(self.history)
        out = []
        for g in range(self.cfg.generations):
            children = [c for c in self.history if c.generation == g]
            out += sorted(children, key=lambda c: (score_key(c.score), c.index))[:k]
        return out

    def _kept_seeds(self) -> list[Candidate]:
        """The scored seeds, as given: one that states an embedding_dim (other than NASRec's 16, which a JSON
        leaves unsaid) and not the space's is scored at the space's (the supernet has no other) but retrained at
        its own, listed with its twin's score, where it meets the constraints there (MFLOPs and parameters at its
        own dimension; a latency cap cannot price it). A 16-wide seed is an encoding of blocks: the space's."""
        out = []
        for given, twin in zip(self.seeds_given, self.seeds, strict=True):
            c = self.by_hash.get(twin.hash())
            if c is None or math.isnan(c.score):
                continue
            if given.embedding_dim not in (twin.embedding_dim, EMBEDDING_DIM):
                mflops, params = self.cost(given)
                if self.cfg.max_latency_ms is not None or not within(
                    (mflops, params), self.cfg.max_mflops, self.cfg.max_params
                ):
                    if self.writer:
                        log.warning(
                            "seed architecture %s at embedding_dim %d is outside the constraints there (%s): "
                            "retrained at the space's %d",
                            given.hash()[:16],
                            given.embedding_dim,
                            self._caps(),
                            twin.embedding_dim,
                        )
                else:
                    c = replace(c, arch=given, hash=given.hash(), mflops=mflops, params=params, latency_ms=None)
            out.append(c)
        return out

    def _finish(self) -> dict[str, Any]:
        pool = [c for c in self.kept() if not math.isnan(c.score)]
        if not pool:
            raise NasrecError(f"{self.out}: every candidate diverged; no architecture to return")
        ranked = top_k(pool, self.cfg.top_k)
        if self.cfg.keep_seed_archs:
            taken = {c.hash for c in ranked}
            for c in self._kept_seeds():
                if c.hash not in taken:
                    ranked.append(c)
                    taken.add(c.hash)
        front = [pool[i] for i in pareto_front([(c.score, c.mflops) for c in pool])]
        timed = self.latency is not None
        latency_front = [pool[i] for i in pareto_front([(c.score, c.latency_ms) for c in pool])] if timed else []
        best = ranked[0]
        result = {
            "strategy": self.cfg.strategy,
            "scored": len(self.history),
            "seconds": self.seconds,
            "candidates_per_minute": 60 * len(self.history) / max(self.seconds, 1e-9),
            "best": summary(best),
            "pareto": [c.hash for c in front],
            **({"pareto_latency": [c.hash for c in latency_front]} if timed else {}),
            "top": [c.hash for c in ranked],
        }
        if not self.writer:
            return result
        rundir.atomic_write_json(self.out / rundir.BEST_JSON, best.arch.to_dict())
        rundir.atomic_write_json(self.out / rundir.TOP_JSON, [summary(c) for c in ranked])
        rundir.atomic_write_json(self.out / rundir.PARETO_JSON, [summary(c) for c in front])
        if timed:
            rundir.atomic_write_json(self.out / rundir.PARETO_LATENCY_JSON, [summary(c) for c in latency_front])
        rundir.atomic_write_json(self.out / rundir.RESULT_JSON, result)
        log.info(
            "search done: %s candidates in %.1f s; best %s (score %.5f, %.4f MFLOPs), top %d in top.json, "
            "Pareto front of %d",
            f"{len(self.history):,}",
            self.seconds,
            best.hash[:12],
            best.score,
            best.mflops,
            len(ranked),
            len(front),
        )
        return result
