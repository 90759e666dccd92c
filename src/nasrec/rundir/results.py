"""What a run directory records, as typed values: `to_dict` gives exactly the JSON written, `from_dict` reads it.

Each record keeps keys it does not know in `extra` (written by another nasrec version, or by a caller
that adds its own), so that reading a file and writing it back changes nothing. Optional fields are
left out of `to_dict` when None, as the writers leave them out; the others are written even when None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """Base of the typed records: field order is key order, unknown keys kept in `extra` (written last)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # left out of to_dict when None
    _NESTED: ClassVar[dict[str, Any]] = {}  # field -> Record type, or (list, Record type)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object this record is written as (same keys, same order as the file)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[f.name] = _plain(value)
        out.update(getattr(self, "extra", {}))
        return out

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any]) -> R:
        """Read a record from its JSON object; missing keys are None, unknown ones go to `extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in names:
                kw[k] = _typed(cls._NESTED.get(k), v)
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**kw, extra=extra)  # type: ignore[call-arg]


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list | tuple) and value and isinstance(value[0], Record):
        return [v.to_dict() for v in value]
    return value


def _typed(kind: Any, value: Any) -> Any:
    if kind is None or value is None:
        return value
    if isinstance(kind, tuple):  # (list, Record type)
        return [kind[1].from_dict(v) for v in value]
    return kind.from_dict(value)


@dataclass(frozen=True)
class SplitMetrics(Record):
    """A model's metrics on one split (`evaluate`): log loss, AUC, calibration and the rows counted."""

    logloss: float | None = None
    auc: float | None = None
    mean_pred: float | None = None
    ctr: float | None = None
    calibration: float | None = None
    accuracy: float | None = None
    count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"mean_pred", "ctr", "calibration", "accuracy", "count"})


@dataclass(frozen=True)
class RunMetrics(Record):
    """A training run's `metrics.json`: the final evaluation per split, the model's cost, and how training went.

    `logloss` / `auc` are the main split's (test if the data has one, else the evaluation split).
    """

    logloss: float | None = None
    auc: float | None = None
    val: SplitMetrics | None = None
    test: SplitMetrics | None = None
    mflops: float | None = None  # None for a supernet: it has no single cost per example
    params: int | None = None
    dense_params: int | None = None
    samples_per_s: float | None = None
    samples_per_s_sampled: float | None = None  # a supernet's rate after its full-path warm-up
    steps: int | None = None
    epochs: int | None = None
    early_stopped: bool | None = None
    weights: str | None = None  # "best" or "final"
    best_step: int | None = None
    train_seconds: float | None = None
    world_size: int | None = None  # under torchrun only
    comm_bytes_per_step: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {"val", "test", "samples_per_s_sampled", "world_size", "comm_bytes_per_step"}
    )
    _NESTED: ClassVar[dict[str, Any]] = {"val": SplitMetrics, "test": SplitMetrics}

    def split(self, name: str) -> SplitMetrics:
        """The metrics of split `name` (all None when the run has no such split)."""
        found = {"val": self.val, "test": self.test}.get(name)
        return found if found is not None else SplitMetrics()


@dataclass(frozen=True)
class Candidate(Record):
    """One scored architecture of a search, as top.json, pareto.json and result.json list it."""

    hash: str = ""
    score: float | None = None  # the supernet's validation log loss of the architecture
    mflops: float | None = None
    params: int | None = None
    latency_ms: float | None = None  # predicted serving latency (a search with a latency table)
    generation: int | None = None
    arch: dict[str, Any] | None = None  # the canonical architecture JSON
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"latency_ms"})


@dataclass(frozen=True)
class SeedRun(Record):
    """One retraining run of an architecture with one seed."""

    seed: int | None = None
    run: str | None = None
    val_logloss: float | None = None
    test_logloss: float | None = None
    test_auc: float | None = None
    mflops: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, seed: int, run: str, m: RunMetrics) -> SeedRun:
        """The record of a finished training run's metrics."""
        return cls(seed, run, m.split("val").logloss, m.split("test").logloss, m.split("test").auc, m.mflops)


@dataclass(frozen=True)
class RetrainedArch(Record):
    """One of the search's top architectures after retraining: its mean losses over its seeds."""

    rank: int | None = None
    hash: str = ""
    supernet_score: float | None = None
    run: str | None = None
    val_logloss: float | None = None
    test_logloss: float | None = None
    test_auc: float | None = None
    mflops: float | None = None
    seeds: list[SeedRun] | None = None  # written only when each architecture had more than one seed
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"seeds"})
    _NESTED: ClassVar[dict[str, Any]] = {"seeds": (list, SeedRun)}


@dataclass(frozen=True)
class Rung(Record):
    """One rung of successive halving: the architectures trained for `max_steps` steps, and those kept."""

    rung: int = 0
    max_steps: int | None = None  # None: the whole recipe (the last rung)
    runs: list[RetrainedArch] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # hashes of the architectures the next rung trains
    extra: dict[str, Any] = field(default_factory=dict)

    _NESTED: ClassVar[dict[str, Any]] = {"runs": (list, RetrainedArch)}


@dataclass(frozen=True)
class RetrainResult(Record):
    """`final_metrics.json`: every retrained architecture, and the one chosen (lowest validation loss).

    With successive halving, `runs` are the last rung's (trained with the whole recipe) and `rungs` all.
    """

    chosen: RetrainedArch | None = None
    runs: list[RetrainedArch] = field(default_factory=list)
    seeds: int = 1
    rungs: list[Rung] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"rungs"})
    _NESTED: ClassVar[dict[str, Any]] = {
        "chosen": RetrainedArch,
        "runs": (list, RetrainedArch),
        "rungs": (list, Rung),
    }


@dataclass(frozen=True)
class SearchResult(Record):
    """A search's `result.json` (the search stage adds `final`, its `RetrainResult`, when it retrains)."""

    strategy: str | None = None
    scored: int | None = None
    seconds: float | None = None
    candidates_per_minute: float | None = None
    best: Candidate | None = None
    pareto: list[str] = field(default_factory=list)  # hashes of the Pareto front
    pareto_latency: list[str] | None = None  # of the front over predicted latency (with a latency table)
    top: list[str] = field(default_factory=list)  # hashes of the top k, best first
    final: RetrainResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"final", "pareto_latency"})
    _NESTED: ClassVar[dict[str, Any]] = {"best": Candidate, "final": RetrainResult}


@dataclass(frozen=True)
class StageRecord(Record):
    """One pipeline stage in `stages.json`: the fingerprint of its inputs, whether it finished, and its result."""

    fingerprint: str = ""
    done: bool = False
    seconds: float | None = None
    result: Any = None  # the stage's result as JSON (its own shape per stage)
    extra: dict[str, Any] = field(default_factory=dict)

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"seconds", "result"})
