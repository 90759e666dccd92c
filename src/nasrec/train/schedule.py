"""Learning-rate schedules: linear warm-up then cosine, constant, or reduce-on-plateau.

A schedule sets `group["lr"]` of every parameter group of an optimizer (a torch optimizer or a
`SplitOptimizer`) as a function of the number of optimizer steps taken. Each group follows the same
shape scaled to its own base lr (its `group["initial_lr"]`, recorded from `group["lr"]` when the first
schedule is built, as torch's schedulers do), so an embedding group with its own lr keeps its ratio to
the dense lr at the peak.

Every schedule starts with a linear warm-up from `start_lr` to the base lr over `warmup_steps` steps
(`floor(warmup_fraction * total_steps)`; 0 turns it off). The lr used by step t (0-based) is the one set
after t calls of `step()`, so step 0 runs at `start_lr`, as in the reference implementation.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from nasrec.errors import NasrecError

SCHEDULES = ("warmup-cosine", "constant", "plateau")


class HasParamGroups(Protocol):
    """Anything with torch-style `param_groups` (torch optimizers, `SplitOptimizer`)."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...


class LRSchedule:
    """Base class: a linear warm-up to each group's peak lr, then `_body(step, peak)` (constant here)."""

    name = "base"

    def __init__(self, optimizer: HasParamGroups, total_steps: int, warmup_steps: int, start_lr: float) -> None:
        if total_steps < 1:
            raise NasrecError(f"a schedule needs at least one step, got total_steps={total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise NasrecError(f"warm-up steps must lie in [0, {total_steps}], got {warmup_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_lr = float(start_lr)
        # setdefault: a second schedule on the same optimizer (or one built after loading its state)
        # must scale the original base lr, not whatever lr the previous schedule left in the group.
        self.base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _peaks(self) -> list[float]:
        """Each group's lr at the end of the warm-up (its base lr unless the schedule lowered it)."""
        return list(self.base_lrs)

    def _body(self, step: int, peak: float) -> float:
        """The lr after the warm-up, at `step` optimizer steps, for a group peaking at `peak`."""
        return peak

    def lrs_at(self, step: int) -> list[float]:
        """Every group's lr for optimizer step `step` (0-based)."""
        peaks = self._peaks()
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return [self.start_lr + (peak - self.start_lr) * frac for peak in peaks]
        return [self._body(step, peak) for peak in peaks]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs_at(self.step_count), strict=True):
            group["lr"] = lr

    def step(self) -> None:
        """Advance by one optimizer step (call after `optimizer.step()`) and set the next step's lr."""
        self.step_count += 1
        self._apply()

    def report(self, metric: float) -> bool:
        """Record an evaluation result; True when the lrs were lowered (only `plateau` ever does)."""
        return False

    def get_last_lr(self) -> list[float]:
        """The lr of every group, as set for the next optimizer step."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def lr(self) -> float:
        """The lr of the first group (the dense parameters of a `SplitOptimizer`)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the step count, base lrs and the schedule's own state."""
        return {"name": self.name, "step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def _check_state(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise NasrecError(f"schedule state is for {state.get('name')!r}, not {self.name!r}")
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise NasrecError(
                f"schedule state has {len(state['base_lrs'])} lr groups, the optimizer {len(self.base_lrs)}"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` and set the groups' lrs accordingly."""
        self._check_state(state)
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        self._apply()


class WarmupCosine(LRSchedule):
    """The paper's schedule: warm-up, then a single cosine from the base lr to `end_lr` at `total_steps`."""

    name = "warmup-cosine"

    def __init__(
        self, optimizer: HasParamGroups, total_steps: int, warmup_steps: int, start_lr: float, end_lr: float
    ) -> None:
        if warmup_steps >= total_steps:
            raise NasrecError(f"the warm-up ({warmup_steps} steps) must be shorter than the run ({total_steps})")
        self.end_lr = float(end_lr)
        super().__init__(optimizer, total_steps, warmup_steps, start_lr)

    def _body(self, step: int, peak: float) -> float:
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.end_lr + (peak - self.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Constant(LRSchedule):
    """Warm-up (if any), then each group's base lr for ever."""

    name = "constant"


class Plateau(LRSchedule):
    """Warm-up (if any), then the base lrs, multiplied by `factor` whenever evaluations stop improving.

    `report(metric)` after each evaluation: an evaluation improves when it beats the best so far by more
    than `threshold` (absolute: lower for `mode="min"`, higher for `mode="max"`); after `patience`
    consecutive evaluations without improvement every lr is multiplied by `factor`, never going below
    `min_lr`, and the count starts again.
    """

    name = "plateau"

    def __init__(
        self,
        optimizer: HasParamGroups,
        total_steps: int,
        warmup_steps: int,
        start_lr: float,
        *,
        factor: float = 0.5,
        patience: int = 2,
        threshold: float = 1e-4,
        mode: str = "min",
        min_lr: float = 1e-8,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise NasrecError(f"plateau factor must lie in (0, 1), got {factor}")
        if patience < 1:
            raise NasrecError(f"plateau patience must be at least 1, got {patience}")
        if mode not in ("min", "max"):
            raise NasrecError(f"plateau mode must be 'min' or 'max', got {mode!r}")
        if threshold < 0 or min_lr < 0:
            raise NasrecError(f"plateau threshold and min_lr must be non-negative, got {threshold}, {min_lr}")
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.mode = mode
        self.min_lr = float(min_lr)
        self.best: float | None = None
        self.bad_evals = 0
        self.reductions = 0
        super().__init__(optimizer, total_steps, warmup_steps, start_lr)

    def _peaks(self) -> list[float]:
        if self.reductions == 0:
            return list(self.base_lrs)
        scale = self.factor**self.reductions
        # The floor never raises a group whose base lr is already below min_lr.
        return [min(base, max(base * scale, self.min_lr)) for base in self.base_lrs]

    def _improves(self, metric: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - self.threshold
        return metric > self.best + self.threshold

    def report(self, metric: float) -> bool:
        """Record an evaluation; lower the lrs after `patience` of them in a row without improvement."""
        metric = float(metric)
        # A diverged (NaN) evaluation is no improvement, and must not become the best value.
        if not math.isnan(metric) and self._improves(metric):
            self.best = metric
            self.bad_evals = 0
            return False
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return False
        self.bad_evals = 0
        self.reductions += 1
        self._apply()
        return True

    def state_dict(self) -> dict[str, Any]:
        """Step count and base lrs, plus the best metric, the running count and the reductions so far."""
        state = super().state_dict()
        state.update(best=self.best, bad_evals=self.bad_evals, reductions=self.reductions)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`."""
        self._check_state(state)
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])
        self.reductions = int(state["reductions"])
        super().load_state_dict(state)


def build_schedule(
    optimizer: HasParamGroups,
    name: str,
    total_steps: int,
    warmup_fraction: float = 0.1,
    start_lr: float = 1e-8,
    end_lr: float = 1e-8,
    *,
    warmup_steps: int | None = None,
    factor: float = 0.5,
    patience: int = 2,
    threshold: float = 1e-4,
    mode: str = "min",
    min_lr: float = 1e-8,
) -> LRSchedule:
    """The schedule `name` ("warmup-cosine", "constant" or "plateau") over `total_steps` optimizer steps.

    The warm-up lasts `warmup_steps` if given (e.g. 50 for the search's fine-tuning), else
    `floor(warmup_fraction * total_steps)`. `end_lr` is the cosine's final lr; `factor`, `patience`,
    `threshold`, `mode` and `min_lr` configure `plateau`.
    """
    if name not in SCHEDULES:
        raise NasrecError(f"unknown lr schedule {name!r} (expected one of: {', '.join(SCHEDULES)})")
    if warmup_steps is None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise NasrecError(f"warm-up fraction must lie in [0, 1), got {warmup_fraction}")
        # The small epsilon keeps e.g. 0.57 * 100 = 56.99999999999999 from losing a step to rounding.
        warmup_steps = math.floor(warmup_fraction * total_steps + 1e-9)
    if name == "warmup-cosine":
        return WarmupCosine(optimizer, total_steps, warmup_steps, start_lr, end_lr)
    if name == "constant":
        return Constant(optimizer, total_steps, warmup_steps, start_lr)
    return Plateau(
        optimizer,
        total_steps,
        warmup_steps,
        start_lr,
        factor=factor,
        patience=patience,
        threshold=threshold,
        mode=mode,
        min_lr=min_lr,
    )


def at_lr_floor(schedule: object) -> bool:
    """Whether `schedule` is a plateau schedule that has lowered every lr to its floor (`min_lr`)."""
    if not isinstance(schedule, Plateau) or not schedule.reductions:
        return False
    # within rounding: 1e-6 x 0.1 x 0.1 is 1.0000000000000002e-08
    return all(lr <= schedule.min_lr * (1 + 1e-9) for lr in schedule.get_last_lr())
