"""What every operator module implements, and the layer-level cost formulas they are counted with.

An operator is a class, never instantiated, that owns in one place everything nasrec knows of it:

- ``name`` (what architecture JSON and search spaces call it) and ``kind`` (``dense``: its output is
  [B, W] and the block's dense outputs are summed; ``sparse``: [B, Ws, 16], summed likewise);
- ``reads``: the input lists of a `Block` it reads (``dense_in``, ``sparse_in``, ``left``, ``right``),
  which is all liveness needs (`inputs`, `live`);
- ``layers``: the names of the layers it creates on a `Cell` (`build`). They are attributes of the
  cell itself, so state_dict keys stay ``cells.3.fc.blocks.0`` whichever module defines the operator;
  `build` creates them in a fixed order (same seed, same initial weights), at a supernet's capacities
  or, in a standalone cell (``spec.exact``), at exactly its sizes, leaving out projections those sizes
  make an identity;
- `forward`: the operator on the inputs the cell prepared (`OpInput`), on slices of its weights;
- `copy_from`: its layers materialised from a supernet cell's (each takes its slice);
- `cost`: its analytic FLOPs per example and parameter count (`nasrec.model.cost` adds them up).

The operators sit in the layer of the search spaces (``tests/test_layering.py``): architectures are
written in operator names, and liveness asks an operator what it reads. So operator modules import
neither `nasrec.space` nor the rest of `nasrec.model` (only the elastic layers of `nasrec.model.layers`,
the same layer), and they import torch inside the methods that compute (`build`, `forward`), not at
the top: architectures, search spaces, liveness and costs stay usable without loading torch (``nasrec
arch info`` / ``sample`` / ``draw``). A block is what `BlockLike` describes (`nasrec.space.arch.Block`).

Cost convention (the NASRec paper's, measured there with fvcore): one multiply-accumulate is one FLOP;
linear layers, batched matrix products and LayerNorms (5 FLOPs per element, affine) are counted;
element-wise operations are not (`nasrec.model.cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nasrec.model.layers import Seg, Used

EMBEDDING_DIM = 16  # NASRec embeds every sparse feature (and every d2s token) in 16 dimensions: the default
LN_FLOPS_PER_ELEMENT = 5  # fvcore's count for an affine LayerNorm
READS = ("dense_in", "sparse_in", "left", "right")  # the input lists of a block an operator may read


class BlockLike(Protocol):
    """The choices of a block that operators read (`nasrec.space.arch.Block`)."""

    dense_in: tuple[int, ...]
    sparse_in: tuple[int, ...]
    left: int
    right: int
    dense_width: int
    sparse_width: int
    d2s: bool
    fm: bool


# -- cost formulas of layers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """FLOPs per example and parameter count of one layer or operator."""

    flops: int = 0
    params: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params)


ZERO = Cost()


def linear_cost(din: int, dout: int, bias: bool, rows: int = 1) -> Cost:
    """Linear(din → dout) applied to `rows` vectors of one example (a bias adds parameters, not FLOPs)."""
    return Cost(rows * din * dout, din * dout + (dout if bias else 0))


def layernorm_cost(n: int, rows: int = 1) -> Cost:
    """Affine LayerNorm over `n` features applied to `rows` vectors of one example."""
    return Cost(LN_FLOPS_PER_ELEMENT * n * rows, 2 * n)


def ln_if(ln: bool, n: int, rows: int = 1) -> Cost:
    """`layernorm_cost` when layer norms are on, else nothing."""
    return layernorm_cost(n, rows) if ln else ZERO


def linear_ln_cost(din: int, dout: int, ln: bool, rows: int = 1) -> Cost:
    """The recurring Linear + LN?(dout): the Linear has a bias exactly when no LayerNorm follows it."""
    return linear_cost(din, dout, bias=not ln, rows=rows) + ln_if(ln, dout, rows)


def head_chunk(d: int, heads: int) -> int:
    """The width of each of `heads` equal chunks of a d-wide vector (the last ones zero-padded; at least 1)."""
    return max(1, (d + heads - 1) // heads)  # not -(-d // h): ONNX's integer division truncates


def token_linear_cost(tin: int, tout: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
    """Token-axis Linear(tin → tout) + LN?(tout) applied to each of the `e` channels (efc, dot, transformer)."""
    return linear_ln_cost(tin, tout, ln, rows=e)


# -- what a cell hands its operators ---------------------------------------------------------------
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
    """Capacities of a cell (`nasrec.model.cell.Cell`): operators, input slots and maximum widths."""

    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_segs: tuple[Seg, ...]  # input slots of the operators reading dense_in (fc, dot)
    token_segs: tuple[Seg, ...]  # input slots of those reading sparse_in (sparse ops, dot's sparse side)
    pad_cap: int  # largest max(left, right) width for the operators reading left and right (sum, gating)
    width: int  # largest dense width W
    tokens: int  # largest sparse width Ws
    fm: bool
    d2s: bool
    layernorm: bool
    exact: bool = False  # a standalone cell: layers its fixed sizes never use are not built
    batchnorm: bool = False  # a standalone cell: batch norms, not layer norms, on dense [B, W] outputs
    masking: bool = False  # the reference's semantics (supernet only; see `Cell.forward`)
    pair_widths: tuple[int, int] | None = None  # a standalone cell's left and right input widths
    embedding_dim: int = EMBEDDING_DIM  # the width of every token


@dataclass
class OpInput:
    """The inputs of a block's operators in one forward pass, prepared once by the cell.

    ``width`` and ``tokens`` are the sizes to compute: the block's own, or under masking (the
    reference's semantics, `Cell.forward`) the cell's widest, cut to the block's afterwards.
    """

    inputs: Sequence[Output]  # input j: 0 the raw input, j >= 1 block j-1's outputs
    block: BlockLike
    width: int
    tokens: int
    masking: bool = False
    dense: torch.Tensor | None = None  # the dense_in inputs concatenated, [B, sum of widths]
    dense_used: list[Used] = field(default_factory=list)
    tokens_t: torch.Tensor | None = None  # the sparse_in inputs (and their d2s tokens), [B, 16, T]
    token_used: list[Used] = field(default_factory=list)


def norm(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`, or x itself where the layer norm is off (None)."""
    return x if layer is None else layer(x)


# -- operators -------------------------------------------------------------------------------------
class Operator:
    """One operator (or merge flag) of a block; see the module docstring. Subclass `DenseOperator` or
    `SparseOperator`, then add one line to `nasrec.model.ops.registry`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "dense", "sparse"; "merge" for the d2s and fm flags
    reads: ClassVar[frozenset[str]] = frozenset()
    layers: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build(cls, cell: nn.Module, spec: CellSpec) -> None:
        """Create this operator's layers on `cell` (`setattr`, in a fixed order) at `spec`'s capacities."""
        raise NotImplementedError

    @classmethod
    def forward(cls, cell: nn.Module, x: OpInput) -> torch.Tensor:
        """The operator's output: dense [B, x.width], sparse [B, block's tokens, 16]."""
        raise NotImplementedError

    @classmethod
    def copy_from(cls, cell: nn.Module, other: nn.Module) -> None:
        """Materialise this operator's layers of `cell` (a smaller cell) from `other`'s: each takes its slice."""
        import torch

        with torch.no_grad():
            for name in cls.layers:
                mod = getattr(cell, name, None)
                if mod is None:  # not built at these sizes, or a layer norm that is off
                    continue
                src = other.get_submodule(name)
                if hasattr(mod, "copy_from"):
                    mod.copy_from(src)
                else:  # fixed-size layers (attention, FFN) are shared whole
                    mod.load_state_dict(src.state_dict())

    @classmethod
    def cost(cls, b: BlockLike, din: int, tin: int, left: int, right: int, ln: bool, e: int = EMBEDDING_DIM) -> Cost:
        """FLOPs per example and parameters in `b`'s standalone model, given the widths of its inputs.

        `din`: width of the concatenated dense_in inputs; `tin`: tokens of the sparse_in inputs;
        `left`, `right`: widths of those inputs; `ln`: whether layer norms are on; `e`: the token width.
        """
        raise NotImplementedError

    @classmethod
    def attention_flops(cls, b: BlockLike, e: int = EMBEDDING_DIM) -> int:
        """The part of `cost`'s FLOPs in attention's Q·Kᵀ and A·V products (reported separately)."""
        return 0

    @classmethod
    def inputs(cls, b: BlockLike) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (dense, sparse) input indices this operator of `b` reads."""
        dense = b.dense_in if "dense_in" in cls.reads else ()
        dense += tuple(getattr(b, side) for side in ("left", "right") if side in cls.reads)
        return dense, b.sparse_in if "sparse_in" in cls.reads else ()

    @classmethod
    def live(cls, b: BlockLike, dense_live: bool, sparse_live: bool) -> bool:
        """Whether this operator of `b` can reach the head, given which of the block's outputs can."""
        raise NotImplementedError


class DenseOperator(Operator):
    """An operator whose [B, W] output is summed into the block's dense output."""

    kind = "dense"

    @classmethod
    def live(cls, b: BlockLike, dense_live: bool, sparse_live: bool) -> bool:
        """The dense output reaches the head, or feeds d2s whose tokens do (the pre-fm sum feeds d2s)."""
        return dense_live or (b.d2s and sparse_live)


class SparseOperator(Operator):
    """An operator whose [B, Ws, 16] output is summed into the block's tokens."""

    kind = "sparse"

    @classmethod
    def live(cls, b: BlockLike, dense_live: bool, sparse_live: bool) -> bool:
        """The tokens reach the head, or feed fm whose term does (the pre-d2s sum feeds fm)."""
        return sparse_live or (b.fm and dense_live)
