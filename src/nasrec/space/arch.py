"""An architecture (one subnet of the search space) as an immutable, validated value.

Block ``i`` (0-based) reads inputs ``j`` in ``0..i``: ``0`` is the raw input (dense features and
the embedded sparse features), ``j >= 1`` is the output of block ``j-1``. Every block emits one dense
tensor [B, dense_width] and one sparse tensor [B, sparse_width (+8 with d2s), 16]; the head reads
the last block only.

A block may hold several dense and several sparse operators (their outputs are summed): searched
architectures have one of each, but supernet training also runs any-path and full-path samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError
from nasrec.model.ops import registry
from nasrec.model.ops.base import EMBEDDING_DIM  # the default width of every token (sparse feature), NASRec's 16
from nasrec.model.ops.merge import D2S_TOKENS  # the dense-to-sparse merger appends 8 tokens

MAX_INPUTS = 4  # a block reads at most this many earlier outputs per input list
ARCH_FORMAT = "nasrec-architecture"
ARCH_VERSION = 1
# The widest block nasrec builds: NASRec's spaces stop at 1024 (dense) and 64 tokens (sparse). A model
# near these limits is already tens of GB; `nasrec.model.memory` says whether one fits before building it.
MAX_DENSE_WIDTH = 65_536
MAX_SPARSE_WIDTH = 4_096

# Keys of a block in the canonical JSON: what each must be (d2s and fm may be left out: false).
_BLOCK_KEYS = {
    "dense_ops": "ops",
    "sparse_ops": "ops",
    "dense_in": "indices",
    "sparse_in": "indices",
    "left": "int",
    "right": "int",
    "dense_width": "int",
    "sparse_width": "int",
    "d2s": "bool",
    "fm": "bool",
}
_OPTIONAL_BLOCK_KEYS = ("d2s", "fm")
_ARCH_KEYS = ("format", "version", "blocks")
# written only where they differ from the defaults (EMBEDDING_DIM, no first-order term): hashes stay as they were
_OPTIONAL_ARCH_KEYS = ("embedding_dim", "first_order")
MAX_EMBEDDING_DIM = 1024


def embedding_dim_problem(e: object) -> str | None:
    """Why `e` is not an embedding dimension (an integer from 1 to MAX_EMBEDDING_DIM), or None."""
    if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= MAX_EMBEDDING_DIM:
        return f"must be an integer from 1 to {MAX_EMBEDDING_DIM}, got {e!r}"
    return None


_EXPECTED = {
    "ops": "a list of operator names",
    "indices": "a list of input indices",
    "int": "an integer",
    "bool": "true or false",
    "flag": "0, 1, true or false",
}


# Operator names are those of the registry (`nasrec.model.ops.registry`), in its canonical order.
# `DENSE_OPS` and `SPARSE_OPS`, module attributes, read it at each access (with operators registered later).
def dense_op_names() -> tuple[str, ...]:
    """The dense operators an architecture may name, in canonical order."""
    return registry.names("dense")


def sparse_op_names() -> tuple[str, ...]:
    """The sparse operators an architecture may name, in canonical order."""
    return registry.names("sparse")


def op_reads(op: str) -> frozenset[str]:
    """The input lists of a block (dense_in, sparse_in, left, right) that operator `op` reads."""
    return registry.get(op).reads


def __getattr__(name: str) -> Any:
    if name == "DENSE_OPS":
        return dense_op_names()
    if name == "SPARSE_OPS":
        return sparse_op_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Node numbering of the NASRec reference JSON ("active_nodes"), per search space.
NASREC_NODES = {
    "xlarge": {0: "fc", 1: "dot", 2: "gating", 3: "sum", 4: "transformer", 5: "efc"},
    "autoctr": {0: "fc", 1: "dot", 2: "efc"},
}


@dataclass(frozen=True)
class Block:
    """One choice block: operators, input connections, widths and the two merge flags."""

    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_in: tuple[int, ...]  # inputs of fc and dot (concatenated on the feature axis)
    sparse_in: tuple[int, ...]  # inputs of the sparse op and of dot's sparse side (token axis)
    left: int  # inputs of sum and gating
    right: int
    dense_width: int
    sparse_width: int
    d2s: bool = False  # dense-to-sparse merger: 8 tokens from the dense output appended
    fm: bool = False  # factorisation-machine term of the sparse output added to the dense output

    def read_fields(self) -> frozenset[str]:
        """The input lists (dense_in, sparse_in, left, right) that operators of this block read."""
        return frozenset().union(*(op_reads(op) for op in (*self.dense_ops, *self.sparse_ops)))

    def reads(self, field: str) -> bool:
        """Whether an operator of this block reads its input list `field`."""
        return field in self.read_fields()

    @property
    def uses_dense_in(self) -> bool:
        """Whether dense_in feeds an operator of this block (fc, dot)."""
        return self.reads("dense_in")

    @property
    def uses_left_right(self) -> bool:
        """Whether left/right feed an operator of this block (sum, gating)."""
        return bool(self.read_fields() & {"left", "right"})

    def dependencies(self) -> set[int]:
        """Input indices this block actually reads (0 = raw input)."""
        fields = self.read_fields()
        deps: set[int] = set()
        for field in ("dense_in", "sparse_in"):
            if field in fields:
                deps |= set(getattr(self, field))
        for field in ("left", "right"):
            if field in fields:
                deps.add(getattr(self, field))
        return deps

    @property
    def sparse_tokens(self) -> int:
        """Tokens of this block's sparse output."""
        return self.sparse_width + (D2S_TOKENS if self.d2s else 0)


@dataclass(frozen=True)
class Architecture:
    """A whole subnet: its blocks, in order. Validated on construction."""

    blocks: tuple[Block, ...]
    embedding_dim: int = EMBEDDING_DIM  # the width of every token: the embedding tables', d2s's and attention's
    # A first-order (LR) term added to the logit: a scalar weight per category of every sparse field and a
    # Linear over the dense features, DeepFM's and Wide & Deep's linear part. No search space offers it.
    first_order: bool = False

    def __post_init__(self) -> None:
        # operators in canonical order, so that equal architectures have equal forms and hashes
        dense, sparse = dense_op_names(), sparse_op_names()
        blocks = tuple(
            replace(b, dense_ops=_canonical(b.dense_ops, dense), sparse_ops=_canonical(b.sparse_ops, sparse))
            for b in self.blocks
        )
        object.__setattr__(self, "blocks", blocks)
        if not self.blocks:
            raise NasrecError("architecture: no blocks")
        problem = embedding_dim_problem(self.embedding_dim)
        if problem:
            raise NasrecError(f"architecture: embedding_dim {problem}")
        if not isinstance(self.first_order, bool):
            raise NasrecError(f"architecture: first_order must be true or false, got {self.first_order!r}")
        for i, b in enumerate(self.blocks):
            _check_block(i, b)

    @property
    def num_blocks(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def live_blocks(self) -> tuple[bool, ...]:
        """For each block, whether its output can reach the head (the last block is always live)."""
        live = [False] * self.num_blocks
        live[-1] = True
        for i in range(self.num_blocks - 1, -1, -1):
            if live[i]:
                for j in self.blocks[i].dependencies():
                    if j >= 1:
                        live[j - 1] = True
        return tuple(live)

    def dead_blocks(self) -> list[int]:
        """Indices of blocks that cannot reach the head."""
        return [i for i, alive in enumerate(self.live_blocks()) if not alive]

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical, versioned JSON-serialisable form."""
        d: dict[str, Any] = {"format": ARCH_FORMAT, "version": ARCH_VERSION, "blocks": [asdict(b) for b in self.blocks]}
        if self.embedding_dim != EMBEDDING_DIM:
            d["embedding_dim"] = self.embedding_dim
        if self.first_order:
            d["first_order"] = True
        return d

    def with_blocks(self, blocks: tuple[Block, ...] | list[Block]) -> Architecture:
        """An architecture of `blocks` at this one's embedding dimension, with its first-order term or without."""
        return Architecture(tuple(blocks), self.embedding_dim, self.first_order)

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON text (sorted keys; equal architectures give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=None if indent else (",", ":"))

    def hash(self) -> str:
        """Stable hex digest of the canonical form (for de-duplication and caching)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "architecture") -> Architecture:
        """Read the canonical form, or the NASRec reference JSON (detected by its `macro`/`micro` keys)."""
        if not isinstance(d, dict):
            raise NasrecError(f"{source}: expected a JSON object")
        if "macro" in d and "micro" in d:
            return from_nasrec(d, source)
        if d.get("format") != ARCH_FORMAT:
            raise NasrecError(f"{source}: not a nasrec architecture (format {d.get('format')!r})")
        if d.get("version") != ARCH_VERSION:
            raise NasrecError(f"{source}: architecture version {d.get('version')!r}, this nasrec reads {ARCH_VERSION}")
        _check_keys(source, d, _ARCH_KEYS, _ARCH_KEYS + _OPTIONAL_ARCH_KEYS)
        if not isinstance(d["blocks"], list):
            raise NasrecError(f"{source}: field blocks: expected a list of blocks, got {_show(d['blocks'])}")
        blocks = [Block(**_read_block(f"{source}: architecture block {i}", bd)) for i, bd in enumerate(d["blocks"])]
        e = d.get("embedding_dim", EMBEDDING_DIM)
        if isinstance(e, bool) or not isinstance(e, int):
            raise NasrecError(f"{source}: field embedding_dim: expected an integer, got {_show(e)}")
        first = d.get("first_order", False)
        if not isinstance(first, bool):
            raise NasrecError(f"{source}: field first_order: expected true or false, got {_show(first)}")
        try:
            return cls(tuple(blocks), e, first)
        except NasrecError as e:
            raise NasrecError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        """Read an architecture JSON file (canonical or NASRec reference format)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise NasrecError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise NasrecError(f"{path}: invalid JSON ({e})") from None
        return cls.from_dict(d, str(path))

    def save(self, path: str | Path) -> None:
        """Write the canonical JSON form."""
        Path(path).write_text(self.to_json(indent=1) + "\n")


def _show(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return "a JSON object" if isinstance(value, dict) else "a list"
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


def _check_keys(where: str, d: dict[str, Any], required: tuple[str, ...], known: tuple[str, ...] | None) -> None:
    """Raise naming the first key of `required` that `d` lacks, then (unless `known` is None) its first unknown key."""
    for k in required:
        if k not in d:
            raise NasrecError(f"{where}: missing key {k!r}")
    if known is not None:
        for k in d:
            if k not in known:
                raise NasrecError(f"{where}: unknown key {k!r} (known: {', '.join(known)})")


def _typed(kind: str, v: Any) -> bool:
    def integer(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if kind == "ops":
        return isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)
    if kind == "indices":
        return isinstance(v, list | tuple) and all(integer(x) for x in v)
    if kind == "int":
        return integer(v)
    if kind == "bool":
        return isinstance(v, bool)
    return isinstance(v, bool) or v in (0, 1)  # "flag": the reference writes 0 and 1


def _field(where: str, name: str, kind: str, v: Any) -> Any:
    if not _typed(kind, v):
        raise NasrecError(f"{where}, field {name}: expected {_EXPECTED[kind]}, got {_show(v)}")
    return v


def _read_block(where: str, bd: Any) -> dict[str, Any]:
    """The Block fields of one canonical JSON block; a missing, unknown or mistyped key raises naming it."""
    if not isinstance(bd, dict):
        raise NasrecError(f"{where}: expected a JSON object, got {_show(bd)}")
    _check_keys(where, bd, tuple(k for k in _BLOCK_KEYS if k not in _OPTIONAL_BLOCK_KEYS), tuple(_BLOCK_KEYS))
    out = {k: _field(where, k, kind, bd.get(k, False)) for k, kind in _BLOCK_KEYS.items()}
    return {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in out.items()}


def _canonical(ops: tuple[str, ...], order: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(ops, key=lambda op: order.index(op) if op in order else len(order)))


def _check_block(i: int, b: Block) -> None:
    def fail(fieldname: str, msg: str) -> None:
        raise NasrecError(f"architecture block {i}, field {fieldname}: {msg}")

    for name, known in (("dense_ops", dense_op_names()), ("sparse_ops", sparse_op_names())):
        ops = getattr(b, name)
        if not ops or len(set(ops)) != len(ops) or any(op not in known for op in ops):
            fail(name, f"{list(ops)!r} must be distinct names from {known}")
    for name in ("dense_in", "sparse_in"):
        idx = getattr(b, name)
        if not all(isinstance(j, int) and not isinstance(j, bool) for j in idx):
            fail(name, f"{list(idx)!r} must be integers")
        if not 1 <= len(idx) <= MAX_INPUTS:
            fail(name, f"needs 1 to {MAX_INPUTS} inputs, has {len(idx)}")
        if list(idx) != sorted(set(idx)):
            fail(name, f"{list(idx)!r} must be distinct and ascending")
        if idx[0] < 0 or idx[-1] > i:
            fail(name, f"{list(idx)!r}: inputs of block {i} are 0 (raw input) to {i}")
    for name in ("left", "right"):
        j = getattr(b, name)
        if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j <= i:
            fail(name, f"{j!r}: inputs of block {i} are 0 (raw input) to {i}")
    for name, most in (("dense_width", MAX_DENSE_WIDTH), ("sparse_width", MAX_SPARSE_WIDTH)):
        w = getattr(b, name)
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            fail(name, f"{w!r} must be a positive integer")
        if w > most:
            fail(
                name,
                f"{w:,} is more than nasrec builds ({most:,}; NASRec's spaces stop at "
                f"{1024 if name == 'dense_width' else 64})",
            )
    for name in ("d2s", "fm"):
        if not isinstance(getattr(b, name), bool):
            fail(name, f"{getattr(b, name)!r} must be true or false")


def from_nasrec(d: dict[str, Any], source: str = "NASRec JSON") -> Architecture:
    """Decode the NASRec reference subnet JSON (`macro`/`micro` lists; `config` names the space)."""
    space = d.get("config", "xlarge")
    if space not in NASREC_NODES:
        raise NasrecError(f"{source}: unknown NASRec config {space!r} (expected xlarge or autoctr)")
    nodes = NASREC_NODES[space]
    macro, micro = d["macro"], d["micro"]
    for name, entries in (("macro", macro), ("micro", micro)):
        if not isinstance(entries, list):
            raise NasrecError(f"{source}: field {name}: expected a list of blocks, got {_show(entries)}")
    if len(macro) != len(micro):
        raise NasrecError(f"{source}: {len(macro)} macro entries but {len(micro)} micro entries")
    blocks = []
    for i, (ma, mi) in enumerate(zip(macro, micro, strict=True)):
        ma, mi = _reference_entry(source, i, "macro", ma), _reference_entry(source, i, "micro", mi)
        try:
            ops = [nodes[n] for n in mi["active_nodes"]]
        except KeyError as e:
            raise NasrecError(f"{source}: block {i}: unknown node {e} for config {space!r}") from None
        for side in ("dense_left_idx", "dense_right_idx"):
            if not ma[side]:
                raise NasrecError(
                    f"{source}: block {i}, macro field {side}: expected a list of one input index, got []"
                )
        blocks.append(
            Block(
                dense_ops=tuple(op for op in ops if op in dense_op_names()),
                sparse_ops=tuple(op for op in ops if op in sparse_op_names()),
                dense_in=tuple(sorted(set(ma["dense_idx"]))),
                sparse_in=tuple(sorted(set(ma["sparse_idx"]))),
                left=int(ma["dense_left_idx"][0]),
                right=int(ma["dense_right_idx"][0]),
                dense_width=int(mi["dense_in_dims"]),
                sparse_width=int(mi["sparse_in_dims"]),
                d2s=bool(mi["dense_sparse_interact"]),
                fm=bool(mi["deep_fm"]),
            )
        )
    try:
        return Architecture(tuple(blocks))
    except NasrecError as e:
        raise NasrecError(f"{source}: {e}") from None


# Keys of the reference JSON's entries per block (other keys are left alone: the reference adds some).
_REFERENCE_KEYS = {
    "macro": {
        "dense_idx": "indices",
        "sparse_idx": "indices",
        "dense_left_idx": "indices",
        "dense_right_idx": "indices",
    },
    "micro": {
        "active_nodes": "indices",
        "dense_in_dims": "int",
        "sparse_in_dims": "int",
        "dense_sparse_interact": "flag",
        "deep_fm": "flag",
    },
}


def _reference_entry(source: str, i: int, part: str, entry: Any) -> dict[str, Any]:
    where = f"{source}: block {i}, {part}"
    if not isinstance(entry, dict):
        raise NasrecError(f"{where}: expected a JSON object, got {_show(entry)}")
    keys = _REFERENCE_KEYS[part]
    _check_keys(where, entry, tuple(keys), None)
    for k, kind in keys.items():
        if not _typed(kind, entry[k]):
            raise NasrecError(f"{where} field {k}: expected {_EXPECTED[kind]}, got {_show(entry[k])}")
    return entry
