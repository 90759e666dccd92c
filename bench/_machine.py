"""Measurement helpers shared by the bench scripts: machine load, CPU time and machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from dataclasses import dataclass

from nasrec.machine import cpu_capability, cpu_model


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
    """nproc, CPU model, torch's CPU capability, Python and library versions: recorded with every figure."""
    info: dict[str, object] = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "python": platform.python_version(),
    }
    for mod in ("torch", "numpy", "polars"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    return info


def machine_line() -> str:
    """One line naming the machine, printed first by every bench script."""
    m = machine_info()
    return (
        f"machine: {m['cpu']}, {m['nproc']} CPUs, torch CPU capability {m['cpu_capability']}, "
        f"torch {m.get('torch', '-')}, Python {m['python']}"
    )


# Figures of the published NASRec implementation (../shared/docs/benchmarking.md), 2 threads, idle machine,
# median of 5, samples/s, by the torch CPU capability of the machine they were measured on. A ratio is only
# taken against a figure measured on a CPU of the same capability (`reference`); figures from another
# machine are shown beside nasrec's, never divided by.
REFERENCE_FIGURES: dict[str, dict[str, float]] = {
    "AVX512": {
        "supernet small sampled b512": 799,
        "supernet full sampled b512": 322,
        "supernet small sampled b256": 531,
        "supernet full sampled b256": 258,
        "supernet small full-path b512": 431,
        "supernet full full-path b512": 81,
        "eval small b8192": 1617,
        "eval full b8192": 626,
        "train criteo_autoctr_best capped b256": 1017,
        "train criteo_xlarge_best capped b256": 679,
        "train criteo_autoctr_best capped b512": 1856,
        "train criteo_xlarge_best capped b512": 960,
        "train criteo_autoctr_best real b256": 98,
        "train criteo_xlarge_best real b256": 77,
    },
    "AVX2": {  # measured side by side with nasrec on the AVX2 CPU, 2026-12-03
        "supernet small sampled b512": 472,
        "supernet full sampled b512": 193,
        "eval small b8192": 1045,
        "eval full b8192": 429,
        "train criteo_autoctr_best real b256": 43.9,
        "train criteo_xlarge_best real b256": 46.4,
    },
}
REFERENCE_MACHINES = {"AVX512": "reference on the AVX-512 CPU", "AVX2": "reference on the AVX2 CPU (AMD EPYC)"}


def reference(key: str, value: float | None = None) -> dict[str, object]:
    """The reference's figures for `key` on every machine that has one, and `value`'s ratio to this CPU's.

    {"reference": {"AVX2": 472, "AVX512": 799}, "ratio": 7.4, "ratio_against": "AVX2"}; "ratio" is
    present only when the reference was measured on a CPU of this machine's capability.
    """
    here = cpu_capability()
    figures = {cap: table[key] for cap, table in REFERENCE_FIGURES.items() if key in table}
    out: dict[str, object] = {"reference": figures}
    if value is not None and here in figures:
        out["ratio"] = round(value / figures[here], 1)
        out["ratio_against"] = here
    return out


def reference_text(key: str, value: float | None = None) -> str:
    """`reference()` in words: "7.4x the reference on this CPU (AVX2: 472)", or the raw figures only."""
    r = reference(key, value)
    figures: dict[str, float] = r["reference"]  # type: ignore[assignment]
    if not figures:
        return "no reference figure"
    raw = ", ".join(f"{cap}: {v:,g}" for cap, v in figures.items())
    if "ratio" in r:
        return f"{r['ratio']}x the reference on this CPU capability (reference {raw})"
    return f"reference measured on other CPUs, not divided by ({raw})"


def available_models(names: list[str], configs) -> list[str]:
    """`names` without the published configs (criteo_*) missing from `configs`, each skip printed with why."""
    kept = []
    for name in names:
        if name.startswith("criteo_") and not (configs / f"{name}.json").is_file():
            print(f"skipped: {name}: {configs / (name + '.json')} not found (give --configs DIR)", flush=True)
        else:
            kept.append(name)
    return kept
