"""Optimizers for models whose embedding tables produce sparse (row-wise) gradients.

`build_optimizer` splits the trainable parameters in two: the weights of `nn.Embedding` /
`nn.EmbeddingBag` modules built with `sparse=True` (param group "embedding") and everything else
(param group "dense"). Each part gets its own torch optimizer, held together by `SplitOptimizer`:

- ``adagrad`` (the paper's recipe): `torch.optim.Adagrad` for both parts, initial accumulator 0. With
  weight decay 0 its sparse update equals the dense update on every row: a row outside the batch has a
  zero gradient, so its accumulator and value stay as they are either way. Only the cost differs.
- ``adam``: `torch.optim.Adam` for dense parameters, `torch.optim.SparseAdam` for embeddings. SparseAdam
  is the "lazy" Adam: the moments of rows outside the batch are not decayed and those rows do not move,
  whereas dense Adam keeps moving a row on its stale momentum. That is the usual price of touching only
  the looked-up rows, and it changes the optimisation (slightly), unlike sparse Adagrad.
- ``sgd``: plain `torch.optim.SGD` for both parts (no momentum: a sparse momentum buffer would fill up).

A supernet runs slices of its weights, so a dense gradient is zero outside the box of the slice the
step's path used. With ``sliced=True`` (and no weight decay) the dense Adagrad updates only that box
(`BoxAdagrad`): Adagrad leaves an element with a zero gradient exactly as it is, so the result is the
same and a step costs what the path touched, not the whole supernet.

Weight decay is applied to the dense parameters only; the sparse embedding group has weight decay 0.
Decaying a table exactly touches every row at every step, the cost the sparse gradients avoid, so the
embeddings' L2 is ``TrainConfig.embedding_l2`` (`nasrec.train.regularize`), in three forms: two on the
rows a batch looked up, added to their sparse gradients between backward and the step, and the
whole-table form (``embedding_l2_per: table``), for small tables only, where `dense_tables` gives the
tables dense gradients and the embedding optimizer a weight decay.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nasrec.backend.fused import FusedTables, fused_tables
from nasrec.errors import NasrecError
from nasrec.train.extents import nonzero_extents

OPTIMIZERS = ("adagrad", "adam", "sgd")
BOX_MIN_NUMEL = 1 << 14  # smaller tensors are updated whole: scanning them costs more than it saves
DEFAULT_EPS = {"adagrad": 1e-2, "adam": 1e-8, "sgd": 0.0}


class SplitOptimizer:
    """One torch optimizer for dense parameters and one for sparse-gradient embeddings, used as one.

    `param_groups` lists every group of both (the same dicts, so an lr schedule writing `group["lr"]`
    drives both); groups are tagged `group["name"]` = "dense" or "embedding".
    """

    def __init__(self, name: str, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise NasrecError("an optimizer needs at least one trainable parameter")
        self.name = name
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All parameter groups of the inner optimizers, dense first."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter this optimizer updates (e.g. for gradient clipping)."""
        for group in self.param_groups:
            yield from group["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizers' state dicts (references to live tensors, as torch's: save before stepping on)."""
        return {"name": self.name, "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` of an optimizer built the same way (same name, model and groups).

        As with torch, tensors already of the right device and dtype are used as they are, not copied:
        load from a file (or a deep copy) if the source must stay unchanged.
        """
        if state.get("name") != self.name:
            raise NasrecError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        saved = state.get("optimizers", {})
        if set(saved) != set(self.optimizers):
            raise NasrecError(
                f"optimizer state has parts {sorted(saved)}, this optimizer {sorted(self.optimizers)} "
                "(is the model the same, with the same frozen parameters?)"
            )
        for key, opt in self.optimizers.items():
            try:
                opt.load_state_dict(saved[key])
            except ValueError as exc:
                raise NasrecError(f"optimizer state does not fit this model ({key} parameters): {exc}") from exc

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={type(opt).__name__}" for k, opt in self.optimizers.items())
        return f"SplitOptimizer({self.name!r}, {parts})"


class BoxAdagrad(torch.optim.Adagrad):
    """Adagrad (no weight decay, no lr decay) that updates only the box outside which a gradient is zero.

    Same state and state dict as `torch.optim.Adagrad`, and the same arithmetic on every element it
    touches; the elements it skips would not have changed.
    """

    def __init__(self, params: Any, lr: float, eps: float) -> None:
        super().__init__(params, lr=lr, eps=eps, initial_accumulator_value=0.0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient, restricted to each gradient's nonzero box."""
        if closure is not None:
            raise NasrecError("BoxAdagrad.step takes no closure")
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise NasrecError("BoxAdagrad updates dense gradients only")
                state = self.state[p]
                state["step"] += 1
                ext = nonzero_extents(g, BOX_MIN_NUMEL)
                if 0 in ext:
                    continue
                box = tuple(slice(0, e) for e in ext)
                acc, gb = state["sum"][box], g[box]
                acc.addcmul_(gb, gb, value=1)
                p[box].addcdiv_(gb, acc.sqrt().add_(eps), value=-lr)


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the model's `nn.Embedding` / `nn.EmbeddingBag` modules built with `sparse=True`."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
            found[id(module.weight)] = module.weight
    return list(found.values())


def dense_tables(model: nn.Module) -> list[nn.Parameter]:
    """Switch the model's sparse-gradient embedding tables to dense gradients; their weights.

    A whole-table L2 (FuxiCTR's ``embedding_regularizer``) moves every row at every step, so the row-wise
    update has nothing to save: the gradient is dense and each step costs the size of the tables.
    """
    params = sparse_parameters(model)
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
            module.sparse = False
    return params


def build_optimizer(
    model: nn.Module,
    name: str = "adagrad",
    lr: float = 0.12,
    eps: float | None = None,
    weight_decay: float = 0.0,
    embedding_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    sliced: bool = False,
    table_l2: float = 0.0,
    first_order_lr: float | None = None,
) -> SplitOptimizer:
    """The optimizer `name` over the model's trainable parameters, sparse embeddings in their own group.

    `eps` defaults to 1e-2 for adagrad (the paper) and 1e-8 for adam (sgd has none); `embedding_lr`
    defaults to `lr`; `weight_decay` reaches dense parameters only (see the module docstring). `sliced`:
    the model runs slices of its weights (a supernet), so dense Adagrad updates only each gradient's box.
    `table_l2` > 0: FuxiCTR's whole-table embedding L2 (see `dense_tables`): the sparse tables switch to
    dense gradients and their optimizer gets weight decay `table_l2`, the gradient of (λ/2)·‖E‖².
    `first_order_lr`: the lr of the parameters of modules tagged `lr_group = "first_order"` (a model's LR
    part), in groups of their own named "first_order"; None: the lr of their part.
    """
    if name not in OPTIMIZERS:
        raise NasrecError(f"unknown optimizer {name!r} (expected one of: {', '.join(OPTIMIZERS)})")
    eps = DEFAULT_EPS[name] if eps is None else float(eps)
    emb_lr = lr if embedding_lr is None else embedding_lr
    if lr <= 0 or emb_lr <= 0 or (first_order_lr is not None and first_order_lr <= 0):
        raise NasrecError(
            f"learning rates must be positive, got lr={lr}, embedding_lr={embedding_lr}, first_order_lr={first_order_lr}"
        )
    if weight_decay < 0:
        raise NasrecError(f"weight decay must be non-negative, got {weight_decay}")
    if name == "adam" and not all(0.0 <= b < 1.0 for b in betas):
        raise NasrecError(f"adam betas must lie in [0, 1), got {betas}")
    if not table_l2 >= 0:
        raise NasrecError(f"table_l2 must be non-negative, got {table_l2}")
    tables = dense_tables(model) if table_l2 else []

    sparse_ids = {id(p) for p in (tables or sparse_parameters(model))}  # the embedding group
    dense: list[nn.Parameter] = []
    sparse: list[nn.Parameter] = []
    for p in model.parameters():  # deduplicated by torch, in registration order
        if p.requires_grad:
            (sparse if id(p) in sparse_ids else dense).append(p)

    if sparse and not tables:
        # Opting out explicitly silences torch's per-process warning about unchecked sparse tensors: the
        # sparse gradients come from nn.Embedding(sparse=True) and are valid by construction.
        torch.sparse.check_sparse_tensor_invariants.disable()

    def plain(groups: list[dict[str, Any]], lr: float, wd: float) -> torch.optim.Optimizer:
        if name == "adagrad":
            return torch.optim.Adagrad(groups, lr=lr, eps=eps, weight_decay=wd, initial_accumulator_value=0.0)
        if name == "adam":
            return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        return torch.optim.SGD(groups, lr=lr, weight_decay=wd)

    first = first_order_ids(model) if first_order_lr is not None else set()

    def groups(params: list[nn.Parameter], part: str, part_lr: float) -> list[dict[str, Any]]:
        # The first-order group exists only when asked for, so the state of a run without it keeps one group
        rest = [p for p in params if id(p) not in first]
        own = [p for p in params if id(p) in first]
        out = [{"params": rest, "name": part, "lr": part_lr}] if rest else []
        return out + ([{"params": own, "name": "first_order", "lr": first_order_lr}] if own else [])

    optimizers: dict[str, torch.optim.Optimizer] = {}
    if dense:
        dense_groups = groups(dense, "dense", lr)
        if name == "adagrad" and sliced and weight_decay == 0:
            optimizers["dense"] = BoxAdagrad(dense_groups, lr=lr, eps=eps)
        else:
            optimizers["dense"] = plain(dense_groups, lr, weight_decay)
    if sparse:
        sparse_groups = groups(sparse, "embedding", emb_lr)
        if name == "adam" and not tables:  # lazy Adam: only the looked-up rows and their moments move
            optimizers["embedding"] = torch.optim.SparseAdam(sparse_groups, lr=emb_lr, betas=betas, eps=eps)
        else:  # sparse Adagrad and SGD, or whole tables (dense gradients) with their coupled L2
            optimizers["embedding"] = plain(sparse_groups, emb_lr, table_l2)
    fused = fused_tables(model)
    if fused:  # TorchRec's tables: updated inside backward; this part carries their lr and state
        optimizers["fused"] = FusedTables(fused, [t.lr for t in fused])
    return SplitOptimizer(name, optimizers)


def first_order_ids(model: nn.Module) -> set[int]:
    """Ids of the parameters of the model's modules tagged `lr_group = "first_order"` (its LR part)."""
    return {id(p) for m in model.modules() if getattr(m, "lr_group", None) == "first_order" for p in m.parameters()}
