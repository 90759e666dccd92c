"""One writer per run directory: an exclusive lock, and removal of what an interrupted writer left behind.

Every command that writes a directory (train, supernet, search, rankcheck, run, prepare's output) holds
an exclusive `fcntl.flock` on a lock file for as long as it writes. A second writer fails at once with a
one-line error naming the process that holds the lock. The lock is released by the kernel when its
holder exits, however it exits, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError

log = logging.getLogger(__name__)

LOCK_NAME = ".nasrec.lock"
# Temporary files of atomic writes: `.NAME.tmp` or `.NAME.tmp-PID[-...]` (checkpoints, JSON files)
_TMP = re.compile(r"^\..+\.tmp(?:-(\d+)(?:-.*)?)?$")

_held: dict[Path, list[Any]] = {}  # lock path -> [open file, depth]; a process may nest writers on one directory


def lock_path(directory: Path | str, *, beside: bool = False) -> Path:
    """The lock file of `directory`: inside it, or (`beside`) next to it for a directory replaced as a whole."""
    directory = Path(directory)
    if beside:
        return directory.parent / f".{directory.name}.lock"
    return directory / LOCK_NAME


@contextlib.contextmanager
def exclusive(
    directory: Path | str, what: str = "run", *, beside: bool = False, enabled: bool = True
) -> Iterator[Path | None]:
    """Hold the exclusive writer lock of `directory` (created if missing) for the duration of the block.

    Re-entrant within one process (the pipeline writes its stages' directories itself). Another process
    holding the lock makes this raise NasrecError at once, naming that process. With `enabled` false
    (a rank of a torchrun group other than the writing rank 0) nothing is locked.
    """
    if not enabled:
        yield None
        return
    path = lock_path(directory, beside=beside).resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield path
        finally:
            _held[path][1] -= 1
        return
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as e:
        raise NasrecError(f"{path.parent}: cannot create the {what} directory's lock ({e.strerror})") from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        shown = path.parent if not beside else Path(directory)
        raise NasrecError(f"{shown} is in use by {holder}; wait for it to finish or use another directory") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} ({_command()})\n")
    fh.flush()
    _held[path] = [fh, 1]
    try:
        if not beside:
            remove_stale_tmp(path.parent)
        yield path
    finally:
        _held.pop(path, None)
        with contextlib.suppress(OSError):
            fh.seek(0)
            fh.truncate()
            if created and not beside and is_empty(path.parent):  # a writer that failed before writing anything
                path.unlink()
                path.parent.rmdir()
        fh.close()  # closing releases the flock


def _command() -> str:
    """A short description of this process's command line, for the other writer's error message."""
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def remove_stale_tmp(directory: Path | str) -> list[Path]:
    """Delete temporary files of interrupted atomic writes in `directory` (not below it).

    Called by the lock holder: no other writer can be live there, so every temporary file is stale; one
    named with a live process id other than ours is left alone all the same (a writer that ignores locks).
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            size = p.stat().st_size
            p.unlink()
            removed.append(p)
            log.info("removed %s (%d bytes), left by an interrupted write", p, size)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_empty(directory: Path | str) -> bool:
    """Whether `directory` is missing or holds nothing but its lock file."""
    directory = Path(directory)
    return not directory.exists() or all(p.name == LOCK_NAME for p in directory.iterdir())
