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
from collections.abc import Sequence
from dataclasses import dataclass

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
        return F.layer_norm(x, (n,), self.weight[:n], self.bias[:n])

    @torch.no_grad()
    def copy_from(self, other: SliceLayerNorm) -> None:
        """Take this layer's slice of a larger layer's parameters."""
        self.weight.copy_(other.weight[: self.cap])
        self.bias.copy_(other.bias[: self.cap])


class SegLinear(nn.Module):
    """A Linear over concatenated inputs, with one weight block per input slot.

    Each slot's block only receives a gradient when that input is used, and an input's columns stay
    the same whichever other inputs are present: weight sharing across connection choices.
    """

    def __init__(self, segs: Sequence[Seg], out_cap: int, bias: bool = True) -> None:
        super().__init__()
        self.segs = tuple(segs)
        self.out_cap = out_cap
        self.pos = {s.index: k for k, s in enumerate(self.segs)}
        self.blocks = nn.ParameterList(
            nn.Parameter(torch.empty(out_cap, s.width + (8 if s.d2s else 0))) for s in self.segs
        )
        self.bias = nn.Parameter(torch.zeros(out_cap)) if bias else None
        fan_in = sum(s.width + (8 if s.d2s else 0) for s in self.segs)
        for p in self.blocks:
            _xavier_uniform_(p, fan_in, out_cap)

    def weight(self, used: Sequence[Used], out: int) -> torch.Tensor:
        """The [out, sum of widths] weight for the inputs in use, in their order."""
        pieces = []
        for u in used:
            k = self.pos[u.index]
            w, cap = self.blocks[k], self.segs[k].width
            pieces.append(w[:out, : u.width])
            if u.d2s:
                pieces.append(w[:out, cap : cap + 8])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def forward(self, x: torch.Tensor, used: Sequence[Used], out: int) -> torch.Tensor:
        """x [..., sum of widths] (the inputs in use, concatenated) -> [..., out]."""
        b = None if self.bias is None else self.bias[:out]
        return F.linear(x, self.weight(used, out), b)

    @torch.no_grad()
    def copy_from(self, other: SegLinear) -> None:
        """Take this layer's slots (exact widths, d2s columns) from a larger layer."""
        for k, s in enumerate(self.segs):
            src = other.blocks[other.pos[s.index]]
            cap = other.segs[other.pos[s.index]].width
            dst = self.blocks[k]
            dst[:, : s.width].copy_(src[: self.out_cap, : s.width])
            if s.d2s:
                dst[:, s.width :].copy_(src[: self.out_cap, cap : cap + 8])
        if self.bias is not None:
            self.bias.copy_(other.bias[: self.out_cap])


class HeadLinear(nn.Module):
    """The output layer: Linear(W + 16 * tokens -> 1) over the last block's dense and sparse outputs."""

    def __init__(self, dense_cap: int, token_cap: int, d2s_slot: bool, dim: int = 16) -> None:
        super().__init__()
        self.dense_cap, self.token_cap, self.d2s_slot, self.dim = dense_cap, token_cap, d2s_slot, dim
        self.dense = nn.Parameter(torch.empty(1, dense_cap))
        self.tokens = nn.Parameter(torch.empty(1, token_cap + (8 if d2s_slot else 0), dim))
        self.bias = nn.Parameter(torch.zeros(1))
        fan_in = dense_cap + self.tokens.shape[1] * dim
        _xavier_uniform_(self.dense, fan_in, 1)
        _xavier_uniform_(self.tokens, fan_in, 1)

    def forward(self, dense: torch.Tensor, main: torch.Tensor, d2s: torch.Tensor | None) -> torch.Tensor:
        """Logit [B] from dense [B, W], tokens [B, Ws, 16] and optional d2s tokens [B, 8, 16]."""
        w, ws = dense.shape[1], main.shape[1]
        xs = [dense, main.flatten(1)]
        ws_ = [self.dense[:, :w], self.tokens[:, :ws].flatten(1)]
        if d2s is not None:
            xs.append(d2s.flatten(1))
            ws_.append(self.tokens[:, self.token_cap : self.token_cap + 8].flatten(1))
        return F.linear(torch.cat(xs, dim=1), torch.cat(ws_, dim=1), self.bias).squeeze(1)

    @torch.no_grad()
    def copy_from(self, other: HeadLinear) -> None:
        """Take this head's slices from a larger head."""
        self.dense.copy_(other.dense[:, : self.dense_cap])
        self.tokens[:, : self.token_cap].copy_(other.tokens[:, : self.token_cap])
        if self.d2s_slot:
            self.tokens[:, self.token_cap :].copy_(other.tokens[:, other.token_cap : other.token_cap + 8])
        self.bias.copy_(other.bias)
