"""Malformed input: every bad row is located (file, line, column) or skipped and recorded; bad files,
schemas and options fail with one clear line and exit code 2; nothing half-written is ever left.

All inputs are tiny hand-written files in the raw Criteo layout (label, I1..I13, C1..C26, tab-separated,
no header) unless a test says otherwise. Row ``i`` carries ``I1 = i`` and ``C1 = hex(i)``, so the rows
that reach the cache can be identified from the cache alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nasrec.data.cache import open_cache
from nasrec.data.formats import CRITEO_TABLE_SIZES, criteo_schema
from nasrec.data.prepare import PrepareConfig, PrepareResult, prepare
from nasrec.data.readers import SourceInfo, TextReader
from nasrec.errors import DataError, NasrecError
from nasrec.rundir import lock_path

CHUNK = 256  # bytes per read block: every test file spans many chunks
N_ROWS = 40
BAD_LINE = 23  # 1-based line of the bad row in single-error tests: far beyond the first chunk
CLI_PREFIX = "nasrec prepare: error:"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")  # a progress line of the command's log on stderr


# -- helpers ---------------------------------------------------------------------------------------
def criteo_fields(i: int, label: int | None = None) -> list[str]:
    """The 40 fields of row i: a label, 13 integers (I1 = i) and 26 8-hex ids (C1 = hex(i))."""
    lab = str((i * 7 // 3) % 2 if label is None else label)
    ints = [str(i)] + [str((i * k + 3) % 50) for k in range(2, 14)]
    cats = [f"{i:08x}"] + [f"{(i * 2654435761 + k * 40503) & 0xFFFFFFFF:08x}" for k in range(2, 27)]
    return [lab, *ints, *cats]


def criteo_line(i: int) -> str:
    return "\t".join(criteo_fields(i))


def replace_field(i: int, index: int, value: str) -> str:
    """Row i with one field (0 = label, 1..13 = I1..I13, 14..39 = C1..C26) replaced."""
    f = criteo_fields(i)
    f[index] = value
    return "\t".join(f)


def write_lines(path: Path, lines: list[str], newline: str = "\n", final_newline: bool = True) -> Path:
    text = newline.join(lines) + (newline if final_newline else "")
    path.write_bytes(text.encode())
    return path


def good_lines(n: int = N_ROWS) -> list[str]:
    return [criteo_line(i) for i in range(n)]


def cfg(inp: Path | list[Path], out: Path, **kw: object) -> PrepareConfig:
    inputs = tuple(str(p) for p in (inp if isinstance(inp, list) else [inp]))
    kw.setdefault("format", "criteo")
    kw.setdefault("split", "sequential")
    kw.setdefault("chunk_bytes", CHUNK)
    return PrepareConfig(inputs=inputs, out=str(out), **kw)  # type: ignore[arg-type]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} exists after a failed run"
    leftovers = sorted(p.name for p in out.parent.glob(f".{out.name}.*") if p != lock_path(out, beside=True))
    assert leftovers == [], f"temporary directories left behind: {leftovers}"


def listing(directory: Path) -> list[str]:
    """Names in a directory, less the writer lock files that prepare leaves beside its outputs (empty, unlocked)."""
    return sorted(p.name for p in directory.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))


def row_ids(cache_dir: Path) -> list[int]:
    """Recover the source row number i of every cache row from I1 = log(i + 1)."""
    c = open_cache(cache_dir)
    return [round(math.expm1(float(x))) for x in c.dense[:, 0]]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nasrec.cli", "prepare", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def assert_cli_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, exactly one stderr line (besides log lines) with the CLI prefix and every needle, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.strip("\n").split("\n") if not LOG_LINE.match(ln)]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(CLI_PREFIX), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def chunks_of(path: Path, chunk_bytes: int = CHUNK) -> list[list[int]]:
    """Line numbers of each chunk the reader makes of a file (bad field counts silently dropped)."""
    reader = TextReader(criteo_schema(), chunk_bytes=chunk_bytes, on_bad_line=lambda e: None)
    return [c.lines.tolist() for c in reader.read(path, SourceInfo(str(path), 0, ""))]


# -- one malformed row: fail mode --------------------------------------------------------------------
# (case id, bad line text for row BAD_LINE - 1, expected column or None, words the reason must contain)
BAD_ROWS: list[tuple[str, Callable[[int], str], str | None, str]] = [
    ("too_few_fields", lambda i: "\t".join(criteo_fields(i)[:-1]), None, "expected 40 fields, found 39"),
    ("too_many_fields", lambda i: criteo_line(i) + "\t0000beef", None, "expected 40 fields, found 41"),
    ("far_too_many_fields", lambda i: criteo_line(i) + "\t" + criteo_line(i), None, "found 80"),
    ("only_label", lambda i: "1", None, "expected 40 fields, found 1"),
    ("empty_line", lambda i: "", None, "expected 40 fields, found 0"),
    ("dense_not_numeric", lambda i: replace_field(i, 5, "abc"), "I5", "not a number"),
    ("dense_hex_text", lambda i: replace_field(i, 13, "0x10"), "I13", "not a number"),
    ("label_two", lambda i: replace_field(i, 0, "2"), "label", "0 or 1"),
    ("label_minus_one", lambda i: replace_field(i, 0, "-1"), "label", "0 or 1"),
    ("label_text", lambda i: replace_field(i, 0, "yes"), "label", "label"),
    ("label_missing", lambda i: replace_field(i, 0, ""), "label", "label"),
    ("hex_invalid_digits", lambda i: replace_field(i, 20, "zzzzzzzz"), "C7", "hexadecimal"),
    ("hex_negative", lambda i: replace_field(i, 39, "-1"), "C26", "hexadecimal"),
    ("hex_above_64_bits", lambda i: replace_field(i, 14, "1" + "0" * 16), "C1", "hexadecimal"),
    ("dense_nan", lambda i: replace_field(i, 3, "nan"), "I3", "NaN or infinite"),
    ("dense_NaN", lambda i: replace_field(i, 3, "NaN"), "I3", "NaN or infinite"),
    ("dense_inf", lambda i: replace_field(i, 7, "inf"), "I7", "NaN or infinite"),
    ("dense_minus_inf", lambda i: replace_field(i, 7, "-inf"), "I7", "NaN or infinite"),
    ("dense_overflow", lambda i: replace_field(i, 1, "1e999"), "I1", "NaN or infinite"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("bad", "column", "reason"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_stops_prepare_with_its_location(
    tmp_path: Path, bad: Callable[[int], str], column: str | None, reason: str
) -> None:
    lines = good_lines()
    lines[BAD_LINE - 1] = bad(BAD_LINE - 1)
    inp = write_lines(tmp_path / "day_0.tsv", lines)
    assert len("\n".join(lines[: BAD_LINE - 1]).encode()) > 10 * CHUNK  # the bad row is in a later chunk
    out = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, out))
    err = info.value
    assert isinstance(err, NasrecError)
    assert err.file == str(inp)
    assert err.line == BAD_LINE
    assert err.column == column
    assert reason in err.reason
    msg = str(err)
    assert "\n" not in msg
    assert str(inp) in msg and f"line {BAD_LINE}" in msg
    if column is not None:
        assert f"column {column}" in msg
    assert_nothing_written(out)


def test_vocabulary_refuses_the_id_reserved_for_missing_values(tmp_path: Path) -> None:
    lines = good_lines()
    lines[BAD_LINE - 1] = replace_field(BAD_LINE - 1, 14, "8000000000000000")  # 2^63: -2^63 as a signed id
    inp = write_lines(tmp_path / "in.tsv", lines)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache", encoding="vocab"))
    assert (info.value.line, info.value.column) == (BAD_LINE, "C1")
    assert "reserved for missing values" in info.value.reason
    assert_nothing_written(tmp_path / "cache")
    prepare(cfg(inp, tmp_path / "hashed", encoding="hash"))  # hashing has no such marker: the id is fine


def test_first_of_several_bad_rows_is_reported(tmp_path: Path) -> None:
    lines = good_lines()
    lines[30] = replace_field(30, 0, "7")
    lines[17] = replace_field(17, 9, "x")
    lines[35] = ""
    inp = write_lines(tmp_path / "in.tsv", lines)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache"))
    assert (info.value.line, info.value.column) == (18, "I9")
    assert_nothing_written(tmp_path / "cache")


def test_bad_row_in_second_file_names_that_file(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.tsv", good_lines(20))
    lines = [criteo_line(i) for i in range(20, 40)]
    lines[4] = replace_field(24, 30, "xyz")
    b = write_lines(tmp_path / "b.tsv", lines)
    with pytest.raises(DataError) as info:
        prepare(cfg([a, b], tmp_path / "cache"))
    assert (info.value.file, info.value.line, info.value.column) == (str(b), 5, "C17")
    assert_nothing_written(tmp_path / "cache")


def test_line_numbers_count_a_skipped_header(tmp_path: Path) -> None:
    """Avazu files may carry a header line: a bad row's line number still counts it."""
    header = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
    header += "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    row = "1000009418151094273,{label},14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,"
    row += "a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79"
    lines = [header] + [row.format(label=i % 2) for i in range(30)]
    lines[12] = row.format(label=3)  # physical line 13
    inp = write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache", format="avazu"))
    assert (info.value.line, info.value.column) == (13, "click")


def test_quoted_csv_bad_rows_are_located(tmp_path: Path) -> None:
    """A user CSV with quoted fields: field counts follow the quotes, line numbers count the header."""
    schema = tmp_path / "s.yaml"
    schema.write_text("label: y\ndense: [x]\nsparse: [city]\n")
    rows = [f'{i % 2},{i},"City {i}, ST"' for i in range(30)]
    good = ["y,x,city", *rows]
    short = list(good)
    short[20] = '1,"5"'  # line 21: two fields
    inp = write_lines(tmp_path / "short.csv", short)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "c1", format="schema", schema=str(schema), chunk_bytes=64))
    assert (info.value.line, info.value.column) == (21, None)
    assert "expected 3 fields, found 2" in str(info.value)
    bad_value = list(good)
    bad_value[25] = '0,"twelve","Town, ST"'  # line 26
    inp = write_lines(tmp_path / "value.csv", bad_value)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "c2", format="schema", schema=str(schema), chunk_bytes=64))
    assert (info.value.line, info.value.column) == (26, "x")
    for out in ("c1", "c2"):
        assert_nothing_written(tmp_path / out)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad", "line", "words"),
    [
        ('1,3,"unclosed', 31, "spanning several lines"),
        ('1,3,"two\nlines"', 31, "spanning several lines"),
        ('1,3,"unclosed', 12, "spanning several lines"),
        ("1,3,x\ry", 12, "malformed CSV"),
    ],
    ids=["unclosed_quote_last_line", "quoted_newline_last", "unclosed_quote_mid_file", "lone_carriage_return"],
)
def test_quoted_csv_broken_quoting_is_located(tmp_path: Path, bad: str, line: int, words: str) -> None:
    schema = _schema(tmp_path / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    lines = ["y,x,city", *[f'{i % 2},{i},"City {i}, ST"' for i in range(30)]]
    lines.insert(line - 1, bad)
    inp = write_lines(tmp_path / "in.csv", lines)
    for chunk_bytes in (64, 1 << 20):
        out = tmp_path / f"c{chunk_bytes}"
        with pytest.raises(DataError) as info:
            prepare(cfg(inp, out, format="schema", schema=str(schema), chunk_bytes=chunk_bytes))
        assert info.value.line == line, (chunk_bytes, str(info.value))
        if line < 31:
            assert words in info.value.reason
        assert_nothing_written(out)
    res = cli("--format", "schema", "--schema", str(schema), "--input", str(inp), "--out", str(tmp_path / "cli"))
    assert_cli_error(res, str(inp), f"line {line}")


def test_csv_header_with_byte_order_mark_or_duplicate_names(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    rows = [f"{i % 2},{i},c{i % 3}" for i in range(20)]
    plain = write_lines(tmp_path / "plain.csv", ["y,x,city", *rows])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    prepare(cfg(plain, tmp_path / "plain", format="schema", schema=str(schema)))
    prepare(cfg(bom, tmp_path / "bom", format="schema", schema=str(schema)))
    assert row_ids(tmp_path / "bom") == row_ids(tmp_path / "plain") == list(range(20))
    np.testing.assert_array_equal(open_cache(tmp_path / "bom").sparse, open_cache(tmp_path / "plain").sparse)
    dup = write_lines(tmp_path / "dup.csv", ["y,x,city,x", *[r + ",1" for r in rows]])
    with pytest.raises(NasrecError, match="more than once"):
        prepare(cfg(dup, tmp_path / "dup", format="schema", schema=str(schema)))
    assert_nothing_written(tmp_path / "dup")


def test_invalid_utf8_is_a_located_data_error(tmp_path: Path) -> None:
    lines = [line.encode() for line in good_lines()]
    lines[BAD_LINE - 1] = replace_field(BAD_LINE - 1, 20, "abcd").encode() + b"\xff\xfe"
    inp = tmp_path / "in.tsv"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache"))
    assert info.value.line == BAD_LINE
    assert_nothing_written(tmp_path / "cache")
    res = prepare(cfg(inp, tmp_path / "skip", on_error="skip", max_bad_fraction=0.05))
    assert res.skipped == 1
    assert row_ids(tmp_path / "skip") == [i for i in range(N_ROWS) if i != BAD_LINE - 1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "column"),
    [
        ("too_few_fields", None),
        ("empty_line", None),
        ("dense_not_numeric", "I5"),
        ("label_two", "label"),
        ("hex_invalid_digits", "C7"),
        ("dense_inf", "I7"),
    ],
)
def test_cli_bad_row_is_one_line_exit_2(tmp_path: Path, case: str, column: str | None) -> None:
    bad = dict((c[0], c[1]) for c in BAD_ROWS)[case]
    lines = good_lines()
    lines[BAD_LINE - 1] = bad(BAD_LINE - 1)
    inp = write_lines(tmp_path / "day_0.tsv", lines)
    out = tmp_path / "cache"
    res = cli("--format", "criteo", "--split", "sequential", "--input", str(inp), "--out", str(out))
    line = assert_cli_error(res, str(inp), f"line {BAD_LINE}")
    if column is not None:
        assert f"column {column}" in line
    assert_nothing_written(out)


# -- skip mode ---------------------------------------------------------------------------------------
def _file_with_bad_rows(path: Path) -> tuple[Path, dict[int, str | None]]:
    """40 rows with bad ones grouped in one chunk (lines 5-7) and spread across later chunks.

    Returns the path and {bad line: expected column (None for field-count errors)}.
    """
    lines = good_lines()
    bad = {
        5: (replace_field(4, 0, "5"), "label"),
        6: ("", None),
        7: (replace_field(6, 26, "g0000000"), "C13"),
        19: ("\t".join(criteo_fields(18)[:20]), None),
        27: (replace_field(26, 4, "inf"), "I4"),
        28: (criteo_line(27) + "\t", None),
        40: (replace_field(39, 2, "1.5.2"), "I2"),
    }
    for line, (text, _) in bad.items():
        lines[line - 1] = text
    return write_lines(path, lines), {line: col for line, (_, col) in bad.items()}


def _check_skipped(res: PrepareResult, out: Path, inp: Path, bad: dict[int, str | None]) -> None:
    meta = json.loads((out / "meta.json").read_text())
    assert res.skipped == len(bad) == meta["skipped"]["count"]
    examples = meta["skipped"]["examples"]
    # field-count errors (reader) and value errors (parser) of one chunk may come in either order
    assert sorted((e["line"], e["column"]) for e in examples) == sorted(bad.items())
    for e in examples:
        assert set(e) >= {"file", "line", "column", "reason"}
        assert e["file"] == str(inp)
        assert e["reason"]
    expected = [i for i in range(N_ROWS) if i + 1 not in bad]
    assert row_ids(out) == expected
    c = open_cache(out)
    assert c.rows == len(expected)
    assert c.label.tolist() == [float(criteo_fields(i)[0]) for i in expected]
    assert c.sparse[:, 0].tolist() == [i % (CRITEO_TABLE_SIZES[0] - 1) + 1 for i in expected]
    assert sum(meta["split"]["rows"].values()) == len(expected)


@pytest.mark.parametrize("chunk_bytes", [CHUNK, 1100, 1 << 20])
def test_skip_mode_drops_exactly_the_bad_rows(tmp_path: Path, chunk_bytes: int) -> None:
    inp, bad = _file_with_bad_rows(tmp_path / "in.tsv")
    if chunk_bytes == 1100:  # the precondition of this case: several bad rows share a chunk
        chunks = chunks_of(inp, chunk_bytes)
        same = next(c for c in chunks if 5 in c)
        assert 7 in same and len(chunks) > 3
    out = tmp_path / "cache"
    res = prepare(cfg(inp, out, on_error="skip", chunk_bytes=chunk_bytes, max_bad_fraction=1.0))
    _check_skipped(res, out, inp, bad)
    assert_nothing_written(tmp_path / "no-such-output")
    assert [p.name for p in tmp_path.glob(".cache.*")] == [".cache.lock"]


def test_skip_mode_examples_are_capped_but_counted(tmp_path: Path) -> None:
    n = 600
    lines = [replace_field(i, 0, "9") if i % 3 == 0 else criteo_line(i) for i in range(n)]
    inp = write_lines(tmp_path / "in.tsv", lines)
    res = prepare(cfg(inp, tmp_path / "cache", on_error="skip", chunk_bytes=4096, max_bad_fraction=0.5))
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert res.skipped == meta["skipped"]["count"] == 200
    examples = meta["skipped"]["examples"]
    assert 0 < len(examples) <= 200  # the count is exact; the examples may be capped
    assert [e["line"] for e in examples] == [3 * k + 1 for k in range(len(examples))]
    assert row_ids(tmp_path / "cache") == [i for i in range(n) if i % 3]


@pytest.mark.slow
def test_cli_skip_mode_reports_and_records(tmp_path: Path) -> None:
    inp, bad = _file_with_bad_rows(tmp_path / "in.tsv")
    out = tmp_path / "cache"
    res = cli(
        "--format",
        "criteo",
        "--split",
        "sequential",
        "--on-error",
        "skip",
        "--max-bad-fraction",
        "0.2",
        "--input",
        str(inp),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"skipped {len(bad)} bad rows of {N_ROWS} read (17.50%):" in res.stdout
    # one `file:line:column: reason` line per bad row (`file:line: reason` for a field-count error)
    shown = re.findall(r"^    (.+):(\d+):(?:(\w+):)? (.+)$", res.stdout, re.MULTILINE)
    assert sorted((int(line), col or None) for _, line, col, _ in shown) == sorted(bad.items()), res.stdout
    assert all(f == str(inp) and reason for f, _, _, reason in shown)
    assert "{" not in res.stdout and "{" not in res.stderr  # no Python dicts
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"]["count"] == len(bad) and meta["skipped"]["rows_read"] == N_ROWS
    assert sorted(e["line"] for e in meta["skipped"]["examples"]) == sorted(bad)
    assert row_ids(out) == [i for i in range(N_ROWS) if i + 1 not in bad]


@pytest.mark.slow
def test_cli_skip_mode_shows_the_first_ten_bad_rows_and_counts_the_rest(tmp_path: Path) -> None:
    n = 600
    inp = write_lines(
        tmp_path / "in.tsv", [replace_field(i, 0, "9") if i % 3 == 0 else criteo_line(i) for i in range(n)]
    )
    res = cli(
        "--format",
        "criteo",
        "--on-error",
        "skip",
        "--max-bad-fraction",
        "1",
        "--input",
        str(inp),
        "--out",
        str(tmp_path / "cache"),
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if "skipped 200 bad rows of 600 read (33.33%)" in ln)
    shown = lines[at + 1 : at + 12]
    assert shown[:10] == [f"    {inp}:{3 * k + 1}:label: label must be 0 or 1: '9'" for k in range(10)]
    assert shown[10] == "    ... and 190 more"


@pytest.mark.slow
def test_skip_mode_fails_when_too_many_rows_are_bad(tmp_path: Path) -> None:
    """The default --max-bad-fraction (0.01) refuses 7 bad rows of 40; the limit is checked before anything is written."""
    inp, _ = _file_with_bad_rows(tmp_path / "in.tsv")
    out = tmp_path / "cache"
    with pytest.raises(NasrecError) as info:
        prepare(cfg(inp, out, on_error="skip"))
    msg = str(info.value)
    assert "7 of 40 rows read (17.50%) are malformed" in msg and "--max-bad-fraction of 0.01" in msg
    assert f"(first: {inp}:5:label: label must be 0 or 1" in msg
    assert_nothing_written(out)
    with pytest.raises(NasrecError, match="7 of 40 rows read"):
        prepare(cfg(inp, out, on_error="skip", max_bad_fraction=0.17))
    assert prepare(cfg(inp, out, on_error="skip", max_bad_fraction=0.175)).skipped == 7  # exactly at the limit
    res = cli("--format", "criteo", "--on-error", "skip", "--input", str(inp), "--out", str(tmp_path / "cli"))
    assert_cli_error(res, str(inp), "7 of 40 rows read", "--max-bad-fraction")
    assert_nothing_written(tmp_path / "cli")
    with pytest.raises(NasrecError, match="--max-bad-fraction must be between 0 and 1"):
        prepare(cfg(inp, out, on_error="skip", max_bad_fraction=1.5))


@pytest.mark.slow
def test_skip_mode_with_every_row_bad_is_an_error(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.tsv", [replace_field(i, 0, "x") for i in range(10)])
    with pytest.raises(NasrecError, match="no data rows left after skipping bad rows: all 10 rows read are malformed"):
        prepare(cfg(inp, tmp_path / "cache", on_error="skip", max_bad_fraction=1.0))
    assert_nothing_written(tmp_path / "cache")
    res = cli(
        "--format",
        "criteo",
        "--on-error",
        "skip",
        "--max-bad-fraction",
        "1",
        "--input",
        str(inp),
        "--out",
        str(tmp_path / "cli"),
    )
    assert_cli_error(res, str(inp), "all 10 rows read are malformed", f"{inp}:1:label:")


# -- line endings ------------------------------------------------------------------------------------
def _arrays(out: Path) -> dict[str, np.ndarray]:
    c = open_cache(out)
    d = {"dense": np.array(c.dense), "sparse": np.array(c.sparse), "label": np.array(c.label)}
    d.update({f"split_{s}": np.array(c.split_index(s)) for s in c.split_names})
    return d


@pytest.mark.slow
@pytest.mark.parametrize(("newline", "final"), [("\r\n", True), ("\n", False), ("\r\n", False)])
def test_line_endings_and_missing_final_newline_parse_the_same(tmp_path: Path, newline: str, final: bool) -> None:
    lines = good_lines()
    base = write_lines(tmp_path / "base.tsv", lines)
    prepare(cfg(base, tmp_path / "base"))
    expected = _arrays(tmp_path / "base")
    assert row_ids(tmp_path / "base") == list(range(N_ROWS))
    inp = write_lines(tmp_path / "other.tsv", lines, newline=newline, final_newline=final)
    data = inp.read_bytes()
    # read blocks sized so that at least one "\r\n" is cut between two blocks
    sizes = [CHUNK, 1000, *([data.index(b"\r\n") + 1] if newline == "\r\n" else [])]
    for k, size in enumerate(sizes):
        prepare(cfg(inp, tmp_path / f"c{k}", chunk_bytes=size))
        got = _arrays(tmp_path / f"c{k}")
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{name} (chunk {size})")


def test_crlf_bad_row_has_the_same_line_number(tmp_path: Path) -> None:
    lines = good_lines()
    lines[BAD_LINE - 1] = replace_field(BAD_LINE - 1, 2, "oops")
    inp = write_lines(tmp_path / "in.tsv", lines, newline="\r\n")
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache"))
    assert (info.value.line, info.value.column) == (BAD_LINE, "I2")


def test_single_row_without_newline(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "one.tsv", [criteo_line(7)], final_newline=False)
    prepare(cfg(inp, tmp_path / "cache", ratios=(1.0, 0.0, 0.0)))
    assert row_ids(tmp_path / "cache") == [7]


def test_line_longer_than_a_read_block(tmp_path: Path) -> None:
    lines = good_lines(12)
    inp = write_lines(tmp_path / "in.tsv", lines)
    prepare(cfg(inp, tmp_path / "cache", chunk_bytes=16))
    assert row_ids(tmp_path / "cache") == list(range(12))


@pytest.mark.slow
@pytest.mark.parametrize("final", [True, False])
def test_cr_only_line_endings_parse_like_lf(tmp_path: Path, final: bool) -> None:
    """Classic Mac OS files end lines with a lone CR: read as lines, with the same line numbers."""
    prepare(cfg(write_lines(tmp_path / "base.tsv", good_lines()), tmp_path / "base"))
    expected = _arrays(tmp_path / "base")
    inp = write_lines(tmp_path / "mac.tsv", good_lines(), newline="\r", final_newline=final)
    for k, size in enumerate([CHUNK, 1000, 1 << 20]):
        prepare(cfg(inp, tmp_path / f"c{k}", chunk_bytes=size))
        got = _arrays(tmp_path / f"c{k}")
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{name} (chunk {size})")
    lines = good_lines()
    lines[BAD_LINE - 1] = replace_field(BAD_LINE - 1, 2, "oops")
    bad = write_lines(tmp_path / "bad.tsv", lines, newline="\r")
    with pytest.raises(DataError) as info:
        prepare(cfg(bad, tmp_path / "bad"))
    assert (info.value.line, info.value.column) == (BAD_LINE, "I2")
    res = cli("--format", "criteo", "--split", "sequential", "--input", str(inp), "--out", str(tmp_path / "cli"))
    assert res.returncode == 0, res.stderr
    assert row_ids(tmp_path / "cli") == list(range(N_ROWS))


def test_cr_only_csv_with_header(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    rows = ["y,x,city", *[f'{i % 2},{i},"City {i}, ST"' for i in range(30)]]
    lf = write_lines(tmp_path / "lf.csv", rows)
    cr = write_lines(tmp_path / "cr.csv", rows, newline="\r")
    a = prepare(cfg(lf, tmp_path / "lf", format="schema", schema=str(schema), chunk_bytes=64))
    b = prepare(cfg(cr, tmp_path / "cr", format="schema", schema=str(schema), chunk_bytes=64))
    assert a.rows == b.rows
    for name, arr in _arrays(tmp_path / "lf").items():
        np.testing.assert_array_equal(_arrays(tmp_path / "cr")[name], arr)


@pytest.mark.slow
def test_lone_carriage_return_in_a_header_is_a_located_error(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    inp = write_lines(tmp_path / "in.csv", ["y,x\rz,city", *[f"{i % 2},{i},c{i}" for i in range(20)]])
    res = cli("--format", "schema", "--schema", str(schema), "--input", str(inp), "--out", str(tmp_path / "c"))
    assert_cli_error(res, str(inp), "line 1", "header")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cut", "words"),
    [(lambda t: t[: t.rfind("\t") + 1], "its last field is empty"), (lambda t: t[: t.rfind("\t")], "39 of 40 fields")],
    ids=["last_value_cut", "last_field_cut"],
)
def test_file_cut_in_its_last_line_is_flagged(tmp_path: Path, cut: Callable[[str], str], words: str) -> None:
    """A truncated copy whose cut falls in the last line must not turn the lost value into a missing one."""
    inp = tmp_path / "cut.tsv"
    inp.write_text(cut("\n".join(good_lines())))
    out = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, out))
    assert (info.value.file, info.value.line) == (str(inp), N_ROWS)
    assert "no final newline" in info.value.reason and words in info.value.reason and "truncated" in info.value.reason
    assert_nothing_written(out)
    res = prepare(cfg(inp, out, on_error="skip", max_bad_fraction=0.05))
    assert res.skipped == 1 and row_ids(out) == list(range(N_ROWS - 1))
    assert "no final newline" in json.loads((out / "meta.json").read_text())["skipped"]["examples"][0]["reason"]
    assert_cli_error(cli("--format", "criteo", "--input", str(inp), "--out", str(tmp_path / "cli")), f"line {N_ROWS}")


def test_last_line_without_newline_but_whole_is_read(tmp_path: Path) -> None:
    """Only a last line that also looks cut short is flagged; a whole one is data (and so is a CRLF file cut
    between its final CR and LF)."""
    lines = good_lines()
    inp = write_lines(tmp_path / "whole.tsv", lines, final_newline=False)
    prepare(cfg(inp, tmp_path / "a"))
    assert row_ids(tmp_path / "a") == list(range(N_ROWS))
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(("\r\n".join(lines) + "\r").encode())
    prepare(cfg(crlf, tmp_path / "b"))
    for name, arr in _arrays(tmp_path / "a").items():
        np.testing.assert_array_equal(_arrays(tmp_path / "b")[name], arr)


# -- compressed inputs -------------------------------------------------------------------------------
def _compressed(path: Path, kind: str, data: bytes) -> Path:
    import bz2
    import gzip
    import lzma

    pack = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind]
    path.write_bytes(pack(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_compressed_input_is_read_by_its_magic_bytes(tmp_path: Path, kind: str) -> None:
    import hashlib

    plain = write_lines(tmp_path / "plain.tsv", good_lines())
    prepare(cfg(plain, tmp_path / "plain"))
    expected = _arrays(tmp_path / "plain")
    for name in ("day_0.tsv.gz", "day_0.tsv"):  # the name does not matter, the first bytes do
        inp = _compressed(tmp_path / name, kind, plain.read_bytes())
        for k, size in enumerate([CHUNK, 1 << 20]):
            out = tmp_path / f"{name}-{k}"
            res = prepare(cfg(inp, out, chunk_bytes=size))
            for a, arr in _arrays(out).items():
                np.testing.assert_array_equal(arr, expected[a], err_msg=f"{a} ({name}, chunk {size})")
            (source,) = res.meta["sources"]
            assert source["compression"] == kind and source["rows"] == N_ROWS
            assert source["sha256"] == hashlib.sha256(inp.read_bytes()).hexdigest()  # of the file on disk
            assert source["bytes"] == inp.stat().st_size
    named_gz = tmp_path / "not_really.gz"  # plain text with a .gz name is read as text
    named_gz.write_bytes(plain.read_bytes())
    prepare(cfg(named_gz, tmp_path / "named"))
    assert row_ids(tmp_path / "named") == list(range(N_ROWS))


def test_compressed_bad_row_is_located(tmp_path: Path) -> None:
    lines = good_lines()
    lines[BAD_LINE - 1] = replace_field(BAD_LINE - 1, 5, "abc")
    inp = _compressed(tmp_path / "in.tsv.gz", "gzip", ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache"))
    assert (info.value.file, info.value.line, info.value.column) == (str(inp), BAD_LINE, "I5")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_truncated_or_corrupt_compressed_input_is_one_line(tmp_path: Path, kind: str) -> None:
    data = _compressed(tmp_path / "whole", kind, ("\n".join(good_lines(400)) + "\n").encode()).read_bytes()
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as info:
        prepare(cfg(cut, tmp_path / "c1"))
    assert str(cut) in str(info.value) and "truncated or corrupt" in str(info.value) and "\n" not in str(info.value)
    assert_nothing_written(tmp_path / "c1")
    assert_cli_error(cli("--format", "criteo", "--input", str(cut), "--out", str(tmp_path / "c2")), str(cut), kind)
    garbled = bytearray(data)
    for i in range(len(garbled) // 3, len(garbled) // 3 + 64):
        garbled[i] ^= 0x5A
    bad = tmp_path / "garbled.tsv.gz"
    bad.write_bytes(bytes(garbled))
    assert_cli_error(cli("--format", "criteo", "--input", str(bad), "--out", str(tmp_path / "c3")), str(bad))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("magic", "words"), [(b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip archive")], ids=["zstd", "zip"]
)
def test_formats_that_cannot_be_streamed_are_one_line(tmp_path: Path, magic: bytes, words: str) -> None:
    inp = tmp_path / "data.tsv"
    inp.write_bytes(magic + b"\0" * 200)
    res = cli("--format", "criteo", "--input", str(inp), "--out", str(tmp_path / "cache"))
    assert_cli_error(res, str(inp), words)
    assert_nothing_written(tmp_path / "cache")


def test_parquet_is_known_by_its_magic_bytes(tmp_path: Path) -> None:
    import polars as pl

    schema = _schema(tmp_path / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    frame = pl.DataFrame(
        {
            "y": [str(i % 2) for i in range(20)],
            "x": [str(i) for i in range(20)],
            "city": [f"c{i % 3}" for i in range(20)],
        }
    )
    frame.write_parquet(tmp_path / "data.parquet")
    shutil.copy(tmp_path / "data.parquet", tmp_path / "data.dat")
    a = prepare(cfg(tmp_path / "data.parquet", tmp_path / "a", format="schema", schema=str(schema)))
    b = prepare(cfg(tmp_path / "data.dat", tmp_path / "b", format="schema", schema=str(schema)))
    assert a.rows == b.rows and sum(b.rows.values()) == 20
    for name, arr in _arrays(tmp_path / "a").items():
        np.testing.assert_array_equal(_arrays(tmp_path / "b")[name], arr)


# -- one writer per output ---------------------------------------------------------------------------
@pytest.mark.slow
def test_prepare_fails_at_once_while_another_writer_holds_the_output(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.tsv", good_lines())
    out = tmp_path / "cache"
    holder = (
        "import sys, time\n"
        "from nasrec.rundir import exclusive\n"
        "with exclusive(sys.argv[1], 'cache', beside=True):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(NasrecError) as info:
            prepare(cfg(inp, out))
        assert time.monotonic() - t0 < 5  # at once, not after reading the input
        msg = str(info.value)
        assert "\n" not in msg and str(out) in msg and "in use by" in msg and f"pid {proc.pid}" in msg
        assert not out.exists()
        res = cli("--format", "criteo", "--input", str(inp), "--out", str(out))
        assert_cli_error(res, str(out), "in use by", f"pid {proc.pid}")
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    res2 = prepare(cfg(inp, out))  # the holder is gone: its lock went with it
    assert sum(res2.rows.values()) == N_ROWS


# -- bad files, schemas and options ------------------------------------------------------------------
def _csv_with_header(path: Path) -> Path:
    return write_lines(path, ["y,x,city"] + [f"{i % 2},{i},c{i % 3}" for i in range(20)])


def _schema(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (case id, builder(tmp_path) -> (PrepareConfig kwargs, CLI args, substrings of the message))
FileCase = Callable[[Path], tuple[dict, list[str], list[str]]]


def _missing_file(t: Path) -> tuple[dict, list[str], list[str]]:
    p = t / "nope.tsv"
    return {"inputs": (str(p),)}, ["--format", "criteo", "--input", str(p)], [str(p), "no such file"]


def _missing_second_file(t: Path) -> tuple[dict, list[str], list[str]]:
    a = write_lines(t / "a.tsv", good_lines(5))
    p = t / "b.tsv"
    return {"inputs": (str(a), str(p))}, ["--format", "criteo", "--input", str(a), str(p)], [str(p), "no such file"]


def _empty_file(t: Path) -> tuple[dict, list[str], list[str]]:
    p = t / "empty.tsv"
    p.write_bytes(b"")
    return {"inputs": (str(p),)}, ["--format", "criteo", "--input", str(p)], [str(p), "empty"]


def _directory_input(t: Path) -> tuple[dict, list[str], list[str]]:
    p = t / "adir"
    p.mkdir()
    return {"inputs": (str(p),)}, ["--format", "criteo", "--input", str(p)], [str(p), "not a file"]


def _wrong_separator(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "commas.tsv", [line.replace("\t", ",") for line in good_lines(10)])
    return {"inputs": (str(p),)}, ["--format", "criteo", "--input", str(p)], [str(p), "line 1", "expected 40 fields"]


def _header_lacks_column(t: Path) -> tuple[dict, list[str], list[str]]:
    p = _csv_with_header(t / "data.csv")
    s = _schema(t / "s.yaml", "label: y\ndense: [x]\nsparse: [town]\n")
    return (
        {"inputs": (str(p),), "format": "schema", "schema": str(s)},
        ["--format", "schema", "--schema", str(s), "--input", str(p)],
        [str(p), "town"],
    )


def _csv_schema_on_tsv(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "data.tsv", ["y\tx\tcity"] + [f"{i % 2}\t{i}\tc{i}" for i in range(20)])
    s = _schema(t / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    return (
        {"inputs": (str(p),), "format": "schema", "schema": str(s)},
        ["--format", "schema", "--schema", str(s), "--input", str(p)],
        [str(p), "header"],
    )


def _headerless_wrong_columns(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "data.csv", [f"{i % 2},{i},c{i},extra" for i in range(20)])
    s = _schema(t / "s.yaml", "label: y\nheader: false\ncolumns: [y, x, city]\ndense: [x]\nsparse: [city]\n")
    return (
        {"inputs": (str(p),), "format": "schema", "schema": str(s)},
        ["--format", "schema", "--schema", str(s), "--input", str(p)],
        [str(p), "line 1", "expected 3 fields, found 4"],
    )


def _parquet_lacks_column(t: Path) -> tuple[dict, list[str], list[str]]:
    import polars as pl

    p = t / "data.parquet"
    pl.DataFrame({"y": ["0", "1"] * 10, "x": [str(i) for i in range(20)]}).write_parquet(p)
    s = _schema(t / "s.yaml", "label: y\nfile_type: parquet\ndense: [x]\nsparse: [city]\n")
    return (
        {"inputs": (str(p),), "format": "schema", "schema": str(s)},
        ["--format", "schema", "--schema", str(s), "--input", str(p)],
        [str(p), "city"],
    )


def _header_only(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "data.csv", ["y,x,city"])
    s = _schema(t / "s.yaml", "label: y\ndense: [x]\nsparse: [city]\n")
    return (
        {"inputs": (str(p),), "format": "schema", "schema": str(s)},
        ["--format", "schema", "--schema", str(s), "--input", str(p)],
        [str(p), "no data rows"],
    )


def _schema_case(name: str, text: str, needle: str) -> FileCase:
    def build(t: Path) -> tuple[dict, list[str], list[str]]:
        p = _csv_with_header(t / "data.csv")
        s = t / name
        if text:
            s.write_text(text)
        return (
            {"inputs": (str(p),), "format": "schema", "schema": str(s)},
            ["--format", "schema", "--schema", str(s), "--input", str(p)],
            [str(s), needle],
        )

    return build


def _kdd_profile_missing(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "training.txt", ["0\t1\t5\t6\t7\t1\t1\t8\t9\t10\t11\t12"] * 12)
    prof = t / "userid_profile.txt"
    return (
        {"inputs": (str(p),), "format": "kdd12", "kdd_profile": str(prof)},
        ["--format", "kdd12", "--input", str(p), "--kdd-profile", str(prof)],
        [str(prof)],
    )


def _kdd_profile_absent(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "training.txt", ["0\t1\t5\t6\t7\t1\t1\t8\t9\t10\t11\t12"] * 12)
    return {"inputs": (str(p),), "format": "kdd12"}, ["--format", "kdd12", "--input", str(p)], ["userid_profile"]


def _out_below_a_file(t: Path) -> tuple[dict, list[str], list[str]]:
    p = write_lines(t / "in.tsv", good_lines(10))
    return (
        {"inputs": (str(p),), "out": str(p / "cache")},
        ["--format", "criteo", "--input", str(p), "--out", str(p / "cache")],
        [str(p)],
    )


FILE_CASES: dict[str, FileCase] = {
    "missing_file": _missing_file,
    "missing_second_file": _missing_second_file,
    "empty_file": _empty_file,
    "directory_as_input": _directory_input,
    "wrong_separator": _wrong_separator,
    "header_lacks_schema_column": _header_lacks_column,
    "comma_schema_on_tab_file": _csv_schema_on_tsv,
    "headerless_columns_mismatch": _headerless_wrong_columns,
    "parquet_lacks_schema_column": _parquet_lacks_column,
    "header_only": _header_only,
    "schema_unknown_key": _schema_case("s.yaml", "label: y\nseperator: ','\ndense: [x]\n", "seperator"),
    "schema_invalid_yaml": _schema_case("s.yaml", "label: [y\ndense: x\n", "cannot parse"),
    "schema_invalid_json": _schema_case("s.json", '{"label": "y", "dense": ["x"],}', "cannot parse"),
    "schema_missing_label": _schema_case("s.yaml", "dense: [x]\nsparse: [city]\n", "label"),
    "schema_not_a_mapping": _schema_case("s.yaml", "- y\n- x\n", "mapping"),
    "schema_file_missing": _schema_case("nope.yaml", "", "not found"),
    "schema_derive_on_string": _schema_case(
        "s.yaml", "label: y\ndense: [x]\nsparse: [{column: city, derive: weekday}]\n", "kind int"
    ),
    "kdd_profile_file_missing": _kdd_profile_missing,
    "kdd_profile_not_given": _kdd_profile_absent,
    "out_below_a_file": _out_below_a_file,
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_file_or_schema_api(tmp_path: Path, case: str) -> None:
    kw, _, needles = FILE_CASES[case](tmp_path)
    kw.setdefault("out", str(tmp_path / "cache"))
    kw.setdefault("split", "sequential")
    with pytest.raises(NasrecError) as info:
        prepare(PrepareConfig(**kw))
    msg = str(info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    if case != "out_below_a_file":
        assert_nothing_written(Path(kw["out"]))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_file_or_schema_cli(tmp_path: Path, case: str) -> None:
    _, args, needles = FILE_CASES[case](tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "cache")]
    res = cli("--split", "sequential", *args)
    assert_cli_error(res, *needles)
    out = Path(args[args.index("--out") + 1])
    if case != "out_below_a_file":
        assert_nothing_written(out)


@pytest.mark.slow
def test_unknown_format(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.tsv", good_lines(10))
    out = tmp_path / "cache"
    with pytest.raises(NasrecError, match="unknown format 'criteo2'"):
        prepare(cfg(inp, out, format="criteo2"))
    assert_nothing_written(out)
    res = cli("--format", "criteo2", "--input", str(inp), "--out", str(out))
    # argparse rejects it before nasrec runs: usage lines, then one error line
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().split("\n")[-1]
    assert last.startswith(CLI_PREFIX) and "criteo2" in last
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"on_error": "ignore"}, "--on-error"),
        ({"encoding": "onehot"}, "encoding"),
        ({"split": "kfold"}, "split"),
        ({"ratios": (0.5, 0.5, 0.5)}, "ratios"),
        ({"min_count": 0}, "min-count"),
        ({"max_table_size": 2}, "table size"),
        ({"drop_id": True}, "avazu"),
        ({"schema": "s.yaml"}, "--format schema"),
        ({"dense_transform": "sqrt"}, "sqrt"),
    ],
)
def test_bad_options(tmp_path: Path, kw: dict, needle: str) -> None:
    inp = write_lines(tmp_path / "in.tsv", good_lines(10))
    with pytest.raises(NasrecError) as info:
        prepare(cfg(inp, tmp_path / "cache", **kw))
    assert needle in str(info.value)
    assert_nothing_written(tmp_path / "cache")


@pytest.mark.slow
def test_existing_out_is_kept_without_force(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.tsv", good_lines())
    out = tmp_path / "cache"
    prepare(cfg(inp, out))
    before = (out / "meta.json").read_bytes()
    res = cli("--format", "criteo", "--input", str(inp), "--out", str(out))
    assert_cli_error(res, str(out), "--force")
    assert (out / "meta.json").read_bytes() == before
    # a failing --force run leaves the old cache in place
    lines = good_lines()
    lines[3] = ""
    bad = write_lines(tmp_path / "bad.tsv", lines)
    with pytest.raises(DataError):
        prepare(cfg(bad, out, force=True))
    assert (out / "meta.json").read_bytes() == before
    assert listing(tmp_path) == ["bad.tsv", "cache", "in.tsv"]


# -- a killed run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nasrec.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("big") / "synth.tsv", 300_000, seed=3).path


@pytest.mark.slow
def test_killed_run_leaves_no_cache(tmp_path: Path, big_input: Path) -> None:
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "prepare",
        "--no-progress",
        "--format",
        "criteo",
        "--input",
        str(big_input),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(tmp_path.glob(".cache.tmp-*")):
                break
            time.sleep(0.002)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    if rc == -signal.SIGKILL:
        # killed mid-run: there is no cache, at most a temporary sibling
        assert not out.exists()
        assert all(name.startswith(".cache.tmp-") for name in listing(tmp_path))
    else:
        # the run won the race: then the cache must be whole
        assert rc == 0, stderr
        c = open_cache(out)
        assert c.rows == 300_000
        assert sum(len(c.split_index(s)) for s in c.split_names) == 300_000
    # a leftover temporary directory does not stop the next run
    res = prepare(cfg(write_lines(tmp_path / "small.tsv", good_lines()), out, force=True))
    assert sum(res.rows.values()) == N_ROWS
    assert open_cache(out).rows == N_ROWS


@pytest.mark.parametrize("chunk_bytes", [256, 1 << 20])
def test_fail_mode_reports_the_earliest_bad_line(tmp_path: Path, chunk_bytes: int) -> None:
    # a value error followed by a field-count error in the same block: the earlier line is named
    lines = good_lines()
    lines[4] = replace_field(4, 0, "2")  # line 5: label not 0/1
    lines[5] = ""  # line 6: empty line (wrong field count)
    inp = write_lines(tmp_path / "in.tsv", lines)
    with pytest.raises(DataError) as info:
        prepare(cfg(inp, tmp_path / "cache", chunk_bytes=chunk_bytes))
    assert (info.value.line, info.value.column) == (5, "label")
    assert_nothing_written(tmp_path / "cache")


def test_stale_temporary_directory_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.tsv", good_lines())
    stale = tmp_path / ".cache.tmp-999999999-deadbeef"  # no such process
    stale.mkdir()
    (stale / "label.npy").write_bytes(b"partial")
    prepare(cfg(inp, tmp_path / "cache"))
    assert not stale.exists()
    assert (tmp_path / "cache" / "meta.json").is_file()
