"""sum, gating, cross, bilinear and fuse: the operators that combine two dense inputs, `left` and `right`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasrec.model.ops.base import (
    EMBEDDING_DIM,
    BlockLike,
    CellSpec,
    Cost,
    DenseOperator,
    OpInput,
    head_chunk,
    linear_cost,
    linear_ln_cost,
    ln_if,
    norm,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def sum_cost(dl: int, dr: int, w: int, ln: bool) -> Cost:
    """sum: pad to m = max(dl, dr) and add; Linear(m → w) only if m ≠ w; LN?(w) either way."""
    m = max(dl, dr)
    return linear_ln_cost(m, w, ln) if m != w else ln_if(ln, w)


def gating_cost(dl: int, dr: int, w: int, ln: bool) -> Cost:
    """gating: pad to m; sigmoid(Linear_m×m(left)) ⊙ right; Linear(m → w) only if m ≠ w; LN?(w). Biases always."""
    m = max(dl, dr)
    cost = linear_cost(m, m, bias=True)
    if m != w:
        cost += linear_cost(m, w, bias=True)
    return cost + ln_if(ln, w)


def cross_cost(dl: int, dr: int, w: int, ln: bool) -> Cost:
    """cross: pad to m; left ⊙ Linear_m×m(right) + right; then as sum (Linear(m → w) only if m ≠ w; LN?(w))."""
    m = max(dl, dr)
    return linear_cost(m, m, bias=True) + sum_cost(dl, dr, w, ln)


def bilinear_cost(dl: int, dr: int, w: int, ln: bool) -> Cost:
    """bilinear: pad to m; u = Linear(m → w)(left), v = Linear(m → w)(right); u ⊙ v + u + v; LN?(w). Biases always."""
    m = max(dl, dr)
    return linear_cost(m, w, bias=True) + linear_cost(m, w, bias=True) + ln_if(ln, w)


def fuse_cost(dl: int, dr: int, w: int, ln: bool) -> Cost:
    """fuse: W heads over chunks of a = ⌈dl/W⌉ and c = ⌈dr/W⌉; per head l_hᵀ M_h (a·c) · r_h (c), u_hᵀ l_h (a) and
    v_hᵀ r_h (c); parameters M (W·a·c), u (dl), v (dr) and a bias per head; then LN?(W)."""
    a, c = head_chunk(dl, w), head_chunk(dr, w)
    return Cost(w * (a * c + 2 * c + a), w * a * c + dl + dr + w) + ln_if(ln, w)


def _padded(x: OpInput) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left and right zero-padded to the wider of the two, and that width m."""
    import torch.nn.functional as F

    b = x.block
    left, right = x.inputs[b.left].dense, x.inputs[b.right].dense
    # the reference's supernet passes every block output at full width, zeros beyond its own
    wl = x.width if x.masking and b.left else left.shape[1]
    wr = x.width if x.masking and b.right else right.shape[1]
    m = max(wl, wr)
    return F.pad(left, (0, m - left.shape[1])), F.pad(right, (0, m - right.shape[1])), m


def _build_out(cell: nn.Module, spec: CellSpec, proj: str, ln: str, proj_bias: bool) -> None:
    """A pair operator's output layers: Linear(m → W) (unless a standalone cell's m is W) and LN?(W)."""
    from nasrec.model.layers import SliceLinear, dense_norm

    if not (spec.exact and spec.pad_cap == spec.width):
        setattr(cell, proj, SliceLinear(spec.pad_cap, spec.width, bias=proj_bias))
    setattr(cell, ln, dense_norm(spec.width, spec.batchnorm) if spec.layernorm else None)


def _out(cell: nn.Module, proj: str, ln: str, y: torch.Tensor, m: int, width: int) -> torch.Tensor:
    """`y` [B, m] projected to `width` where m differs, then layer-normed where the norms are on."""
    if m != width:
        y = getattr(cell, proj)(y, width)
    return norm(getattr(cell, ln), y)


class Sum(DenseOperator):
    """left + right (padded to m = the wider), Linear(m → W) where m ≠ W, LN?(W)."""

    name = "sum"
    reads = frozenset({"left", "right"})
    layers = ("sum_proj", "sum_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        _build_out(cell, spec, "sum_proj", "sum_ln", proj_bias=not spec.layernorm)

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        left, right, m = _padded(x)
        return _out(cell, "sum_proj", "sum_ln", left + right, m, x.width)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return sum_cost(left, right, b.dense_width, ln)


class Gating(DenseOperator):
    """sigmoid(Linear(m → m)(left)) ⊙ right (padded to m), Linear(m → W) where m ≠ W, LN?(W); biases always."""

    name = "gating"
    reads = frozenset({"left", "right"})
    layers = ("gate", "gate_proj", "gate_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SliceLinear

        cell.gate = SliceLinear(spec.pad_cap, spec.pad_cap, bias=True)
        _build_out(cell, spec, "gate_proj", "gate_ln", proj_bias=True)

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch

        left, right, m = _padded(x)
        return _out(cell, "gate_proj", "gate_ln", torch.sigmoid(cell.gate(left, m)) * right, m, x.width)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return gating_cost(left, right, b.dense_width, ln)


class Cross(DenseOperator):
    """DCNv2's cross layer: left ⊙ (Linear(m → m)(right) + b) + right (padded to m), Linear(m → W) where m ≠ W, LN?(W).

    With `left` the cross network's input x0 and `right` the previous layer's output x_l it is DCNv2's
    x_{l+1} = x0 ⊙ (W x_l + b) + x_l (Wang et al., 2021); left = right = x0 is its first layer. A chain
    of blocks whose cross reads (left 0, right the block before) is DCNv2's cross network over the
    raw dense features.
    """

    name = "cross"
    reads = frozenset({"left", "right"})
    layers = ("cross", "cross_proj", "cross_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SliceLinear

        cell.cross = SliceLinear(spec.pad_cap, spec.pad_cap, bias=True)
        _build_out(cell, spec, "cross_proj", "cross_ln", proj_bias=not spec.layernorm)

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        left, right, m = _padded(x)
        return _out(cell, "cross_proj", "cross_ln", left * cell.cross(right, m) + right, m, x.width)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return cross_cost(left, right, b.dense_width, ln)


class Bilinear(DenseOperator):
    """FinalMLP's bilinear fusion of two streams, in low rank: u ⊙ v + u + v, LN?(W).

    u = U·left + b_u and v = V·right + b_v, both W wide (left and right padded to m, the wider). The head's
    linear over the output gives Σ_k h_k (u_k v_k + u_k + v_k): a rank-W bilinear form of the two streams
    plus a linear term of each, FinalMLP's fusion (Mao et al., 2023) with its heads' products factorised.
    `(1 + u) ⊙ (1 + v) − 1`, so at v = 0 it passes u, and at u = 0 v.
    """

    name = "bilinear"
    reads = frozenset({"left", "right"})
    layers = ("bil_u", "bil_v", "bil_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import SliceLinear, dense_norm

        cell.bil_u = SliceLinear(spec.pad_cap, spec.width, bias=True)
        cell.bil_v = SliceLinear(spec.pad_cap, spec.width, bias=True)
        cell.bil_ln = dense_norm(spec.width, spec.batchnorm) if spec.layernorm else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        left, right, _ = _padded(x)
        u, v = cell.bil_u(left, x.width), cell.bil_v(right, x.width)
        return norm(cell.bil_ln, u * v + u + v)

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return bilinear_cost(left, right, b.dense_width, ln)


class Fuse(DenseOperator):
    """FinalMLP's multi-head bilinear fusion, exactly: out_h = l_hᵀ M_h r_h + u_hᵀ l_h + v_hᵀ r_h + b_h for W heads.

    left and right are each cut into W equal chunks (zero-padded), one per head; the output is the W heads'
    terms, which the head's linear sums: without norms and with head weights 1 it is FinalMLP's logit (Mao et
    al., 2023; two flat streams fused by `fuse` are FinalMLP without gates given its weights, tested against
    the zoo model). With norms on, LN?(W) follows as after every pair operator: products of products grow
    with depth, and a supernet whose fuse outputs fed other fuse blocks unnormalised diverged at step 8.
    `bilinear` is the low-rank form. Under masking (the reference's semantics) the block's W heads read the
    inputs at the widths they arrive at, the output zero-padded to the cell's width.
    """

    name = "fuse"
    reads = frozenset({"left", "right"})
    layers = ("fuse", "fuse_ln")

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        from nasrec.model.layers import MultiHeadBilinear, dense_norm

        dims = (*spec.pair_widths, spec.width) if spec.exact and spec.pair_widths is not None else None
        cell.fuse = MultiHeadBilinear(spec.pad_cap, spec.width, dims)
        cell.fuse_ln = dense_norm(spec.width, spec.batchnorm) if spec.layernorm else None

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        import torch.nn.functional as F

        b = x.block
        heads = b.dense_width
        out = norm(cell.fuse_ln, cell.fuse(x.inputs[b.left].dense, x.inputs[b.right].dense, heads))
        return F.pad(out, (0, x.width - heads)) if x.width != heads else out

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        return fuse_cost(left, right, b.dense_width, ln)
