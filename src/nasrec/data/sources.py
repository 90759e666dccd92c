"""Input files of a dataset: checks, the KDD Cup 2012 profile join, and one chunk stream over all.

Shared by `prepare` (building a cache) and `RowEncoder` (encoding new rows with a cache's state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from nasrec.data.formats import KDD12_COLUMNS, KDD12_PROFILE_COLUMNS
from nasrec.data.readers import DEFAULT_CHUNK_BYTES, Chunk, SourceInfo, TextReader, is_parquet, read_parquet
from nasrec.data.schema import Schema, SparseField
from nasrec.errors import DataError, NasrecError

MAX_REPORTED_ERRORS = 100  # bad rows kept with their location (in meta.json); all are counted
SHOWN_ERRORS = 10  # bad rows a command prints
# `--on-error skip` is for the odd damaged line. When more than 1% of the rows read are malformed, the cause
# is rarely random damage (a wrong --format or schema, a mangled export, a truncated or mixed file), and the
# rows dropped are then not a random sample either: the cache (or the predictions) would quietly differ from
# the data. The public CTR logs have no malformed rows at all. `--max-bad-fraction 1` keeps any share.
DEFAULT_MAX_BAD_FRACTION = 0.01


def format_bad_row(err: dict) -> str:
    """A skipped row as `file:line:column: reason` (`file:line: reason` for a whole-line problem)."""
    where = [str(err.get("file") or "?"), str(err.get("line") if err.get("line") is not None else "?")]
    if err.get("column") is not None:
        where.append(str(err["column"]))
    return f"{':'.join(where)}: {err.get('reason')}"


class ErrorLog:
    """Collects skipped rows in skip mode: their count, and the first few with their location."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[dict] = []

    def __call__(self, err: DataError) -> None:
        self.count += 1
        if len(self.examples) < MAX_REPORTED_ERRORS:
            self.examples.append(err.to_dict())

    def sorted_examples(self) -> list[dict]:
        """The recorded bad rows in file order (the reader and the parser report a block's rows apart)."""
        return in_file_order(self.examples)


def in_file_order(examples: list[dict]) -> list[dict]:
    """Bad-row records sorted by file (in the order the files were read) and line."""
    files = {f: i for i, f in reversed(list(enumerate(e.get("file") for e in examples)))}
    return sorted(examples, key=lambda e: (files[e.get("file")], e.get("line") or 0))


def shown_bad_rows(count: int, examples: list[dict], limit: int = SHOWN_ERRORS) -> list[str]:
    """The first `limit` of `count` bad rows as `file:line:column: reason`, then `... and N more`."""
    shown = [format_bad_row(e) for e in in_file_order(examples)[:limit]]
    if count > len(shown):
        shown.append(f"... and {count - len(shown):,} more")
    return shown


def check_bad_share(where: str, good: int, errors: ErrorLog, max_fraction: float) -> None:
    """Skip mode: fail when no row is left, or when more than `max_fraction` of the rows read were bad."""
    bad = errors.count
    if not bad:
        return
    total = good + bad
    first = f" (first: {format_bad_row(errors.sorted_examples()[0])})" if errors.examples else ""
    if good == 0:
        raise NasrecError(
            f"{where}: no data rows left after skipping bad rows: all {bad:,} rows read are malformed{first}"
        )
    if bad > max_fraction * total:
        raise NasrecError(
            f"{where}: {bad:,} of {total:,} rows read ({bad / total:.2%}) are malformed, more than the "
            f"--max-bad-fraction of {max_fraction:g} allows{first}; fix the input, or raise the limit"
        )


def check_inputs(paths: list[Path]) -> None:
    """Fail with a one-line error for a missing, non-regular or empty input file."""
    if not paths:
        raise NasrecError("no input file given")
    for p in paths:
        if not p.exists():
            raise NasrecError(f"{p}: no such file")
        if not p.is_file():
            raise NasrecError(f"{p}: not a file")
        if p.stat().st_size == 0:
            raise NasrecError(f"{p}: empty input file")


def split_kdd_inputs(paths: list[Path], profile: str | Path | None) -> tuple[list[Path], Path]:
    """(training files, profile file): the profile is given, or is the input named userid_profile*."""
    if profile:
        return paths, Path(profile)
    prof = [p for p in paths if "userid_profile" in p.name]
    if len(prof) != 1:
        raise NasrecError("kdd12 needs the user profile: pass userid_profile.txt among --input, or --kdd-profile")
    return [p for p in paths if p not in prof], prof[0]


def load_kdd_profile(path: Path, on_bad: Callable[[DataError], None] | None = None) -> pl.DataFrame:
    """userid_profile.txt as string columns UserID, Gender, Age, one row per user."""
    check_inputs([path])
    schema = Schema(
        name="kdd12-profile",
        label="UserID",
        dense=(),
        sparse=tuple(SparseField(c, c, "int") for c in KDD12_PROFILE_COLUMNS[1:]),
        separator="\t",
        header=False,
        columns=KDD12_PROFILE_COLUMNS,
        quote=None,
    )
    info = SourceInfo(str(path), 0, "")
    frames = [chunk.frame for chunk in TextReader(schema, on_bad_line=on_bad).read(path, info)]
    prof = pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.String for c in KDD12_PROFILE_COLUMNS})
    return prof.unique(subset="UserID", keep="first", maintain_order=True)


def iter_chunks(
    schema: Schema,
    paths: list[Path],
    *,
    fmt: str = "schema",
    kdd_profile: str | Path | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_bad: Callable[[DataError], None] | None = None,
    infos: list[SourceInfo] | None = None,
) -> Iterator[Chunk]:
    """Chunks of all input files in order (KDD rows joined with the user profile)."""
    profile = None
    file_columns = None
    if fmt == "kdd12":
        paths, prof_path = split_kdd_inputs(paths, kdd_profile)
        profile = load_kdd_profile(prof_path, on_bad)
        file_columns = KDD12_COLUMNS
    reader = TextReader(schema, chunk_bytes=chunk_bytes, on_bad_line=on_bad, file_columns=file_columns)
    for path in paths:
        info = SourceInfo(str(path), 0, "")
        if infos is not None:
            infos.append(info)
        if schema.file_type == "parquet" or path.suffix.lower() == ".parquet" or is_parquet(path):
            stream = read_parquet(schema, path, info)
        else:
            stream = reader.read(path, info)
        for chunk in stream:
            if profile is not None:
                frame = chunk.frame.join(profile, on="UserID", how="left", maintain_order="left")
                chunk.frame = frame.with_columns(pl.col("Gender", "Age").fill_null("0"))
            yield chunk
