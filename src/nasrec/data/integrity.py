"""Integrity of a prepared cache: the checks `open_cache` makes on every open, and `nasrec cache verify`.

On every open (the file layout in `nasrec.data.layout`; cheap: no array data is read while the cache is unchanged since prepare)
    * meta.json has the keys a cache needs, with values of the right types (a missing key is named);
    * every array file has a readable .npy header, the dtype the format declares (never Python
      objects), a shape that matches meta.json's row and field counts, and exactly the size its header
      implies (a truncated file is named, never memory-mapped);
    * every categorical column's ids lie in [0, table_size). `prepare` records each column's min and
      max in meta.json (`files["sparse.npy"]`), with sparse.npy's size and mtime. While the file still
      has that size and mtime the recorded ranges are used as they are; otherwise (the file changed or
      was copied, or the cache predates the ranges) they are recomputed from the file in bounded-memory
      blocks, one vectorised min/max per block, and remembered for the rest of the process. Nothing is
      written into the cache.

`verify_cache` (`nasrec cache verify DIR`) reads everything: the SHA-256 of every file against the one
`prepare` recorded, and the value checks that need a full read (ids in range, split row ids in range and
strictly ascending, labels 0 or 1, dense values finite).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasrec.data.layout import SPARSE as SPARSE
from nasrec.data.layout import NpyLayout as NpyLayout
from nasrec.data.layout import _expect, _is_int, array_specs, cache_rows
from nasrec.data.layout import check_arrays as check_arrays
from nasrec.data.layout import check_meta as check_meta
from nasrec.data.layout import npy_layout as npy_layout
from nasrec.errors import DataError, NasrecError

log = logging.getLogger(__name__)

HASH = "sha256"  # hardware-accelerated on current CPUs; `sha256sum FILE` gives the same digest
SCAN_BLOCK_BYTES = 8 << 20  # bytes per read while hashing or computing ranges: bounds the memory used
# Recomputed id ranges, by (device, inode, size, mtime) of sparse.npy: computed once per process.
_RANGES_MEMO: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray] | None] = {}


class VerifyFailed(NasrecError):
    """`nasrec cache verify` found a damaged or changed file (exit code 1, as `sha256sum -c`)."""

    exit_code = 1


# -- categorical id ranges ----------------------------------------------------------------------------
def scan(path: Path, layout: NpyLayout | None = None, on_block: Callable[[np.ndarray], None] | None = None) -> str:
    """SHA-256 of a whole file, read once in bounded blocks; with a layout, `on_block` sees the array's
    rows block by block (a view of a reused buffer: copy what must outlive the call)."""
    digest = hashlib.new(HASH)
    with open(path, "rb") as fh:
        if layout is not None and on_block is not None and layout.data_bytes:
            digest.update(fh.read(layout.offset))
            row_bytes = layout.row_items * layout.dtype.itemsize
            per_block = max(1, SCAN_BLOCK_BYTES // row_bytes)
            buf = bytearray(per_block * row_bytes)
            left = layout.rows
            while left:
                k = min(per_block, left)
                view = memoryview(buf)[: k * row_bytes]
                if fh.readinto(view) != len(view):
                    raise DataError("truncated while it was being read", file=str(path))
                digest.update(view)
                block = np.frombuffer(buf, layout.dtype, count=k * layout.row_items)
                on_block(block.reshape(k, *layout.shape[1:]))
                left -= k
        while chunk := fh.read(SCAN_BLOCK_BYTES):  # the whole file (or what follows the array) counts
            digest.update(chunk)
    return digest.hexdigest()


class _Ranges:
    """Per-column min and max of a 2-D integer array, accumulated block by block."""

    def __init__(self, columns: int) -> None:
        self.lo = np.full(columns, np.iinfo(np.int64).max, dtype=np.int64)
        self.hi = np.full(columns, np.iinfo(np.int64).min, dtype=np.int64)
        self.rows = 0

    def __call__(self, block: np.ndarray) -> None:
        if len(block) and block.shape[1]:
            np.minimum(self.lo, block.min(axis=0), out=self.lo)
            np.maximum(self.hi, block.max(axis=0), out=self.hi)
        self.rows += len(block)

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (self.lo, self.hi) if self.rows else None


def column_ranges(path: Path, layout: NpyLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-column (min, max) of a 2-D integer array file (None when it has no rows), in bounded blocks."""
    ranges = _Ranges(layout.shape[1])
    if layout.data_bytes:
        with open(path, "rb") as fh:
            fh.seek(layout.offset)
            per_block = max(1, SCAN_BLOCK_BYTES // (layout.row_items * layout.dtype.itemsize))
            for lo in range(0, layout.rows, per_block):
                k = min(per_block, layout.rows - lo)
                block = np.fromfile(fh, dtype=layout.dtype, count=k * layout.row_items)
                if block.size != k * layout.row_items:
                    raise DataError("truncated while it was being read", file=str(path))
                ranges(block.reshape(k, layout.row_items))
    return ranges.result()


def _recorded_ranges(meta: dict[str, Any], st: os.stat_result, columns: int) -> tuple[Any, Any] | None:
    """The ranges meta.json recorded for sparse.npy, if the file still has the recorded size and mtime."""
    rec = (meta.get("files") or {}).get(SPARSE)
    if not isinstance(rec, dict) or rec.get("bytes") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    lo, hi = rec.get("column_min", ()), rec.get("column_max", ())
    if lo is None and hi is None:
        return (None, None)  # no rows
    ok = all(isinstance(v, list) and len(v) == columns and all(_is_int(x) for x in v) for v in (lo, hi))
    return (lo, hi) if ok else None


def id_ranges(cache: Path, meta: dict[str, Any], layout: NpyLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-column (min, max) of sparse.npy: recorded at prepare time, or recomputed (and remembered)."""
    path = cache / SPARSE
    st = os.stat(path)
    recorded = _recorded_ranges(meta, st, layout.shape[1])
    if recorded is not None:
        lo, hi = recorded
        return None if lo is None else (np.asarray(lo, np.int64), np.asarray(hi, np.int64))
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _RANGES_MEMO:
        why = (
            "changed (or was copied) since prepare"
            if SPARSE in (meta.get("files") or {})
            else "has no recorded id ranges"
        )
        log.info("%s %s: computing its id ranges (%s bytes)", path, why, f"{st.st_size:,}")
        _RANGES_MEMO[key] = column_ranges(path, layout)
    return _RANGES_MEMO[key]


def check_id_ranges(
    path: Path, names: list[str], sizes: list[int], ranges: tuple[np.ndarray, np.ndarray] | None
) -> None:
    """Every column's ids in [0, table size); DataError naming the first column that is not."""
    if ranges is None or not names:
        return
    lo, hi = ranges
    size = np.asarray(sizes, dtype=np.int64)
    bad = np.flatnonzero((lo < 0) | (hi >= size))
    if len(bad):
        j = int(bad[0])
        more = f" (and {len(bad) - 1} more columns)" if len(bad) > 1 else ""
        raise DataError(
            f"ids range from {int(lo[j]):,} to {int(hi[j]):,}, outside its embedding table's [0, {sizes[j]:,}){more}; "
            "the file or the table_sizes of meta.json is damaged (re-run prepare)",
            file=str(path),
            column=names[j],
        )


# -- records written by prepare -----------------------------------------------------------------------
def record_files(root: Path) -> dict[str, dict[str, Any]]:
    """Size, mtime and SHA-256 of every file below `root` but meta.json, by relative path; sparse.npy's
    record also holds each column's min and max (read in the same pass as its checksum)."""
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith("meta.json"):
            continue
        rec: dict[str, Any] = {}
        if rel == SPARSE:
            layout = npy_layout(p)
            ranges = _Ranges(layout.shape[1] if len(layout.shape) == 2 else 0)
            rec[HASH] = scan(p, layout, ranges if len(layout.shape) == 2 else None)
            r = ranges.result()
            rec["column_min"] = r[0].tolist() if r else None
            rec["column_max"] = r[1].tolist() if r else None
        else:
            rec[HASH] = scan(p)
        st = p.stat()
        files[rel] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, **rec}
    return files


# -- nasrec cache verify ------------------------------------------------------------------------------
@dataclass
class FileCheck:
    """The verdict on one file of a cache."""

    file: str  # path relative to the cache directory
    status: str  # ok | unrecorded (no checksum to compare with) | extra | missing | changed | invalid
    bytes: int | None = None
    sha256: str | None = None
    recorded: str | None = None  # the checksum meta.json holds
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether this file fails verification."""
        return self.status in ("missing", "changed", "invalid")


@dataclass
class VerifyReport:
    """The result of `verify_cache`."""

    path: str
    files: list[FileCheck]
    rows: int

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not any(f.failed for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`nasrec cache verify --json`)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "rows": self.rows,
            "checksum": HASH,
            "files": [vars(f) for f in self.files],
        }


def _value_checker(rel: str, layout: NpyLayout, meta: dict[str, Any], rows: int | None) -> tuple[Callable, Callable]:
    """(on_block, problems()) of the full-read value checks of one cache file."""
    problems: list[str] = []
    if rel == SPARSE:
        ranges = _Ranges(layout.shape[1])

        def finish() -> list[str]:
            try:
                check_id_ranges(Path(rel), meta["sparse_fields"], meta["table_sizes"], ranges.result())
            except DataError as e:
                problems.append(f"column {e.column}: {e.reason}")
            return problems

        return ranges, finish
    state = {"bad": 0, "last": -1, "lo": None, "hi": None, "order": False}
    if rel in ("label.npy", "dense.npy"):

        def on_block(b: np.ndarray) -> None:
            bad = (b != 0) & (b != 1) if rel == "label.npy" else ~np.isfinite(b)
            state["bad"] += int(np.count_nonzero(bad))

        def finish() -> list[str]:
            if state["bad"]:
                what = "labels other than 0 or 1" if rel == "label.npy" else "NaN or infinite values"
                problems.append(f"{state['bad']:,} {what}")
            return problems

        return on_block, finish
    if rel.startswith("splits/"):

        def on_block(b: np.ndarray) -> None:
            if not len(b):
                return
            b = b.astype(np.int64, copy=False)
            lo, hi = int(b.min()), int(b.max())
            state["lo"] = lo if state["lo"] is None else min(state["lo"], lo)
            state["hi"] = hi if state["hi"] is None else max(state["hi"], hi)
            if int(b[0]) <= state["last"] or (len(b) > 1 and not bool(np.all(b[1:] > b[:-1]))):
                state["order"] = True
            state["last"] = int(b[-1])

        def finish() -> list[str]:
            if state["lo"] is not None and (state["lo"] < 0 or (rows is not None and state["hi"] >= rows)):
                problems.append(f"row ids range from {state['lo']:,} to {state['hi']:,}, outside [0, {rows or 0:,})")
            if state["order"]:
                problems.append("row ids are not strictly ascending")
            return problems

        return on_block, finish
    return (lambda b: None), (lambda: problems)


def verify_cache(path: Path | str) -> VerifyReport:
    """Check every file of a cache: checksum against meta.json, structure, and value ranges (full read)."""
    from nasrec.data.cache import read_meta

    cache = Path(path)
    meta = read_meta(cache)
    recorded: dict[str, dict[str, Any]] = meta.get("files") or {}
    try:
        rows: int | None = cache_rows(cache, meta)
    except DataError:
        rows = None  # label.npy is damaged: reported below
    specs = array_specs(meta, rows)
    present = sorted(
        p.relative_to(cache).as_posix()
        for p in cache.rglob("*")
        if p.is_file() and p.name != "meta.json" and not p.name.startswith(".")
    )
    checks: list[FileCheck] = []
    for rel in dict.fromkeys([*specs, *recorded, *present]):
        p, rec = cache / rel, recorded.get(rel)
        fc = FileCheck(rel, "ok", recorded=(rec or {}).get(HASH))
        checks.append(fc)
        if not p.is_file():
            fc.status = "missing"
            fc.problems.append("missing" + (" (recorded in meta.json)" if rec else " (the cache needs it)"))
            continue
        fc.bytes = p.stat().st_size
        log.debug("%s: reading %s (%s bytes)", cache, rel, f"{fc.bytes:,}")
        layout = None
        if rel.endswith(".npy"):
            try:
                layout = npy_layout(p)
                if rel in specs:
                    _expect(p, layout, *specs[rel])
            except DataError as e:
                fc.problems.append(e.reason)
                layout = None
        if layout is not None:
            on_block, finish = _value_checker(rel, layout, meta, rows)
            fc.sha256 = scan(p, layout, on_block)
            fc.problems.extend(finish())
        else:
            fc.sha256 = scan(p)
        if fc.problems:
            fc.status = "invalid"
        if rec is None:
            if fc.status == "ok":
                fc.status = "extra" if recorded else "unrecorded"
        elif rec.get(HASH) != fc.sha256:
            fc.status = "changed"
            if rec.get("bytes") != fc.bytes:
                fc.problems.insert(0, f"{fc.bytes:,} bytes, {rec.get('bytes', 0):,} recorded")
            fc.problems.insert(0, f"{HASH} differs from the one recorded at prepare time: the file changed")
    return VerifyReport(str(cache), checks, rows or 0)


def format_report(report: VerifyReport) -> str:
    """One readable line per file, then a summary line (the text form of `nasrec cache verify`)."""
    width = max((len(c.file) for c in report.files), default=0)
    lines = []
    for c in report.files:
        size = f"{c.bytes:>15,} bytes" if c.bytes is not None else " " * 21
        if c.status in ("ok", "extra", "unrecorded"):
            note = {
                "ok": f"{HASH} {(c.sha256 or '')[:16]} matches",
                "extra": "not recorded in meta.json (not part of the cache)",
                "unrecorded": "no checksum recorded (a cache from an older nasrec): structure and values ok",
            }[c.status]
        else:
            note = "; ".join(c.problems)
        lines.append(f"{c.status.upper():<10} {c.file:<{width}} {size}  {note}")
    failed = [c for c in report.files if c.failed]
    if failed:
        lines.append(f"{report.path}: {len(failed)} of {len(report.files)} files failed verification")
    else:
        unrecorded = sum(c.status == "unrecorded" for c in report.files)
        note = f" ({unrecorded} without a recorded checksum)" if unrecorded else ""
        lines.append(f"{report.path}: all {len(report.files)} files verified, {report.rows:,} rows{note}")
    return "\n".join(lines)


def failure_message(report: VerifyReport) -> str:
    """The one-line error of a failed verification, naming each failed file and its first problem."""
    failed = [c for c in report.files if c.failed]
    shown = "; ".join(f"{c.file} {c.status} ({c.problems[0] if c.problems else c.status})" for c in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{report.path}: {len(failed)} of {len(report.files)} files failed verification: {shown}{more}"
