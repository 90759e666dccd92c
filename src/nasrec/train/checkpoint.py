"""Checkpoints: written atomically, loaded without executing code from the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nasrec.errors import NasrecError


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write `payload` to a temporary file in the same directory, fsync it, then rename it into place.

    A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, no pickled code."""
    path = Path(path)
    if not path.is_file():
        raise NasrecError(f"{path}: no checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise NasrecError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
