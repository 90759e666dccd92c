"""Serving-latency budgets: the latency model a configuration's keys name, and the least latency a space reaches.

A search's `max_latency_ms` and a supernet's `path_max_latency_ms` are predicted by a latency table
(`nasrec.latency.model`) measured on the serving machine; these functions build that model from a
configuration and refuse a cap no architecture of the space can meet. Pure arithmetic: nothing is timed
here (caps named after a zoo model are timed by `nasrec.export.latency_caps`).
"""

from __future__ import annotations

from typing import Any

from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.latency.model import LatencyModel, load_latency_model
from nasrec.space.arch import Architecture, Block
from nasrec.space.space import SearchSpace


def latency_model(
    settings: dict[str, Any],
    space: SearchSpace,
    shape: tuple[int, int],
    layernorm: bool,
    cap_key: str = "max_latency_ms",
) -> LatencyModel | None:
    """The latency model of a configuration's latency keys (None without a table), refused for another use unless forced.

    `settings`: a search or training configuration as a dict (latency_table, latency_runtime, latency_batch,
    latency_threads, latency_force, and the cap under `cap_key`); `shape`: the data's (dense, sparse) fields.
    """
    what = "training config" if cap_key.startswith("path_") else "search config"
    path = settings.get("latency_table")
    if path is None:
        if settings.get(cap_key) is not None:
            raise ConfigError(
                what,
                cap_key,
                "a latency cap needs a latency table (latency_table, `--latency-table FILE`, "
                "made by `nasrec latency profile` on the serving machine)",
            )
        return None
    return load_latency_model(
        path,
        space,
        *shape,
        runtime=settings.get("latency_runtime", "onnxruntime"),
        batch=settings.get("latency_batch", 1),
        threads=settings.get("latency_threads", 1),
        layernorm=layernorm,
        force=bool(settings.get("latency_force")),
    )


def cheapest_latency(space: SearchSpace, model: LatencyModel) -> tuple[float, Architecture]:
    """The least predicted latency in `space` and an architecture that has it.

    Candidates: for every operator pair, the narrowest chain of blocks each reading its predecessor, and
    the same with the last block reading the raw inputs, so that it alone runs (blocks whose outputs
    reach no head are not run by a served model).
    """
    w, ws = space.dense_widths[0], space.sparse_widths[0]
    n = space.num_blocks
    found: list[tuple[float, Architecture]] = []
    for d in space.dense_ops:
        for s in space.sparse_ops:
            chain = [Block((d,), (s,), (i,), (i,), i, i, w, ws) for i in range(n)]
            alone = [*chain[:-1], Block((d,), (s,), (0,), (0,), 0, 0, w, ws)]
            for blocks in (chain, alone):
                arch = Architecture(tuple(blocks), space.embedding_dim)
                if space.contains(arch):
                    found.append((model.predict(arch), arch))
    if not found:
        raise NasrecError(f"space {space.name!r}: no narrowest chain of blocks is in it, so no least latency is known")
    return min(found, key=lambda t: t[0])


def check_latency_cap(
    cap: float | None, space: SearchSpace, model: LatencyModel | None, cap_key: str = "max_latency_ms"
) -> None:
    """Refuse a cap below the least latency the space can reach, naming that minimum."""
    if cap is None or model is None:
        return
    least, _ = cheapest_latency(space, model)
    if cap < least:
        raise ConfigError(
            "training config" if cap_key.startswith("path_") else "search config",
            cap_key,
            f"{cap:g} ms is below the cheapest architecture of space {space.name!r}, predicted at {least:.4g} ms "
            f"(batch {model.batch}, {model.threads} thread(s))",
        )
