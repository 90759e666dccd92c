"""Streaming readers: raw files to chunks of string columns, with exact line numbers.

Text files are read in byte blocks cut at line ends, so memory stays bounded whatever the file
size. Each block is checked for the right number of fields per line before polars parses it
(polars itself would silently pad a short line with empty fields), then parsed with every column
as a string; typed parsing and validation happen in ``parse.py`` so that every bad value can be
reported with its file, line and column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nasrec.data.badlines import BadLineHandling, line_field_counts
from nasrec.data.compression import Tap, compression_of, decompressed
from nasrec.data.schema import Schema
from nasrec.errors import DataError, NasrecError

DEFAULT_CHUNK_BYTES = 16 << 20  # measured fastest on 2 cores (cache friendly polars parse)
PARQUET_CHUNK_ROWS = 250_000
SNIFF_BYTES = 1 << 16  # the start of a file that decides its line ends


def is_parquet(path: Path) -> bool:
    """Whether a file is Parquet (by its magic bytes at both ends)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PAR1":
                return False
            fh.seek(-4, io.SEEK_END)
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


@dataclass
class Chunk:
    """A block of consecutive input rows as string columns named by source column."""

    frame: pl.DataFrame
    file: str
    lines: np.ndarray  # 1-based line (text) or row (parquet) number of each frame row
    unit: str = "line"
    nbytes: int = 0  # input bytes this chunk consumed (for progress)
    # Fail mode: the bad line that ended this chunk. It is raised once the rows before it have been
    # validated, so that the error reported is always the earliest bad line of the file.
    pending: DataError | None = None


@dataclass
class SourceInfo:
    """What was read from one input file (for the cache's provenance record)."""

    path: str
    bytes: int
    sha256: str
    rows: int = 0
    compression: str | None = None  # gzip, bzip2 or xz when the file was decompressed while read


class TextReader(BadLineHandling):
    """Reads CSV/TSV files of a schema in chunks, checking each line's field count."""

    def __init__(
        self,
        schema: Schema,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        on_bad_line: Callable[[DataError], None] | None = None,
        file_columns: tuple[str, ...] | None = None,
    ) -> None:
        self.schema = schema
        self.chunk_bytes = chunk_bytes
        self.on_bad_line = on_bad_line  # None: raise on the first bad line
        self.file_columns = file_columns
        self._pending: DataError | None = None

    def read(self, path: Path, info: SourceInfo) -> Iterator[Chunk]:
        """Yield the chunks of one file, updating `info` (size, checksum, rows) as it goes.

        A gzip, bzip2 or xz file (known by its first bytes, whatever its name) is decompressed as it
        streams; the checksum and `nbytes` count the bytes of the file on disk.
        """
        kind = compression_of(path)
        digest = hashlib.sha256()
        with open(path, "rb") as raw:
            tap = Tap(raw, digest)
            stream = decompressed(kind, tap)
            try:
                yield from self._read_stream(path, stream, tap, info, kind)
            finally:
                if stream is not tap:
                    stream.close()
            while tap.read(1 << 24):  # whatever the decompressor left unread still counts for the checksum
                pass
        info.bytes = path.stat().st_size
        info.sha256 = digest.hexdigest()
        info.compression = kind

    def _read_stream(self, path: Path, stream: Any, tap: Tap, info: SourceInfo, kind: str | None) -> Iterator[Chunk]:
        s = self.schema
        sep = s.separator.encode()
        line_no = 1  # physical line number of the next line in the file
        columns = self.file_columns or s.columns
        first = True
        consumed = 0  # bytes of the file on disk accounted for in the chunks so far
        blocks = self._blocks(stream)
        rest = b""
        while True:
            try:
                block = next(blocks, b"")
            except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
                if kind is None:
                    raise DataError(f"cannot be read after line {line_no - 1:,} ({e})", file=str(path)) from None
                raise DataError(
                    f"the {kind} data is damaged or cut short after line {line_no - 1:,} ({e}); "
                    "the file is truncated or corrupt",
                    file=str(path),
                ) from None
            buf = rest + block
            if block:
                cut = buf.rfind(b"\n") + 1
                if cut == 0:  # a line longer than the block: keep reading
                    rest = buf
                    continue
                buf, rest = buf[:cut], buf[cut:]
            else:
                rest = b""
            if not buf:
                break
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
                if not block and buf.endswith(b"\r"):  # a CRLF file cut between its last CR and LF
                    buf = buf[:-1] + b"\n"
            if first:
                first = False
                columns, buf, skipped = self._header(path, buf, columns)
                line_no += skipped
                if not buf:
                    continue
            if not block and not buf.endswith(b"\n"):  # the file's last line, without its newline
                buf = self._last_line(path, buf, columns, sep, line_no)
                if not buf:  # skipped as cut short
                    line_no += 1
                    continue
            nbytes, consumed = tap.count - consumed, tap.count
            frame = self._fast_parse(buf, columns, sep)
            if frame is not None:
                lines = np.arange(line_no, line_no + frame.height, dtype=np.int64)
                line_no += frame.height
            else:
                n_lines = buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)
                buf, lines = self._check_fields(path, buf, columns, line_no, n_lines, sep)
                line_no += n_lines
                if len(lines):
                    frame, lines = self._parse(path, buf, columns, lines)
                pending, self._pending = self._pending, None
                if len(lines) == 0:
                    if pending is not None:
                        raise pending
                    continue
                if pending is not None:
                    yield Chunk(frame, str(path), lines, "line", nbytes, pending)
                    raise pending  # in case the consumer did not
            info.rows += frame.height
            yield Chunk(frame, str(path), lines, "line", nbytes)

    def _blocks(self, stream: Any) -> Iterator[bytes]:
        """Blocks of `chunk_bytes` of a (decompressed) stream; a file whose lines end with a lone CR
        (classic Mac OS) has them turned into LF. The line ends are judged on the first 64 KiB: CRs and
        no LF there means CR line ends (a CR inside a line of an LF file stays data)."""
        head = stream.read(max(self.chunk_bytes, SNIFF_BYTES))
        if b"\n" not in head and head.endswith(b"\r"):
            head += stream.read(1)  # a CR at the very end of the sample may be the first half of a CRLF
        cr_only = b"\r" in head and b"\n" not in head
        for i in range(0, len(head), self.chunk_bytes):
            piece = head[i : i + self.chunk_bytes]
            yield piece.replace(b"\r", b"\n") if cr_only else piece
        while block := stream.read(self.chunk_bytes):
            yield block.replace(b"\r", b"\n") if cr_only else block

    def _last_line(self, path: Path, buf: bytes, columns: tuple[str, ...], sep: bytes, line_no: int) -> bytes:
        """The file's last line lacks its newline: if it also looks cut short (its last field empty, or too
        few fields), a truncated file is the likely cause. Report it (raise, or skip: returns b"")."""
        want, found = len(columns), buf.count(sep) + 1
        if buf.endswith(sep):
            why = "its last field is empty"
        elif found < want:
            why = f"it has {found} of {want} fields"
        else:
            return buf + b"\n"
        err = DataError(
            f"the file ends in the middle of this line (no final newline, and {why}): is it truncated? "
            "If the line is complete, end it with a newline",
            file=str(path),
            line=line_no,
        )
        if self.on_bad_line is None:
            raise err
        self.on_bad_line(err)
        return b""

    def _header(self, path: Path, buf: bytes, columns: tuple[str, ...] | None) -> tuple:
        """Consume the header line if there is one; return (columns, rest of block, lines consumed)."""
        s = self.schema
        if buf.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not part of the first field
            buf = buf[3:]
        if s.header is False:
            return columns, buf, 0
        end = buf.find(b"\n")
        head = (buf if end < 0 else buf[:end]).decode("utf-8", errors="replace")
        rest = b"" if end < 0 else buf[end + 1 :]
        try:
            names = next(csv.reader([head], delimiter=s.separator, quotechar=s.quote or '"'), [])
        except csv.Error as e:
            if s.header is True:
                raise DataError(f"cannot read the header ({e})", file=str(path), line=1) from None
            return columns, buf, 0  # "auto": not a header; the line is checked as data
        names = [n.strip() for n in names]
        if s.header is True:
            missing = [c for c in s.used_columns if c not in names]
            if missing:
                raise NasrecError(
                    f"{path}: the header has no column {', '.join(map(repr, missing))} "
                    f"(schema {s.name!r} does not match this file; header: {', '.join(names[:8])}...)"
                )
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise NasrecError(f"{path}: the header names column(s) {', '.join(map(repr, dup))} more than once")
            return tuple(names), rest, 1
        if s.header == "auto" and columns is not None and tuple(names) == tuple(columns):
            return columns, rest, 1
        return columns, buf, 0

    def _fast_parse(self, buf: bytes, columns: tuple[str, ...], sep: bytes) -> pl.DataFrame | None:
        """Parse a block whose lines are all well formed, or return None (then the careful path runs).

        Exact: polars rejects a line with too many fields, blank lines become rows, and so a separator
        total of (fields - 1) per row proves that no line has too few.
        """
        s = self.schema
        if s.quote is not None and s.quote.encode() in buf:
            return None
        try:
            frame = self._read(buf, columns)
        except pl.exceptions.PolarsError:  # e.g. SchemaError for a line with too few or too many fields
            return None
        if buf.count(sep) != (len(columns) - 1) * frame.height:
            return None
        return frame.select([c for c in s.used_columns if c in columns])

    def _parse(self, path: Path, buf: bytes, columns: tuple[str, ...], lines: np.ndarray) -> tuple:
        """Parse a checked block into string columns; returns (frame, lines)."""
        try:
            frame = self._read(buf, columns)
        except pl.exceptions.PolarsError:
            # A line with too many fields: locate it exactly, then parse what is left.
            starts, counts = line_field_counts(buf, self.schema.separator.encode())
            buf, lines = self._drop_bad(path, buf, lines, starts, counts, len(columns))
            try:
                frame = self._read(buf, columns)
            except pl.exceptions.PolarsError:  # invalid UTF-8 or broken quoting
                buf, lines = self._drop_unparseable(path, buf, lines, columns)
                frame = self._read(buf, columns)
        return frame.select([c for c in self.schema.used_columns if c in columns]), lines

    def _read(self, buf: bytes, columns: tuple[str, ...]) -> pl.DataFrame:
        s = self.schema
        if not buf:
            return pl.DataFrame(schema={c: pl.String for c in columns})
        nulls = [m for m in s.missing if m != ""]
        # Every column of the file is declared so that polars rejects lines with extra fields.
        return pl.read_csv(
            buf,
            has_header=False,
            separator=s.separator,
            quote_char=s.quote,
            schema={f"{i}:{c}": pl.String for i, c in enumerate(columns)},
            null_values=nulls or None,
            empty_string_is_null="" in s.missing,
            raise_if_empty=False,
        ).rename({f"{i}:{c}": c for i, c in enumerate(columns)})


def read_parquet(schema: Schema, path: Path, info: SourceInfo) -> Iterator[Chunk]:
    """Yield chunks of a Parquet file as string columns (row numbers stand in for lines)."""
    lf = pl.scan_parquet(path)
    names = lf.collect_schema().names()
    missing = [c for c in schema.used_columns if c not in names]
    if missing:
        raise NasrecError(
            f"{path}: no column {', '.join(map(repr, missing))} (schema {schema.name!r} does not match this file)"
        )
    total = lf.select(pl.len()).collect().item()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    info.bytes = path.stat().st_size
    info.sha256 = digest.hexdigest()
    bad_tokens = [m for m in schema.missing]
    for off in range(0, total, PARQUET_CHUNK_ROWS):
        frame = lf.select(schema.used_columns).slice(off, PARQUET_CHUNK_ROWS).collect()
        frame = frame.select(
            pl.when(pl.col(c).cast(pl.String).is_in(bad_tokens))
            .then(None)
            .otherwise(pl.col(c).cast(pl.String))
            .alias(c)
            for c in frame.columns
        )
        info.rows += frame.height
        lines = np.arange(off + 1, off + 1 + frame.height, dtype=np.int64)
        yield Chunk(frame, str(path), lines, "row", info.bytes * frame.height // max(total, 1))
