"""Process-group plumbing for data-parallel training under `torchrun` (gloo on CPU, nccl on CUDA).

A launch is recognised from the variables torchrun (or any launcher following its conventions) sets:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. With ``WORLD_SIZE`` unset
or 1 nothing happens: every helper answers as the single process it is (rank 0 of 1, main, no-op
collectives), so code written against this module runs unchanged without a launcher.

The process group is created by `init_from_env` (idempotent) or, scoped, by the `process_group`
context manager, which tears it down again if it created it. A group that the caller created itself
(e.g. a test under `torch.multiprocessing.spawn`) is used as it is and never destroyed here.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from nasrec.errors import NasrecError

# Long enough for rank 0 to evaluate a whole validation split on a CPU while the others wait in a
# collective; a crashed rank is still noticed at once, because torchrun tears down the whole group.
DEFAULT_TIMEOUT_S = 4 * 3600
TIMEOUT_ENV = "NASREC_DIST_TIMEOUT"

_owned = False  # whether this module created the current process group (and so must destroy it)
_exit_hook = False


def env_world_size() -> int:
    """WORLD_SIZE of the environment (1 when unset): how many processes a launcher started."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise NasrecError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1 in the environment)."""
    return env_world_size() > 1


def is_initialized() -> bool:
    """Whether a torch.distributed process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0 (of the group, or of the launch once the group is gone): it writes and prints."""
    if is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def backend_for(device: str | torch.device = "cpu") -> str:
    """The collective backend for a device type: nccl for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise NasrecError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group described by the environment if launched; True when a group is active.

    Idempotent: an existing group (ours or the caller's) is kept. A group created here is destroyed
    at interpreter exit at the latest (without a barrier there, so that exiting never waits on a rank
    that is gone).
    """
    global _owned, _exit_hook
    if is_initialized():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise NasrecError("this torch build has no torch.distributed; cannot run under torchrun")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise NasrecError(f"WORLD_SIZE is set but {var} is not: launch with torchrun")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank())  # one GPU per process, chosen by its index on the machine
    dist.init_process_group(backend, timeout=_timeout())
    _owned = True
    if not _exit_hook:
        atexit.register(_abandon)
        _exit_hook = True
    return True


def teardown() -> None:
    """Destroy the process group if this module created it (waiting for the other ranks first)."""
    global _owned
    if _owned and is_initialized():
        try:
            # so that no rank leaves while another still needs it in a collective
            dist.barrier()
        finally:
            dist.destroy_process_group()
    _owned = False


@contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[bool]:
    """Within the block, be in the launcher's process group (if launched); leave it afterwards.

    Yields whether a group is active. A group that existed before the block is left alone.
    """
    existed = is_initialized()
    active = init_from_env(device)
    ok = False
    try:
        yield active
        ok = True
    finally:
        if active and not existed:
            if ok:
                teardown()
            else:
                # A failing rank must not wait in a barrier for ranks that may never get there; the
                # launcher stops the others when this process exits with an error.
                _abandon()


def _abandon() -> None:
    global _owned
    if _owned and is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    """Wait until every rank gets here (no-op without a group)."""
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src`, on every rank (any picklable value; returned as is without a group)."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: Mapping[str, float]) -> dict[str, float]:
    """Sums over ranks of named numbers, in float64 (each rank must pass the same names)."""
    names = sorted(values)
    if not is_initialized():
        return {k: float(values[k]) for k in names}
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return dict(zip(names, t.tolist(), strict=True))


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Means over ranks of named numbers (e.g. per-rank metrics of equal-sized shards)."""
    n = world_size()
    return {k: v / n for k, v in all_reduce_sum(values).items()}


def _collective_device() -> torch.device:
    """Where tensors for the active backend must live: the process's GPU under nccl, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_same(value: Any, what: str) -> None:
    """Raise on every rank unless every rank passed an equal `value` (anything JSON can write)."""
    if not is_initialized():
        return
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, json.dumps(value, sort_keys=True, default=str))
    if len(set(gathered)) != 1:
        raise NasrecError(f"ranks disagree on {what}: " + "; ".join(f"rank {r}: {g}" for r, g in enumerate(gathered)))
