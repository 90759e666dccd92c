"""Cache integrity: what `open_cache` checks on every open, the records `prepare` writes for it, and
`nasrec cache verify`. Every damage below is one a real cache meets (a cut copy, an edited meta.json,
a file from another cache, an array written by hand) and must give one line naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import small_synth_cache

from nasrec.data import integrity
from nasrec.data.cache import open_cache
from nasrec.data.integrity import verify_cache
from nasrec.errors import DataError, NasrecError

ROWS = 3000


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vocabulary-encoded cache (with encoder files) made by prepare; tests damage copies of it."""
    _, cache = small_synth_cache(tmp_path_factory.mktemp("integrity"), rows=ROWS, seed=5, split="random")
    return cache


@pytest.fixture
def cache(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine cache with its files' mtimes kept (so its recorded id ranges still apply)."""
    integrity._RANGES_MEMO.clear()
    return Path(shutil.copytree(pristine, tmp_path / "cache"))  # copy2: mtimes preserved


def meta_of(cache: Path) -> dict:
    return json.loads((cache / "meta.json").read_text())


def write_meta(cache: Path, meta: dict) -> None:
    (cache / "meta.json").write_text(json.dumps(meta))


def one_line_error(cache: Path, exc: type[Exception] = DataError) -> str:
    with pytest.raises(exc) as info:
        open_cache(cache)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nasrec.cli", "cache", "verify", *args], capture_output=True, text=True, timeout=120
    )


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("nasrec cache: error:")]


# -- what prepare records -------------------------------------------------------------------------------
def test_prepare_records_every_file_with_its_checksum_and_id_ranges(pristine: Path) -> None:
    meta = meta_of(pristine)
    on_disk = sorted(p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [f for f in on_disk if f != "meta.json"]
    assert any(f.startswith("encoder/") for f in meta["files"]) and "source_line.npy" in meta["files"]
    for rel, rec in meta["files"].items():
        st = (pristine / rel).stat()
        assert (rec["bytes"], rec["mtime_ns"], rec["sha256"]) == (st.st_size, st.st_mtime_ns, sha256(pristine / rel))
    sparse = np.load(pristine / "sparse.npy")
    rec = meta["files"]["sparse.npy"]
    assert rec["column_min"] == sparse.min(axis=0).tolist() and rec["column_max"] == sparse.max(axis=0).tolist()
    assert all(hi < size for hi, size in zip(rec["column_max"], meta["table_sizes"], strict=True))


def test_an_unchanged_cache_opens_without_reading_its_ids(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("the recorded id ranges should have been used")

    monkeypatch.setattr(integrity, "column_ranges", fail)
    c = open_cache(cache)
    assert c.rows == ROWS and c.sparse.shape == (ROWS, len(c.sparse_fields))


# -- damage found on open -------------------------------------------------------------------------------
def _truncate(name: str, nbytes: int = 7) -> Callable[[Path], None]:
    def damage(c: Path) -> None:
        p = c / name
        os.truncate(p, p.stat().st_size - nbytes)

    return damage


def _append(name: str) -> Callable[[Path], None]:
    def damage(c: Path) -> None:
        with open(c / name, "ab") as fh:
            fh.write(b"\0" * 12)

    return damage


def _replace_array(name: str, make: Callable[[np.ndarray], np.ndarray], pickle: bool = False) -> Callable:
    def damage(c: Path) -> None:
        a = make(np.load(c / name))
        np.save(c / name, a, allow_pickle=pickle)

    return damage


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(c: Path) -> None:
        meta = meta_of(c)
        edit(meta)
        write_meta(c, meta)

    return damage


def _drop(*keys: str) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        d = meta
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return edit


def _shrink_table(meta: dict) -> None:
    meta["table_sizes"][2] = 3  # the column's ids go well beyond row 2


def _header_only(c: Path) -> None:
    (c / "label.npy").write_bytes((c / "label.npy").read_bytes()[:60])


# (case, damage, substrings of the one-line message)
DAMAGE: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("truncated_dense", _truncate("dense.npy"), ["dense.npy", "truncated"]),
    ("truncated_sparse", _truncate("sparse.npy", 1), ["sparse.npy", "truncated"]),
    ("truncated_label", _truncate("label.npy", 400), ["label.npy", "truncated"]),
    ("truncated_split", _truncate("splits/val.npy", 8), ["splits/val.npy", "truncated"]),
    ("truncated_header", _header_only, ["label.npy", "not a readable .npy array"]),
    ("empty_file", lambda c: (c / "dense.npy").write_bytes(b""), ["dense.npy", "not a readable .npy array"]),
    ("bytes_appended", _append("sparse.npy"), ["sparse.npy", "12 unexpected bytes"]),
    ("missing_array", lambda c: (c / "sparse.npy").unlink(), ["sparse.npy", "missing"]),
    ("missing_split", lambda c: (c / "splits" / "test.npy").unlink(), ["splits/test.npy", "missing"]),
    (
        "object_dtype",
        _replace_array("label.npy", lambda a: a.astype(object), pickle=True),
        ["label.npy", "Python objects"],
    ),
    (
        "float64_dense",
        _replace_array("dense.npy", lambda a: a.astype(np.float64)),
        ["dense.npy", "float64, expected float32"],
    ),
    ("float_ids", _replace_array("sparse.npy", lambda a: a.astype(np.float32)), ["sparse.npy", "expected an integer"]),
    ("big_endian", _replace_array("dense.npy", lambda a: a.astype(">f4")), ["dense.npy", "byte order"]),
    ("fortran", _replace_array("dense.npy", np.asfortranarray), ["dense.npy", "Fortran"]),
    ("rows_differ", _replace_array("dense.npy", lambda a: a[:-5]), ["dense.npy", f"({ROWS - 5}, 4)", f"{ROWS:,} rows"]),
    ("columns_differ", _replace_array("sparse.npy", lambda a: a[:, :-1]), ["sparse.npy", "6 sparse_fields"]),
    ("split_length", _replace_array("splits/train.npy", lambda a: a[:-1]), ["splits/train.npy", "split 'train'"]),
    ("negative_ids", _replace_array("sparse.npy", lambda a: a - 3), ["sparse.npy", "column", "ids range from -3"]),
    ("shrunken_table", _edit_meta(_shrink_table), ["sparse.npy", "column", "[0, 3)"]),
    ("missing_key_table_sizes", _edit_meta(_drop("table_sizes")), ["meta.json", "missing key 'table_sizes'"]),
    ("missing_key_dense_fields", _edit_meta(_drop("dense_fields")), ["meta.json", "missing key 'dense_fields'"]),
    ("missing_key_sparse_fields", _edit_meta(_drop("sparse_fields")), ["meta.json", "missing key 'sparse_fields'"]),
    ("missing_key_split", _edit_meta(_drop("split")), ["meta.json", "missing key 'split'"]),
    ("missing_key_split_rows", _edit_meta(_drop("split", "rows")), ["meta.json", "missing key 'split.rows'"]),
    ("table_sizes_short", _edit_meta(lambda m: m["table_sizes"].pop()), ["meta.json", "5 entries for 6 sparse_fields"]),
    ("table_size_zero", _edit_meta(lambda m: m["table_sizes"].__setitem__(0, 0)), ["meta.json", "positive integers"]),
    ("rows_wrong", _edit_meta(lambda m: m.__setitem__("rows", ROWS + 1)), ["label.npy", f"{ROWS + 1:,} rows"]),
    ("split_name_escapes", _edit_meta(lambda m: m["split"]["rows"].__setitem__("../x", 1)), ["meta.json", "'../x'"]),
]


@pytest.mark.parametrize(("damage", "needles"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damage_is_one_line_naming_the_file(cache: Path, damage: Callable[[Path], None], needles: list[str]) -> None:
    damage(cache)
    msg = one_line_error(cache)
    for n in needles:
        assert n in msg, (n, msg)
    assert str(cache) in msg


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (_edit_meta(_drop("encoder")), ["meta.json", "missing key 'encoder'"]),
        (_edit_meta(_drop("schema")), ["meta.json", "missing key 'schema'"]),
        (_truncate("encoder/002_C3.npy"), ["encoder/002_C3.npy", "truncated"]),
        (
            _replace_array("encoder/002_C3.npy", lambda a: a.astype(object), pickle=True),
            ["002_C3.npy", "Python objects"],
        ),
        (_replace_array("encoder/002_C3.npy", lambda a: a.astype(np.float64)), ["002_C3.npy", "integer ids"]),
    ],
    ids=["no_encoder", "no_schema", "truncated_vocabulary", "object_vocabulary", "float_vocabulary"],
)
def test_encoder_damage_is_one_line(cache: Path, damage: Callable[[Path], None], needles: list[str]) -> None:
    from nasrec.data.encode import RowEncoder

    damage(cache)
    with pytest.raises(DataError) as info:
        RowEncoder.from_cache(cache)
    msg = str(info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_unreadable_or_foreign_meta_json(cache: Path) -> None:
    (cache / "meta.json").write_text("[1, 2]")
    assert "format version" in one_line_error(cache, NasrecError)
    (cache / "meta.json").write_text('{"format_version": 1,')
    assert "unreadable" in one_line_error(cache, NasrecError)
    (cache / "meta.json").unlink()
    assert "not a nasrec cache" in one_line_error(cache, NasrecError)


def test_ids_rewritten_in_place_are_found_by_their_changed_mtime(cache: Path) -> None:
    """Negative ids would train silently (a negative index reads another table row): refused, column named."""
    s = np.load(cache / "sparse.npy", mmap_mode="r+")
    s[100, 4] = -1
    s.flush()
    del s
    msg = one_line_error(cache)
    name = meta_of(cache)["sparse_fields"][4]
    assert f"column {name}" in msg and "ids range from -1" in msg and "sparse.npy" in msg


def test_a_changed_file_with_its_old_mtime_is_caught_by_verify_only(cache: Path) -> None:
    """The cheap open check trusts size and mtime; `cache verify` reads everything."""
    st = (cache / "sparse.npy").stat()
    s = np.load(cache / "sparse.npy", mmap_mode="r+")
    s[7, 0] = 10**6
    s.flush()
    del s
    os.utime(cache / "sparse.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    open_cache(cache)  # not detected: same size and mtime
    report = verify_cache(cache)
    bad = {c.file: c for c in report.files if c.failed}
    assert set(bad) == {"sparse.npy"} and bad["sparse.npy"].status == "changed"
    assert any("ids range from" in p and "[0, " in p for p in bad["sparse.npy"].problems)


# -- caches without records (older nasrec) and copies ---------------------------------------------------
def _strip_records(cache: Path) -> None:
    meta = meta_of(cache)
    del meta["files"]
    write_meta(cache, meta)


def _count_scans(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = integrity.column_ranges

    def counted(path: Path, layout: integrity.NpyLayout) -> object:
        calls.append(path)
        return real(path, layout)

    monkeypatch.setattr(integrity, "column_ranges", counted)
    return calls


def test_an_older_cache_opens_and_is_left_untouched(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _strip_records(cache)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}
    calls = _count_scans(monkeypatch)
    for _ in range(3):
        assert open_cache(cache).rows == ROWS
    assert len(calls) == 1  # computed on the first open, then remembered in this process
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}
    assert after == before  # nothing written into a cache nasrec did not just make


def test_an_older_cache_with_bad_ids_is_refused(cache: Path) -> None:
    _strip_records(cache)
    meta = meta_of(cache)
    meta["table_sizes"][5] = 2
    write_meta(cache, meta)
    msg = one_line_error(cache)
    assert f"column {meta['sparse_fields'][5]}" in msg and "[0, 2)" in msg


def test_a_copy_without_mtimes_recomputes_the_ranges_once(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    integrity._RANGES_MEMO.clear()
    copy = Path(shutil.copytree(pristine, tmp_path / "copy", copy_function=shutil.copyfile))
    calls = _count_scans(monkeypatch)
    open_cache(copy)
    open_cache(copy)
    assert calls == [copy / "sparse.npy"]


def test_ranges_are_computed_in_bounded_blocks(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sparse = np.load(cache / "sparse.npy")
    monkeypatch.setattr(integrity, "SCAN_BLOCK_BYTES", 1000)  # dozens of blocks, the last one partial
    lo, hi = integrity.column_ranges(cache / "sparse.npy", integrity.npy_layout(cache / "sparse.npy"))
    np.testing.assert_array_equal(lo, sparse.min(0))
    np.testing.assert_array_equal(hi, sparse.max(0))
    files = integrity.record_files(cache)
    assert files["sparse.npy"]["sha256"] == sha256(cache / "sparse.npy")
    assert files["sparse.npy"]["column_max"] == sparse.max(0).tolist()


# -- nasrec cache verify --------------------------------------------------------------------------------
@pytest.mark.slow
def test_verify_a_whole_cache(cache: Path) -> None:
    res = verify_cli(str(cache))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    files = sorted(meta_of(cache)["files"])
    assert len(lines) == len(files) + 1
    for line in lines[:-1]:
        status, name = line.split()[:2]
        assert status == "OK" and name in files, line
    assert lines[-1] == f"{cache}: all {len(files)} files verified, {ROWS:,} rows"
    res = verify_cli(str(cache), "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["ok"] is True and out["rows"] == ROWS and out["checksum"] == "sha256"
    assert {f["file"]: f["sha256"] for f in out["files"]} == {f: sha256(cache / f) for f in files}
    assert all(f["status"] == "ok" and f["problems"] == [] for f in out["files"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "file", "status", "words"),
    [
        (lambda c: _flip_byte(c / "dense.npy"), "dense.npy", "changed", "the file changed"),
        (lambda c: _flip_byte(c / "encoder" / "000_C1.npy"), "encoder/000_C1.npy", "changed", "the file changed"),
        (lambda c: (c / "source_line.npy").unlink(), "source_line.npy", "missing", "recorded in meta.json"),
        (_truncate("splits/val.npy", 8), "splits/val.npy", "changed", "truncated"),
        (lambda c: _poke(c, "label.npy", 9, 2.0), "label.npy", "changed", "1 labels other than 0 or 1"),
        (lambda c: _poke(c, "dense.npy", (3, 1), np.nan), "dense.npy", "changed", "1 NaN or infinite values"),
        (lambda c: _poke(c, "splits/test.npy", 0, 10**9), "splits/test.npy", "changed", "outside [0, 3,000)"),
        (lambda c: _poke(c, "splits/test.npy", 5, 0), "splits/test.npy", "changed", "not strictly ascending"),
    ],
    ids=[
        "byte_flipped",
        "encoder_changed",
        "missing",
        "truncated",
        "label_2",
        "dense_nan",
        "split_range",
        "split_order",
    ],
)
def test_verify_names_each_damaged_file(cache: Path, damage: Callable, file: str, status: str, words: str) -> None:
    damage(cache)
    res = verify_cli(str(cache))
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stdout.splitlines() if ln.split()[1:2] == [file]]
    assert line.startswith(status.upper()) and words in line, line
    assert all(ln.startswith("OK") for ln in res.stdout.splitlines()[:-1] if ln.split()[1] != file)
    (err,) = error_lines(res)
    assert f"1 of {len(meta_of(cache)['files'])} files failed verification: {file} {status}" in err, err
    out = json.loads(verify_cli(str(cache), "--json").stdout)
    assert out["ok"] is False
    assert [(f["file"], f["status"]) for f in out["files"] if f["status"] != "ok"] == [(file, status)]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


def _poke(cache: Path, name: str, index: object, value: object) -> None:
    a = np.load(cache / name, mmap_mode="r+")
    a[index] = value
    a.flush()


@pytest.mark.slow
def test_verify_an_older_cache_and_extra_files(cache: Path) -> None:
    (cache / "notes.txt").write_text("mine")
    res = verify_cli(str(cache))
    assert res.returncode == 0, res.stderr
    assert any(ln.startswith("EXTRA") and "notes.txt" in ln for ln in res.stdout.splitlines())
    _strip_records(cache)
    res = verify_cli(str(cache))
    assert res.returncode == 0, res.stderr
    assert all(ln.startswith("UNRECORDED") for ln in res.stdout.splitlines()[:-1])
    assert "without a recorded checksum" in res.stdout.splitlines()[-1]


@pytest.mark.slow
def test_verify_of_a_broken_meta_or_no_cache_is_a_one_line_error(cache: Path, tmp_path: Path) -> None:
    for target in (tmp_path / "nowhere", tmp_path):
        res = verify_cli(str(target))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        (err,) = error_lines(res)
        assert "not a nasrec cache" in err
    _edit_meta(_drop("sparse_fields"))(cache)
    res = verify_cli(str(cache))
    assert res.returncode == 2
    (err,) = error_lines(res)
    assert "missing key 'sparse_fields'" in err
