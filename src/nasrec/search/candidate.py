"""A scored candidate of a search, the constraints it must meet, and how the best are ranked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nasrec.space.arch import Architecture

ScoreBatch = Callable[[Sequence[Architecture]], list[float]]
CostFn = Callable[[Architecture], tuple[float, int]]


@dataclass(frozen=True)
class Candidate:
    """One scored architecture."""

    index: int  # order of scoring
    generation: int  # -1: the initial population (or random search's draws)
    arch: Architecture
    hash: str
    score: float  # validation log loss; NaN if it diverged
    mflops: float
    params: int  # non-embedding parameters
    parent: str | None = None
    latency_ms: float | None = None  # predicted serving latency, when the search has a latency table

    def to_dict(self) -> dict[str, Any]:
        """One history line (NaN written as null)."""
        return {
            "index": self.index,
            "generation": self.generation,
            "hash": self.hash,
            "score": None if math.isnan(self.score) else self.score,
            "mflops": self.mflops,
            "params": self.params,
            "parent": self.parent,
            **({"latency_ms": self.latency_ms} if self.latency_ms is not None else {}),
            "arch": self.arch.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """Inverse of `to_dict`."""
        score = math.nan if d["score"] is None else float(d["score"])
        return cls(
            d["index"],
            d["generation"],
            Architecture.from_dict(d["arch"]),
            d["hash"],
            score,
            d["mflops"],
            d["params"],
            d["parent"],
            d.get("latency_ms"),
        )


def score_key(score: float) -> float:
    """A score as a sort key: a diverged candidate (NaN) ranks last."""
    return math.inf if math.isnan(score) else score


def within(cost: tuple[float, int], max_mflops: float | None, max_params: int | None) -> bool:
    """Whether an architecture's (MFLOPs, params) meets the constraints (None: unconstrained)."""
    mflops, params = cost
    return (max_mflops is None or mflops <= max_mflops) and (max_params is None or params <= max_params)


def top_k(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The k best by score, skipping a candidate whose score is within 1e-6 of one already taken (spec 4)."""
    out: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (score_key(c.score), c.index)):
        if math.isnan(c.score) or any(abs(c.score - o.score) <= 1e-6 for o in out):
            continue
        out.append(c)
        if len(out) == k:
            break
    return out


def summary(c: Candidate) -> dict[str, Any]:
    """A candidate as top.json, pareto.json and result.json list it."""
    return {
        "hash": c.hash,
        "score": c.score,
        "mflops": c.mflops,
        "params": c.params,
        **({"latency_ms": c.latency_ms} if c.latency_ms is not None else {}),
        "generation": c.generation,
        "arch": c.arch.to_dict(),
    }
