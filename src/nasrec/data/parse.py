"""Typed parsing and validation of raw string chunks into label, dense and categorical arrays.

All checks are vectorised polars expressions evaluated once per chunk; only when a chunk holds a bad
row is it examined further, to name the first bad line and column (or, when skipping, every bad row).
Stateless encodings (log/none dense transforms, modulo hashing) are applied here; fitted ones
(standardisation, vocabularies) are applied by ``prepare`` after fitting on the train split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from nasrec.data.encoders import BUCKETIZE_TABLE_SIZE, MISSING_ID
from nasrec.data.readers import Chunk
from nasrec.data.schema import DenseField, Schema, SparseField
from nasrec.errors import DataError, NasrecError

_DIGITS = r"^[0-9]+$"
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class SparseOutput:
    """One categorical output column: a schema field, or a bucketized dense field."""

    name: str
    field: SparseField | None
    bucketized: DenseField | None
    table_size: int  # hash-table size (hash mode), after the cap


@dataclass(frozen=True)
class EncodingPlan:
    """Which output columns a schema produces, and how they are encoded in the first pass."""

    schema: Schema
    mode: str  # "hash" or "vocab"
    dense: tuple[DenseField, ...]
    sparse: tuple[SparseOutput, ...]
    max_table_size: int | None = None

    @property
    def dense_names(self) -> list[str]:
        """Names of the dense output columns."""
        return [f.name for f in self.dense]

    @property
    def sparse_names(self) -> list[str]:
        """Names of the categorical output columns."""
        return [s.name for s in self.sparse]


def make_plan(schema: Schema, mode: str = "hash", max_table_size: int | None = None) -> EncodingPlan:
    """Derive the output columns of a schema under an encoding mode and table-size cap."""
    if mode not in ("hash", "vocab"):
        raise NasrecError(f"encoding mode must be 'hash' or 'vocab', not {mode!r}")
    if max_table_size is not None and max_table_size < 3:
        raise NasrecError(f"max table size must be at least 3, not {max_table_size}")

    def cap(n: int) -> int:
        return n if max_table_size is None else min(n, max_table_size)

    dense = tuple(f for f in schema.dense if f.transform != "bucketize")
    sparse = [SparseOutput(f.name, f, None, cap(f.table_size or schema.default_table_size)) for f in schema.sparse]
    for f in schema.dense:
        if f.transform == "bucketize":
            if f.column is None:
                raise NasrecError(f"schema field {f.name!r}: a constant column cannot be bucketized")
            sparse.append(SparseOutput(f"{f.name}_bucket", None, f, cap(BUCKETIZE_TABLE_SIZE)))
    return EncodingPlan(schema, mode, dense, tuple(sparse), max_table_size)


@dataclass
class ParsedChunk:
    """Arrays of one chunk after validation and first-pass encoding."""

    label: np.ndarray  # float32 [n]
    dense: np.ndarray  # float32 [n, D]; NaN marks missing values of fields still to be standardised
    sparse: np.ndarray  # int32 [n, S] table rows (hash mode) or int64 raw ids (vocab mode)
    lines: np.ndarray  # int64 [n] source line (or row) numbers
    file: str


def stable_hash64(values: pl.Series) -> np.ndarray:
    """A 64-bit hash of strings that is stable across platforms and library versions."""
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64)
    hexed = values.fill_null("").str.encode("hex")
    nbytes = values.fill_null("").str.len_bytes().to_numpy().astype(np.uint64)
    h = np.full(n, 0x9E3779B97F4A7C15, dtype=np.uint64) ^ (nbytes * np.uint64(0xBF58476D1CE4E5B9))
    blocks = int((int(nbytes.max()) + 7) // 8)
    for b in range(blocks):  # one vectorised pass per 8-byte block of the longest value
        part = hexed.str.slice(16 * b, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        mixed = _mix(h ^ part.fill_null(0).to_numpy().astype(np.uint64))
        # only values that have a block b are mixed: a value's hash must not depend on its neighbours
        h = np.where(nbytes > np.uint64(8 * b), mixed, h)
    return _mix(h).view(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: wrapping uint64 arithmetic is intended
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _short(v: object) -> str:
    s = str(v)
    return repr(s if len(s) <= 40 else s[:37] + "...")


class ChunkParser:
    """Turns string chunks into validated arrays according to an EncodingPlan."""

    def __init__(self, plan: EncodingPlan, on_bad_row: Callable[[DataError], None] | None = None) -> None:
        self.plan = plan
        self.on_bad_row = on_bad_row  # None: raise on the first bad row
        self._checks: list[tuple[str, str, pl.Expr]] = []  # (column, reason, bad-flag expr)
        self._build()

    # -- expression building -------------------------------------------------------------------
    def _build(self) -> None:
        s = self.plan.schema
        lab = pl.col(s.label)
        lab_num = lab.cast(pl.Float64, strict=False)
        self._checks.append((s.label, "missing label", lab.is_null()))
        self._checks.append((s.label, "label is not a number", lab.is_not_null() & lab_num.is_null()))
        if s.label_rule == "binary":
            self._checks.append((s.label, "label must be 0 or 1", lab_num.is_not_null() & ~lab_num.is_in([0.0, 1.0])))
            self._label = lab_num.cast(pl.Float32).alias("__label")
        else:
            bad = lab_num.is_not_null() & (~lab_num.is_finite() | (lab_num < 0))
            self._checks.append((s.label, "label count must be a finite number >= 0", bad))
            self._label = (lab_num > 0).cast(pl.Float32).alias("__label")

        numeric_cols = {f.column for f in s.dense if f.column is not None}
        for c in sorted(numeric_cols, key=s.used_columns.index):
            raw = pl.col(c)
            num = raw.cast(pl.Float64, strict=False)
            self._checks.append((c, "not a number", raw.is_not_null() & num.is_null()))
            self._checks.append((c, "NaN or infinite value", num.is_not_null() & ~num.is_finite()))

        self._dense = []
        for i, f in enumerate(self.plan.dense):
            if f.column is None:
                e = pl.lit(0.0, dtype=pl.Float32)
            else:
                x = pl.col(f.column).cast(pl.Float64, strict=False)
                if f.transform == "log":
                    e = (x.clip(lower_bound=0.0) + 1.0).log().fill_null(0.0)
                elif f.transform == "none":
                    e = x.fill_null(0.0)
                else:  # standardize: fitted later; NaN marks missing
                    e = x.fill_null(float("nan"))
            self._dense.append(e.cast(pl.Float32).alias(f"__d{i}"))

        self._strings: list[tuple[int, SparseOutput]] = []
        self._sparse = []
        for i, out in enumerate(self.plan.sparse):
            ident = self._raw_id(out, i)
            if ident is None:  # string kind: hashed in numpy after the select
                self._strings.append((i, out))
                continue
            self._sparse.append(self._encode_id(ident, out).alias(f"__s{i}"))

    def _raw_id(self, out: SparseOutput, i: int) -> pl.Expr | None:
        """Expression of the raw id (UInt64 or Int64, null when missing) of a categorical output."""
        if out.bucketized is not None:
            x = pl.col(out.bucketized.column).cast(pl.Float64, strict=False)
            return pl.when(x > 2.0).then((x.log() ** 2).floor()).otherwise(x.floor()).cast(pl.Int64)
        f = out.field
        raw = pl.col(f.column)
        if f.kind == "string":
            return None
        m = f.modulus
        if f.kind == "hex":
            u = raw.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
            v = (u % m).cast(pl.Int64) if m and not f.derive else u.reinterpret(signed=True)
            self._checks.append((f.column, "invalid hexadecimal value", raw.is_not_null() & u.is_null()))
        elif f.kind == "auto":
            # NASRec's id rewriting: decimal when all digits, else (signed) hexadecimal
            dec = raw.str.to_integer(base=10, dtype=pl.UInt64, strict=False)
            hexv = raw.str.to_integer(base=16, dtype=pl.Int64, strict=False)
            if m and not f.derive:
                dec, hexv = (dec % m).cast(pl.Int64), hexv % m
            else:
                dec = dec.reinterpret(signed=True)
            v = pl.when(raw.str.contains(_DIGITS)).then(dec).otherwise(hexv)
            self._checks.append((f.column, "neither a decimal nor a hexadecimal id", raw.is_not_null() & v.is_null()))
        else:  # int: signed 64-bit, or unsigned beyond that (reinterpreted)
            signed = raw.str.to_integer(base=10, dtype=pl.Int64, strict=False)
            unsigned = raw.str.to_integer(base=10, dtype=pl.UInt64, strict=False)
            if m and not f.derive:
                v = pl.coalesce(signed % m, (unsigned % m).cast(pl.Int64))
            else:
                v = pl.coalesce(signed, unsigned.reinterpret(signed=True))
            self._checks.append((f.column, "not an integer", raw.is_not_null() & v.is_null()))
        if f.derive == "hour_of_day":
            v = v % 100
            self._checks.append((f.column, "hour must be YYMMDDHH", raw.is_not_null() & (v > 23)))
        elif f.derive == "weekday":
            day, month, year = (v // 100) % 100, (v // 10_000) % 100, 2000 + (v // 1_000_000) % 100
            ok = month.is_between(1, 12) & day.is_between(1, 31)
            date = pl.when(ok).then(pl.date(year, month.clip(1, 12), day.clip(1, 28)))
            # weekday of day d = weekday of day 28 shifted by d - 28 (avoids invalid dates like Feb 30)
            v = (date.dt.weekday().cast(pl.Int64) - 1 + (day - day.clip(1, 28))) % 7 + 1
            self._checks.append((f.column, "date must be YYMMDDHH", raw.is_not_null() & ~ok))
        return v

    def _encode_id(self, v: pl.Expr, out: SparseOutput) -> pl.Expr:
        if self.plan.mode == "hash":
            return ((v % (out.table_size - 1)) + 1).fill_null(0).cast(pl.Int32)
        if out.field is not None:  # the vocabulary's missing marker must not be a real id
            self._checks.append(
                (
                    out.field.column,
                    f"id {MISSING_ID} (2^63 as unsigned) is reserved for missing values",
                    v == MISSING_ID,
                )
            )
        return v.fill_null(MISSING_ID)

    # -- evaluation ----------------------------------------------------------------------------
    def parse(self, chunk: Chunk) -> ParsedChunk:
        """Validate and encode one chunk (bad rows raise, or are reported and dropped)."""
        frame = chunk.frame
        bad_any = pl.any_horizontal([e for _, _, e in self._checks]).fill_null(False).alias("__bad")
        # lazy: common subexpressions (each value is parsed once for its check and its encoding)
        out = frame.lazy().select([bad_any, self._label, *self._dense, *self._sparse]).collect()
        lines = chunk.lines
        bad = out.get_column("__bad").to_numpy()
        if bad.any():
            keep = self._report(chunk, bad)
            out = out.filter(pl.Series(keep))
            frame = frame.filter(pl.Series(keep))
            lines = lines[keep]
        if chunk.pending is not None:
            raise chunk.pending  # the rows before it were valid
        n = out.height
        label = out.get_column("__label").to_numpy()
        dense = (
            out.select([f"__d{i}" for i in range(len(self.plan.dense))]).to_numpy()
            if self.plan.dense
            else np.zeros((n, 0), np.float32)
        )
        sdtype = np.int32 if self.plan.mode == "hash" else np.int64
        sparse = np.empty((n, len(self.plan.sparse)), dtype=sdtype)
        for i in range(len(self.plan.sparse)):
            name = f"__s{i}"
            if name in out.columns:
                sparse[:, i] = out.get_column(name).to_numpy()
        for i, so in self._strings:
            raw = frame.get_column(so.field.column)
            ids = stable_hash64(raw)
            if so.field.modulus is not None:
                ids = (ids.view(np.uint64) % np.uint64(so.field.modulus)).astype(np.int64)
            missing = raw.is_null().to_numpy()
            if self.plan.mode == "hash":
                col = (ids.view(np.uint64) % np.uint64(so.table_size - 1)).astype(np.int32) + 1
                col[missing] = 0
            else:
                col = ids
                col[missing] = MISSING_ID
            sparse[:, i] = col
        return ParsedChunk(
            label.astype(np.float32, copy=False),
            np.ascontiguousarray(dense, np.float32),
            sparse,
            lines,
            chunk.file,
        )

    def _report(self, chunk: Chunk, bad: np.ndarray) -> np.ndarray:
        """Name the bad rows of a chunk: raise on the first, or report each and return the keep mask."""
        flags = chunk.frame.select([e.fill_null(False).alias(f"__c{k}") for k, (_, _, e) in enumerate(self._checks)])
        rows = np.flatnonzero(bad)
        for r in rows:
            k = next(k for k in range(len(self._checks)) if flags[int(r), k])
            column, reason, _ = self._checks[k]
            value = chunk.frame.get_column(column)[int(r)]
            err = DataError(
                f"{reason}: {_short(value)}" if value is not None else reason,
                file=chunk.file,
                line=int(chunk.lines[r]),
                column=column,
                unit=chunk.unit,
            )
            if self.on_bad_row is None:
                raise err
            self.on_bad_row(err)
        return ~bad
