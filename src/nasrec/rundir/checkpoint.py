"""Checkpoints: written atomically, loaded without executing code from the file.

torch is imported when a checkpoint is read or written, not with `nasrec.rundir`: the command line
checks its arguments before it pays for importing torch.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError
from nasrec.rundir.io import atomic_write


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write `payload` atomically: a run killed at any moment leaves the previous checkpoint or the new one."""
    import torch

    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, no pickled code."""
    import torch

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
