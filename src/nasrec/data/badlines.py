"""Bad lines of a text block: field counts per line, and reporting or cutting out the lines that fail.

`BadLineHandling` is the part of `TextReader` (`nasrec.data.readers`) that deals with malformed lines:
in fail mode the first bad line is kept as the reader's pending error (raised once the lines before it
are validated), in skip mode every bad line is reported to `on_bad_line` and cut out of the block.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from nasrec.data.schema import Schema
from nasrec.errors import DataError


def line_field_counts(buf: bytes, sep: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of each line and the number of fields on it (slow path, used on mismatch)."""
    a = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero(a == 10)
    if len(buf) and buf[-1:] != b"\n":
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1))
    seps = np.flatnonzero(a == sep[0])
    counts = np.diff(np.searchsorted(seps, np.concatenate(([0], ends)))) + 1
    counts[starts == ends] = 0  # an empty line holds no field at all
    return starts, counts


def quoted_field_counts(buf: bytes, sep: str, quote: str, path: Path, line_no: int) -> np.ndarray:
    """Fields per record of a block that contains quote characters (the csv module's view).

    A record spanning several lines (a quoted newline, an unclosed quote) or text the csv module
    rejects is reported at its line: `line_no` is the line number of the block's first line.
    """
    reader = csv.reader(io.StringIO(buf.decode("utf-8", errors="replace")), delimiter=sep, quotechar=quote)
    counts = []
    prev = 0  # lines consumed before the current record
    try:
        for record in reader:
            if reader.line_num - prev > 1:
                msg = "quoted fields spanning several lines are not supported (unclosed quote?)"
                raise DataError(msg, file=str(path), line=line_no + prev)
            counts.append(len(record))
            prev = reader.line_num
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", file=str(path), line=line_no + prev) from None
    return np.array(counts, dtype=np.int64)


class BadLineHandling:
    """Field-count checks and bad-line removal of a text reader (mixed into `TextReader`)."""

    # Set by the reader: its schema, what to do with a bad line (None: fail on the first), the error
    # of the first bad line in fail mode, and how it parses a block.
    schema: Schema
    on_bad_line: Callable[[DataError], None] | None
    _pending: DataError | None

    def _read(self, buf: bytes, columns: tuple[str, ...]) -> pl.DataFrame:
        raise NotImplementedError

    def _check_fields(
        self, path: Path, buf: bytes, columns: tuple[str, ...], line_no: int, n_lines: int, sep: bytes
    ) -> tuple[bytes, np.ndarray]:
        """Verify every line has len(columns) fields; drop (skip mode) or report bad ones."""
        s = self.schema
        want = len(columns)
        lines = np.arange(line_no, line_no + n_lines, dtype=np.int64)
        if s.quote is not None and s.quote.encode() in buf:
            counts = quoted_field_counts(buf, s.separator, s.quote, path, line_no)
            if len(counts) != n_lines:
                raise DataError("quoted fields spanning several lines are not supported", file=str(path), line=line_no)
            if (counts == want).all():
                return buf, lines
            starts, _ = line_field_counts(buf, sep)
            return self._drop_bad(path, buf, lines, starts, counts, want)
        # Cheap and exact together with the parser: polars rejects any line with too many fields
        # (see _parse), so a matching total means no line has too few.
        if buf.count(sep) == (want - 1) * n_lines:
            return buf, lines
        starts, counts = line_field_counts(buf, sep)
        return self._drop_bad(path, buf, lines, starts, counts, want)

    def _drop_bad(
        self, path: Path, buf: bytes, lines: np.ndarray, starts: np.ndarray, counts: np.ndarray, want: int
    ) -> tuple[bytes, np.ndarray]:
        bad = np.flatnonzero(counts != want)
        reasons = {int(i): f"expected {want} fields, found {counts[i]}" for i in bad}
        return self._drop_lines(path, buf, lines, starts, reasons)

    def _drop_lines(
        self, path: Path, buf: bytes, lines: np.ndarray, starts: np.ndarray, reasons: dict[int, str]
    ) -> tuple[bytes, np.ndarray]:
        """Report the lines {index in block: reason} (raise on the first unless skipping) and cut them out."""
        if not reasons:
            return buf, lines
        bad = np.array(sorted(reasons), dtype=np.int64)
        if self.on_bad_line is None:
            # Fail mode: keep the lines before the first bad one; their own errors come first.
            first = int(bad[0])  # earlier than any pending error: only lines before that one remain
            self._pending = DataError(reasons[first], file=str(path), line=int(lines[first]))
            return buf[: starts[first]], lines[:first]
        for i in bad:
            self.on_bad_line(DataError(reasons[int(i)], file=str(path), line=int(lines[i])))
        ends = np.append(starts[1:], len(buf))
        keep = np.ones(len(lines), dtype=bool)
        keep[bad] = False
        pieces = []
        prev = 0
        for i in bad:  # a loop over bad lines only: copy the good runs between them
            pieces.append(buf[prev : starts[i]])
            prev = ends[i]
        pieces.append(buf[prev:])
        out = b"".join(pieces)
        if out and not out.endswith(b"\n"):
            out += b"\n"
        return out, lines[keep]

    def _drop_unparseable(
        self, path: Path, buf: bytes, lines: np.ndarray, columns: tuple[str, ...]
    ) -> tuple[bytes, np.ndarray]:
        """Report or cut out the lines polars cannot read (error path only: checks line by line)."""
        starts, _ = line_field_counts(buf, self.schema.separator.encode())
        ends = np.append(starts[1:], len(buf)).tolist()
        reasons: dict[int, str] = {}
        for i, a in enumerate(starts.tolist()):
            try:
                buf[a : ends[i]].decode("utf-8")
            except UnicodeDecodeError:
                reasons[i] = "invalid UTF-8"
        if not reasons:
            for i, a in enumerate(starts.tolist()):
                try:
                    self._read(buf[a : ends[i]], columns)
                except pl.exceptions.PolarsError as e:
                    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                    reasons[i] = f"cannot parse the line ({first})"
                    if self.on_bad_line is None:
                        break
        if not reasons:
            raise DataError("cannot parse these lines (malformed quoting?)", file=str(path), line=int(lines[0]))
        return self._drop_lines(path, buf, lines, starts, reasons)
