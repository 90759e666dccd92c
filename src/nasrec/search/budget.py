"""Constraints named after a baseline: "at most DCNv2's MFLOPs" as a number on a cache's shape.

A cap is what a user compares against, and the usual comparison is a hand-designed model on the same
data. Its cost depends on the data's field count and table sizes, so a name is resolved against the
cache the search (or supernet, or rank check) runs on, with the zoo model's default hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError

# constraint key -> what a zoo name stands for
_KINDS = {"max_mflops": "mflops", "path_max_mflops": "mflops", "max_params": "params"}


def resolve_cap(key: str, value: Any, data: str | Path) -> float | int | None:
    """A cap given as a number, a numeric string or a zoo model's name, as the number constraints compare.

    A name stands for that model's MFLOPs (for `*max_mflops`) or its non-embedding parameters (for
    `max_params`) on `data`'s shape, the counts the search applies to architectures.
    """
    if key not in _KINDS:
        raise NasrecError(f"resolve_cap: {key!r} is not a constraint ({', '.join(_KINDS)})")
    if value is None or isinstance(value, bool):
        return None if value is None else _not_a_cap(key, value)
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        return _not_a_cap(key, value)
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return int(number) if _KINDS[key] == "params" and number.is_integer() else number
    from nasrec.zoo.registry import ZOO_MODELS, zoo_cost

    name = text.lower()
    if name not in ZOO_MODELS:
        raise NasrecError(f"{key}: {value!r} is neither a number nor a zoo model ({', '.join(ZOO_MODELS)})")
    cache = open_cache(data)
    cost = zoo_cost(name, len(cache.dense_fields), tuple(cache.table_sizes))
    return cost.mflops if _KINDS[key] == "mflops" else cost.dense_params


def resolve_caps(overrides: dict[str, Any] | None, data: str | Path) -> dict[str, Any]:
    """`overrides` with every constraint key it holds resolved by `resolve_cap` (other keys untouched)."""
    out = dict(overrides or {})
    for key in _KINDS:
        if key in out:
            out[key] = resolve_cap(key, out[key], data)
    return out


def _not_a_cap(key: str, value: Any) -> NoReturn:
    raise NasrecError(f"{key}: {value!r} is neither a number nor a zoo model name")


def names_as_numbers(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with caps given as text made numbers (a zoo name: 1), to check a configuration before its data.

    A text cap that is neither a number nor a zoo model's name raises the error `resolve_cap` would.
    """
    from nasrec.zoo.registry import ZOO_MODELS

    out = dict(overrides)
    for key in _KINDS:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = 1 if value.strip().lower() in ZOO_MODELS else resolve_cap(key, value, "")
    return out
