"""What machine a measurement was taken on: the CPU model and the kernels torch runs there."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU model name, from /proc/cpuinfo (lscpu's "Model name" where /proc/cpuinfo has none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        model = ""
    if not model:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    return model or platform.processor() or "unknown CPU"


def cpu_capability() -> str:
    """`torch.backends.cpu.get_cpu_capability()` (AVX2, AVX512, ...): which kernels torch runs here."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        return "unknown"


def machine_identity() -> dict[str, object]:
    """CPU model, torch's CPU capability and core count: what a latency figure is only valid for."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "nproc": os.cpu_count()}
