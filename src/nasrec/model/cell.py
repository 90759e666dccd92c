"""One choice block (cell) and its operators, shared by the supernet and standalone models.

A cell is built for a set of operators and input slots at given capacities. The supernet builds
every cell with all operators of its space at the largest widths and every earlier output as an
input slot; a standalone model builds each live cell with only its chosen operators, inputs and exact
widths. The forward pass is the same code for both (see `layers.py`), which is what makes a
materialised subnet compute exactly what the supernet computes on that path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nasrec.model.layers import Seg, SegLinear, SliceLayerNorm, SliceLinear, Used
from nasrec.space.arch import D2S_TOKENS, EMBEDDING_DIM, Block

HEADS = 8
D2S_WIDTH = D2S_TOKENS * EMBEDDING_DIM  # 128
TRANSFORMER_LN_INIT = 0.17


_TRIL: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _tril(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the strictly lower triangle of an n x n matrix, row-major (cached)."""
    key = (n, str(device))
    if key in _TRIL:
        return _TRIL[key]
    rows, cols = torch.tril_indices(n, n, offset=-1, device=device)
    # under tracing or export these may be symbolic or fake tensors, useless to later eager calls
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        _TRIL[key] = (rows, cols)
    return rows, cols


def dot_tokens(width: int) -> int:
    """Sparse tokens projected by the dot operator for output width W: round(sqrt(2W))."""
    return round(math.sqrt(2 * width))


ATTENTION_CHUNK = 2**20  # score entries per chunk (4 MB): a chunk's scores stay in cache


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, T, d], computed in chunks of the batch."""
    # With 2-dimensional heads, torch's fused CPU attention spends its time on per-block overhead, and
    # the plain form on memory traffic: scores of [512, 8, 64, 64] are 67 MB a tensor. Chunks of the
    # batch whose scores fit in cache were 25-35 % faster than either, forward and backward, at 16-64
    # tokens (BENCHMARKS.md). Export sees one chunk: a traced split would fix the batch size.
    B, H, T, d = q.shape
    rows = max(1, ATTENTION_CHUNK // (H * T * T))
    q = q * d**-0.5
    if rows >= B or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), -1), v)
    parts = zip(q.split(rows), k.split(rows), v.split(rows), strict=True)
    return torch.cat([torch.matmul(torch.softmax(torch.matmul(a, b.transpose(-1, -2)), -1), c) for a, b, c in parts])


@dataclass
class Output:
    """A block's (or the raw input's) outputs: dense [B, W], tokens [B, Ws, 16], d2s tokens [B, 8, 16].

    A block leaves None where an output cannot reach the head (and d2s when it has none).
    """

    dense: torch.Tensor | None
    tokens: torch.Tensor | None
    d2s: torch.Tensor | None = None


@dataclass(frozen=True)
class CellSpec:
    """Capacities of a cell: operators, input slots and maximum widths."""

    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_segs: tuple[Seg, ...]  # input slots of fc / dot's dense side
    token_segs: tuple[Seg, ...]  # input slots of the sparse op / dot's sparse side
    pad_cap: int  # largest max(left, right) width for sum / gating
    width: int  # largest dense width W
    tokens: int  # largest sparse width Ws
    fm: bool
    d2s: bool
    layernorm: bool
    exact: bool = False  # a standalone cell: layers its fixed sizes never use are not built
    masking: bool = False  # the reference's semantics (supernet only; see `Cell.forward`)


def _cat(xs: list[torch.Tensor], dim: int) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs, dim=dim)


class Cell(nn.Module):
    """Operators of one block at given capacities; `forward` runs the choices of a `Block`."""

    def __init__(self, spec: CellSpec) -> None:
        super().__init__()
        self.spec = spec
        ln = spec.layernorm
        W, Ws, M = spec.width, spec.tokens, spec.pad_cap
        if "fc" in spec.dense_ops:
            self.fc = SegLinear(spec.dense_segs, W, bias=not ln)
            self.fc_ln = SliceLayerNorm(W) if ln else None
        exact = spec.exact
        if "dot" in spec.dense_ops:
            p = dot_tokens(W)
            if not (exact and sum(s.width for s in spec.dense_segs) == EMBEDDING_DIM):
                self.dot_dense = SegLinear(spec.dense_segs, EMBEDDING_DIM, bias=not ln)
                self.dot_dense_ln = SliceLayerNorm(EMBEDDING_DIM) if ln else None
            tokens_in = sum(s.width + (8 if s.d2s else 0) for s in spec.token_segs)
            if not (exact and tokens_in == p):
                self.dot_tokens = SegLinear(spec.token_segs, p, bias=not ln)
                self.dot_tokens_ln = SliceLayerNorm(p) if ln else None
            if not (exact and (p + 1) * p // 2 == W):
                self.dot_out = SliceLinear((p + 1) * p // 2, W, bias=not ln)
                self.dot_out_ln = SliceLayerNorm(W) if ln else None
        if "sum" in spec.dense_ops:
            if not (exact and M == W):
                self.sum_proj = SliceLinear(M, W, bias=not ln)
            self.sum_ln = SliceLayerNorm(W) if ln else None
        if "gating" in spec.dense_ops:
            self.gate = SliceLinear(M, M, bias=True)
            if not (exact and M == W):
                self.gate_proj = SliceLinear(M, W, bias=True)
            self.gate_ln = SliceLayerNorm(W) if ln else None
        if "efc" in spec.sparse_ops:
            self.efc = SegLinear(spec.token_segs, Ws, bias=not ln)
            self.efc_ln = SliceLayerNorm(Ws) if ln else None
        if "transformer" in spec.sparse_ops:
            self.tr_proj = SegLinear(spec.token_segs, Ws, bias=not ln)
            self.tr_proj_ln = SliceLayerNorm(Ws) if ln else None
            self.attn_in = nn.Linear(EMBEDDING_DIM, 3 * EMBEDDING_DIM)
            self.attn_out = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
            self.attn_ln = SliceLayerNorm(EMBEDDING_DIM, TRANSFORMER_LN_INIT)
            self.ffn1 = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
            self.ffn2 = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
            self.ffn_ln = SliceLayerNorm(EMBEDDING_DIM, TRANSFORMER_LN_INIT)
            for lin in (self.attn_in, self.attn_out, self.ffn1, self.ffn2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        if spec.fm:
            if not (exact and W == EMBEDDING_DIM):
                self.fm_proj = SliceLinear(EMBEDDING_DIM, W, bias=not ln)
            # With layer norms the fm term is normalised at W = 16 too (the reference adds it raw there:
            # its entries grow with the square of the token count and swamp the head; docs/design.md).
            self.fm_ln = SliceLayerNorm(W) if ln else None
        if spec.d2s and not (exact and W == D2S_WIDTH):
            self.d2s_proj = SliceLinear(W, D2S_WIDTH, bias=not ln)
            self.d2s_ln = SliceLayerNorm(D2S_WIDTH) if ln else None

    @staticmethod
    def _ln(layer: SliceLayerNorm | None, x: torch.Tensor) -> torch.Tensor:
        return x if layer is None else layer(x)

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
        W, Ws = block.dense_width, block.sparse_width
        mask = self.spec.masking
        cW, cWs = (self.spec.width, self.spec.tokens) if mask else (W, Ws)  # widths computed, then cut to W, Ws
        dense_live, sparse_live = live
        dense_on = dense_live or (block.d2s and sparse_live)  # the pre-fm dense sum also feeds d2s
        sparse_on = sparse_live or (block.fm and dense_live)  # the pre-d2s token sum also feeds fm
        dense_ops = block.dense_ops if dense_on else ()
        dense_used, x_dense = [], None
        if dense_on and block.uses_dense_in:  # otherwise dense_in may name blocks that were never computed
            dense_used = [Used(j, inputs[j].dense.shape[1]) for j in block.dense_in]
            x_dense = _cat([inputs[j].dense for j in block.dense_in], 1)
        token_used, x_tok_t = [], None
        if sparse_on or "dot" in dense_ops:
            token_used = [Used(j, inputs[j].tokens.shape[1], inputs[j].d2s is not None) for j in block.sparse_in]
            x_tok = _cat([t for j in block.sparse_in for t in (inputs[j].tokens, inputs[j].d2s) if t is not None], 1)
            x_tok_t = x_tok.transpose(1, 2)  # [B, 16, T]: token-axis linears act on the last axis

        dense_out = None
        for op in dense_ops:
            if op == "fc":
                y = F.relu(self._ln(self.fc_ln, self.fc(x_dense, dense_used, cW)))
            elif op == "dot":
                y = self._dot(x_dense, dense_used, x_tok_t, token_used, cW)
            else:
                left, right = inputs[block.left].dense, inputs[block.right].dense
                # the reference's supernet passes every block output at full width, zeros beyond its own
                wl = cW if mask and block.left else left.shape[1]
                wr = cW if mask and block.right else right.shape[1]
                y = self._pair(op, left, right, cW, max(wl, wr))
            y = y[:, :W] if mask else y
            dense_out = y if dense_out is None else dense_out + y

        tokens = None
        for op in block.sparse_ops if sparse_on else ():
            if op == "efc":
                t = F.relu(self._ln(self.efc_ln, self.efc(x_tok_t, token_used, cWs)))[:, :, :Ws].transpose(1, 2)
            else:
                t = self._transformer(x_tok_t, token_used, cWs, Ws)
            tokens = t if tokens is None else tokens + t

        d2s = None
        if block.d2s and sparse_live:
            z = dense_out if W == D2S_WIDTH and not mask else self._ln(self.d2s_ln, self.d2s_proj(dense_out, D2S_WIDTH))
            d2s = z.reshape(z.shape[0], D2S_TOKENS, EMBEDDING_DIM)
        if block.fm and dense_live:
            s = tokens.sum(1)
            v = s * s - (tokens * tokens).sum(1)  # pairwise interactions, without the 1/2 of the FM paper
            dense_out = dense_out + self._ln(self.fm_ln, v if cW == EMBEDDING_DIM else self.fm_proj(v, cW))[:, :W]
        if not dense_live:
            dense_out = None  # the pre-fm sum fed d2s only
        return Output(dense_out, tokens if sparse_live else None, d2s)

    def _dot(self, x, dense_used, x_tok_t, token_used, W: int) -> torch.Tensor:
        p, mask = dot_tokens(W), self.spec.masking  # the reference's supernet inputs are never 16 wide or p tokens
        if x.shape[1] != EMBEDDING_DIM or mask:
            x = self._ln(self.dot_dense_ln, self.dot_dense(x, dense_used, EMBEDDING_DIM))
        y = x_tok_t
        if x_tok_t.shape[2] != p or mask:  # as the reference: no projection when there are already p tokens
            y = self._ln(self.dot_tokens_ln, self.dot_tokens(x_tok_t, token_used, p))
        z = torch.cat([x.unsqueeze(1), y.transpose(1, 2)], dim=1)  # [B, p+1, 16]
        gram = torch.bmm(z, z.transpose(1, 2))
        rows, cols = _tril(p + 1, z.device)
        pairs = gram[:, rows, cols]
        if pairs.shape[1] == W and not mask:  # likewise no output layer when the pair count is already W
            return pairs
        return self._ln(self.dot_out_ln, self.dot_out(pairs, W))

    def _pair(self, op: str, left: torch.Tensor, right: torch.Tensor, W: int, m: int) -> torch.Tensor:
        left = F.pad(left, (0, m - left.shape[1]))
        right = F.pad(right, (0, m - right.shape[1]))
        if op == "sum":
            y = left + right
            if m != W:
                y = self.sum_proj(y, W)
            return self._ln(self.sum_ln, y)
        y = torch.sigmoid(self.gate(left, m)) * right
        if m != W:
            y = self.gate_proj(y, W)
        return self._ln(self.gate_ln, y)

    def _transformer(self, x_tok_t: torch.Tensor, token_used, cWs: int, Ws: int) -> torch.Tensor:
        t = self._ln(self.tr_proj_ln, self.tr_proj(x_tok_t, token_used, cWs)).transpose(1, 2)  # [B, cWs, 16]
        if cWs != Ws:  # masking: tokens >= Ws are zeros, and attend and are attended to
            t = F.pad(t[:, :Ws], (0, 0, 0, cWs - Ws))
        B, T, E = t.shape
        q, k, v = self.attn_in(t).view(B, T, 3, HEADS, E // HEADS).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v).transpose(1, 2).reshape(B, T, E)
        t = self.attn_ln(t + self.attn_out(a))
        return self.ffn_ln(t + self.ffn2(F.relu(self.ffn1(t))))[:, :Ws]

    @torch.no_grad()
    def copy_from(self, other: Cell) -> None:
        """Materialise this (smaller) cell from a supernet cell: every layer takes its slice."""
        for name, mod in self.named_children():
            src = other.get_submodule(name)
            if hasattr(mod, "copy_from"):
                mod.copy_from(src)
            else:  # fixed-size layers (attention, FFN) are shared whole
                mod.load_state_dict(src.state_dict())
