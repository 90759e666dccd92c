"""Measurement helpers shared by the bench scripts: machine load, CPU time and machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from dataclasses import dataclass


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together, from the aggregate line of /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is already counted in user/nice.
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def own_cpu_s(children: bool = False) -> float:
    """CPU seconds (user + system) used by this process, or by its waited-for children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class LoadSample:
    """Machine-wide busy time around a timed region, to tell how much other processes used."""

    busy0: int = 0
    total0: int = 0
    cpu0: float = 0.0
    other_share: float = 0.0

    def start(self) -> None:
        """Sample before the timed region."""
        self.busy0, self.total0 = machine_ticks()
        self.cpu0 = own_cpu_s() + own_cpu_s(children=True)

    def stop(self) -> float:
        """Sample after it; returns the share of the machine used by other processes."""
        busy1, total1 = machine_ticks()
        tick = os.sysconf("SC_CLK_TCK")
        mine = own_cpu_s() + own_cpu_s(children=True) - self.cpu0
        capacity = (total1 - self.total0) / tick
        other = (busy1 - self.busy0) / tick - mine
        # /proc/stat counts in 10 ms ticks, so a quiet machine can read slightly below zero.
        self.other_share = max(0.0, other) / capacity if capacity > 0 else 0.0
        return self.other_share


def machine_info() -> dict[str, object]:
    """nproc, CPU model, Python and library versions: recorded with every figure."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    info: dict[str, object] = {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version()}
    for mod in ("torch", "numpy", "polars"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    return info
