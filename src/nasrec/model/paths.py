"""Which path of a model a training step trains and an evaluation judges: the trainer's path-sampling strategy.

The trainer knows no supernet. It asks a `PathSampler` for the path of each step (None: the whole model)
and for the fixed paths an evaluation averages over. `WholeModel` is the sampler of a standalone model;
`SupernetPaths` draws a supernet's paths, each a pure function of (seed, step), so that every rank draws
the same one and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from nasrec.errors import NasrecError
from nasrec.model.cost import ServedCost
from nasrec.space.arch import Architecture
from nasrec.space.space import SearchSpace

EVAL_SEED = 7919  # distinct stream for the fixed architectures a supernet is evaluated on
PATH_TRIES = 10_000  # draws allowed to find a path within the budget (6 % of Full's are under 0.5 MFLOPs)


def supernet_path(
    space: Any,
    seed: int,
    step: int,
    strategy: str,
    warmup_steps: int,
    within: Callable[[Architecture], bool] | None = None,
) -> Architecture:
    """The path trained at `step`: a pure function of (seed, step), so every rank draws the same one.

    After the warm-up, paths for which `within` is false are redrawn (from the same generator).
    """
    prob = max(0.0, 1.0 - step / warmup_steps) if warmup_steps > 0 else 0.0
    rng = np.random.default_rng([seed, step])
    if prob > 0:
        return space.sample(rng, strategy, full_path_prob=prob)
    return sample_within(space, rng, strategy, within)


def sample_within(
    space: Any,
    rng: np.random.Generator,
    strategy: str,
    within: Callable[[Architecture], bool] | None,
    tries: int = PATH_TRIES,
) -> Architecture:
    """The first architecture drawn with `strategy` for which `within` holds (the first drawn if None)."""
    for _ in range(tries):
        arch = space.sample(rng, strategy)
        if within is None or within(arch):
            return arch
    raise NasrecError(f"no {strategy} path within the budget in {tries} draws: raise path_max_mflops")


def mflops_budget(
    max_mflops: float | None, num_dense: int, table_sizes: Sequence[int], layernorm: bool = False
) -> Callable[[Architecture], bool] | None:
    """The test "at most `max_mflops`" for a served model with or without layer norms (None without a budget)."""
    if max_mflops is None:
        return None
    cost = ServedCost(num_dense, tuple(table_sizes), layernorm)
    return lambda arch: cost(arch)[0] <= max_mflops


class PathSampler(Protocol):
    """What a trainer asks about the paths of its model; a model without paths runs whole."""

    # Whether the model has paths (a supernet: sliced weights, a path per step, evaluation per path)
    has_paths: ClassVar[bool]

    def path(self, step: int) -> Architecture | None:
        """The path trained at `step` (None: the whole model)."""
        ...

    def warm(self, step: int) -> bool:
        """Whether `step` is in the full-path warm-up (whose speed is not that of the sampled paths)."""
        ...

    def eval_paths(self) -> list[Architecture]:
        """The fixed paths an evaluation averages over, the same at every evaluation (empty: the whole model)."""
        ...

    def sandwich(self, step: int) -> tuple[Architecture, Architecture] | None:
        """The largest and smallest paths trained at `step` beside `path(step)` (the sandwich rule), or None."""
        ...


@dataclass(frozen=True)
class WholeModel:
    """The sampler of a standalone model: every step and every evaluation runs all of it."""

    has_paths: ClassVar[bool] = False

    def path(self, step: int) -> Architecture | None:
        """None: the whole model."""
        return None

    def warm(self, step: int) -> bool:
        """No warm-up."""
        return False

    def eval_paths(self) -> list[Architecture]:
        """None: the whole model is evaluated."""
        return []

    def sandwich(self, step: int) -> tuple[Architecture, Architecture] | None:
        """None: one model, no sandwich."""
        return None


@dataclass(frozen=True)
class SupernetPaths:
    """A supernet's paths: the full path with falling probability over the warm-up, then `strategy`'s draws.

    After the warm-up a path outside `within` (the search's cap) is redrawn. Evaluations average over
    `eval_archs` default-strategy paths drawn from their own stream (`EVAL_SEED`), the same each time.
    """

    space: SearchSpace
    seed: int
    strategy: str = "default"
    warmup_steps: int = 0
    within: Callable[[Architecture], bool] | None = None
    eval_archs: int = 4
    # The sandwich rule (BigNAS): after the warm-up each step also trains these two, the largest path (the
    # full path) and the smallest, with the step's sampled path; None: the sampled path alone
    ends: tuple[Architecture, Architecture] | None = None

    has_paths: ClassVar[bool] = True

    def path(self, step: int) -> Architecture:
        """`supernet_path` of this run's seed, strategy, warm-up and budget."""
        return supernet_path(self.space, self.seed, step, self.strategy, self.warmup_steps, self.within)

    def warm(self, step: int) -> bool:
        """Whether `step` may train the full path (the warm-up's probability 1 - step/T is above 0)."""
        return step < self.warmup_steps

    def sandwich(self, step: int) -> tuple[Architecture, Architecture] | None:
        """(largest, smallest) after the warm-up when the sandwich rule is on; None otherwise."""
        return None if self.ends is None or self.warm(step) else self.ends

    def eval_paths(self) -> list[Architecture]:
        """`eval_archs` paths within the budget, from a stream of their own."""
        rng = np.random.default_rng([self.seed, EVAL_SEED])
        return [sample_within(self.space, rng, "default", self.within) for _ in range(self.eval_archs)]
