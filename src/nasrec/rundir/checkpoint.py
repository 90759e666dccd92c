"""Checkpoints: written atomically, loaded without executing code from the file."""

from __future__ import annotations

import os
import pickle
import re
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
        raise NasrecError(_refusal(path, e)) from None


def _refusal(path: Path, e: Exception) -> str:
    """Why a file was not loaded, in one line; never torch's advice to turn the weights-only check off."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        # The file is not made of tensors and plain containers alone. Loading it anyway would mean running
        # what it asks for (code from the file), which a nasrec checkpoint never needs.
        found = re.search(r"GLOBAL ([\w.]+)", text)
        holds = f"it asks to build {found.group(1)}" if found else "it is not made of tensors and plain containers"
        return f"{path}: refused: not a nasrec checkpoint, or from an untrusted source ({holds}; nasrec loads nothing else)"
    first = text.splitlines()[0] if text else ""
    return f"{path}: unreadable checkpoint ({type(e).__name__}{': ' + first if first else ''})"
