"""One choice block (cell), shared by the supernet and standalone models.

A cell is built for a set of operators and input slots at given capacities. The supernet builds
every cell with all operators of its space at the largest widths and every earlier output as an
input slot; a standalone model builds each live cell with only its chosen operators, inputs and exact
widths. The forward pass is the same code for both (see `layers.py`), which is what makes a
materialised subnet compute exactly what the supernet computes on that path.

The operators themselves are modules of `nasrec.model.ops`, found by name in its registry; each
creates its layers as attributes of the cell (state_dict keys ``fc``, ``dot_dense``, ``attn_in``, ...).
The cell prepares their inputs once, sums their outputs and applies the d2s and fm merges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.model.layers import Used
from nasrec.model.ops import registry
from nasrec.model.ops.base import CellSpec, Operator, OpInput, Output
from nasrec.model.ops.dot import dot_tokens
from nasrec.model.ops.merge import D2S, D2S_WIDTH, FM
from nasrec.model.ops.transformer import ATTENTION_CHUNK, HEADS, TRANSFORMER_LN_INIT, attention
from nasrec.space.arch import Block

# Re-exported: the models import CellSpec and Output from here, tests and benchmarks the attention (one
# swapping the attention form sets `nasrec.model.ops.transformer.attention`, where the operator looks it up).
__all__ = [
    "ATTENTION_CHUNK",
    "D2S_WIDTH",
    "HEADS",
    "TRANSFORMER_LN_INIT",
    "Cell",
    "CellSpec",
    "Output",
    "attention",
    "dot_tokens",
]


def _cat(xs: list[torch.Tensor], dim: int) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs, dim=dim)


class Cell(nn.Module):
    """Operators of one block at given capacities; `forward` runs the choices of a `Block`."""

    def __init__(self, spec: CellSpec) -> None:
        super().__init__()
        self.spec = spec
        chosen = (*spec.dense_ops, *spec.sparse_ops)
        ops = {name: registry.get(name) for name in chosen}  # raises on an unknown name
        # the registry's build order fixes the order of the parameters: same seed, same initial weights
        self.operators: dict[str, type[Operator]] = {name: ops[name] for name in registry.build_order() if name in ops}
        for op in self.operators.values():
            op.build(self, spec)
        if spec.fm:
            FM.build(self, spec)
        if spec.d2s:
            D2S.build(self, spec)

    def forward(self, inputs: Sequence[Output], block: Block, live: tuple[bool, bool] = (True, True)) -> Output:
        """Run the block's choices; `inputs[j]` is input j (0 = raw input, j = block j-1's output).

        `live` says whether the block's (dense, sparse) outputs reach the head (`live_outputs`). A side
        that does not is left uncomputed (None), so that a model executes the FLOPs the cost model
        counts; its result could not change the logit, so the outputs are the same.

        With `spec.masking` (a supernet built to measure what slicing changes, docs/design.md) every
        operator runs as the reference's supernet runs it: at the cell's full widths, with layer norms
        over all of them, then cut to the block's widths; the dot product always projects its inputs,
        to round(sqrt(2 W_max)) tokens; sum and gating see block outputs as full-width vectors (so they
        project only when both inputs are the raw input); attention takes the masked zero tokens in.
        """
        W = block.dense_width
        mask = self.spec.masking
        cW, cWs = (self.spec.width, self.spec.tokens) if mask else (W, block.sparse_width)  # computed, then cut
        x = OpInput(inputs, block, cW, cWs, mask)
        dense_live, sparse_live = live
        dense_on = dense_live or (block.d2s and sparse_live)  # the pre-fm dense sum also feeds d2s
        sparse_on = sparse_live or (block.fm and dense_live)  # the pre-d2s token sum also feeds fm
        dense_ops = [self.operators[n] for n in block.dense_ops] if dense_on else []
        sparse_ops = [self.operators[n] for n in block.sparse_ops] if sparse_on else []
        computed = (*dense_ops, *sparse_ops)
        # only inputs an operator reads: the others may name blocks that were never computed
        if any("dense_in" in op.reads for op in computed):
            x.dense_used = [Used(j, inputs[j].dense.shape[1]) for j in block.dense_in]
            x.dense = _cat([inputs[j].dense for j in block.dense_in], 1)
        if any("sparse_in" in op.reads for op in computed):
            x.token_used = [Used(j, inputs[j].tokens.shape[1], inputs[j].d2s is not None) for j in block.sparse_in]
            x_tok = _cat([t for j in block.sparse_in for t in (inputs[j].tokens, inputs[j].d2s) if t is not None], 1)
            x.tokens_t = x_tok.transpose(1, 2)  # [B, 16, T]: token-axis linears act on the last axis

        dense_out = None
        for op in dense_ops:
            y = op.forward(self, x)
            y = y[:, :W] if mask else y
            dense_out = y if dense_out is None else dense_out + y

        tokens = None
        for op in sparse_ops:
            t = op.forward(self, x)
            tokens = t if tokens is None else tokens + t

        d2s = D2S.tokens(self, dense_out, x) if block.d2s and sparse_live else None
        if block.fm and dense_live:
            dense_out = dense_out + FM.term(self, tokens, x)
        if not dense_live:
            dense_out = None  # the pre-fm sum fed d2s only
        return Output(dense_out, tokens if sparse_live else None, d2s)

    @torch.no_grad()
    def copy_from(self, other: Cell) -> None:
        """Materialise this (smaller) cell from a supernet cell: every operator's layers take their slice."""
        for op in self.operators.values():
            op.copy_from(self, other)
        for merge, on in ((FM, self.spec.fm), (D2S, self.spec.d2s)):
            if on:
                merge.copy_from(self, other)
