"""Elastic primitives: layers held at a capacity and run on slices of their weights.

A supernet layer and the matching layer of a standalone model are the same class: the supernet's
is built at the search space's maximum sizes, the standalone one at exactly the sizes its
architecture uses. Forward passes take the sizes in use and slice the weights (a prefix, or for
concatenated inputs a piece of each input's own weight block), so a sampled subnet costs what it
computes, and `copy_from` materialises a standalone layer from a supernet layer by copying exactly
those slices: both then compute the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Seg:
    """One input slot of a concatenated input: input index, capacity, and whether it has a d2s slot."""

    index: int
    width: int
    d2s: bool = False  # 8 extra token columns after `width`, for the dense-to-sparse tokens


@dataclass(frozen=True)
class Used:
    """An input present in a forward pass: its index, width in use and whether it carries d2s tokens."""

    index: int
    width: int
    d2s: bool = False


def _xavier_uniform_(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    if fan_in + fan_out == 0:  # a 0 x 0 layer (gating of an empty dense input, with no dense fields)
        return
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -bound, bound)


class SliceLinear(nn.Module):
    """Linear(in_cap -> out_cap) used as Linear(in -> out) on its top-left [out, in] slice."""

    def __init__(self, in_cap: int, out_cap: int, bias: bool = True) -> None:
        super().__init__()
        self.in_cap, self.out_cap = in_cap, out_cap
        self.weight = nn.Parameter(torch.empty(out_cap, in_cap))
        self.bias = nn.Parameter(torch.zeros(out_cap)) if bias else None
        _xavier_uniform_(self.weight, in_cap, out_cap)

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        w = self.weight if out == self.out_cap and x.shape[-1] == self.in_cap else self.weight[:out, : x.shape[-1]]
        b = None if self.bias is None else self.bias[:out]
        return F.linear(x, w, b)

    @torch.no_grad()
    def copy_from(self, other: SliceLinear) -> None:
        """Take this layer's slice of a larger layer's weights."""
        self.weight.copy_(other.weight[: self.out_cap, : self.in_cap])
        if self.bias is not None:
            self.bias.copy_(other.bias[: self.out_cap])


def head_chunk(d: int, heads: int) -> int:
    """The width of each of `heads` equal chunks of a d-wide vector (the last ones zero-padded; at least 1).

    The same rule as `nasrec.model.ops.base.head_chunk`, which costs `fuse` without torch; the operators
    import this module, so it cannot import theirs (tests hold the two to the same parameter counts)."""
    return max(1, (d + heads - 1) // heads)  # not -(-d // h): ONNX's integer division truncates


class MultiHeadBilinear(nn.Module):
    """Per-head bilinear forms of two vectors: out_h = l_hᵀ M_h r_h + u_hᵀ l_h + v_hᵀ r_h + b_h, h < H.

    l [B, dl] and r [B, dr] are cut into H chunks of a = ⌈dl / H⌉ and c = ⌈dr / H⌉ values (zero-padded),
    FinalMLP's multi-head fusion before its heads are summed. A standalone layer (`dims` = (dl, dr, H))
    holds each M_h as [H, a, c]; an elastic one (a supernet's, `dims` None) holds one [cap, cap] matrix
    whose diagonal blocks at (dl, dr, H) are the M_h, so every path slices the same weights. u and v are
    one weight per input value (the chunks' pieces), b one per head.
    """

    def __init__(self, cap: int, heads_cap: int, dims: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.dims = dims
        if dims is None:
            n_left = n_right = cap
            heads = heads_cap
            self.m = nn.Parameter(torch.empty(cap, cap))
            used = heads * head_chunk(cap, heads) ** 2  # the widest path's blocks
        else:
            n_left, n_right, heads = dims
            a, c = head_chunk(n_left, heads), head_chunk(n_right, heads)
            self.m = nn.Parameter(torch.empty(heads, a, c))
            used = heads * a * c
        self.u = nn.Parameter(torch.empty(n_left))
        self.v = nn.Parameter(torch.empty(n_right))
        self.bias = nn.Parameter(torch.zeros(heads))
        # FuxiCTR's scale for FinalMLP's bilinear weights: xavier-normal as one map from the products to a logit
        nn.init.normal_(self.m, std=math.sqrt(2.0 / (used + 1)))
        _xavier_uniform_(self.u, n_left, 1)
        _xavier_uniform_(self.v, n_right, 1)

    def blocks(self, dl: int, dr: int, heads: int) -> torch.Tensor:
        """The [heads, a, c] bilinear weights of the heads at input widths (dl, dr)."""
        if self.dims is not None:
            return self.m
        a, c = head_chunk(dl, heads), head_chunk(dr, heads)
        m = self.m[: heads * a, : heads * c]
        m = F.pad(m, (0, heads * c - m.shape[1], 0, heads * a - m.shape[0]))
        return m.reshape(heads, a, heads, c).diagonal(dim1=0, dim2=2).permute(2, 0, 1)

    def forward(self, left: torch.Tensor, right: torch.Tensor, heads: int) -> torch.Tensor:
        """left [B, dl], right [B, dr] -> [B, heads]."""
        # a standalone layer's widths as plain ints: traced input sizes become graph values in an export
        dl, dr = self.dims[:2] if self.dims is not None else (left.shape[1], right.shape[1])
        a, c = head_chunk(dl, heads), head_chunk(dr, heads)
        lp = F.pad(left, (0, heads * a - dl)).reshape(-1, heads, 1, a)
        rp = F.pad(right, (0, heads * c - dr)).reshape(-1, heads, 1, c)
        u = F.pad(self.u[:dl], (0, heads * a - dl)).reshape(heads, a, 1)
        v = F.pad(self.v[:dr], (0, heads * c - dr)).reshape(heads, c, 1)
        # matrix products throughout, so that FLOP counters see every multiply-accumulate the cost counts
        lm = torch.matmul(lp, self.blocks(dl, dr, heads))  # [B, H, 1, c]
        out = torch.matmul(lm, rp.transpose(2, 3)) + torch.matmul(lp, u) + torch.matmul(rp, v)
        return out.flatten(1) + self.bias[:heads]

    @torch.no_grad()
    def copy_from(self, other: MultiHeadBilinear) -> None:
        """Take this layer's heads from a supernet's (elastic) layer."""
        if self.dims is None:
            self.load_state_dict(other.state_dict())
            return
        dl, dr, heads = self.dims
        self.m.copy_(other.blocks(dl, dr, heads))
        self.u.copy_(other.u[:dl])
        self.v.copy_(other.v[:dr])
        self.bias.copy_(other.bias[:heads])


def dense_norm(n: int, batchnorm: bool) -> nn.Module:
    """The norm of a block's dense [B, n] output: a sliceable layer norm, or a standalone model's batch norm.

    Batch norm (`Subnet(batchnorm=True)`) is what the zoo's MLPs use (Linear → BatchNorm → ReLU); a standalone
    cell's widths are fixed, so it is a plain BatchNorm1d. Supernets always use layer norms.
    """
    return nn.BatchNorm1d(n) if batchnorm else SliceLayerNorm(n)


class SliceLayerNorm(nn.Module):
    """LayerNorm over the last `n <= cap` features, with the first n of its affine parameters."""

    def __init__(self, cap: int, init_weight: float = 1.0) -> None:
        super().__init__()
        self.cap = cap
        self.weight = nn.Parameter(torch.full((cap,), float(init_weight)))
        self.bias = nn.Parameter(torch.zeros(cap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis of x (its size is the width in use)."""
        n = x.shape[-1]
        if n == self.cap:  # the whole layer (a standalone model): a constant shape, as tracing ONNX exporters need
            return F.layer_norm(x, (self.cap,), self.weight, self.bias)
        return F.layer_norm(x, (n,), self.weight[:n], self.bias[:n])

    @torch.no_grad()
    def copy_from(self, other: SliceLayerNorm) -> None:
        """Take this layer's slice of a larger layer's parameters."""
        self.weight.copy_(other.weight[: self.cap])
        self.bias.copy_(other.bias[: self.cap])


class SegLinear(nn.Module):
    """A Linear over concatenated inputs, with one weight block per input slot.

    Each slot's block only receives a gradient when that input is used, and an input's columns stay
    the same whichever other inputs are present: weight sharing across connection choices. With `unit`
    u, every position of a slot is u columns wide: tokens flattened token by token (u = 16 channels).
    """

    def __init__(self, segs: Sequence[Seg], out_cap: int, bias: bool = True, unit: int = 1) -> None:
        super().__init__()
        self.segs = tuple(segs)
        self.out_cap, self.unit = out_cap, unit
        self.pos = {s.index: k for k, s in enumerate(self.segs)}
        self.blocks = nn.ParameterList(
            nn.Parameter(torch.empty(out_cap, unit * (s.width + (8 if s.d2s else 0)))) for s in self.segs
        )
        self.bias = nn.Parameter(torch.zeros(out_cap)) if bias else None
        fan_in = unit * sum(s.width + (8 if s.d2s else 0) for s in self.segs)
        for p in self.blocks:
            _xavier_uniform_(p, fan_in, out_cap)

    def weight(self, used: Sequence[Used], out: int) -> torch.Tensor:
        """The [out, unit x sum of widths] weight for the inputs in use, in their order."""
        pieces, unit = [], self.unit
        for u in used:
            k = self.pos[u.index]
            w, cap = self.blocks[k], self.segs[k].width
            pieces.append(w[:out, : unit * u.width])
            if u.d2s:
                pieces.append(w[:out, unit * cap : unit * (cap + 8)])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def forward(self, x: torch.Tensor, used: Sequence[Used], out: int) -> torch.Tensor:
        """x [..., sum of widths] (the inputs in use, concatenated) -> [..., out]."""
        b = None if self.bias is None else self.bias[:out]
        return F.linear(x, self.weight(used, out), b)

    @torch.no_grad()
    def copy_from(self, other: SegLinear) -> None:
        """Take this layer's slots (exact widths, d2s columns) from a larger layer."""
        unit = self.unit
        for k, s in enumerate(self.segs):
            src = other.blocks[other.pos[s.index]]
            cap = other.segs[other.pos[s.index]].width
            dst = self.blocks[k]
            dst[:, : unit * s.width].copy_(src[: self.out_cap, : unit * s.width])
            if s.d2s:
                dst[:, unit * s.width :].copy_(src[: self.out_cap, unit * cap : unit * (cap + 8)])
        if self.bias is not None:
            self.bias.copy_(other.bias[: self.out_cap])


class SegOutLinear(nn.Module):
    """A Linear whose output is laid out as `SegLinear`'s input: one weight block per output slot.

    Linear(in -> the slots in use, concatenated, each `unit` x its width in use, d2s rows after them). The
    inverse layout of `SegLinear`: a gate computed from concatenated inputs, for those same inputs.
    """

    def __init__(self, in_cap: int, segs: Sequence[Seg], unit: int = 1) -> None:
        super().__init__()
        self.segs = tuple(segs)
        self.in_cap, self.unit = in_cap, unit
        self.pos = {s.index: k for k, s in enumerate(self.segs)}
        rows = [unit * (s.width + (8 if s.d2s else 0)) for s in self.segs]
        self.blocks = nn.ParameterList(nn.Parameter(torch.empty(r, in_cap)) for r in rows)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(r)) for r in rows)
        for p in self.blocks:
            _xavier_uniform_(p, in_cap, sum(rows))

    def forward(self, x: torch.Tensor, used: Sequence[Used]) -> torch.Tensor:
        """x [..., in] -> [..., unit x sum of the widths in use] (with d2s rows where used)."""
        unit, n = self.unit, x.shape[-1]
        weights, biases = [], []
        for u in used:
            k = self.pos[u.index]
            w, b, cap = self.blocks[k], self.biases[k], self.segs[k].width
            weights.append(w[: unit * u.width, :n])
            biases.append(b[: unit * u.width])
            if u.d2s:
                weights.append(w[unit * cap : unit * (cap + 8), :n])
                biases.append(b[unit * cap : unit * (cap + 8)])
        if len(weights) == 1:
            return F.linear(x, weights[0], biases[0])
        return F.linear(x, torch.cat(weights, dim=0), torch.cat(biases))

    @torch.no_grad()
    def copy_from(self, other: SegOutLinear) -> None:
        """Take this layer's slots (exact widths, d2s rows) from a larger layer."""
        unit = self.unit
        for k, s in enumerate(self.segs):
            j = other.pos[s.index]
            cap = other.segs[j].width
            rows = [slice(0, unit * s.width)] + ([slice(unit * cap, unit * (cap + 8))] if s.d2s else [])
            self.blocks[k].copy_(torch.cat([other.blocks[j][r, : self.in_cap] for r in rows]))
            self.biases[k].copy_(torch.cat([other.biases[j][r] for r in rows]))


class HeadLinear(nn.Module):
    """The output layer: Linear(W + 16 * tokens -> 1) over the last block's dense and sparse outputs.

    With `centre`, the head subtracts a per-feature mean from its input first, as batch normalisation
    does without scaling: the batch's mean while training (the gradient flows through it); in evaluation
    a running mean (the plain average of the first 10 batches, then momentum 0.1; or set exactly by
    `calibrate`), folded into the bias. The batch's mean logit is then the bias, whatever the features:
    no weight change can shift every logit of a batch at once, which is what made supernet training
    under path sampling unstable (docs/design.md, "Centred head"). `group` (set by a data-parallel
    trainer) makes the batch the global one; `init_head_bias` starts the bias at the data's log-odds, for a
    centred head and for one made with `log_odds_bias` (an uncentred head of a layer-normed model).
    """

    def __init__(
        self,
        dense_cap: int,
        token_cap: int,
        d2s_slot: bool,
        dim: int = 16,
        centre: bool = False,
        log_odds_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.dense_cap, self.token_cap, self.d2s_slot, self.dim = dense_cap, token_cap, d2s_slot, dim
        self.dense = nn.Parameter(torch.empty(1, dense_cap))
        self.tokens = nn.Parameter(torch.empty(1, token_cap + (8 if d2s_slot else 0), dim))
        self.bias = nn.Parameter(torch.zeros(1))
        fan_in = dense_cap + self.tokens.shape[1] * dim
        _xavier_uniform_(self.dense, fan_in, 1)
        _xavier_uniform_(self.tokens, fan_in, 1)
        self.centre = centre
        self.log_odds_bias = centre if log_odds_bias is None else log_odds_bias
        self.momentum = 0.1
        self.group = None
        if centre:  # layout: dense features, then the token slots flattened (as `tokens`)
            self.register_buffer("mean", torch.zeros(1, fan_in))
            # batches seen per feature: the running mean is their plain average until there are 1 / momentum
            self.register_buffer("seen", torch.zeros(1, fan_in))

    def _parts(self, w: int, ws: int, d2s: bool) -> list[tuple[int, int]]:
        """(offset, length) of the pieces of the flat input layout a forward pass uses."""
        parts = [(0, w), (self.dense_cap, ws * self.dim)]
        if d2s:
            parts.append((self.dense_cap + self.token_cap * self.dim, 8 * self.dim))
        return parts

    def _inputs(self, dense: torch.Tensor, main: torch.Tensor, d2s: torch.Tensor | None):
        w, ws = dense.shape[1], main.shape[1]
        xs = [dense, main.flatten(1)]
        ws_ = [self.dense[:, :w], self.tokens[:, :ws].flatten(1)]
        if d2s is not None:
            xs.append(d2s.flatten(1))
            ws_.append(self.tokens[:, self.token_cap : self.token_cap + 8].flatten(1))
        return torch.cat(xs, dim=1), torch.cat(ws_, dim=1), self._parts(w, ws, d2s is not None)

    def forward(self, dense: torch.Tensor, main: torch.Tensor, d2s: torch.Tensor | None) -> torch.Tensor:
        """Logit [B] from dense [B, W], tokens [B, Ws, 16] and optional d2s tokens [B, 8, 16]."""
        x, weight, parts = self._inputs(dense, main, d2s)
        if not self.centre:
            return F.linear(x, weight, self.bias).squeeze(1)
        if self.training:
            m = _batch_mean(x, self.group)
            with torch.no_grad():
                seen = self._used(self.seen, parts) + 1
                rate = seen.reciprocal().clamp(min=self.momentum)
                self._set(self.seen, seen, parts)
                self._set(self.mean, self._used(self.mean, parts).lerp(m.detach(), rate), parts)
            return F.linear(x - m, weight, self.bias).squeeze(1)
        return F.linear(x, weight, self.bias - weight @ self._used(self.mean, parts)[0]).squeeze(1)

    @staticmethod
    def _used(buf: torch.Tensor, parts: list[tuple[int, int]]) -> torch.Tensor:
        return torch.cat([buf[:, a : a + n] for a, n in parts], dim=1)

    @staticmethod
    def _set(buf: torch.Tensor, value: torch.Tensor, parts: list[tuple[int, int]]) -> None:
        for (a, n), piece in zip(parts, value.split([n for _, n in parts], dim=1), strict=True):
            buf[:, a : a + n] = piece

    @torch.no_grad()
    def calibrate(self, inputs: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
        """Set the running mean to the exact mean of the head inputs (dense, tokens, d2s) over some batches.

        A supernet's running mean mixes every path trained; a candidate's own mean is measured before it
        is scored, as one-shot NAS recomputes batch-norm statistics per candidate.
        """
        if not self.centre:
            return
        total, rows, parts = None, 0, None
        for dense, main, d2s in inputs:
            x, _, parts = self._inputs(dense, main, d2s)
            s = x.sum(0, keepdim=True, dtype=torch.float64)
            total = s if total is None else total + s
            rows += x.shape[0]
        if total is not None and rows:
            self._set(self.mean, (total / rows).to(self.mean.dtype), parts)

    @torch.no_grad()
    def copy_from(self, other: HeadLinear) -> None:
        """Take this head's slices from a larger head."""
        self.dense.copy_(other.dense[:, : self.dense_cap])
        self.tokens[:, : self.token_cap].copy_(other.tokens[:, : self.token_cap])
        if self.d2s_slot:
            self.tokens[:, self.token_cap :].copy_(other.tokens[:, other.token_cap : other.token_cap + 8])
        self.bias.copy_(other.bias)
        if self.centre and other.centre:
            src, dst = (
                other._parts(self.dense_cap, self.token_cap, self.d2s_slot),
                self._parts(self.dense_cap, self.token_cap, self.d2s_slot),
            )
            for buf in ("mean", "seen"):
                self._set(getattr(self, buf), self._used(getattr(other, buf), src), dst)


def _batch_mean(x: torch.Tensor, group: object | None) -> torch.Tensor:
    """Mean over the batch [1, N], over every rank's rows when `group` is set (differentiable)."""
    if group is None:
        return x.mean(0, keepdim=True)
    # one all-reduce carries the feature sums and the row count (ranks may hold different row counts)
    total = _AllReduceSum.apply(torch.cat([x.sum(0), x.new_tensor([float(x.shape[0])])]), group)
    return (total[:-1] / total[-1]).unsqueeze(0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks too (each rank's loss reads the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: object) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


@torch.no_grad()
def calibrate_head(
    features: Callable[[torch.Tensor, torch.Tensor], Any], head: nn.Module, batches: Iterable[Any]
) -> None:
    """Set a centred head's mean exactly over `batches` (each with .dense, .sparse) seen through `features`.

    `features(dense, sparse)` returns the head's inputs (.dense, .tokens, .d2s). No-op for other heads.
    """
    if isinstance(head, HeadLinear) and head.centre:
        head.calibrate((f.dense, f.tokens, f.d2s) for f in (features(b.dense, b.sparse) for b in batches))


def log_odds(ctr: float) -> float:
    """The log-odds of a click rate, kept finite for a rate of 0 or 1 (clamped to [1e-6, 1 - 1e-6])."""
    p = min(max(ctr, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@torch.no_grad()
def init_head_bias(model: nn.Module, ctr: float) -> None:
    """Start every centred head's bias (and each head made with `log_odds_bias`) at the log-odds of `ctr`.

    `ctr` is the training split's click rate. A centred head's batch-mean logit is its bias alone, which
    Adagrad moves by about lr per step: from 0, a 3 % click rate would take hundreds of steps to reach.
    Other heads are left as they are.
    """
    for m in model.modules():
        if isinstance(m, HeadLinear) and m.log_odds_bias:
            m.bias.fill_(log_odds(ctr))


def set_batch_group(model: nn.Module, group: object | None) -> None:
    """Make every centred head of `model` use batch means over the ranks of `group` (None: local)."""
    for m in model.modules():
        if isinstance(m, HeadLinear):
            m.group = group
