"""Serving-latency caps named after a baseline (a search's `max_latency_ms`, a supernet's `path_max_latency_ms`).

A cap may be a number of milliseconds or a zoo model's name: that model, built at the data's shape, is
exported and timed on this machine in the table's runtime, at its batch size and thread count
(`nasrec.export.latency.measure_model_latency`, p50). What a cap is compared with, the prediction of a
latency table, is `nasrec.latency`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nasrec.data.cache import open_cache
from nasrec.zoo.budget import parse_latency_cap

log = logging.getLogger(__name__)


def zoo_latency_ms(name: str, data: str | Path, runtime: str, batch: int, threads: int, **timing: Any) -> float:
    """The p50 serving latency of zoo model `name` (default hyper-parameters) at `data`'s shape, on this machine."""
    from nasrec.export.latency import measure_model_latency
    from nasrec.zoo.registry import build_zoo_model

    cache = open_cache(data)
    num_dense, sizes = len(cache.dense_fields), tuple(cache.table_sizes)
    model = build_zoo_model(name, num_dense, sizes)
    res = measure_model_latency(
        model, num_dense, sizes, runtime=runtime, batches=(batch,), threads=(threads,), **timing
    )
    ms = float(res["results"][0]["p50_ms"])
    log.info(
        "latency cap %s: %.4f ms (p50, %s, batch %d, %d thread(s), measured here)", name, ms, runtime, batch, threads
    )
    return ms


def resolve_latency_cap(
    settings: dict[str, Any], data: str | Path, saved: float | None = None, cap_key: str = "max_latency_ms"
) -> dict[str, Any]:
    """`settings` with a latency cap that names a zoo model replaced by its latency measured here.

    `saved`: the milliseconds a resumed run measured for it, kept (timing again would give another figure,
    and a changed cap is refused on resume).
    """
    cap = parse_latency_cap(settings.get(cap_key), cap_key)
    if not isinstance(cap, str):
        return settings if cap is None else {**settings, cap_key: cap}
    if saved is not None:
        return {**settings, cap_key: saved}
    ms = zoo_latency_ms(
        cap,
        data,
        settings.get("latency_runtime", "onnxruntime"),
        int(settings.get("latency_batch", 1)),
        int(settings.get("latency_threads", 1)),
    )
    return {**settings, cap_key: round(ms, 6)}


def supernet_latency_cap(settings: dict[str, Any], data: str | Path, out: str | Path, resume: bool) -> dict[str, Any]:
    """A supernet's training settings with a `path_max_latency_ms` naming a zoo model resolved (timed here).

    A resumed supernet run keeps the milliseconds its config.json recorded.
    """
    from nasrec import rundir

    saved = (rundir.read_train_config(out) or {}).get("path_max_latency_ms") if resume else None
    return resolve_latency_cap(settings, data, saved, cap_key="path_max_latency_ms")
