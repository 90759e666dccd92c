"""Encode new raw rows exactly as a prepared cache encoded its own (for prediction and checks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nasrec.data.cache import Cache, open_cache
from nasrec.data.encoders import EncoderState
from nasrec.data.parse import ChunkParser, ParsedChunk, make_plan
from nasrec.data.readers import DEFAULT_CHUNK_BYTES
from nasrec.data.schema import Schema, schema_from_dict
from nasrec.data.sources import ErrorLog, check_inputs, iter_chunks
from nasrec.errors import DataError, NasrecError


class RowEncoder:
    """The stored schema and fitted encoder state of a cache, applied to raw input files."""

    def __init__(
        self, schema: Schema, state: EncoderState, fmt: str = "schema", kdd_profile: str | None = None
    ) -> None:
        self.schema = schema
        self.state = state
        self.fmt = fmt
        self.kdd_profile = kdd_profile
        self.plan = make_plan(schema, state.mode, state.max_table_size)
        if self.plan.sparse_names != list(state.sparse):
            raise NasrecError("encoder state does not match the schema's categorical fields")

    @classmethod
    def from_cache(cls, cache: Cache | str | Path) -> RowEncoder:
        """The encoder of a prepared cache directory."""
        if not isinstance(cache, Cache):
            cache = open_cache(cache)
        meta = cache.meta
        for key in ("schema", "encoder"):
            if not isinstance(meta.get(key), dict):
                raise DataError(f"missing key {key!r} (needed to encode new rows)", file=str(cache.path / "meta.json"))
        schema = schema_from_dict(meta["schema"], source=str(cache.path / "meta.json"))
        state = EncoderState.from_dict(meta["encoder"], cache.path)
        return cls(schema, state, meta.get("format", "schema"), meta.get("kdd_profile"))

    def iter_encoded(
        self,
        inputs: list[str | Path],
        *,
        on_error: str = "fail",
        errors: ErrorLog | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        kdd_profile: str | Path | None = None,
    ) -> Iterator[ParsedChunk]:
        """Encoded chunks of raw input files (dense float32 [n, D], sparse int32 table rows [n, S])."""
        paths = [Path(p) for p in inputs]
        check_inputs(paths)
        if on_error == "skip" and errors is None:
            errors = ErrorLog()
        parser = ChunkParser(self.plan, on_bad_row=errors if on_error == "skip" else None)
        chunks = iter_chunks(
            self.schema,
            paths,
            fmt=self.fmt,
            kdd_profile=kdd_profile or self.kdd_profile,
            chunk_bytes=chunk_bytes,
            on_bad=errors if on_error == "skip" else None,
        )
        for chunk in chunks:
            p = parser.parse(chunk)
            p.dense = self.state.transform_dense(self.plan.dense_names, p.dense)
            p.sparse = self.state.transform_sparse(self.plan.sparse_names, p.sparse)
            yield p

    def encode(self, inputs: list[str | Path], **options: object) -> ParsedChunk:
        """All rows of the inputs encoded in memory (for small inputs; stream with iter_encoded)."""
        parts = list(self.iter_encoded(inputs, **options))  # type: ignore[arg-type]
        if not parts:
            D, S = len(self.plan.dense), len(self.plan.sparse)
            empty = np.zeros(0, np.float32)
            return ParsedChunk(
                empty, np.zeros((0, D), np.float32), np.zeros((0, S), np.int32), np.zeros(0, np.int64), ""
            )
        return ParsedChunk(
            np.concatenate([p.label for p in parts]),
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.sparse for p in parts]),
            np.concatenate([p.lines for p in parts]),
            parts[0].file if len({p.file for p in parts}) == 1 else "",
        )
