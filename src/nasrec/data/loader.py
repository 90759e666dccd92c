"""Mini-batches over one split of an opened cache, for training and evaluation loops.

Rows are gathered a *group* of batches at a time (one ``np.take`` per array over the memory maps, or a
plain slice when the rows are contiguous on disk) and the group is then cut into batch views, so the
per-row work all happens inside numpy and the Python overhead is paid once per batch, not per row.

Order of an epoch
    Without shuffling, batches are consecutive rows of the split in ascending row-id order. With
    shuffling, the split's rows are permuted by ``np.random.default_rng([seed, epoch])``: the order is a
    pure function of ``(seed, epoch)`` and identical on every rank.

Sharding (data parallelism), ``shard="batches"`` (the default)
    The epoch's sequence of batches is dealt round-robin: global batch ``k`` goes to rank
    ``k % world_size``. Every rank gets ``total_batches // world_size`` batches so that DDP ranks stay in
    step; the last ``total_batches % world_size`` batches of the epoch are dropped (with shuffling a
    different set of rows every epoch). Only the epoch's final batch can be partial (without
    ``drop_last``), and it is kept only when it falls on the last rank of a full round.

Sharding, ``shard="rows"``
    ``batch_size`` is the *global* batch: the epoch's batches are the single-process ones, and rank ``r``
    takes the contiguous rows ``[r * b, (r + 1) * b)`` of every one of them, ``b = batch_size //
    world_size`` (so ``batch_size`` must be a multiple of ``world_size``). The union over ranks of their
    ``k``-th batches is exactly the single-process ``k``-th batch, whatever the world size: a training
    step then computes the same gradient as one process would (see ``nasrec.train.gradsync``). Every
    rank yields the same number of batches; a partial final batch (without ``drop_last``) is cut the
    same way, so the last ranks' pieces of it can be short or empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from nasrec.data.cache import Cache
from nasrec.errors import NasrecError
from nasrec.prefetch import prefetch

PREFETCH_THREAD_NAME = "nasrec-loader-prefetch"
# 64 batches of 512 rows keep a group at about 8 MiB: large enough that the per-group costs (index
# arithmetic, allocations) vanish, small enough to stay friendly to the caches and to prefetch memory.
DEFAULT_GROUP_BATCHES = 64
SHARD_MODES = ("batches", "rows")


class Batch(NamedTuple):
    """One mini-batch: dense float32 [B, D], sparse int64 [B, S] embedding ids, label float32 [B]."""

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor


@dataclass(frozen=True)
class _Group:
    """Gathered rows of several consecutive batches of one rank, still as numpy arrays."""

    dense: np.ndarray
    sparse: np.ndarray
    label: np.ndarray
    # how many batches the group is cut into, when the last ones can be short or empty (row sharding);
    # 0: as many as its rows fill
    batches: int = 0


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; `batch_size=True` is a bug, not a batch size of one.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise NasrecError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise NasrecError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class BatchLoader:
    """Iterates over one split of a cache in (optionally shuffled, sharded, prefetched) mini-batches."""

    def __init__(
        self,
        cache: Cache,
        split: str = "train",
        batch_size: int = 512,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 0,
        group_batches: int = DEFAULT_GROUP_BATCHES,
        shard: str = "batches",
    ) -> None:
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise NasrecError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if shard not in SHARD_MODES:
            raise NasrecError(f"shard must be one of {', '.join(SHARD_MODES)}, got {shard!r}")
        if shard == "rows" and self.batch_size % self.world_size:
            raise NasrecError(
                f"the global batch size {self.batch_size} is not a multiple of the world size {self.world_size}"
            )
        self.shard = shard
        # rows each rank yields per (full) batch
        self.local_batch_size = self.batch_size // self.world_size if shard == "rows" else self.batch_size
        self.prefetch = _check_int("prefetch", prefetch, 0)
        self.group_batches = _check_int("group_batches", group_batches, 1)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.split = split
        self.cache = cache
        self.epoch = 0

        ids = cache.split_index(split)
        if ids.ndim != 1:
            raise NasrecError(f"{cache.path}: split {split!r} index has shape {ids.shape}, expected 1-D")
        # Plain ndarray views of the memory maps: np.take on np.memmap would wrap every result again.
        self._ids = np.asarray(ids)
        self._dense = np.asarray(cache.dense)
        self._sparse = np.asarray(cache.sparse)
        self._label = np.asarray(cache.label)
        n = int(self._ids.shape[0])
        # File order and the contiguous-slice shortcut rely on strictly ascending ids; checking it once
        # costs a few milliseconds even for millions of rows, and then first/last bound the whole split.
        if n > 1 and not bool(np.all(self._ids[1:] > self._ids[:-1])):
            raise NasrecError(f"{cache.path}: split {split!r} row ids are not strictly ascending")
        if n and (int(self._ids[0]) < 0 or int(self._ids[-1]) >= self._label.shape[0]):
            raise NasrecError(f"{cache.path}: split {split!r} has row ids outside [0, {self._label.shape[0]})")
        self._n = n
        total = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        self._batches = total if shard == "rows" else total // self.world_size

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return self._batches

    @property
    def num_rows(self) -> int:
        """Number of rows this rank yields per epoch (the sum of its batch sizes)."""
        if self._batches == 0:
            return 0
        if self.shard == "rows":
            full, lb = self._batches - 1, self.local_batch_size
            tail = min(self._n - full * self.batch_size, self.batch_size)  # rows of the last global batch
            return full * lb + max(0, min(lb, tail - self.rank * lb))
        last = self.rank + (self._batches - 1) * self.world_size
        return (self._batches - 1) * self.batch_size + min(self.batch_size, self._n - last * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order the next iteration uses (call it before every epoch)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def __iter__(self) -> Iterator[Batch]:
        """Iterate over the batches of the epoch last given to ``set_epoch`` (0 by default)."""
        return self.iter_epoch(self.epoch)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Iterate over the batches of one epoch, independently of ``set_epoch``."""
        epoch = _check_int("epoch", epoch, 0)
        groups = self._groups(epoch)
        if self.prefetch > 0 and self._batches > 0:
            groups = prefetch(groups, self.prefetch, PREFETCH_THREAD_NAME)
        return self._batches_of(groups)

    # -- internals -----------------------------------------------------------------------------

    def _batches_of(self, groups: Iterator[_Group]) -> Iterator[Batch]:
        bs = self.local_batch_size
        try:
            for g in groups:
                # One tensor per array and group; the batches are views into it (no copies), and a
                # group's arrays are freshly allocated, so no handed-out tensor is ever overwritten.
                dense, sparse, label = (
                    torch.from_numpy(g.dense),
                    torch.from_numpy(g.sparse),
                    torch.from_numpy(g.label),
                )
                count = g.batches or -(-label.shape[0] // bs)
                for start in range(0, count * bs, bs):
                    stop = start + bs
                    yield Batch(dense[start:stop], sparse[start:stop], label[start:stop])
        finally:
            # Closing the prefetch generator here (on exhaustion, break or error) stops its thread now
            # rather than whenever the garbage collector gets to it.
            close = getattr(groups, "close", None)
            if close is not None:
                close()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Row ids of the whole split in this epoch's order."""
        if not self.shuffle:
            return self._ids
        perm = np.random.default_rng([self.seed, epoch]).permutation(self._n)
        return np.take(self._ids, perm)

    def _groups(self, epoch: int) -> Iterator[_Group]:
        """Gather this rank's batches group by group (numpy only, so it can run in another thread)."""
        if self._batches == 0:
            return
        order = self._epoch_order(epoch)
        bs, ws, gb = self.batch_size, self.world_size, self.group_batches
        offsets = np.arange(bs, dtype=np.int64)
        if self.shard == "rows" and ws > 1:
            # this rank's contiguous piece of every global batch
            lb = self.local_batch_size
            piece = self.rank * lb + np.arange(lb, dtype=np.int64)
            for first in range(0, self._batches, gb):
                batch_ids = np.arange(first, min(first + gb, self._batches), dtype=np.int64)
                pos = (batch_ids[:, None] * bs + piece).ravel()
                pos = pos[: np.searchsorted(pos, self._n)]  # a partial final global batch: a tail again
                if pos.shape[0] == 0:  # this rank's piece of the partial final batch is empty
                    yield _Group(self._dense[:0].copy(), self._sparse[:0].astype(np.int64), self._label[:0].copy(), 1)
                    continue
                yield replace(self._gather(np.take(order, pos)), batches=batch_ids.shape[0])
            return
        for first in range(0, self._batches, gb):
            local = np.arange(first, min(first + gb, self._batches), dtype=np.int64)
            batch_ids = self.rank + local * ws  # global batch numbers of this group's batches
            if ws == 1:
                start = int(batch_ids[0]) * bs
                rows = order[start : min((int(batch_ids[-1]) + 1) * bs, self._n)]
            else:
                pos = (batch_ids[:, None] * bs + offsets).ravel()
                # Only the epoch's final batch can be partial and it is the last one of its group,
                # so the out-of-range positions form a tail.
                pos = pos[: np.searchsorted(pos, self._n)]
                rows = np.take(order, pos)
            yield self._gather(rows)

    def _gather(self, rows: np.ndarray) -> _Group:
        first, last = int(rows[0]), int(rows[-1])
        if not self.shuffle and last - first == rows.shape[0] - 1:
            # Ascending unique ids spanning exactly len(rows) values are a contiguous range: slice the
            # memory maps (a sequential read) instead of gathering.
            sl = slice(first, last + 1)
            return _Group(
                dense=np.array(self._dense[sl]),
                sparse=self._sparse[sl].astype(np.int64),
                label=np.array(self._label[sl]),
            )
        return _Group(
            dense=np.take(self._dense, rows, axis=0),
            sparse=np.take(self._sparse, rows, axis=0).astype(np.int64),
            label=np.take(self._label, rows),
        )
