"""Atomic file writes and append-only JSON-lines logs that survive a kill.

`atomic_write` is the one way nasrec replaces a file: write a temporary sibling, fsync it, rename it
over the target. A run killed at any moment leaves the old file or the new one, never a torn one; the
temporary file (`.NAME.tmp-PID`) is removed by the next writer of the directory (`remove_stale_tmp`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nasrec.errors import NasrecError

log = logging.getLogger(__name__)


def tmp_path(path: Path | str) -> Path:
    """The temporary sibling an atomic write of `path` goes through (a name `remove_stale_tmp` knows)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path | str, write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Call `write` on a temporary sibling of `path`, fsync it, then rename it over `path`.

    When `write` raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: Path | str, obj: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """`obj` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=default) + "\n")


def read_json(path: Path | str) -> Any:
    """The JSON value in `path`, or None when the file is missing."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_jsonl(path: Path | str, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, repairing a torn last line (a kill in mid-append) on disk.

    A last line without its newline, or one that does not parse, is dropped; so are records for which
    `keep` is false (written after the state the caller resumes from). The file is rewritten atomically
    when anything was dropped. A malformed line before the last is an error naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    torn = lines[-1] != ""  # the final record lacks its newline: the append was cut short
    lines = lines[:-1] if not torn else lines
    records: list[dict[str, Any]] = []
    kept: list[str] = []
    changed = False
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        if not line.strip():
            changed = True
            continue
        try:
            rec = json.loads(line)
            if torn and last:
                raise ValueError("no newline")
        except ValueError:
            if last:
                log.warning("%s: dropped a torn last line (line %d), left by an interrupted write", path, i)
                changed = True
                continue
            raise NasrecError(f"{path}, line {i}: not a JSON record; the log is damaged") from None
        if keep is not None and not keep(rec):
            changed = True
            continue
        records.append(rec)
        kept.append(line)
    if changed:
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
    return records


def append_jsonl(path: Path | str, record: dict[str, Any], *, default: Callable[[Any], Any] | None = None) -> None:
    """Append one record as a line (a kill may tear only this line, which `read_jsonl` repairs)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=default) + "\n")
