"""The encoder JSON of an export: how raw rows become the exported model's inputs, rules spelled out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nasrec.data.cache import Cache, open_cache
from nasrec.data.encode import RowEncoder
from nasrec.data.encoders import MISSING_ID, MISSING_INDEX, OOV_INDEX, VocabEncoder
from nasrec.errors import NasrecError

ENCODER_FORMAT = "nasrec-encoder"
ENCODER_FORMAT_VERSION = 1
# How each encoding step works, written once into every encoder JSON so that the file explains itself.
ENCODER_RULES: dict[str, str] = {
    "missing": "A raw value is missing when it is empty or absent, or equals one of source.schema.missing. "
    "Missing values are legal everywhere; any other value that a rule below cannot parse (or a NaN or "
    "infinite number) makes the row invalid: nasrec rejects such rows, a server should too.",
    "dense.log": "float32(ln(max(x, 0) + 1)), computed in float64 from the value parsed as float64; missing -> 0.",
    "dense.none": "float32(x); missing -> 0.",
    "dense.standardize": "float32((float64(float32(x)) - mean) / std), float64 arithmetic; missing -> 0.",
    "dense.constant": "always 0 (the field has no source column).",
    "u64(s, base)": "s parsed as an unsigned 64-bit integer in that base (digits only, no sign or prefix).",
    "i64(s, base)": "s parsed as a signed 64-bit integer in that base.",
    "signed(u)": "u reinterpreted as a two's-complement signed 64-bit integer: u - 2^64 if u >= 2^63, else u.",
    "mod": "a mod m is floor modulo: the result is in [0, m) also for negative a.",
    "raw_id.hex": "u = u64(value, 16); id = u mod modulus if modulus is set (and derive is not), else signed(u).",
    "raw_id.int": "if value fits i64(value, 10) = s: id = s mod modulus (modulus set, derive not) else s; "
    "otherwise u = u64(value, 10): id = u mod modulus if modulus is set, else signed(u).",
    "raw_id.auto": "if value is all decimal digits: u = u64(value, 10), id = u mod modulus if modulus is set "
    "(and derive is not), else signed(u); otherwise s = i64(value, 16), id = s mod modulus if modulus is set, else s.",
    "raw_id.string": "h = string_hash(the UTF-8 bytes of value) as unsigned 64-bit; id = h mod modulus if "
    "modulus is set, else signed(h) (derive does not apply to string fields).",
    "string_hash": "n = byte length; h = 0x9E3779B97F4A7C15 XOR (n * 0xBF58476D1CE4E5B9 mod 2^64); for each "
    "8-byte block of the bytes, in order (the last may be shorter), read as a big-endian unsigned integer "
    "b (a 3-byte block is a 24-bit number): h = mix(h XOR b); finally h = mix(h). mix(x), all mod 2^64: "
    "x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31.",
    "derive.hour_of_day": "v = the raw id without modulus (the value is a YYMMDDHH number); id = v mod 100; "
    "invalid when above 23.",
    "derive.weekday": "v as for hour_of_day; day = (v div 100) mod 100, month = (v div 10^4) mod 100, "
    "year = 2000 + (v div 10^6) mod 100 (invalid unless 1 <= month <= 12 and 1 <= day <= 31); "
    "w = ISO weekday (Monday 1 .. Sunday 7) of the date year-month-min(day, 28); "
    "id = ((w - 1 + day - min(day, 28)) mod 7) + 1.",
    "raw_id.bucketize": "x = the column's value as float64; id = floor(ln(x)^2) if x > 2, else floor(x), "
    "as a signed 64-bit integer; missing -> missing.",
    "encoding.hash": "row = (id mod (table_size - 1)) + 1, with id taken as a signed 64-bit integer "
    "(operand 'signed', floor modulo) or as unsigned 64-bit (operand 'unsigned'); missing -> 0.",
    "encoding.vocab": "row = ids[decimal string of the signed 64-bit id] when present, else oov_id (1); "
    "missing -> missing_id (0), and so is the id -2^63 (missing_raw_id), which nasrec uses as its missing marker.",
    "model_input": "dense: float32 [B, D], fields in `dense` order; sparse: int64 [B, S], the per-field rows "
    "in `sparse` order. The model adds each field's table_offset itself: do not add it.",
}


def encoder_spec(cache: Cache | str | Path) -> dict[str, Any]:
    """The self-describing JSON form of a cache's encoder: raw rows to the model's inputs (see ENCODER_RULES)."""
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    enc = RowEncoder.from_cache(cache)
    plan, state = enc.plan, enc.state
    sizes = state.table_sizes(plan.sparse_names)
    if sizes != cache.table_sizes or plan.dense_names != cache.dense_fields:
        raise NasrecError(f"{cache.path}: the stored encoder does not match the cache's fields")
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist() if sizes else []
    dense = []
    for j, f in enumerate(plan.dense):
        st = state.dense[f.name]
        item: dict[str, Any] = {"name": f.name, "position": j, "column": f.column, "transform": st["transform"]}
        if st["transform"] == "standardize":
            item.update(mean=float(st["mean"]), std=float(st["std"]))
        dense.append(item)
    sparse = []
    for j, out in enumerate(plan.sparse):
        if out.bucketized is not None:
            raw: dict[str, Any] = {"from": "bucketize", "column": out.bucketized.column}
            operand = "signed"
        else:
            f = out.field
            raw = {"from": "column", "column": f.column, "kind": f.kind, "modulus": f.modulus, "derive": f.derive}
            # string ids are hashed into the table as unsigned numbers, all other kinds as signed (parse.py)
            operand = "unsigned" if f.kind == "string" else "signed"
        e = state.sparse[out.name]
        if isinstance(e, VocabEncoder):
            keys = e.keys.tolist()
            encoding: dict[str, Any] = {
                "type": "vocab",
                "min_count": e.min_count,
                "max_size": e.max_size,
                "ids": {str(k): row for row, k in enumerate(keys, start=2)},
            }
        else:
            encoding = {"type": "hash", "operand": operand}
        sparse.append(
            {
                "name": out.name,
                "position": j,
                "raw_id": raw,
                "encoding": encoding,
                "table_size": sizes[j],
                "table_offset": offsets[j],
            }
        )
    return {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "description": "How nasrec encodes a raw row into the exported model's inputs `dense` and `sparse`. "
        "Apply `dense` and `sparse` in order, following `rules` (keyed by transform, kind, derive and "
        "encoding type).",
        "rules": ENCODER_RULES,
        "source": {
            "format": cache.meta.get("format", "schema"),
            "schema": cache.meta["schema"],
            "kdd_profile": cache.meta.get("kdd_profile"),
        },
        "mode": state.mode,
        "max_table_size": state.max_table_size,
        "missing_id": MISSING_INDEX,
        "oov_id": OOV_INDEX if state.mode == "vocab" else None,
        "missing_raw_id": MISSING_ID if state.mode == "vocab" else None,
        "dense": dense,
        "sparse": sparse,
        "inputs": {
            "dense": {"dtype": "float32", "shape": ["batch", len(dense)], "fields": [d["name"] for d in dense]},
            "sparse": {"dtype": "int64", "shape": ["batch", len(sparse)], "fields": [s["name"] for s in sparse]},
        },
        "table_sizes": sizes,
        "table_offsets": offsets,
    }
