"""Gradient averaging over the ranks of a data-parallel run, for supernets and standalone models alike.

Every rank holds a full replica of the model and computes the gradient of the mean loss over its
1/W piece of the global batch (see `BatchLoader(shard="rows")`). After `loss.backward()`,
`GradientSync` replaces each rank's gradient with the average over ranks, which is the gradient of the
mean loss over the whole global batch: exactly what one process with the global batch computes, up to
floating-point summation order. Clipping and the optimizer step then run on that synchronised gradient,
identically on every rank, so the replicas stay equal without ever broadcasting weights.

Why not `DistributedDataParallel`
    A supernet step trains one sampled path, which leaves most parameters without a gradient. DDP
    needs ``find_unused_parameters=True`` for that: it traverses the autograd graph after every forward
    to find them, and still all-reduces their buckets in full (as zeros); nor can it know that a sliced
    layer's gradient is zero outside the slice in use. Its sparse gradients work with gloo only, not
    nccl. A hand-written sync covers supernets and standalone models with one code path, sends only
    what the step touched, and hands the averaged gradient to the repository's sparse-aware
    `clip_grad_norm` at a known point between backward and the optimizer step.

The scheme, per step (three collectives, the last two overlapped)
    1. Header, one small float64 all-reduce with MAX: each rank's loss sum and example count in its own
       slot (the logged loss is the global mean), a "has a gradient" flag per parameter, per dense
       parameter the extents of the box outside which its gradient is zero, and per sparse table each
       rank's number of distinct rows. MAX turns the flags into the union of the parameters used this
       step and the extents into the bounding box over all ranks. All ranks run the same path
       (`supernet_path` is a function of seed and step), so the union is normally what every rank has;
       a parameter used by only some ranks counts as zero elsewhere (and gets a zero gradient there, as
       it does in one process, which matters to Adam).
    2. Dense parameters of the union: only the box of each gradient is sent. A supernet layer run on a
       slice of its weight gets a full-shape gradient that is zero outside the slice (the slice is a
       prefix per dimension, see `model/layers.py`): a sampled path then sends 5-7 times fewer bytes than
       whole gradients would (bench/bench_ddp.py, Criteo shape, global batch 512 on 2 ranks: 5.4 vs 30.8
       MiB per step on NASRec-Small, 3.9 vs 28.3 on NASRec-Full, sparse rows included). Finding the box
       costs two vectorised passes over the gradient. The boxes are flattened into buckets (per dtype, at most `bucket_bytes`
       each), all-reduced (sum) and divided by W; outside the box every rank already holds zeros.
    3. Sparse embedding gradients (`nn.Embedding(sparse=True)`): each rank coalesces its gradient to
       (unique row ids, row values), packs them as bytes padded to the largest row count of any rank,
       and one all-gather brings every rank's rows to every rank. Each rank concatenates the W pieces
       in rank order and coalesces them (rows looked up on several ranks are summed), then divides by
       W. No whole table is ever reduced; the result is the same sparse tensor on every rank.

Communication volume
    `SyncStats.comm_bytes` is the payload each rank puts into the collectives per step: the header,
    ``8 * (2W + 1 + P + sum of dense parameter dims + W * S)`` bytes (P parameters, S sparse tables), plus
    the dense gradient boxes of the parameters the step used, plus ``sum_s max_rank_rows_s * (8 + row
    bytes)`` for the sparse rows (an int64 id and the row's values). On the wire a ring all-reduce moves about ``2 (W - 1)
    / W`` times its buffer per rank and an all-gather ``W - 1`` times each rank's piece.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nasrec import distributed
from nasrec.errors import NasrecError
from nasrec.train.extents import nonzero_extents
from nasrec.train.optim import sparse_parameters

DEFAULT_BUCKET_BYTES = 32 << 20  # large enough to amortise per-collective latency, small enough to bound the copy
SCAN_MIN_NUMEL = 1 << 14  # gradients smaller than this (64 KiB of float32) are sent whole, unscanned


@dataclass(frozen=True)
class SyncStats:
    """What one synchronisation found and sent."""

    loss: float  # mean loss over the global batch
    count: int  # examples in the global batch
    header_bytes: int
    dense_bytes: int  # dense gradient boxes of the parameters the step used
    sparse_bytes: int  # this rank's padded (row id, row values) payload of the sparse gradients

    @property
    def comm_bytes(self) -> int:
        """Payload this rank contributed to the step's collectives (see the module docstring)."""
        return self.header_bytes + self.dense_bytes + self.sparse_bytes


@dataclass
class CommMeter:
    """Bytes the syncs sent: since the last log line, and over the whole (possibly resumed) process."""

    window_bytes: int = 0
    window_steps: int = 0
    total_bytes: int = 0
    total_steps: int = 0

    def add(self, stats: SyncStats) -> None:
        """Count one step's synchronisation."""
        self.window_bytes += stats.comm_bytes
        self.window_steps += 1
        self.total_bytes += stats.comm_bytes
        self.total_steps += 1

    def window_per_step(self) -> float:
        """Mean bytes per step since the last call, which starts a new window."""
        mean = self.window_bytes / max(self.window_steps, 1)
        self.window_bytes, self.window_steps = 0, 0
        return mean

    def per_step(self) -> float:
        """Mean bytes per step over the process."""
        return self.total_bytes / max(self.total_steps, 1)


class GradientSync:
    """Averages the gradients of a fixed list of parameters over the ranks of the process group."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        sparse: Iterable[nn.Parameter] = (),
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        if not distributed.is_initialized():
            raise NasrecError("GradientSync needs an initialised torch.distributed process group")
        self.params = list(params)
        sparse_ids = {id(p) for p in sparse}
        self.is_sparse = [id(p) in sparse_ids for p in self.params]
        self.sparse_index = [i for i, s in enumerate(self.is_sparse) if s]
        self.bucket_bytes = int(bucket_bytes)
        self.world = distributed.world_size()
        self.rank = distributed.rank()
        # header layout: W loss slots, W count slots, a non-finite flag, P has-gradient flags, the
        # extents of each dense parameter (one per dimension), then W row counts per sparse parameter
        at = 2 * self.world + 1 + len(self.params)
        self._extent_at: dict[int, int] = {}
        for i, p in enumerate(self.params):
            if not self.is_sparse[i]:
                self._extent_at[i] = at
                at += p.dim()
        self._nnz_at = at
        self._header_size = at + self.world * len(self.sparse_index)
        # The flags and buffers are matched by position: every rank must list the same parameters.
        distributed.check_same(
            [[list(p.shape), str(p.dtype), s] for p, s in zip(self.params, self.is_sparse, strict=True)],
            "the model's parameters",
        )

    @classmethod
    def for_model(cls, model: nn.Module, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> GradientSync:
        """A sync of the model's trainable parameters, its sparse embedding tables gathered row-wise."""
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(params, sparse_parameters(model), bucket_bytes)

    @torch.no_grad()
    def __call__(self, loss: torch.Tensor, count: int) -> SyncStats:
        """Average every gradient over the ranks; `loss` is this rank's mean loss over its `count` examples."""
        W, P, S = self.world, len(self.params), len(self.sparse_index)
        local_sparse: list[torch.Tensor | None] = []
        for i in self.sparse_index:
            g = self.params[i].grad
            if g is not None:
                if not g.is_sparse:
                    raise NasrecError(f"parameter {i} was registered as a sparse embedding but has a dense gradient")
                g = g.coalesce()
            local_sparse.append(g)

        # The header is reduced with MAX: per-rank values sit in their own slot (the others hold the
        # identity, -inf or 0), flags become their union, gradient extents the bounding box of all ranks.
        value = float(loss.detach()) * count
        values = [-math.inf] * W + [0.0] * W + [0.0 if math.isfinite(value) else 1.0]
        values[self.rank] = value if math.isfinite(value) else 0.0
        values[W + self.rank] = float(count)
        values += [float(p.grad is not None) for p in self.params]
        for i in self._extent_at:
            g = self.params[i].grad
            values += [0.0] * self.params[i].dim() if g is None else _extents(g)
        for g in local_sparse:
            rows = [0.0] * W
            rows[self.rank] = 0.0 if g is None else float(g._nnz())
            values += rows
        header = torch.tensor(values, dtype=torch.float64)
        flags = 2 * W + 1
        on_device = header.to(self._device())
        dist.all_reduce(on_device, op=dist.ReduceOp.MAX)
        header = on_device.cpu()
        used = header[flags : flags + P] > 0
        nnz = header[self._nnz_at :].long().view(S, W)

        dense_bytes, pending = self._start_dense(used, header)
        sparse_bytes = self._sparse(used, local_sparse, nnz)
        for work, flat, views in pending:
            work.wait()
            flat.div_(W)
            for view, piece in zip(views, flat.split([v.numel() for v in views]), strict=True):
                view.copy_(piece.view_as(view))
        global_count = int(header[W : 2 * W].sum())
        loss_sum = float(header[:W].sum()) if header[2 * W] == 0 else math.nan
        return SyncStats(
            loss=loss_sum / max(global_count, 1),
            count=global_count,
            header_bytes=header.numel() * header.element_size(),
            dense_bytes=dense_bytes,
            sparse_bytes=sparse_bytes,
        )

    def _device(self) -> torch.device:
        return self.params[0].device if self.params else torch.device("cpu")

    def _start_dense(self, used: torch.Tensor, header: torch.Tensor) -> tuple[int, list]:
        """Launch the bucketed all-reduces of the used dense gradients' boxes; (bytes, [(work, flat, views)])."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for i, at in self._extent_at.items():
            if not used[i]:
                continue
            p = self.params[i]
            if p.grad is None:  # used on another rank only: contributes zero here
                p.grad = torch.zeros_like(p)
            box = p.grad
            for d in range(p.dim()):
                box = box.narrow(d, 0, int(header[at + d]))
            if box.numel():
                by_dtype.setdefault(box.dtype, []).append(box)
        total, pending = 0, []
        for views in by_dtype.values():
            for bucket in _buckets(views, self.bucket_bytes):
                flat = torch.cat([v.reshape(-1) for v in bucket])
                total += flat.numel() * flat.element_size()
                pending.append((dist.all_reduce(flat, async_op=True), flat, bucket))
        return total, pending

    def _sparse(self, used: torch.Tensor, local: list[torch.Tensor | None], nnz: torch.Tensor) -> int:
        """All-gather the sparse gradients' rows and install their average; bytes this rank sent."""
        layout = []  # (param index, rows per rank, row value shape, bytes per row, rows per rank padded)
        pieces = []
        for s, i in enumerate(self.sparse_index):
            if not used[i]:
                continue
            p = self.params[i]
            vshape = tuple(p.shape[1:])
            row_bytes = 8 + p.element_size() * _prod(vshape)  # an int64 row id, then the row's values
            rows = int(nnz[s].max())
            buf = torch.zeros(rows, row_bytes, dtype=torch.uint8, device=p.device)
            g = local[s]
            if g is not None and g._nnz():
                if g.sparse_dim() != 1:
                    raise NasrecError(f"parameter {i}: sparse gradients must index rows only (an embedding table)")
                n = g._nnz()
                # Bit patterns travel unchanged through an all-gather, so int64 ids and float values
                # share one byte buffer (and one collective) without any conversion.
                buf[:n, :8] = g._indices().reshape(-1).contiguous().view(torch.uint8).view(n, 8)
                buf[:n, 8:] = g._values().reshape(-1).contiguous().view(torch.uint8).view(n, -1)
            layout.append((i, nnz[s].tolist(), vshape, row_bytes, rows))
            pieces.append(buf.view(-1))
        if not pieces:
            return 0
        send = torch.cat(pieces)
        gathered = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(gathered, send)
        offset = 0
        for i, counts, vshape, row_bytes, rows in layout:
            p = self.params[i]
            ids, vals = [], []
            for r, n in enumerate(counts):
                block = gathered[r][offset : offset + rows * row_bytes].view(rows, row_bytes)[:n]
                # reshape(-1) gives a unit-stride copy (even when empty), which a dtype view needs
                ids.append(block[:, :8].reshape(-1).view(torch.int64))
                vals.append(block[:, 8:].reshape(-1).view(p.dtype).view(n, *vshape))
            offset += rows * row_bytes
            # rank order everywhere, so every rank sums the rows in the same order: equal replicas
            grad = torch.sparse_coo_tensor(torch.cat(ids)[None], torch.cat(vals), p.shape, check_invariants=False)
            grad = grad.coalesce()
            grad._values().div_(self.world)
            p.grad = grad
        return send.numel()


def _extents(g: torch.Tensor) -> list[float]:
    """The box outside which `g` is 0 (`nonzero_extents`), as header values; small tensors are sent whole."""
    return [float(n) for n in nonzero_extents(g, SCAN_MIN_NUMEL)]


def _buckets(grads: list[torch.Tensor], cap: int) -> Iterable[list[torch.Tensor]]:
    """Consecutive runs of `grads` of at most `cap` bytes each (a larger tensor is a bucket alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and size + nbytes > cap:
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        yield bucket


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
