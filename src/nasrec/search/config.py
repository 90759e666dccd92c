"""The search configuration: how many candidates, how they are drawn, and the constraints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from nasrec.configfile import SEED, ConfigError, Rule, check_fields, checked_replace
from nasrec.errors import NasrecError

STRATEGIES = ("evolution", "random")
# Settings that only pick the result from the history: a search may be resumed with other values.
RESULT_ONLY = ("top_k",)
# The range of every SearchConfig field that has one (types come from the annotations); see `nasrec.configfile`.
RULES: dict[str, Rule] = {
    "strategy": Rule(choices=STRATEGIES),
    "population": Rule(ge=1),
    "sample": Rule(ge=1),
    "children": Rule(ge=1),
    "generations": Rule(ge=1),
    "keep_per_generation": Rule(ge=1),
    "max_mflops": Rule(gt=0),
    "max_params": Rule(ge=1),
    "max_latency_ms": Rule(gt=0),
    "latency_runtime": Rule(choices=("onnxruntime", "torchscript")),
    "latency_batch": Rule(ge=1),
    "latency_threads": Rule(ge=1),
    "top_k": Rule(ge=1),
    "seed": SEED,
    "max_tries": Rule(ge=1),
}


@dataclass(frozen=True)
class SearchConfig:
    """How many candidates, how they are drawn, and the constraints."""

    strategy: str = "evolution"
    population: int = 128
    sample: int = 64
    children: int = 8
    generations: int = 240
    # Candidates kept per generation for the result (the paper keeps the top 2 children; the initial
    # population then never counts); None keeps every scored candidate.
    keep_per_generation: int | None = 2
    max_mflops: float | None = None
    max_params: int | None = None
    # A serving-latency cap in milliseconds, predicted by a latency table (`nasrec latency profile`) measured
    # on the serving machine for this space and data shape, at latency_batch examples a call and
    # latency_threads threads in latency_runtime. With a table and no cap, candidates still get a predicted
    # latency and the result a front over it (pareto_latency.json). latency_force: use a table measured for
    # another machine, space or shape anyway (the result then says so).
    max_latency_ms: float | None = None
    latency_table: str | None = None
    latency_runtime: str = "onnxruntime"
    latency_batch: int = 1
    latency_threads: int = 1
    latency_force: bool = False
    # How MFLOPs and params are counted (caps, history, Pareto front): for the served model with layer norms
    # or without, as the recipe that trains it says (`nasrec.model.cost.ServedCost`)
    count_layernorm: bool = False
    pareto: bool = False
    top_k: int = 15
    seed: int = 0
    max_tries: int = 10_000  # draws (or mutations of one child) before giving up on the constraints
    # Architectures (as architecture JSON) the initial population starts with, in order, before random
    # draws: known good models such as the published NASRecNets (`nasrec search --seed-arch FILE`). One
    # outside the constraints, or computing the same function as an earlier one, is passed over.
    seed_archs: tuple[dict[str, Any], ...] = ()
    # The seed architectures that were scored (within the constraints) join top.json after the top k whatever
    # their scores, so the retraining trains each from scratch beside the search's best: a known good model
    # is judged by the recipe that judges the search's, not by the supernet alone. A seed that states an
    # embedding_dim (not NASRec's 16) other than the space's is scored at the space's (the supernet has no
    # other) and retrained at its own, where it meets the MFLOPs and parameter caps there (a latency table
    # prices one dimension only); a 16-wide one is taken at the space's, as the search takes it
    keep_seed_archs: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "search config", RULES)
        if isinstance(self.seed_archs, dict | str) or not isinstance(self.seed_archs, list | tuple):
            raise ConfigError(
                "search config", "seed_archs", f"expected a list of architectures, got {self.seed_archs!r}"
            )
        from nasrec.space.arch import Architecture

        canonical = []
        for i, d in enumerate(self.seed_archs):
            try:
                canonical.append(Architecture.from_dict(d).to_dict())
            except NasrecError as e:
                raise ConfigError("search config", f"seed_archs[{i}]", str(e)) from None
        object.__setattr__(self, "seed_archs", tuple(canonical))
        if self.sample > self.population:
            raise ConfigError(
                "search config",
                "sample",
                f"sample ({self.sample}) exceeds population ({self.population})",
                related=("population",),
            )

    @property
    def budget(self) -> int:
        """Candidates scored in all: the initial population plus every generation's children."""
        return self.population + self.generations * self.children

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (seed_archs as JSON reads them back: lists, not tuples)."""
        d = asdict(self)
        d["seed_archs"] = json.loads(json.dumps(d["seed_archs"]))
        return d

    def updated(self, **changes: Any) -> SearchConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return checked_replace(self, "search config", changes)


def trajectory(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide which candidates a search scores (all but RESULT_ONLY).

    A setting added after a search was saved counts with its default, so that older searches still resume.
    """
    return {k: v for k, v in {**SearchConfig().to_dict(), **config}.items() if k not in RESULT_ONLY}
