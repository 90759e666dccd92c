"""What of an architecture can reach the head, and the functional form that ignores everything else.

Two architectures that differ only where nothing reaches the logit (a dead block, the dense operator of
a block whose dense output nobody reads, the `left`/`right` inputs of a block without sum or gating)
compute the same function: the same standalone model once dead parts are pruned, and the same supernet
path. The search treats them as one candidate (`functional_hash`), so that its budget goes to distinct
models: in four searches made before this rule, 29-35 % of the candidates scored were such repeats.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from nasrec.model.ops import registry
from nasrec.space.arch import Architecture, Block


def op_live(op: str, b: Block, dense_live: bool, sparse_live: bool) -> bool:
    """Whether operator (or merge flag) `op` of block `b` can reach the head, given which outputs of `b` can."""
    return registry.get(op).live(b, dense_live, sparse_live)


def op_inputs(op: str, b: Block) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (dense, sparse) input indices that operator `op` of block `b` reads."""
    return registry.get(op).inputs(b)


def live_outputs(arch: Architecture) -> tuple[tuple[bool, bool], ...]:
    """For each block, whether its (dense, sparse) outputs can reach the head."""
    n = arch.num_blocks
    dense_live, sparse_live = [False] * n, [False] * n
    dense_live[-1] = sparse_live[-1] = True
    for i in range(n - 1, -1, -1):
        b = arch.blocks[i]
        for op in (*b.dense_ops, *b.sparse_ops):
            if not op_live(op, b, dense_live[i], sparse_live[i]):
                continue
            dense_reads, sparse_reads = op_inputs(op, b)
            for j in dense_reads:
                if j >= 1:
                    dense_live[j - 1] = True
            for j in sparse_reads:
                if j >= 1:
                    sparse_live[j - 1] = True
    return tuple(zip(dense_live, sparse_live, strict=True))


# Stands in for every part that cannot reach the head; valid at any block index.
_NOTHING = Block(
    dense_ops=("fc",),
    sparse_ops=("efc",),
    dense_in=(0,),
    sparse_in=(0,),
    left=0,
    right=0,
    dense_width=1,
    sparse_width=1,
)


def _functional_block(b: Block, dense_live: bool, sparse_live: bool) -> Block:
    dense_on = dense_live or (b.d2s and sparse_live)
    sparse_on = sparse_live or (b.fm and dense_live)
    if not dense_on and not sparse_on:
        return _NOTHING
    out = replace(b, d2s=b.d2s and sparse_live, fm=b.fm and dense_live)
    if not dense_on:
        out = replace(out, dense_ops=_NOTHING.dense_ops, dense_width=_NOTHING.dense_width)
    if not sparse_on:
        out = replace(out, sparse_ops=_NOTHING.sparse_ops, sparse_width=_NOTHING.sparse_width)
    computed = (*(b.dense_ops if dense_on else ()), *(b.sparse_ops if sparse_on else ()))
    for field in ("dense_in", "sparse_in", "left", "right"):  # inputs no computed operator reads
        if not any(field in registry.get(op).reads for op in computed):
            out = replace(out, **{field: getattr(_NOTHING, field)})
    return out


def functional_form(arch: Architecture) -> Architecture:
    """`arch` with every part that cannot reach the head replaced by one fixed placeholder."""
    outputs = live_outputs(arch)
    return arch.with_blocks([_functional_block(b, *o) for b, o in zip(arch.blocks, outputs, strict=True)])


def functional_hash(arch: Architecture) -> str:
    """Equal for architectures that compute the same function (see the module docstring)."""
    text = functional_form(arch).to_json()
    return hashlib.sha256(("functional:" + text).encode()).hexdigest()[:16]
