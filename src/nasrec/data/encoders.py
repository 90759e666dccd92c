"""Fitted feature encoders: dense transforms, hashing and vocabularies, saved with the cache.

Like scikit-learn estimators, encoders that learn from data (`Standardizer`, `VocabEncoder`) learn
in ``fit`` from the train split only and apply in ``transform``; their state round-trips through
``state()`` / ``from_state`` (plus one .npy per vocabulary), so that training, evaluation and
prediction encode rows identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nasrec.data.integrity import npy_layout
from nasrec.errors import DataError, NasrecError

MISSING_ID = np.iinfo(np.int64).min  # raw-id sentinel for a missing categorical value
BUCKETIZE_TABLE_SIZE = 1024  # floor(ln(x)^2) stays below 1024 for every x < e^32
MISSING_INDEX = 0
OOV_INDEX = 1


@dataclass(frozen=True)
class HashEncoder:
    """NASRec modulo hashing: index = (id mod (N-1)) + 1, missing -> 0, into a table of N rows."""

    table_size: int

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"type": "hash", "table_size": self.table_size}


@dataclass
class VocabEncoder:
    """Vocabulary fitted on train rows: 0 = missing, 1 = out of vocabulary, 2.. = kept ids."""

    min_count: int = 1
    max_size: int | None = None
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids, most frequent first
    _lookup: tuple[pl.Series, pl.Series] | None = field(default=None, repr=False)

    @property
    def table_size(self) -> int:
        """Rows of the embedding table this vocabulary needs."""
        return 2 + len(self.keys)

    def fit(self, values: np.ndarray, counts: np.ndarray) -> VocabEncoder:
        """Keep ids seen at least min_count times, most frequent first, up to max_size rows in all."""
        present = values != MISSING_ID
        values, counts = values[present], counts[present]
        keep = counts >= self.min_count
        values, counts = values[keep], counts[keep]
        order = np.lexsort((values, -counts))  # by count descending, ties by id: deterministic
        if self.max_size is not None:
            order = order[: max(self.max_size - 2, 0)]
        self.keys = values[order].astype(np.int64)
        self._lookup = None
        return self

    def expr(self, column: str) -> pl.Expr:
        """Polars expression mapping a column of raw ids to table rows (Int32)."""
        if self._lookup is None:
            # a hash lookup is several times faster than a binary search over sorted keys
            old = np.concatenate(([MISSING_ID], self.keys))
            new = np.concatenate(([MISSING_INDEX], np.arange(2, 2 + len(self.keys)))).astype(np.int32)
            self._lookup = (pl.Series(old), pl.Series(new))
        old, new = self._lookup
        return pl.col(column).replace_strict(old, new, default=OOV_INDEX, return_dtype=pl.Int32)

    def transform(self, ids: np.ndarray) -> np.ndarray:
        """Map raw ids to table rows (int32)."""
        frame = pl.DataFrame({"ids": np.ascontiguousarray(ids, dtype=np.int64)})
        return frame.select(self.expr("ids")).to_series().to_numpy()

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (the keys themselves are saved as .npy by EncoderState.save)."""
        return {
            "type": "vocab",
            "min_count": self.min_count,
            "max_size": self.max_size,
            "size": len(self.keys),
        }


class VocabCounter:
    """Counts ids across chunks with memory proportional to the number of distinct ids."""

    def __init__(self) -> None:
        self._values: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._pending = 0

    def add(self, ids: np.ndarray) -> None:
        """Count a block of raw ids."""
        v, c = np.unique(ids, return_counts=True)
        self._values.append(v)
        self._counts.append(c)
        self._pending += len(v)
        if len(self._values) > 16:
            self._merge()

    def _merge(self) -> None:
        if len(self._values) <= 1:
            return
        v = np.concatenate(self._values)
        c = np.concatenate(self._counts)
        u, inv = np.unique(v, return_inverse=True)
        self._values = [u]
        self._counts = [np.bincount(inv, weights=c, minlength=len(u)).astype(np.int64)]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ids (ascending) and their counts."""
        self._merge()
        if not self._values:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self._values[0], self._counts[0]


@dataclass
class Standardizer:
    """(x - mean) / std with statistics of the train split's present values; missing -> 0 (the mean)."""

    mean: float = 0.0
    std: float = 1.0

    def fit(self, total: float, total_sq: float, count: int) -> Standardizer:
        """Set mean and std from running sums (population std; 1 when constant or empty)."""
        if count:
            self.mean = float(total / count)
            var = max(total_sq / count - self.mean**2, 0.0)
            self.std = float(np.sqrt(var)) if var > 1e-24 else 1.0
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise a float array whose missing values are NaN."""
        # float64 arithmetic whatever the input and statistics types, so that every path agrees bit for bit
        out = (np.asarray(x, dtype=np.float64) - float(self.mean)) / float(self.std)
        out[np.isnan(out)] = 0.0
        return out.astype(np.float32)


@dataclass
class EncoderState:
    """Everything needed to encode raw rows as the cache did: per-field encoders and options."""

    mode: str  # "hash" or "vocab"
    dense: dict[str, dict[str, Any]]  # name -> {"transform": ..., ["mean", "std"]}
    sparse: dict[str, HashEncoder | VocabEncoder]
    max_table_size: int | None = None

    def transform_dense(self, names: list[str], block: np.ndarray) -> np.ndarray:
        """Apply fitted dense transforms (standardisation) to first-pass dense values [n, D]."""
        out = np.array(block, dtype=np.float32)
        for j, name in enumerate(names):
            st = self.dense[name]
            if st["transform"] == "standardize":
                out[:, j] = Standardizer(st["mean"], st["std"]).transform(out[:, j])
        return out

    def transform_sparse(self, names: list[str], block: np.ndarray) -> np.ndarray:
        """Map first-pass categorical values [n, S] to table rows (int32): vocabularies in vocab mode."""
        if self.mode == "hash":
            return np.asarray(block, dtype=np.int32)
        frame = pl.DataFrame({f"c{j}": block[:, j] for j in range(len(names))})
        # one query over all columns, so polars maps them in parallel
        return frame.select(self.sparse[n].expr(f"c{j}") for j, n in enumerate(names)).to_numpy()

    def table_sizes(self, names: list[str]) -> list[int]:
        """Table size of each named categorical output."""
        return [self.sparse[n].table_size for n in names]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (vocabulary arrays are referenced by file name)."""
        sparse = {}
        for j, (name, enc) in enumerate(self.sparse.items()):
            st = enc.state()
            if isinstance(enc, VocabEncoder):
                st["file"] = _vocab_file(j, name)
            sparse[name] = st
        return {
            "mode": self.mode,
            "max_table_size": self.max_table_size,
            "dense": self.dense,
            "sparse": sparse,
        }

    def save_arrays(self, root: Path) -> None:
        """Write the vocabularies next to meta.json."""
        for j, (name, enc) in enumerate(self.sparse.items()):
            if isinstance(enc, VocabEncoder):
                p = root / _vocab_file(j, name)
                p.parent.mkdir(parents=True, exist_ok=True)
                np.save(p, enc.keys)

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path) -> EncoderState:
        """Rebuild the state stored in a cache directory."""
        sparse: dict[str, HashEncoder | VocabEncoder] = {}
        for name, st in d["sparse"].items():
            if st["type"] == "hash":
                sparse[name] = HashEncoder(int(st["table_size"]))
            elif st["type"] == "vocab":
                keys = _load_vocabulary(root / st["file"])
                if len(keys) != st["size"]:
                    raise NasrecError(f"{root / st['file']}: vocabulary size {len(keys)}, meta says {st['size']}")
                sparse[name] = VocabEncoder(st["min_count"], st["max_size"], keys)
            else:
                raise NasrecError(f"{root}: unknown encoder type {st['type']!r} for {name}")
        return cls(d["mode"], dict(d["dense"]), sparse, d.get("max_table_size"))


def _vocab_file(position: int, name: str) -> str:
    # the position keeps names that differ only in punctuation apart
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return f"encoder/{position:03d}_{safe}.npy"


def _load_vocabulary(path: Path) -> np.ndarray:
    """A stored vocabulary, after the checks of `nasrec.data.integrity` (one-line DataError when damaged)."""
    layout = npy_layout(path)
    if layout.dtype.kind not in "iu" or len(layout.shape) != 1:
        raise DataError(f"shape {layout.shape} of {layout.dtype}, expected a 1-D array of integer ids", file=str(path))
    return np.load(path, allow_pickle=False)
