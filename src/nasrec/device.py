"""Which torch device a run uses: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available, else the CPU)."""

from __future__ import annotations

import re

import torch

from nasrec import distributed
from nasrec.errors import NasrecError

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto")
_PATTERN = re.compile(r"cpu|cuda(:\d+)?|auto")


def check_device_name(name: str) -> str:
    """`name` unchanged if it is a device nasrec accepts (whether or not this machine has it)."""
    if not isinstance(name, str) or not _PATTERN.fullmatch(name):
        raise NasrecError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {name!r}")
    return name


def resolve_device(name: str | None) -> torch.device:
    """The torch device for `name` (None: cpu); an unavailable CUDA device is a NasrecError.

    Under torchrun a plain "cuda" (or "auto" that picks CUDA) is the process's own GPU, cuda:LOCAL_RANK,
    the one `distributed.init_from_env` makes current for nccl.
    """
    name = check_device_name("cpu" if name is None else name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NasrecError(
            f"cuda requested but torch.cuda.is_available() is False (this torch build: {torch.__version__})"
        )
    device = torch.device(name if name != "auto" else "cuda")
    if device.index is None:
        device = torch.device("cuda", distributed.local_rank() if distributed.launched() else 0)
    if device.index >= torch.cuda.device_count():
        raise NasrecError(f"{device} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
