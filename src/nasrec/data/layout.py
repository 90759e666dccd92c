"""The file layout of a prepared cache, checked on every open: meta.json's keys and every array's .npy header."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasrec.errors import DataError

SPARSE = "sparse.npy"


# -- meta.json ----------------------------------------------------------------------------------------
def check_meta(meta_path: Path, meta: Any) -> None:
    """The keys every cache's meta.json needs, with values of the right types; DataError naming the key."""
    f = str(meta_path)
    if not isinstance(meta, dict):
        raise DataError("not a JSON object", file=f)
    for key in ("dense_fields", "sparse_fields", "table_sizes", "split"):
        if key not in meta:
            raise DataError(f"missing key {key!r}", file=f)
    for key in ("dense_fields", "sparse_fields"):
        v = meta[key]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(f"{key!r} must be a list of field names", file=f)
    sizes, names = meta["table_sizes"], meta["sparse_fields"]
    if not isinstance(sizes, list) or not all(_is_int(s) and s >= 1 for s in sizes):
        raise DataError("'table_sizes' must be a list of positive integers", file=f)
    if len(sizes) != len(names):
        raise DataError(f"'table_sizes' has {len(sizes)} entries for {len(names)} sparse_fields", file=f)
    split = meta["split"]
    if not isinstance(split, dict) or "rows" not in split:
        raise DataError("missing key 'split.rows'", file=f)
    rows = split["rows"]
    if not isinstance(rows, dict) or not all(_is_int(n) and n >= 0 for n in rows.values()):
        raise DataError("'split.rows' must map split names to row counts", file=f)
    for name in rows:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"'split.rows' names an invalid split {name!r}", file=f)
    if "rows" in meta and not (_is_int(meta["rows"]) and meta["rows"] >= 0):
        raise DataError("'rows' must be a row count", file=f)
    files = meta.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())):
        raise DataError("'files' must map file names to their records", file=f)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# -- .npy files ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NpyLayout:
    """Where the array of a .npy file lies: its shape, dtype and the byte offset of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def rows(self) -> int:
        """Length of the first axis (1 for a 0-d array)."""
        return int(self.shape[0]) if self.shape else 1

    @property
    def row_items(self) -> int:
        """Values per row (per first-axis entry)."""
        return math.prod(self.shape[1:])

    @property
    def data_bytes(self) -> int:
        """Bytes of the array data."""
        return math.prod(self.shape) * self.dtype.itemsize


def npy_layout(path: Path) -> NpyLayout:
    """The checked header of a .npy file: one-line DataError for a missing, unreadable, object-dtype,
    Fortran-ordered, truncated or overlong file."""
    f = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise DataError("missing (the cache is incomplete)", file=f) from None
    except OSError as e:
        raise DataError(f"cannot be read ({e.strerror or e})", file=f) from None
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"not a readable .npy array ({first})", file=f) from None
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
    if dtype.hasobject:
        raise DataError(f"holds Python objects (dtype {dtype}); a cache holds numeric arrays only", file=f)
    if fortran and len(shape) > 1:
        raise DataError("a Fortran-ordered array; a cache holds C-ordered arrays only", file=f)
    layout = NpyLayout(tuple(int(s) for s in shape), dtype, offset)
    want = offset + layout.data_bytes
    if size < want:
        raise DataError(
            f"truncated: {size:,} bytes, but its header's shape {layout.shape} of {dtype} needs {want:,}", file=f
        )
    if size > want:
        raise DataError(
            f"{size - want:,} unexpected bytes after the array its header declares ({layout.shape} of {dtype})", file=f
        )
    return layout


def _expect(path: Path, layout: NpyLayout, kind: str, shape: tuple[int | None, ...], why: str) -> None:
    """The dtype kind ("float32" or "int") and shape (None: any length) of one cache array."""
    f, dt = str(path), layout.dtype
    if not dt.isnative:
        raise DataError(f"dtype {dt.str} is not in this machine's byte order", file=f)
    if kind == "float32" and dt != np.float32:
        raise DataError(f"dtype {dt}, expected float32", file=f)
    if kind == "int" and not (dt.kind == "i" or (dt.kind == "u" and dt.itemsize <= 4)):
        raise DataError(f"dtype {dt}, expected an integer type (int32 or int64)", file=f)
    if len(layout.shape) != len(shape) or any(
        w is not None and w != s for w, s in zip(shape, layout.shape, strict=True)
    ):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise DataError(f"shape {layout.shape}, but meta.json declares {want} ({why})", file=f)


def array_specs(meta: dict[str, Any], n: int | None) -> dict[str, tuple[str, tuple[int | None, ...], str]]:
    """{relative path: (dtype kind, shape, why)} of the arrays a cache needs; `n` rows (None: any)."""
    D, S = len(meta["dense_fields"]), len(meta["sparse_fields"])
    rows = "any number of rows" if n is None else f"{n:,} rows"
    specs: dict[str, tuple[str, tuple[int | None, ...], str]] = {
        "label.npy": ("float32", (n,), rows),
        "dense.npy": ("float32", (n, D), f"{rows} of {D} dense_fields"),
        SPARSE: ("int", (n, S), f"{rows} of {S} sparse_fields"),
    }
    for split, count in meta["split"]["rows"].items():
        specs[f"splits/{split}.npy"] = ("int", (count,), f"split {split!r} of {count:,} rows")
    return specs


def cache_rows(cache: Path, meta: dict[str, Any]) -> int:
    """The row count of a cache: meta.json's `rows`, or (older caches) label.npy's length."""
    if "rows" in meta:
        return int(meta["rows"])
    return npy_layout(cache / "label.npy").rows


def check_arrays(cache: Path, meta: dict[str, Any]) -> dict[str, NpyLayout]:
    """Check the array files of a cache against its meta.json; returns their layouts by relative path."""
    out = {}
    for rel, (kind, shape, why) in array_specs(meta, cache_rows(cache, meta)).items():
        lay = npy_layout(cache / rel)
        _expect(cache / rel, lay, kind, shape, why)
        out[rel] = lay
    return out
