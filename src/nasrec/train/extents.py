"""The box outside which a gradient is zero: what a supernet layer run on a slice of its weight touched.

A layer run on a slice `w[:a, :b]` gets a full-shape gradient that is zero outside `[:a, :b]`. Both the
distributed gradient exchange (send only the box) and the Adagrad update (update only the box) use it.
"""

from __future__ import annotations

import torch


def nonzero_extents(g: torch.Tensor, min_numel: int = 0) -> tuple[int, ...]:
    """Per dimension, one past the last index holding a nonzero (or NaN); `g.shape` when `g` is small.

    Tensors under `min_numel` elements are not scanned: scanning would cost more than it saves.
    ``amax`` and ``amin`` are vectorised passes that allocate nothing of the gradient's size (several
    times faster than ``ne(0).any``), and NaN propagates through them, so it counts as nonzero.
    """
    if g.numel() < min_numel or g.numel() == 0:
        return tuple(g.shape)
    ext: list[int] = []
    box = g
    for d in range(g.dim()):
        # A full path's gradient fills its tensor: a nonzero in the last slice settles the dimension
        # after reading one slice instead of the whole box.
        last = box.select(d, box.shape[d] - 1)
        if bool((last.amax() != 0) | (last.amin() != 0)):
            ext.append(box.shape[d])
            continue
        other = tuple(k for k in range(g.dim()) if k != d)
        hit = ((box.amax(dim=other) != 0) | (box.amin(dim=other) != 0)) if other else box != 0
        where = hit.nonzero()
        if not where.numel():
            return (0,) * g.dim()  # all zero
        ext.append(int(where[-1]) + 1)
        box = box.narrow(d, 0, ext[-1])
    return tuple(ext)
