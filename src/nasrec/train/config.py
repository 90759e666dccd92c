"""Training configuration as a plain, validated value, and the named presets (YAML files in nasrec/presets/train)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nasrec.backend import EMBEDDINGS, FUSED_OPTIMIZERS, SHARDINGS
from nasrec.configfile import (
    LEARNING_RATE,
    SEED,
    ConfigError,
    Rule,
    check_fields,
    check_mapping,
    checked_replace,
    preset_file,
    read_preset,
)
from nasrec.data.cache import SPLIT_NAMES
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.space.space import STRATEGIES
from nasrec.train.optim import DEFAULT_EPS, OPTIMIZERS
from nasrec.train.regularize import L2_FORMS

# The range of every field that has one (types come from the annotations); see `nasrec.configfile`.
RULES: dict[str, Rule] = {
    "batch_size": Rule(ge=1),
    "epochs": Rule(ge=1),
    "max_steps": Rule(ge=1),
    "optimizer": Rule(choices=OPTIMIZERS),
    "lr": LEARNING_RATE,
    "eps": Rule(gt=0, le=1),
    "embedding_lr": LEARNING_RATE,
    "first_order_lr": LEARNING_RATE,
    "weight_decay": Rule(ge=0, le=1),
    "embedding_l2_per": Rule(choices=L2_FORMS),
    "embedding_l2_ref_var": Rule(gt=0, le=0.25, why="a label variance p(1 - p), at most 0.25"),
    "arch_dropout": Rule(ge=0, lt=1),
    "arch_max_embedding_std": Rule(gt=0, le=1),
    "embedding_l2": Rule(ge=0, le=1, why="a per-example penalty, added to a mean logloss of about 0.45"),
    "schedule": Rule(choices=("warmup-cosine", "constant", "plateau")),
    "warmup_fraction": Rule(ge=0, lt=1),
    "clip": Rule(gt=0),
    "seed": SEED,
    "eval_split": Rule(choices=SPLIT_NAMES),
    "eval_every": Rule(ge=0),
    "evals_per_epoch": Rule(ge=0),
    "eval_min_steps": Rule(ge=0),
    "refit_max_rows": Rule(ge=1),
    "plateau_factor": Rule(gt=0, lt=1),
    "plateau_patience": Rule(ge=1),
    "eval_batch_size": Rule(ge=1),
    "eval_max_batches": Rule(ge=1),
    "early_stop_metric": Rule(choices=("logloss", "auc")),
    "patience": Rule(ge=1),
    "checkpoint_every": Rule(ge=1),
    "log_every": Rule(ge=1),
    "threads": Rule(ge=1),
    "head_calib_batches": Rule(ge=0),
    "strategy": Rule(choices=STRATEGIES),
    "path_warmup_steps": Rule(ge=0),
    "path_warmup_fraction": Rule(ge=0, le=1),
    "supernet_eval_archs": Rule(ge=1),
    "path_max_mflops": Rule(gt=0),
    "path_max_latency_ms": Rule(gt=0),
    "latency_runtime": Rule(choices=("onnxruntime", "torchscript")),
    "latency_batch": Rule(ge=1),
    "latency_threads": Rule(ge=1),
    "embeddings": Rule(choices=EMBEDDINGS),
    "embedding_optimizer": Rule(choices=FUSED_OPTIMIZERS),
    "sharding": Rule(choices=SHARDINGS),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (besides the model and the data)."""

    batch_size: int = 512
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: whole epochs)
    optimizer: str = "adagrad"
    lr: float = 0.12
    # None: the optimizer's own (adagrad 1e-2, the paper's; adam 1e-8; sgd has none). A value equal to the
    # optimizer's own is kept as None, so a run saved when eps was always 1e-2 resumes (`default_eps_as_none`).
    eps: float | None = None
    embedding_lr: float | None = None
    # The lr of a zoo model's first-order (LR) part, the per-category scalars and the dense linear weights;
    # None: lr / embedding_lr. On small data a model's embeddings and MLP overfit within an epoch or two
    # while the LR part, at the same Adam lr, has barely moved: a higher lr lets both fit before early
    # stopping ends the run (BENCHMARKS.md)
    first_order_lr: float | None = None
    # L2 of the dense ("net") parameters only, through the optimizer; embeddings have embedding_l2
    weight_decay: float = 0.0
    # L2 penalty on the embeddings each example looks up, added to the mean loss as embedding_l2 x the
    # mean over the batch of each example's sum of squared looked-up vectors: a row looked up k times in a
    # batch counts k times. It keeps the sparse row-wise update (`nasrec.train.regularize`); 0: off.
    embedding_l2: float = 0.0
    # "lookup" (above), "row": FuxiCTR's (λ/2)·‖E‖² on the rows the batch touched, each row once, or
    # "table": (λ/2)·‖E‖² on whole tables, with dense gradients (small tables only)
    embedding_l2_per: str = "lookup"
    # None, or the label variance p(1 - p) of the train split (p: its click rate) at and above which
    # embedding_l2 applies as given; below it the L2 shrinks in proportion, x p(1 - p) / this. The loss
    # gradient the penalty competes with scales with p(1 - p) (the logistic loss's Fisher information):
    # with 0.3 % positives a λ tuned at 33 % holds every embedding at zero and the model learns nothing
    embedding_l2_ref_var: float | None = None
    # Zoo models: start the bias that reaches the logit at the log-odds of the train split's click rate
    # (`ZooModel.init_logit_bias`), as FuxiCTR and DeepCTR do, instead of 0, which predicts 0.5 at first.
    # (nasrec architectures' centred heads always start so.)
    init_logit_bias: bool = False
    # After training (and restore_best), shift the output bias to its maximum-likelihood value on the first
    # refit_max_rows train rows with every other weight frozen: the mean prediction there then equals their
    # click rate (`nasrec.train.bias_refit`). A run that early stopping ends after an epoch is not there yet.
    refit_logit_bias: bool = False
    # Or: after training, fit logit' = scale x logit + shift on the first refit_max_rows validation rows
    # (Platt scaling) and fold both into the final layers (`nasrec.train.calibration`). Ranking metrics are
    # unchanged; it undoes the over-confidence of weights kept by early stopping on AUC.
    calibrate_logits: bool = False
    refit_max_rows: int = 1_000_000
    schedule: str = "warmup-cosine"
    # "plateau": every lr x plateau_factor after plateau_patience evaluations without gain in the metric
    # early stopping watches (log loss without one)
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    warmup_fraction: float = 0.1
    clip: float | None = 5.0
    shuffle: bool = False  # the reference trains in file order
    seed: int = 0
    layernorm: bool = False  # standalone models; supernets always use layer norms
    # Standalone nasrec architectures: dropout on every block's dense output while training (zoo models take
    # theirs as the hyper-parameter `dropout`; supernets have none)
    arch_dropout: float = 0.0
    # Nasrec architectures and supernets: every embedding table's initial std capped at this (None: NASRec's
    # xavier-normal, std sqrt(2 / (N + 16)), 0.29 for a 7-id table); zoo models take the hyper-parameter
    # max_embedding_std, 1e-4 in their default recipes, as DeepCTR and FuxiCTR start theirs
    arch_max_embedding_std: float | None = None
    # Standalone nasrec architectures: batch norms in place of the layer norms on the blocks' dense outputs (the
    # zoo's MLPs have batch norms; needs layernorm: true, tokens keep layer norms; costed as the layer norms)
    arch_batchnorm: bool = False
    # Standalone nasrec architectures with layernorm: the head centres its inputs on their batch mean, as the
    # supernet's does (false: a plain linear head whose bias starts at the data's log-odds)
    arch_head_centre: bool = True
    eval_split: str = "val"
    eval_every: int = 0  # steps between evaluations (0: only at the end, unless evals_per_epoch is set)
    evals_per_epoch: int = 0  # evaluations per epoch, whatever the data size (give this or eval_every)
    # With evals_per_epoch: at least this many steps between evaluations. On small data an epoch is a few
    # steps, and judging (early stopping, the plateau schedule) before batch-norm statistics and Adam's
    # moments settle stops a run at its start.
    eval_min_steps: int = 0
    eval_batch_size: int = 8192
    eval_max_batches: int | None = None
    early_stop_metric: str | None = None  # "logloss" or "auc"
    patience: int = 3
    restore_best: bool = False  # final test (and the run's model) with the weights of the best evaluation
    checkpoint_every: int = 200  # steps between checkpoints (and always at the end)
    log_every: int = 50
    threads: int | None = None
    # "cpu", "cuda", "cuda:N" or "auto"; not part of a run's identity (a run may resume on another device)
    device: str = "cpu"
    tensorboard: bool = False
    # Keep the optimizer state in a finished run's checkpoint (it only serves a resume, which a finished
    # run no longer needs, and is as large as the weights); not part of a run's identity
    keep_optimizer: bool = False
    # Standalone models with a centred head (layer norms on): before each evaluation its mean is measured
    # exactly over the first this-many train batches (file order) with the current weights; 0 keeps the
    # running mean, which lags the weights when they move fast (docs/design.md, "Centred head"). A
    # supernet's evaluation measures it so for each of its evaluation paths, as the search's scorer does.
    # A nasrec architecture with batch norms (arch_batchnorm) has their statistics measured over the same
    # batches first (`nasrec.train.evaluation.exact_batchnorm`); 0 keeps their running statistics too.
    head_calib_batches: int = 8
    # supernet training
    strategy: str = "default"
    path_warmup_steps: int = 0  # full-path warm-up length T (probability of the full path 1 - t/T)
    # The warm-up as a share of the training steps (T = round(fraction x steps)), for presets that must fit
    # any data size; give this or path_warmup_steps. An absolute T over the training length is capped to it.
    path_warmup_fraction: float = 0.0
    supernet_eval_archs: int = 4  # fixed sampled architectures averaged when evaluating a supernet
    # The sandwich rule (BigNAS): after the warm-up every step trains the largest path (the full path), the
    # smallest (narrowest widths, no merges, a chain of the cheapest operator pair) and the sampled path,
    # their gradients summed into one update; 3 x the step's cost. With sandwich_distill the two smaller
    # paths learn the largest path's predictions (in-place distillation) instead of the labels.
    sandwich: bool = False
    sandwich_distill: bool = True
    # Budget-aware supernet training: after the warm-up, a sampled path over this many MFLOPs (the
    # search's count) is redrawn, so the training goes to the paths a search under that cap can choose.
    path_max_mflops: float | None = None
    # How path_max_mflops counts a path: as a served model with layer norms or without (the recipe that will
    # train the searched model says which; `nasrec.model.cost.ServedCost`)
    path_count_layernorm: bool = False
    # The same with a serving-latency cap in milliseconds, predicted by a latency table of the serving machine
    # (`nasrec latency profile`) at latency_batch examples a call, latency_threads threads, in latency_runtime;
    # latency_force uses a table measured for another machine, space or data shape anyway
    path_max_latency_ms: float | None = None
    latency_table: str | None = None
    latency_runtime: str = "onnxruntime"
    latency_batch: int = 1
    latency_threads: int = 1
    latency_force: bool = False
    # The embedding tables' engine: "nasrec" (sparse-gradient tables, updated by the run's optimizer) or
    # "torchrec" (TorchRec's fused fbgemm tables, updated inside backward: `nasrec.backend.fused`)
    embeddings: str = "nasrec"
    # TorchRec only: the tables' fused optimizer (None: the run's `optimizer`; fbgemm fuses adam on GPUs
    # only, so on CPU an adam run's tables need adagrad, rowwise_adagrad or sgd, with their embedding_lr)
    embedding_optimizer: str | None = None
    # TorchRec under torchrun: how the planner spreads the tables over the processes ("table-wise",
    # "column-wise"; "row-wise" on GPUs); None: table-wise. A sharded run resumes on as many processes.
    sharding: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, "training config", RULES)
        if self.eps is not None:
            if self.optimizer == "sgd":
                raise ConfigError("training config", "eps", "sgd has no eps (leave it unset)", related=("optimizer",))
            if self.eps == DEFAULT_EPS[self.optimizer]:
                object.__setattr__(self, "eps", None)
        if self.eval_every and self.evals_per_epoch:
            raise ConfigError(
                "training config",
                "evals_per_epoch",
                "give eval_every or evals_per_epoch, not both",
                related=("eval_every",),
            )
        if self.arch_batchnorm and not self.layernorm:
            raise ConfigError(
                "training config",
                "arch_batchnorm",
                "batch norms replace the layer norms of the blocks' dense outputs: set layernorm: true",
                related=("layernorm",),
            )
        if not self.arch_head_centre and not self.layernorm:
            raise ConfigError(
                "training config",
                "arch_head_centre",
                "only a layer-normed model's head is centred: set layernorm: true",
                related=("layernorm",),
            )
        if self.path_warmup_fraction and self.path_warmup_steps:
            raise ConfigError(
                "training config",
                "path_warmup_fraction",
                "give path_warmup_steps or path_warmup_fraction, not both",
                related=("path_warmup_steps",),
            )
        try:
            resolve_device(self.device)  # an unavailable device fails here, before any work
        except NasrecError as e:
            raise ConfigError("training config", "device", str(e)) from None
        self._check_embeddings()

    def _check_embeddings(self) -> None:
        if self.embeddings != "torchrec":
            for key, what in (("embedding_optimizer", "an optimizer of their own"), ("sharding", "a sharding")):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        "training config",
                        key,
                        f"only TorchRec's fused tables take {what} (set embeddings: torchrec)",
                        related=("embeddings",),
                    )
            return
        # A fused table is updated inside each backward: there is no gradient to add a penalty to, and the
        # sandwich rule's three backward passes would be three updates instead of one summed one.
        for key, on in (("embedding_l2", self.embedding_l2 > 0), ("sandwich", self.sandwich)):
            if on:
                raise ConfigError(
                    "training config",
                    key,
                    "not available with embeddings: torchrec (its tables update inside backward)",
                    related=("embeddings",),
                )
        if (self.embedding_optimizer or self.optimizer) == "adam" and resolve_device(self.device).type == "cpu":
            raise ConfigError(
                "training config",
                "embedding_optimizer",
                "fbgemm fuses adam on GPUs only: on CPU give the TorchRec tables adagrad, rowwise_adagrad or "
                "sgd (and an embedding_lr for it)",
                related=("embeddings", "optimizer"),
            )

    def fused_embedding_optimizer(self) -> tuple[str, float, float]:
        """TorchRec's tables: their fused optimizer, lr and eps."""
        name = self.embedding_optimizer or self.optimizer
        lr = self.embedding_lr if self.embedding_lr is not None else self.lr
        own = DEFAULT_EPS.get(name.removeprefix("rowwise_"), 1e-8)
        eps = self.eps if self.eps is not None and name == self.optimizer else own
        return name, lr, eps

    def eval_interval(self, steps_per_epoch: int) -> int:
        """Steps between evaluations during training (0: none before the end)."""
        if self.evals_per_epoch:
            return max(1, self.eval_min_steps, steps_per_epoch // self.evals_per_epoch)
        return self.eval_every

    def arch_model_options(self) -> dict[str, Any]:
        """The `ModelSpec` settings a standalone nasrec architecture trained with this config takes."""
        return dict(
            layernorm=self.layernorm,
            dropout=self.arch_dropout,
            max_embedding_std=self.arch_max_embedding_std,
            batchnorm=self.arch_batchnorm,
            head_centre=self.arch_head_centre,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return checked_replace(self, "training config", changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output (also as written by an older nasrec: see `default_eps_as_none`)."""
        return cls().updated(**default_eps_as_none(d))


def default_eps_as_none(d: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration's dict with eps written as TrainConfig keeps it: None for the optimizer's own.

    Runs saved before eps followed the optimizer hold eps 0.01 whatever the optimizer: with adagrad that is
    its own eps (the same run as eps None), and sgd has none (it never used it). With adam it stays 0.01,
    the eps that run trained with.
    """
    out = dict(d)
    optimizer = out.get("optimizer", "adagrad")
    if out.get("eps") is not None and (optimizer == "sgd" or out["eps"] == DEFAULT_EPS.get(optimizer)):
        out["eps"] = None
    return out


def preset_settings(name: str) -> dict[str, Any]:
    """The settings of a named training preset (nasrec/presets/train/NAME.yaml), checked by type and range."""
    path = preset_file("train", name, "preset")
    what = f"training preset {path}"
    values = check_mapping(what, "", read_preset(path, "training preset"), TrainConfig, RULES)
    try:
        TrainConfig().updated(**values)  # the combinations too (eps with sgd, both warm-up forms)
    except ConfigError as e:
        raise ConfigError(what, e.key, e.problem, e.related) from None
    return values


def preset(name: str | None, **overrides: Any) -> TrainConfig:
    """A named preset (or the defaults), with overrides applied."""
    base = preset_settings(name) if name is not None else {}
    # the warm-up is given one way: one given explicitly replaces the preset's other way
    for given, other in (("path_warmup_steps", "path_warmup_fraction"), ("path_warmup_fraction", "path_warmup_steps")):
        if given in overrides and other not in overrides:
            base.pop(other, None)
    return TrainConfig().updated(**{**base, **overrides})
