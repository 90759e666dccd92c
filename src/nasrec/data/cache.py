"""The on-disk columnar cache: writing it atomically and opening it zero-copy.

Layout of a cache directory (format version 1)::

    meta.json              schema, encoder state, table sizes, split, row counts, and `files`: the size,
                           mtime and SHA-256 of every other file (sparse.npy's also each column's id
                           min and max), checked by `open_cache` and `nasrec cache verify`
    dense.npy              float32 [N, D]  encoded dense features, in source file order
    sparse.npy             int32   [N, S]  embedding row ids, each in [0, table_size)
    label.npy              float32 [N]     0.0 / 1.0
    splits/<name>.npy      int64   [n]     ascending row ids of each split (train, val, test)
    encoder/<field>.npy    vocabularies of fitted categorical encoders (vocab mode only)

``meta.json`` is written last and the directory is renamed into place only when everything
else is complete, so a directory with a readable ``meta.json`` is always a whole cache.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasrec import rundir
from nasrec.data import integrity
from nasrec.errors import DataError, NasrecError

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
_HEADER_BYTES = 128  # fixed .npy header size, so the row count can be rewritten in place


class AppendableArray:
    """A .npy file written row block by row block whose length is known only at the end."""

    def __init__(self, path: Path, dtype: np.dtype | str, row_shape: tuple[int, ...] = ()) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._write_header()

    def _write_header(self) -> None:
        shape = (self.rows, *self.row_shape)
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        text = repr(d).encode("latin1")
        body = _HEADER_BYTES - 10
        if len(text) + 1 > body:
            raise NasrecError(f"array header too long for {self.path}")
        text = text + b" " * (body - len(text) - 1) + b"\n"
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + np.uint16(body).tobytes() + text)

    def append(self, block: np.ndarray) -> None:
        """Append rows (shape [n, *row_shape]) converted to the file's dtype."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        if block.size:
            self._fh.write(memoryview(block).cast("B"))
        self.rows += block.shape[0]

    def close(self) -> None:
        """Write the final row count into the header and close the file."""
        if self._fh.closed:
            return
        self._write_header()
        self._fh.close()


def _npy_layout(fh) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    if fortran:
        raise NasrecError(f"{fh.name}: Fortran-ordered arrays are not supported")
    return shape, dtype, fh.tell()


def read_rows(path: Path, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a C-ordered .npy file, read into private memory.

    Unlike slicing a memory map, this keeps resident memory bounded by the block when a large file
    is streamed through once (mapped pages would count towards the process's RSS).
    """
    with open(path, "rb") as fh:
        shape, dtype, offset = _npy_layout(fh)
        row = int(np.prod(shape[1:], dtype=np.int64))
        hi = min(hi, shape[0])
        fh.seek(offset + lo * row * dtype.itemsize)
        return np.fromfile(fh, dtype=dtype, count=max(hi - lo, 0) * row).reshape((max(hi - lo, 0), *shape[1:]))


def write_rows(path: Path, lo: int, block: np.ndarray) -> None:
    """Overwrite rows starting at `lo` of a C-ordered .npy file in place."""
    with open(path, "r+b") as fh:
        shape, dtype, offset = _npy_layout(fh)
        if block.shape[1:] != tuple(shape[1:]) or lo + block.shape[0] > shape[0]:
            raise ValueError(f"{path.name}: cannot write rows of shape {block.shape} at {lo} into {shape}")
        row = int(np.prod(shape[1:], dtype=np.int64))
        fh.seek(offset + lo * row * dtype.itemsize)
        fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


class CacheWriter:
    """Builds a cache in a temporary sibling directory and renames it into place on commit."""

    def __init__(self, out: Path | str, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise NasrecError(f"{self.out} already exists (pass --force to replace it)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.out)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self._committed = False

    def path(self, name: str) -> Path:
        """Path of a file inside the temporary directory, creating parent folders."""
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, meta: dict[str, Any]) -> Path:
        """Write meta.json last, then move the directory into place (replacing an old cache).

        Unless `meta` holds them already, the size, mtime and checksum of every file are recorded in
        its `files` (see `nasrec.data.integrity.record_files`).
        """
        meta = {"format_version": FORMAT_VERSION, **meta}
        if "files" not in meta:
            meta["files"] = integrity.record_files(self.tmp)
        rundir.atomic_write_text(self.tmp / "meta.json", json.dumps(meta, indent=1))
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        """Remove the temporary directory (nothing half-written is left behind)."""
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary directories left by killed runs for `out` (their process no longer exists)."""
    for p in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (PermissionError, OverflowError):
            continue  # alive under another user, or not a pid at all: leave it


@dataclass(frozen=True)
class Cache:
    """An opened cache: memory-mapped arrays and the parsed meta.json."""

    path: Path
    meta: dict[str, Any]
    dense: np.ndarray
    sparse: np.ndarray
    label: np.ndarray
    _splits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        """Number of rows in the whole cache."""
        return int(self.label.shape[0])

    @property
    def dense_fields(self) -> list[str]:
        """Names of the dense feature columns, in array order."""
        return list(self.meta["dense_fields"])

    @property
    def sparse_fields(self) -> list[str]:
        """Names of the categorical feature columns, in array order."""
        return list(self.meta["sparse_fields"])

    @property
    def table_sizes(self) -> list[int]:
        """Embedding table size of every categorical column."""
        return [int(s) for s in self.meta["table_sizes"]]

    @property
    def split_names(self) -> list[str]:
        """Names of the splits stored in the cache."""
        return list(self.meta["split"]["rows"].keys())

    def split_index(self, name: str) -> np.ndarray:
        """Ascending row ids of one split (memory-mapped)."""
        if name not in self._splits:
            raise NasrecError(f"{self.path}: no split named {name!r} (have: {', '.join(self.split_names)})")
        return self._splits[name]


def read_meta(path: Path | str) -> dict[str, Any]:
    """The checked meta.json of a cache directory (NasrecError naming what is wrong)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise NasrecError(f"{path}: not a nasrec cache (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NasrecError(f"{meta_path}: unreadable ({e})") from None
    except OSError as e:
        raise NasrecError(f"{meta_path}: cannot be read ({e.strerror or e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise NasrecError(f"{path}: cache format version {version}, this nasrec reads {FORMAT_VERSION}")
    integrity.check_meta(meta_path, meta)
    return meta


def open_cache(path: Path | str) -> Cache:
    """Open a prepared cache without copying its arrays, after the checks of `nasrec.data.integrity`.

    The files' headers, sizes and dtypes are checked against meta.json, and every categorical column's
    ids against its table size (from the ranges recorded at prepare time while sparse.npy is unchanged,
    else recomputed once per process); any problem is a one-line DataError naming the file.
    """
    path = Path(path)
    meta = read_meta(path)
    layouts = integrity.check_arrays(path, meta)
    integrity.check_id_ranges(
        path / integrity.SPARSE,
        meta["sparse_fields"],
        meta["table_sizes"],
        integrity.id_ranges(path, meta, layouts[integrity.SPARSE]),
    )

    def load(name: str) -> np.ndarray:
        lay = layouts[name]  # checked: what np.load(mmap_mode="r") would map, without reading the header again
        try:
            return np.memmap(path / name, dtype=lay.dtype, mode="r", offset=lay.offset, shape=lay.shape)
        except (OSError, ValueError) as e:  # only a file changed since the checks gets here
            raise DataError(f"cannot be opened ({e})", file=str(path / name)) from None

    dense, sparse, label = load("dense.npy"), load("sparse.npy"), load("label.npy")
    splits = {name: load(f"splits/{name}.npy") for name in meta["split"]["rows"]}
    return Cache(path=path, meta=meta, dense=dense, sparse=sparse, label=label, _splits=splits)
