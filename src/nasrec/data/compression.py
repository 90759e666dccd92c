"""Compressed input files: which compression a file has (by its first bytes), and streaming it decompressed."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError


def compression_of(path: Path) -> str | None:
    """The compression of a file, "gzip", "bzip2" or "xz" (by its first bytes, not its name); None for plain.

    Formats this reader cannot stream (zstd, zip) are a one-line error naming what to do instead.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        raise NasrecError(
            f"{path}: zstd-compressed, which nasrec cannot stream; decompress it first (zstd -d), "
            "or recompress it with gzip, bzip2 or xz"
        )
    if head[:4] == b"PK\x03\x04":
        raise NasrecError(f"{path}: a zip archive; unpack it first (unzip)")
    return None


class Tap:
    """A binary file that feeds every byte read through it into a digest, and counts them."""

    def __init__(self, fh: Any, digest: Any) -> None:
        self.fh = fh
        self.digest = digest
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        b = self.fh.read(n)
        self.digest.update(b)
        self.count += len(b)
        return b

    def close(self) -> None:  # the file itself is closed by its owner
        pass


def decompressed(kind: str | None, tap: Tap) -> Any:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=tap, mode="rb")  # type: ignore[arg-type]
    if kind == "bzip2":
        return bz2.BZ2File(tap)  # type: ignore[arg-type]
    if kind == "xz":
        return lzma.LZMAFile(tap)  # type: ignore[arg-type]
    return tap
