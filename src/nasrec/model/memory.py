"""How much memory a model needs, known before it is built, and a one-line refusal when the machine lacks it.

The count is analytic (`nasrec.model.cost`, the zoo's `zoo_cost` on the meta device), so even an
architecture of absurd widths is measured without allocating anything. Training holds, in float32:

- the weights: every parameter, 4 bytes;
- the gradients of the dense (non-embedding) parameters; an embedding table's gradient holds only the
  rows of the batch, which is small next to the table;
- the optimizer state: one float per parameter for Adagrad (its sum of squares), two for Adam (the
  moments), none for plain SGD.

Activations are left out (they scale with the batch, not the model), so the estimate is a lower bound.
A model whose estimate exceeds the machine's physical memory (`os.sysconf`) cannot train here, and
`check_fits` refuses it before anything is allocated.
"""

from __future__ import annotations

import os
from typing import Any

from nasrec.errors import NasrecError

BYTES_PER_PARAM = 4  # float32
OPTIMIZER_STATE = {"adagrad": 1, "adam": 2, "sgd": 0}  # floats of state per parameter
OPTIMIZER_NAMES = {"adagrad": "Adagrad", "adam": "Adam", "sgd": "SGD"}


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def footprint(params: int, dense_params: int, optimizer: str | None = "adagrad") -> dict[str, int]:
    """Bytes of the weights, of the dense gradients and of the optimizer state; `total` their sum.

    `optimizer` None: the model alone (evaluation, serving): weights only.
    """
    weights = params * BYTES_PER_PARAM
    grads = 0 if optimizer is None else dense_params * BYTES_PER_PARAM
    state = 0 if optimizer is None else OPTIMIZER_STATE[optimizer] * params * BYTES_PER_PARAM
    return {"weights": weights, "gradients": grads, "optimizer": state, "total": weights + grads + state}


def spec_params(spec: Any) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of a `ModelSpec`'s model, counted without building it.

    A supernet holds every operator at the widest width its space offers: counted as its full path.
    """
    from nasrec.model.cost import arch_cost

    if spec.kind == "nasrec":
        c = arch_cost(
            spec.architecture(), spec.num_dense, len(spec.table_sizes), spec.table_sizes, use_layernorm=spec.layernorm
        )
        return int(c.params), int(c.dense_params)
    if spec.kind == "zoo":
        from nasrec.model.spec import zoo_model_cost

        z = zoo_model_cost(spec.zoo, spec.num_dense, spec.table_sizes, spec.hparams)
        return int(z.params), int(z.dense_params)
    from nasrec.space.space import SearchSpace

    full = SearchSpace.from_dict(spec.space).full_path()
    c = arch_cost(full, spec.num_dense, len(spec.table_sizes), spec.table_sizes, use_layernorm=True)
    return int(c.params), int(c.dense_params)


def human_bytes(n: float) -> str:
    """1.5 GB, 820 MB, 3.2 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} PB"  # not reached


def describe(params: int, dense_params: int, optimizer: str | None = "adagrad") -> str:
    """'about 6.1 GB to train with Adagrad (2.9 GB of weights, ...)' in one phrase."""
    f = footprint(params, dense_params, optimizer)
    if optimizer is None:
        return f"about {human_bytes(f['total'])} of weights"
    return (
        f"about {human_bytes(f['total'])} to train with {OPTIMIZER_NAMES[optimizer]} ({human_bytes(f['weights'])} "
        f"of weights, {human_bytes(f['gradients'])} of gradients, {human_bytes(f['optimizer'])} of optimizer "
        f"state; activations not counted)"
    )


def check_fits(
    params: int, dense_params: int, optimizer: str | None = "adagrad", what: str = "the model", limit: int | None = None
) -> None:
    """Raise NasrecError (one line) when the estimate exceeds `limit` bytes (default: this machine's memory)."""
    limit = physical_memory() if limit is None else limit
    if limit is None:
        return
    f = footprint(params, dense_params, optimizer)
    if f["total"] > limit:
        raise NasrecError(
            f"{what} has {params:,} parameters and needs {describe(params, dense_params, optimizer)}, "
            f"more than this machine's {human_bytes(limit)} of memory; refused before building it"
        )


def check_spec_fits(spec: Any, optimizer: str | None = "adagrad", limit: int | None = None) -> None:
    """`check_fits` for a `ModelSpec` (counted analytically, nothing built)."""
    what = {"nasrec": "the architecture's model", "zoo": f"zoo model {spec.zoo}", "supernet": "the supernet"}[spec.kind]
    check_fits(*spec_params(spec), optimizer=optimizer, what=what, limit=limit)
