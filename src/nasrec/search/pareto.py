"""Pareto fronts of (validation loss, MFLOPs): both to be minimised."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True if `a` is no worse than `b` in both objectives and better in at least one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by increasing first objective; NaN points are never on it.

    Of several identical points only the first is kept. O(n log n): sort by (loss, cost), then a point
    is on the front iff its cost is below every cost seen before it.
    """
    order = sorted(
        (i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)),
        key=lambda i: (points[i][0], points[i][1], i),
    )
    front, best_cost = [], math.inf
    for i in order:
        if points[i][1] < best_cost:
            front.append(i)
            best_cost = points[i][1]
    return front
