"""The operators architectures may name: one `register` line per operator.

The order of the lines is the canonical order of operator names (architecture JSON lists a block's
operators in it, so equal architectures have equal text and hashes; a block's dense outputs are summed
in it). Cells create operators' layers in the same order, except that sum's have always been created
before gating's (`build_before`): same seed, same initial weights as checkpoints and published results.

Adding an operator is one module (a `DenseOperator` or `SparseOperator` subclass, see
`nasrec.model.ops.base`) and one line below. Tests and experiments register one for a while with
`registered`. The merge flags d2s and fm are not in the registry (`MERGES`): a block switches them on
with its own fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nasrec.errors import NasrecError
from nasrec.model.ops.base import READS, Operator
from nasrec.model.ops.concat import Cat, TokensCat, TokensFlat
from nasrec.model.ops.dot import Dot
from nasrec.model.ops.efc import EFC
from nasrec.model.ops.fc import FC
from nasrec.model.ops.flat import Flat, GatedFlat
from nasrec.model.ops.merge import D2S, FM
from nasrec.model.ops.pair import Bilinear, Cross, Fuse, Gating, Sum
from nasrec.model.ops.transformer import Transformer

KINDS = ("dense", "sparse")
MERGES: dict[str, type[Operator]] = {"fm": FM, "d2s": D2S}  # in the order cells create their layers

_OPS: dict[str, type[Operator]] = {}  # canonical order
_BUILD: list[str] = []  # the order cells create operators' layers in
_NAMES: dict[str, tuple[str, ...]] = {}  # per kind, canonical order (kept up to date by register)


def register(op: type[Operator], build_before: str | None = None) -> type[Operator]:
    """Add `op` after the operators registered so far; its layers are created before `build_before`'s."""
    name = getattr(op, "name", None)
    if not isinstance(name, str) or not name:
        raise NasrecError(f"operator {op.__name__}: its name must be a non-empty string")
    if name in _OPS or name in MERGES:
        raise NasrecError(f"operator {name!r} is already registered")
    if getattr(op, "kind", None) not in KINDS:
        raise NasrecError(f"operator {name!r}: kind must be one of {', '.join(KINDS)}, not {op.kind!r}")
    if not op.reads or not set(op.reads) <= set(READS):
        raise NasrecError(f"operator {name!r}: reads {sorted(op.reads)} must be some of {', '.join(READS)}")
    taken = {layer: other for other in (*_OPS.values(), *MERGES.values()) for layer in other.layers}
    for layer in op.layers:
        if not layer.isidentifier() or layer.startswith("_"):
            raise NasrecError(f"operator {name!r}: layer name {layer!r} must be a public identifier")
        if layer in taken:
            raise NasrecError(f"operator {name!r}: layer {layer!r} is already operator {taken[layer].name!r}'s")
    if build_before is not None and build_before not in _OPS:
        raise NasrecError(f"operator {name!r}: build_before names no registered operator ({build_before!r})")
    _OPS[name] = op
    _BUILD.insert(_BUILD.index(build_before) if build_before else len(_BUILD), name)
    _refresh()
    return op


def unregister(name: str) -> None:
    """Remove operator `name` (architectures naming it no longer validate)."""
    if name not in _OPS:
        raise NasrecError(f"operator {name!r} is not registered")
    del _OPS[name]
    _BUILD.remove(name)
    _refresh()


@contextmanager
def registered(*ops: type[Operator]) -> Iterator[None]:
    """Register `ops` (after every other operator) for the duration of a `with` block."""
    done = []
    try:
        for op in ops:
            register(op)
            done.append(op.name)
        yield
    finally:
        for name in reversed(done):
            unregister(name)


def _refresh() -> None:
    for kind in KINDS:
        _NAMES[kind] = tuple(n for n, op in _OPS.items() if op.kind == kind)


def names(kind: str) -> tuple[str, ...]:
    """Names of the registered operators of `kind` ("dense" or "sparse"), in canonical order."""
    return _NAMES[kind]


def get(name: str) -> type[Operator]:
    """The operator (or merge flag, "fm" / "d2s") called `name`."""
    op = _OPS.get(name) or MERGES.get(name)
    if op is None:
        raise NasrecError(f"unknown operator {name!r} (known: {', '.join(_OPS)})")
    return op


def build_order() -> tuple[str, ...]:
    """Names of the registered operators in the order cells create their layers."""
    return tuple(_BUILD)


register(FC)
register(Dot)
register(Gating)
register(Sum, build_before="gating")
register(EFC)
register(Transformer)
register(Cross)  # after the paper's operators: their canonical and build orders stay as they were
register(Flat)
register(Bilinear)
register(GatedFlat)
register(Fuse)
register(Cat)
register(TokensFlat)
register(TokensCat)
