"""Dataset schemas: which columns of a raw file are the label, dense and categorical features.

A schema is plain, immutable data. Built-in formats (Criteo, Avazu, KDD Cup 2012) are schemas too
(see ``formats.py``); users describe their own CSV / TSV / Parquet logs with a YAML or JSON file
that loads into the same classes, so a new dataset needs no code change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasrec.configfile import read_config_file
from nasrec.errors import NasrecError

DENSE_TRANSFORMS = ("log", "none", "standardize", "bucketize")
SPARSE_KINDS = ("hex", "int", "auto", "string")
DERIVATIONS = ("hour_of_day", "weekday")
LABEL_RULES = ("binary", "positive")
FILE_TYPES = ("csv", "parquet")


@dataclass(frozen=True)
class DenseField:
    """A numeric input column. ``column=None`` makes a constant-zero column (Avazu's pseudo-dense)."""

    name: str
    column: str | None
    transform: str = "log"


@dataclass(frozen=True)
class SparseField:
    """A categorical input column and how its raw text becomes a 64-bit id.

    ``kind``: ``hex`` (Criteo's 8-hex hashes), ``int`` (decimal integers), ``auto`` (decimal when
    all digits, else hex: the NASRec rewriting of Avazu/KDD ids) or ``string`` (any text, hashed
    with a stable 64-bit hash). ``modulus`` reduces the id (NASRec uses 2147483647 for Avazu/KDD).
    ``table_size`` is the hash-table size used in hash mode. ``derive`` computes a feature from a
    YYMMDDHH column (``hour_of_day`` or ``weekday``).
    """

    name: str
    column: str
    kind: str = "string"
    table_size: int | None = None
    modulus: int | None = None
    derive: str | None = None


@dataclass(frozen=True)
class Schema:
    """How to read one dataset: file layout plus label, dense and categorical fields."""

    name: str
    label: str
    dense: tuple[DenseField, ...]
    sparse: tuple[SparseField, ...]
    file_type: str = "csv"
    separator: str = ","
    header: bool | str = True  # True, False or "auto" (skip a first line equal to `columns`)
    columns: tuple[str, ...] | None = None  # names of all columns, required when there is no header
    quote: str | None = '"'
    missing: tuple[str, ...] = ("",)
    label_rule: str = "binary"
    default_table_size: int = 1_000_000

    def __post_init__(self) -> None:
        _check_schema(self)

    @property
    def used_columns(self) -> list[str]:
        """Source columns read from the file (label first), without duplicates."""
        cols = [self.label]
        for f in self.dense:
            if f.column is not None and f.column not in cols:
                cols.append(f.column)
        for s in self.sparse:
            if s.column not in cols:
                cols.append(s.column)
        return cols

    def to_dict(self) -> dict[str, Any]:
        """The schema as JSON-serialisable data (the form schema files use)."""
        d = asdict(self)
        d["dense"] = [asdict(f) for f in self.dense]
        d["sparse"] = [asdict(f) for f in self.sparse]
        d["columns"] = list(self.columns) if self.columns is not None else None
        d["missing"] = list(self.missing)
        return d


def _fail(where: str, msg: str) -> None:
    raise NasrecError(f"schema {where}: {msg}")


def _check_schema(s: Schema) -> None:
    where = repr(s.name)
    if s.file_type not in FILE_TYPES:
        _fail(where, f"file_type {s.file_type!r} is not one of {', '.join(FILE_TYPES)}")
    if s.label_rule not in LABEL_RULES:
        _fail(where, f"label_rule {s.label_rule!r} is not one of {', '.join(LABEL_RULES)}")
    if s.header not in (True, False, "auto"):
        _fail(where, f"header must be true, false or 'auto', not {s.header!r}")
    if s.file_type == "csv":
        if len(s.separator) != 1:
            _fail(where, f"separator must be one character, not {s.separator!r}")
        if s.quote is not None and len(s.quote) != 1:
            _fail(where, f"quote must be one character or null, not {s.quote!r}")
        if s.header is not True and not s.columns:
            _fail(where, "a file without a header needs `columns` (the names of all its columns)")
    if not s.dense and not s.sparse:
        _fail(where, "no dense and no sparse fields")
    names = [f.name for f in s.dense] + [f.name for f in s.sparse]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _fail(where, f"duplicate field names: {', '.join(dup)}")
    for f in s.dense:
        if f.transform not in DENSE_TRANSFORMS:
            _fail(f"{where} field {f.name!r}", f"transform {f.transform!r} is not one of {DENSE_TRANSFORMS}")
    for f in s.sparse:
        w = f"{where} field {f.name!r}"
        if f.kind not in SPARSE_KINDS:
            _fail(w, f"kind {f.kind!r} is not one of {', '.join(SPARSE_KINDS)}")
        if f.table_size is not None and f.table_size < 2:
            _fail(w, f"table_size must be at least 2, not {f.table_size}")
        if f.modulus is not None and f.modulus < 2:
            _fail(w, f"modulus must be at least 2, not {f.modulus}")
        if f.derive is not None and f.derive not in DERIVATIONS:
            _fail(w, f"derive {f.derive!r} is not one of {', '.join(DERIVATIONS)}")
        if f.derive is not None and f.kind == "string":  # a string id is hashed: there is no YYMMDDHH to derive from
            _fail(w, f"derive {f.derive!r} reads a YYMMDDHH number: give the field kind int (or auto/hex), not string")
    if s.columns is not None:
        missing = [c for c in s.used_columns if c not in s.columns]
        if missing:
            _fail(where, f"fields refer to columns not in `columns`: {', '.join(missing)}")


_SCHEMA_KEYS = {
    "name",
    "label",
    "dense",
    "sparse",
    "file_type",
    "separator",
    "header",
    "columns",
    "quote",
    "missing",
    "label_rule",
    "default_table_size",
    "dense_transform",
    "sparse_kind",
}


def schema_from_dict(d: dict[str, Any], *, source: str = "schema") -> Schema:
    """Build a Schema from parsed YAML/JSON, reporting unknown or ill-typed keys by name."""
    if not isinstance(d, dict):
        raise NasrecError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(d) - _SCHEMA_KEYS)
    if unknown:
        raise NasrecError(f"{source}: unknown key(s) {', '.join(unknown)}")
    if "label" not in d:
        raise NasrecError(f"{source}: missing key `label`")
    dense_default = d.get("dense_transform", "log")
    kind_default = d.get("sparse_kind", "string")

    def field_list(key: str) -> list[dict[str, Any]]:
        items = d.get(key, []) or []
        if not isinstance(items, list):
            raise NasrecError(f"{source}: `{key}` must be a list")
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                item = {"column": item}
            if not isinstance(item, dict) or "column" not in item:
                raise NasrecError(f"{source}: `{key}[{i}]` must be a column name or a mapping with `column`")
            out.append(item)
        return out

    try:
        dense = tuple(
            DenseField(
                name=str(f.get("name", f["column"])),
                column=f["column"],
                transform=f.get("transform", dense_default),
            )
            for f in field_list("dense")
        )
        sparse = tuple(
            SparseField(
                name=str(f.get("name", f["column"])),
                column=f["column"],
                kind=f.get("kind", kind_default),
                table_size=f.get("table_size"),
                modulus=f.get("modulus"),
                derive=f.get("derive"),
            )
            for f in field_list("sparse")
        )
        missing = d.get("missing", [""])
        if isinstance(missing, str):
            missing = [missing]
        return Schema(
            name=str(d.get("name", Path(source).stem)),
            label=str(d["label"]),
            dense=dense,
            sparse=sparse,
            file_type=d.get("file_type", "csv"),
            separator=d.get("separator", ","),
            header=d.get("header", True),
            columns=tuple(d["columns"]) if d.get("columns") else None,
            quote=d.get("quote", '"'),
            missing=tuple(str(m) for m in missing),
            label_rule=d.get("label_rule", "binary"),
            default_table_size=int(d.get("default_table_size", 1_000_000)),
        )
    except TypeError as e:
        raise NasrecError(f"{source}: {e}") from None
    except NasrecError as e:  # a field that fails validation: say which file it came from
        raise NasrecError(f"{source}: {e}") from None


def load_schema(path: Path | str) -> Schema:
    """Read a schema file (.yaml, .yml or .json)."""
    return schema_from_dict(read_config_file(path, "schema"), source=str(path))
