"""Constraints named after a baseline: "at most DCNv2's MFLOPs" as a number on a cache's shape.

A cap is what a user compares against, and the usual comparison is a hand-designed model on the same
data. Its cost depends on the data's field count and table sizes, so a name is resolved against the
cache the search (or supernet, or rank check) runs on, with the zoo model's default hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasrec.configfile import ConfigError, show
from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError

# constraint key -> what a zoo name stands for; a latency ("ms") is timed on this machine, where the latency
# table's setting is known (`nasrec.export.latency_caps`), so `resolve_cap` leaves such a name as it is
_KINDS = {
    "max_mflops": "mflops",
    "path_max_mflops": "mflops",
    "max_params": "params",
    "max_latency_ms": "ms",
    "path_max_latency_ms": "ms",
}


def _parse(key: str, value: Any) -> float | int | str | None:
    """A cap's number, or the zoo model it names (lower case); anything else raises naming `key`."""
    from nasrec.zoo.registry import ZOO_MODELS

    if key not in _KINDS:
        raise NasrecError(f"resolve_cap: {key!r} is not a constraint ({', '.join(_KINDS)})")
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            if value.strip().lower() in ZOO_MODELS:
                return value.strip().lower()
        else:
            return int(number) if _KINDS[key] == "params" and number.is_integer() else number
    what = "training config" if key.startswith("path_") else "search config"
    raise ConfigError(what, key, f"{show(value)} is neither a number nor a zoo model ({', '.join(ZOO_MODELS)})")


def resolve_cap(key: str, value: Any, data: str | Path) -> float | int | str | None:
    """A cap given as a number, a numeric string or a zoo model's name, as the number constraints compare.

    A name stands for that model's MFLOPs (for `*max_mflops`) or its non-embedding parameters (for
    `max_params`) on `data`'s shape, the counts the search applies to architectures. A latency cap's name
    is checked and returned as it is (`nasrec.export.latency_caps` times the model).
    """
    parsed = _parse(key, value)
    if not isinstance(parsed, str) or _KINDS[key] == "ms":
        return parsed
    from nasrec.zoo.registry import zoo_cost

    cache = open_cache(data)
    cost = zoo_cost(parsed, len(cache.dense_fields), tuple(cache.table_sizes))
    return cost.mflops if _KINDS[key] == "mflops" else cost.dense_params


def resolve_caps(overrides: dict[str, Any] | None, data: str | Path) -> dict[str, Any]:
    """`overrides` with every constraint key it holds resolved by `resolve_cap` (other keys untouched)."""
    out = dict(overrides or {})
    for key in _KINDS:
        if key in out:
            out[key] = resolve_cap(key, out[key], data)
    return out


def parse_latency_cap(value: Any, key: str = "max_latency_ms") -> float | str | None:
    """A latency cap's milliseconds, or the zoo model it names (lower case); anything else raises naming `key`."""
    return _parse(key, value)  # type: ignore[return-value]  # "ms" caps are never made integers


def names_as_numbers(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with caps given as text made numbers (a zoo name: 1), to check a configuration before its data.

    A text cap that is neither a number nor a zoo model's name raises the error `resolve_cap` would.
    """
    out = dict(overrides)
    for key in _KINDS:
        if isinstance(out.get(key), str):
            parsed = _parse(key, out[key])
            out[key] = 1 if isinstance(parsed, str) else parsed
    return out
