"""Standalone models: one architecture at exactly its sizes, without what cannot reach the head.

Dead blocks are not built, and neither are the operators of live blocks whose results nobody reads
(`live_outputs`): the model holds `ArchCost.dense_params` parameters and executes `ArchCost.flops`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.model.cell import Cell, CellSpec, Output
from nasrec.model.embedding import FieldEmbedding, FirstOrder
from nasrec.model.layers import HeadLinear, Seg
from nasrec.model.ops import registry
from nasrec.model.supernet import Supernet
from nasrec.space.arch import EMBEDDING_DIM, Architecture, Block
from nasrec.space.liveness import live_outputs, op_live


class Subnet(nn.Module):
    """A standalone model of one architecture (fresh initialisation, or `from_supernet`)."""

    def __init__(
        self,
        arch: Architecture,
        num_dense: int,
        table_sizes: Sequence[int],
        layernorm: bool = False,
        dropout: float = 0.0,
        max_embedding_std: float | None = None,
        batchnorm: bool = False,
        head_centre: bool = True,
    ) -> None:
        super().__init__()
        if not head_centre and not layernorm:
            raise NasrecError("only a layer-normed model's head is centred: head_centre=False needs layernorm")
        if batchnorm and not layernorm:
            raise NasrecError("batchnorm replaces the layer norms of the blocks' dense outputs: it needs layernorm")
        if not 0.0 <= dropout < 1.0:
            raise NasrecError(f"dropout must lie in [0, 1), got {dropout}")
        if max_embedding_std is not None and not max_embedding_std > 0:
            raise NasrecError(f"max_embedding_std must be positive, got {max_embedding_std}")
        self.arch = arch
        # On every block's dense output while training (a standalone model's regulariser; a supernet has none).
        # No parameters: the state dict, the cost and a materialised subnet's outputs in eval mode are unchanged.
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.num_dense, self.num_sparse = num_dense, len(table_sizes)
        self.layernorm = layernorm
        # Batch norms on the blocks' dense outputs (fc, flat, the pair operators, dot's output, fm), as the zoo's
        # MLPs have them; tokens keep their layer norms. A standalone model's choice: supernets use layer norms.
        self.batchnorm = batchnorm
        self.embedding = FieldEmbedding(table_sizes, arch.embedding_dim)
        if max_embedding_std is not None:  # a fresh model's tables; from_supernet copies the supernet's over them
            self.embedding.cap_std(max_embedding_std)
        dense_w = [num_dense] + [b.dense_width for b in arch.blocks]
        token_w = [self.num_sparse] + [b.sparse_width for b in arch.blocks]
        has_d2s = [False] + [b.d2s for b in arch.blocks]
        self.live = arch.live_blocks()
        self.outputs = live_outputs(arch)  # finer than `live`: a live block may compute one side only
        cells = {}
        for i, (block, live) in enumerate(zip(arch.blocks, self.live, strict=True)):
            if live:
                spec = _exact_spec(
                    block, self.outputs[i], dense_w, token_w, has_d2s, layernorm, batchnorm, arch.embedding_dim
                )
                cells[str(i)] = Cell(spec)
        self.cells = nn.ModuleDict(cells)
        last = arch.blocks[-1]
        # A centred head keeps supernet training stable under path sampling; a standalone model may train
        # better without it (BENCHMARKS.md), its bias still starting at the data's log-odds.
        self.head = HeadLinear(
            last.dense_width,
            last.sparse_width,
            last.d2s,
            dim=arch.embedding_dim,
            centre=layernorm and head_centre,
            log_odds_bias=layernorm,
        )
        # DeepFM's and Wide & Deep's linear part, added to the head's logit; starts at zero as the zoo's does
        self.first_order = FirstOrder(num_dense, table_sizes) if arch.first_order else None
        self.register_load_state_dict_pre_hook(_drop_unread_operators)

    @classmethod
    def for_cache(cls, arch: Architecture, cache: Cache, layernorm: bool = False) -> Subnet:
        """A freshly initialised model of `arch` shaped for a prepared cache."""
        return cls(arch, len(cache.dense_fields), cache.table_sizes, layernorm=layernorm)

    @classmethod
    def from_supernet(cls, supernet: Supernet, arch: Architecture) -> Subnet:
        """Materialise `arch` from a supernet: same outputs as the supernet on that path."""
        table_sizes = supernet.embedding.table_sizes
        if arch.first_order:
            raise NasrecError(
                "an architecture with a first-order term: a supernet has no first-order weights to give it"
            )
        if arch.embedding_dim != supernet.embedding.dim:
            raise NasrecError(
                f"architecture of embedding_dim {arch.embedding_dim} from a supernet of {supernet.embedding.dim}"
            )
        model = cls(arch, supernet.num_dense, table_sizes, layernorm=supernet.layernorm)
        with torch.no_grad():
            model.embedding.table.weight.copy_(supernet.embedding.table.weight)
            for name, cell in model.cells.items():
                cell.copy_from(supernet.cells[int(name)])
            model.head.copy_from(supernet.head)
        return model

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits [B] on dense [B, D] and sparse ids [B, S]."""
        f = self.features(dense, sparse)
        logit = self.head(f.dense, f.tokens, f.d2s)
        return logit if self.first_order is None else logit + self.first_order(dense, sparse)

    def logit_layers(self) -> list[nn.Module]:
        """The layers whose outputs the logit sums: the head, and the first-order term if there is one."""
        return [self.head] if self.first_order is None else [self.head, self.first_order]

    def features(self, dense: torch.Tensor, sparse: torch.Tensor) -> Output:
        """The head's inputs: the last block's dense, token and d2s outputs."""
        outs: list[Output | None] = [Output(dense, self.embedding(sparse))]
        for i, block in enumerate(self.arch.blocks):
            live = self.outputs[i]
            out = self.cells[str(i)](outs, block, live) if any(live) else None
            if out is not None and out.dense is not None and self.dropout is not None:
                out = Output(self.dropout(out.dense), out.tokens, out.d2s)
            outs.append(out)
        last = outs[-1]
        assert last is not None  # the last block always reaches the head
        return last


def _exact_spec(
    block: Block,
    live: tuple[bool, bool],
    dense_w: list[int],
    token_w: list[int],
    has_d2s: list[bool],
    ln: bool,
    bn: bool = False,
    e: int = EMBEDDING_DIM,
) -> CellSpec:
    """The cell of a live block at its exact sizes, holding only the operators whose results are read."""
    dense_ops = tuple(op for op in block.dense_ops if op_live(op, block, *live))
    sparse_ops = tuple(op for op in block.sparse_ops if op_live(op, block, *live))
    reads = set().union(*(registry.get(op).reads for op in (*dense_ops, *sparse_ops)))
    return CellSpec(
        dense_ops=dense_ops,
        sparse_ops=sparse_ops,
        dense_segs=tuple(Seg(j, dense_w[j]) for j in block.dense_in) if "dense_in" in reads else (),
        token_segs=tuple(Seg(j, token_w[j], has_d2s[j]) for j in block.sparse_in) if "sparse_in" in reads else (),
        pad_cap=max(dense_w[block.left], dense_w[block.right]) if reads & {"left", "right"} else 1,
        width=block.dense_width,
        tokens=block.sparse_width,
        fm=op_live("fm", block, *live),
        d2s=op_live("d2s", block, *live),
        layernorm=ln,
        exact=True,
        batchnorm=bn,
        pair_widths=(dense_w[block.left], dense_w[block.right]) if reads & {"left", "right"} else None,
        embedding_dim=e,
    )


def _drop_unread_operators(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
    """Let a checkpoint of an older layout, which held unread operators' weights, load: drop those."""
    cells = module.cells
    for key in [k for k in state if k.startswith(prefix + "cells.")]:
        index, layer = key[len(prefix) + len("cells.") :].split(".")[:2]
        if index in cells and not hasattr(cells[index], layer):
            del state[key]
