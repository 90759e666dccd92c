"""What a training run says while it trains (rank 0): its plan, a line per epoch, its recent rate, the bar."""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

from nasrec.console import bar_extra, duration
from nasrec.console import progress_bar as step_bar
from nasrec.model.spec import ModelSpec

log = logging.getLogger(__name__)

RATE_WINDOW = 50  # steps over which the logged and displayed samples/s are measured


def describe(spec: ModelSpec) -> str:
    """'supernet', 'dcnv2 model', 'architecture 0123456789ab': what a log line says is trained."""
    if spec.kind == "supernet":
        return "supernet"
    if spec.kind == "zoo":
        return f"{spec.zoo} model"
    return f"architecture {spec.architecture().hash()[:12]}"


class Progress:
    """The log lines of a run of `total_steps` steps, `per_epoch` a pass, and its rate over the last steps."""

    def __init__(self, out: Path, what: str, total_steps: int, per_epoch: int) -> None:
        self.out, self.what, self.total_steps, self.per_epoch = out, what, total_steps, per_epoch
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RATE_WINDOW)

    @property
    def epochs(self) -> int:
        """Passes over the data the run makes (the last one possibly cut short by max_steps)."""
        return -(-self.total_steps // self.per_epoch)

    def step_done(self, seconds: float, samples: int) -> None:
        """Count one step of `samples` examples that took `seconds`."""
        self._recent.append((seconds, samples))

    def rate(self) -> float:
        """Samples per second over the last steps (at most `RATE_WINDOW`): what the run does now."""
        seconds = sum(dt for dt, _ in self._recent)
        return sum(n for _, n in self._recent) / seconds if seconds > 0 else 0.0

    def say_start(self, step: int, epoch: int, resumed: bool, data: Any, batch_size: int, device: Any) -> None:
        """The plan of a new run, or where a resumed one continues."""
        epochs, per_epoch = self.epochs, self.per_epoch
        if resumed:
            log.info(
                "%s: resuming the %s at step %s of %s (epoch %d of %d)",
                self.out,
                self.what,
                f"{step:,}",
                f"{self.total_steps:,}",
                min(epoch + 1, epochs),
                epochs,
            )
            return
        if self.total_steps == epochs * per_epoch:
            plan = f"{epochs} epoch{'s' if epochs > 1 else ''} of {per_epoch:,} steps"
        else:
            plan = f"max_steps; an epoch is {per_epoch:,} steps"
        log.info(
            "%s: training the %s on %s: %s steps (%s, batch %s) on %s",
            self.out,
            self.what,
            data,
            f"{self.total_steps:,}",
            plan,
            f"{batch_size:,}",
            device,
        )

    def say_progress(
        self, step: int, epoch: int, epoch_end: bool, loss: float, seconds_left: float, bar_shown: bool
    ) -> None:
        """A line at the end of an epoch, or a heartbeat within one."""
        epochs = self.epochs
        head = f"epoch {epoch + 1}/{epochs} done" if epoch_end else f"epoch {epoch + 1}/{epochs}"
        left = f", about {duration(seconds_left)} left" if step < self.total_steps else ""
        log.info(
            "%s: step %s/%s, train loss %.5f, %s samples/s%s",
            head,
            f"{step:,}",
            f"{self.total_steps:,}",
            loss,
            f"{self.rate():,.0f}",
            left,
            extra=bar_extra(bar_shown),
        )

    def say_eval(self, step: int, split: str, m: dict[str, float], bad_evals: int, stopped: bool) -> None:
        """A line per evaluation during training, with the early-stopping verdict."""
        verdict = "best so far" if bad_evals == 0 else f"no better for {bad_evals} evaluation(s)"
        log.info(
            "step %s/%s: %s log loss %.5f, AUC %.5f (%s)%s",
            f"{step:,}",
            f"{self.total_steps:,}",
            split,
            m["logloss"],
            m["auc"],
            verdict,
            "; early stop" if stopped else "",
        )

    def say_done(self, step: int, seconds: float, rate: float, results: dict[str, dict[str, float]]) -> None:
        """The run's closing line: steps, time, speed and the final scores."""
        scores = "; ".join(f"{n} log loss {r['logloss']:.5f}, AUC {r['auc']:.5f}" for n, r in results.items())
        log.info(
            "%s: done, %s steps in %s (%s samples/s)%s",
            self.out,
            f"{step:,}",
            duration(seconds),
            f"{rate:,.0f}",
            f"; {scores}" if scores else "",
        )


def progress_bar(enabled: bool | None, total: int, initial: int) -> Any:
    """A tqdm bar of the training steps on stderr, or None (by default: a command's choice, none outside one)."""
    return step_bar(enabled, total=total, initial=initial, desc="train", unit="step")
