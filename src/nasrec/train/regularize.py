"""An L2 penalty on the embeddings a batch looks up, added to their sparse (row-wise) gradients.

Definition (``TrainConfig.embedding_l2`` = λ)
    The step minimises ``mean_i [ logloss_i + λ · Σ_v ‖v‖² ]`` where v runs over the embedding vectors
    example i looked up (one per field, in every ``nn.Embedding(sparse=True)`` table: the field
    embeddings and, in zoo models with a linear part, its 1-dim per-category weights). Equivalently
    ``λ / B · Σ`` over the batch's B·S looked-up vectors, so a row looked up k times in a batch is
    penalised k times: its gradient gains ``2 λ k / B · e_row``. Why k times and why divided by B:

    - It is a per-example term, on the scale of the mean logloss: λ means the same at every batch size
      (and world size). Its expectation over batches is ``λ · Σ_rows p_row ‖e_row‖²`` (p_row: the share
      of examples that look the row up), a fixed objective; penalising each row once per batch would
      weigh a row by P(row in batch) = 1 - (1 - p_row)^B, which changes with B.
    - It is the penalty on the batch's looked-up embedding outputs (as DeepCTR's ``l2_reg_embedding``
      is described), with the mean over examples the logloss uses; a sum-over-the-batch λ' of such
      code corresponds to λ = λ' · B here.
    - It is linear in the examples, so with data parallelism each rank adds the penalty of its own
      examples (scaled by its own batch, as its loss is) before the gradient sync; the sync's average
      is then exactly the gradient of the global batch's objective, with no extra communication.

    Frequent rows are regularised more than rare ones (in proportion to how often they are used), a
    frequency-dependent regulariser, unlike an L2 on whole tables. A row outside the batch is not
    touched at all: its value, its gradient and its optimizer state stay as they are, so a step still
    costs what the batch looked up. ``weight_decay`` remains the dense ("net") parameters' L2.

The per-row form (``embedding_l2_per: row``)
    FuxiCTR's ``embedding_regularizer`` adds ``(λ / 2) · ‖E‖²`` over whole tables to the loss, a
    gradient ``λ · e`` on every row at every step. Its sparse counterpart here gives that gradient to each
    row the (global) batch touched, once, whatever the batch size: a recipe's λ carries over from
    FuxiCTR's configurations. A touched row is shrunk as hard whether it is frequent or rare, so rare
    rows (whose loss gradient is small) stay near zero: the strong regulariser those recipes rely on.
    Under data parallelism it runs after the gradient sync, on the union of the ranks' rows, as one
    process would.

The whole-table form (``embedding_l2_per: table``)
    FuxiCTR's ``embedding_regularizer`` exactly: ``(λ / 2) · ‖E‖²`` over whole tables at every step, so a
    row outside the batch still decays (with Adam: at a rate set by its stale second moment). Rows
    only rarely looked up are held near zero between lookups, which is what those recipes are tuned for.
    It gives up the sparse update: the tables get dense gradients and the optimizer's weight decay
    (`nasrec.train.optim.dense_tables`), and a step costs the whole tables' size. Meant for small
    vocabularies (Frappe's 5,400 rows: no measurable cost); above `TABLE_WARN_ROWS` rows a warning
    says to prefer ``row``. ``auto`` (the default recipes' choice) takes ``table`` when the tables hold
    at most `TABLE_AUTO_PARAMS` weights and ``row`` otherwise: the same regulariser where it is cheap,
    its sparse counterpart where a whole-table step would cost more than the batch.

Scaled to the click rate (``embedding_l2_ref_var``)
    The loss gradient the penalty competes with grows with the label variance p(1 - p) of the data (the
    logistic loss's Fisher information per example). A λ tuned where a third of the rows are clicks holds
    every embedding at zero when 0.3 % are, and the model learns nothing. With a reference variance set
    (0.1, say: click rates between 11 % and 89 % are untouched) the λ used is
    ``λ · p(1 - p) / ref`` whenever p(1 - p) of the train split is below it (`effective_l2`).

Implementation
    Right after ``backward()`` the gradient of an ``nn.Embedding(sparse=True)`` is an uncoalesced sparse
    tensor with one entry per lookup (indices: the looked-up row ids, values: d loss / d output), so
    adding ``2 λ / B · weight[ids]`` to its values and letting clipping or the optimizer coalesce it
    sums exactly ``2 λ k / B · e_row`` into each row. One gather of the B·S rows (as the forward's
    lookup) and one add: nothing of the size of a table. It must run before anything coalesces the
    gradient (the gradient sync, clipping, the optimizer), which would lose the lookup counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.train.optim import sparse_parameters

if TYPE_CHECKING:  # config imports this module's L2_FORMS
    from nasrec.train.config import TrainConfig

# "lookup": the per-example penalty on looked-up vectors (a row counts once per lookup, scaled by the
# batch); "row": FuxiCTR's penalty (λ/2)·‖E‖² restricted to the rows the batch touched, each once;
# "table": FuxiCTR's penalty on whole tables (dense gradients, through the optimizer's weight decay).
# "auto": "table" for tables of at most TABLE_AUTO_PARAMS weights, else "row" (the default recipes').
L2_FORMS = ("lookup", "row", "table", "auto")
TABLE_WARN_ROWS = 1_000_000  # whole-table updates cost more than a sparse step's lookups beyond this
# Adam over 2M floats is a few ms a step on a laptop core, small beside a step of a 1-4k batch
TABLE_AUTO_PARAMS = 2_000_000

log = logging.getLogger(__name__)


class EmbeddingL2:
    """Adds the gradient of the embedding L2 penalty (module docstring) to sparse embedding gradients."""

    def __init__(self, params: Sequence[nn.Parameter], strength: float, per: str = "lookup") -> None:
        strength = float(strength)
        if not strength >= 0.0 or strength == float("inf"):  # also refuses NaN
            raise NasrecError(f"embedding_l2 must be a finite number >= 0, got {strength}")
        if per not in L2_FORMS:
            raise NasrecError(f"embedding_l2_per must be one of {', '.join(L2_FORMS)}, got {per!r}")
        if per == "auto":
            raise NasrecError("embedding_l2_per auto depends on the model's tables: use EmbeddingL2.for_model")
        self.params = list(params)
        self.strength = strength
        self.per = per

    @classmethod
    def for_model(cls, model: nn.Module, strength: float, per: str = "lookup") -> EmbeddingL2:
        """The penalty on every trainable sparse embedding table of `model` (a no-op when `strength` is 0).

        The whole-table form is the optimizer's weight decay (`build_optimizer(table_l2=...)`), so it is
        a no-op here too.
        """
        per = resolve_form(model, per)
        if per == "table":
            return cls([], strength, per)
        params = [p for p in sparse_parameters(model) if p.requires_grad] if strength else []
        if strength and not params:
            log.warning("embedding_l2 is %g but the model has no trainable sparse embedding table", strength)
        return cls(params, strength, per)

    @torch.no_grad()
    def __call__(self, count: int, synced: bool = False) -> None:
        """Add the penalty's gradient for a batch of `count` examples, right after backward or after the sync.

        The per-lookup form runs right after backward (`synced` False: it needs the lookup counts); the
        per-row form runs once the gradient holds every row the global batch touched (`synced` True under
        data parallelism, else right after backward).
        """
        if self.per == "table":  # the optimizer's weight decay (`build_optimizer(table_l2=...)`)
            return
        if not self.params or not self.strength or synced != (self.per == "row" and _distributed()):
            return
        if self.per == "row":
            self._per_row()
            return
        if count < 1:
            raise NasrecError(f"embedding_l2: a batch needs at least one example, got {count}")
        scale = 2.0 * self.strength / count
        for p in self.params:
            g = p.grad
            if g is None:  # the loss does not depend on this table this step (a supernet path, say)
                continue
            if not g.is_sparse:
                raise NasrecError("embedding_l2 needs the sparse gradients of nn.Embedding(sparse=True)")
            # One entry per lookup is what makes the count k right; torch marks a 1-entry tensor coalesced.
            if g.is_coalesced() and g._nnz() > 1:
                raise NasrecError("embedding_l2 must be applied right after backward, before the gradient is coalesced")
            if g.sparse_dim() != 1:
                raise NasrecError("embedding_l2: sparse gradients must index rows only (an embedding table)")
            ids = g._indices()[0]
            # out of place: the values may be an expanded view of the output gradient (stride 0)
            values = torch.add(g._values(), p.index_select(0, ids), alpha=scale)
            p.grad = torch.sparse_coo_tensor(g._indices(), values, g.shape, check_invariants=False)

    def _per_row(self) -> None:
        """Add strength x e_row to the gradient of every row the batch touched, once per row."""
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if not g.is_sparse or g.sparse_dim() != 1:
                raise NasrecError("embedding_l2 needs the sparse gradients of nn.Embedding(sparse=True)")
            g = g.coalesce()  # one entry per distinct row (clipping and the optimizer coalesce it anyway)
            ids = g._indices()[0]
            values = torch.add(g._values(), p.index_select(0, ids), alpha=self.strength)
            p.grad = torch.sparse_coo_tensor(g._indices(), values, g.shape, is_coalesced=True)


def _distributed() -> bool:
    """Whether a data-parallel process group of more than one rank is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def effective_l2(cfg: TrainConfig, ctr: float, warn: bool = True) -> float:
    """`cfg.embedding_l2`, scaled down by the train split's label variance when below `embedding_l2_ref_var`."""
    var = ctr * (1.0 - ctr)
    if not cfg.embedding_l2 or cfg.embedding_l2_ref_var is None or var >= cfg.embedding_l2_ref_var:
        return cfg.embedding_l2
    strength = cfg.embedding_l2 * var / cfg.embedding_l2_ref_var
    if warn:
        log.info(
            "embedding_l2 %g x %.4g (label variance %.4g at click rate %.4g, below %g): %.3g",
            cfg.embedding_l2,
            var / cfg.embedding_l2_ref_var,
            var,
            ctr,
            cfg.embedding_l2_ref_var,
            strength,
        )
    return strength


def table_l2(model: nn.Module, cfg: TrainConfig, warn: bool = True, strength: float | None = None) -> float:
    """The optimizer weight decay of the whole-table form (0 unless `embedding_l2_per` is "table").

    `strength`: the L2 to apply (default `cfg.embedding_l2`; `effective_l2` scales it for the data).
    """
    strength = cfg.embedding_l2 if strength is None else strength
    per = resolve_form(model, cfg.embedding_l2_per)
    if strength and cfg.embedding_l2_per == "auto" and warn:
        log.info("embedding_l2_per auto: %s (the tables hold %s weights)", per, f"{_table_params(model):,}")
    if per != "table" or not strength:
        return 0.0
    rows = sum(p.shape[0] for p in sparse_parameters(model))
    if warn and rows > TABLE_WARN_ROWS:
        log.warning(
            "embedding_l2_per table updates all %s embedding rows at every step; "
            "embedding_l2_per row keeps the sparse update",
            f"{rows:,}",
        )
    return strength


def resolve_form(model: nn.Module, per: str) -> str:
    """The L2 form `per` names for this model: "auto" becomes "table" or "row" by the tables' size."""
    if per != "auto":
        return per
    return "table" if _table_params(model) <= TABLE_AUTO_PARAMS else "row"


def _table_params(model: nn.Module) -> int:
    return sum(p.numel() for p in sparse_parameters(model))
