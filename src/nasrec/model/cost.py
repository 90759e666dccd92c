"""Analytic FLOPs per example and parameter counts of an architecture's standalone model.

Counting convention (the NASRec paper's, measured there with fvcore): one multiply-accumulate is one
FLOP; linear layers, batched matrix products (dot's Gram matrix, attention scores Q·Kᵀ and the
weighted sum A·V) and LayerNorms (5 FLOPs per element, affine) are counted; element-wise operations
(activations, additions, padding, softmax, the fm term), embedding lookups and anything whose result
cannot reach the logit are not.

fvcore measures a traced graph, so its count leaves out every operator whose output is unused, not only
dead blocks: a live block whose dense output nobody reads (and that has no d2s) computes its dense
operator for nothing, and likewise for a sparse output without fm. ``ArchCost.flops`` follows fvcore;
``ArchCost.flops_live_blocks`` counts every operator of the live blocks, which is what a model that
prunes only dead blocks executes; nasrec's models skip the unread operators too and execute ``flops``.
Parameters likewise: ``dense_params`` is what nasrec's standalone model holds (unread operators are not
built), ``dense_params_live_blocks`` and ``dense_params_with_dead`` what the reference's models hold.

Which count applies where: ``ServedCost`` is the one count of a nasrec model's cost everywhere a
number is compared or reported (caps, the search's history and Pareto front, budget-aware supernet
paths, a trained run's metrics, the report and its goal check): the model that will be served, with or
without the layer norms of the recipe that trains it. ``arch_cost`` alone is the formula (the paper's
figures count without layer norms).

Each operator's formula lives in its module of `nasrec.model.ops` (``fc_cost``, ``dot_cost``, ..., re-exported
here) and is what the operator answers for its `cost`, so that a model implementation can be checked
against it operator by operator; this module adds them up. The math follows ``docs/design.md``,
"Operator semantics", plus one rule of the reference that the published figures need: dot skips its
token-axis projection (and its LN) when the input already has p tokens, and its output Linear when
(p+1)p/2 = W. ``E`` is the embedding (token) dimension, 16 in NASRec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nasrec.errors import NasrecError
from nasrec.model.ops import registry

# the formulas of layers and operators are re-exported: callers and tests check models against them here
from nasrec.model.ops.base import (  # noqa: F401
    LN_FLOPS_PER_ELEMENT,
    ZERO,
    Cost,
    layernorm_cost,
    linear_cost,
    linear_ln_cost,
    token_linear_cost,
)
from nasrec.model.ops.dot import dot_cost, dot_tokens  # noqa: F401
from nasrec.model.ops.efc import efc_cost  # noqa: F401
from nasrec.model.ops.fc import fc_cost  # noqa: F401
from nasrec.model.ops.merge import d2s_cost, fm_cost  # noqa: F401
from nasrec.model.ops.pair import gating_cost, sum_cost  # noqa: F401
from nasrec.model.ops.transformer import attention_matmul_flops, mha_cost, transformer_cost  # noqa: F401
from nasrec.space.arch import EMBEDDING_DIM, Architecture, Block
from nasrec.space.liveness import live_outputs, op_live


def head_cost(width: int) -> Cost:
    """Head: Linear(width → 1) with bias, producing the logit."""
    return linear_cost(width, 1, bias=True)


def first_order_cost(num_dense: int) -> Cost:
    """The first-order term: Linear(D → 1) on the dense features and its bias (the per-category weights are lookups)."""
    return linear_cost(num_dense, 1, bias=True)


def op_cost(
    op: str, block: Block, dense_in: int, sparse_in: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM
) -> Cost:
    """Cost of operator (or merge flag) `op` of `block`, given the widths of its inputs (tokens for sparse)."""
    try:
        operator = registry.get(op)
    except NasrecError as err:
        raise NasrecError(f"op_cost: {err}") from None
    return operator.cost(block, dense_in, sparse_in, left, right, ln, e)


# -- whole architectures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OpCost:
    """Cost of one operator (or merge flag) of a block; `live` when its result reaches the head."""

    name: str
    flops: int
    params: int
    live: bool


@dataclass(frozen=True)
class BlockCost:
    """Cost of one block if computed; `live` is block-level liveness (`Architecture.live_blocks`)."""

    index: int
    live: bool
    dense_in: int  # width of the concatenated dense inputs (fc, dot)
    sparse_in: int  # tokens of the concatenated sparse inputs
    ops: tuple[OpCost, ...]
    flops: int  # all operators of the block
    params: int

    @property
    def live_flops(self) -> int:
        """FLOPs of the operators whose results reach the head (0 for a dead block)."""
        return sum(o.flops for o in self.ops if o.live)


@dataclass(frozen=True)
class ArchCost:
    """FLOPs per example and parameter counts of an architecture's standalone model."""

    flops: int  # per example, the paper's (fvcore's) count: operators reaching the head, plus the head
    flops_live_blocks: int  # every operator of the live blocks, plus the head
    attention_flops: int  # the part of `flops` in attention's Q·Kᵀ and A·V products
    dense_params: int  # non-embedding parameters of the operators reaching the head, plus the head
    dense_params_live_blocks: int  # every operator of the live blocks, plus the head
    dense_params_with_dead: int  # the same with dead blocks, as the reference's models hold them
    embedding_params: int
    dead_blocks: list[int]
    per_block: tuple[BlockCost, ...]
    head_input: int
    use_layernorm: bool

    @property
    def mflops(self) -> float:
        """FLOPs per example in millions."""
        return self.flops / 1e6

    @property
    def params(self) -> int:
        """All parameters of the standalone model: dense (unread operators pruned) plus embeddings."""
        return self.dense_params + self.embedding_params


def arch_cost(
    arch: Architecture,
    num_dense: int = 13,
    num_sparse: int = 26,
    table_sizes: Sequence[int] | None = None,
    embedding_dim: int | None = None,
    use_layernorm: bool = False,
) -> ArchCost:
    """FLOPs per example and parameter counts of `arch` on inputs of `num_dense` features and `num_sparse` tokens.

    `embedding_dim` defaults to the architecture's own (`Architecture.embedding_dim`)."""
    if embedding_dim is None:
        embedding_dim = arch.embedding_dim
    if num_dense < 0 or num_sparse < 1 or embedding_dim < 1:
        raise NasrecError(
            f"arch_cost: need num_dense >= 0, num_sparse >= 1, embedding_dim >= 1 "
            f"(got {num_dense}, {num_sparse}, {embedding_dim})"
        )
    if table_sizes is not None and len(table_sizes) != num_sparse:
        raise NasrecError(f"arch_cost: {len(table_sizes)} table sizes for {num_sparse} sparse features")
    e = embedding_dim
    # Output widths per input index: 0 is the raw input, j >= 1 block j-1.
    widths = [num_dense] + [b.dense_width for b in arch.blocks]
    tokens = [num_sparse] + [b.sparse_tokens for b in arch.blocks]
    live_blocks = arch.live_blocks()
    outputs = live_outputs(arch)
    per_block = []
    for i, b in enumerate(arch.blocks):
        din = sum(widths[j] for j in b.dense_in)
        tin = sum(tokens[j] for j in b.sparse_in)
        names = [*b.dense_ops, *b.sparse_ops] + ["d2s"] * b.d2s + ["fm"] * b.fm
        ops = []
        for name in names:
            c = op_cost(name, b, din, tin, widths[b.left], widths[b.right], use_layernorm, e)
            ops.append(OpCost(name, c.flops, c.params, live_blocks[i] and op_live(name, b, *outputs[i])))
        flops, params = sum(o.flops for o in ops), sum(o.params for o in ops)
        per_block.append(BlockCost(i, live_blocks[i], din, tin, tuple(ops), flops, params))
    last = arch.blocks[-1]
    head_input = last.dense_width + e * last.sparse_tokens
    head = head_cost(head_input) + (first_order_cost(num_dense) if arch.first_order else ZERO)
    live = [bc for bc in per_block if bc.live]
    attention = sum(
        registry.get(o.name).attention_flops(arch.blocks[bc.index], e) for bc in live for o in bc.ops if o.live
    )
    return ArchCost(
        flops=sum(bc.live_flops for bc in live) + head.flops,
        flops_live_blocks=sum(bc.flops for bc in live) + head.flops,
        attention_flops=attention,
        dense_params=sum(o.params for bc in live for o in bc.ops if o.live) + head.params,
        dense_params_live_blocks=sum(bc.params for bc in live) + head.params,
        dense_params_with_dead=sum(bc.params for bc in per_block) + head.params,
        embedding_params=sum(table_sizes) * (e + arch.first_order) if table_sizes is not None else 0,
        dead_blocks=arch.dead_blocks(),
        per_block=tuple(per_block),
        head_input=head_input,
        use_layernorm=use_layernorm,
    )


@dataclass(frozen=True)
class ServedCost:
    """The cost of nasrec models as served on a data shape: with the layer norms of their training recipe or without.

    Calling it gives (MFLOPs, non-embedding params), what caps compare. `layernorm` must be stated: a
    count without the layer norms of a model trained with them is a few per cent low (up to a quarter),
    enough to pass a cap that the trained model then breaks.
    """

    num_dense: int
    table_sizes: tuple[int, ...]
    layernorm: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))

    def of(self, arch: Architecture) -> ArchCost:
        """The full cost breakdown of `arch`'s standalone model."""
        return arch_cost(arch, self.num_dense, len(self.table_sizes), self.table_sizes, use_layernorm=self.layernorm)

    def __call__(self, arch: Architecture) -> tuple[float, int]:
        """(MFLOPs per example, non-embedding parameters) of `arch`."""
        c = self.of(arch)
        return c.mflops, c.dense_params
