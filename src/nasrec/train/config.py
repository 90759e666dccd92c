"""Training configuration as a plain, validated value, and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nasrec.configfile import checked_replace
from nasrec.device import resolve_device
from nasrec.errors import NasrecError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (besides the model and the data)."""

    batch_size: int = 512
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: whole epochs)
    optimizer: str = "adagrad"
    lr: float = 0.12
    eps: float = 1e-2
    embedding_lr: float | None = None
    weight_decay: float = 0.0
    schedule: str = "warmup-cosine"
    warmup_fraction: float = 0.1
    clip: float | None = 5.0
    shuffle: bool = False  # the reference trains in file order
    seed: int = 0
    layernorm: bool = False  # standalone models; supernets always use layer norms
    eval_split: str = "val"
    eval_every: int = 0  # steps between evaluations (0: only at the end)
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
    # Standalone models with a centred head (layer norms on): before each evaluation its mean is measured
    # exactly over the first this-many train batches (file order) with the current weights; 0 keeps the
    # running mean, which lags the weights when they move fast (docs/design.md, "Centred head"). A
    # supernet's evaluation measures it so for each of its evaluation paths, as the search's scorer does.
    head_calib_batches: int = 8
    # supernet training
    strategy: str = "default"
    path_warmup_steps: int = 0  # full-path warm-up length T (probability of the full path 1 - t/T)
    # The warm-up as a share of the training steps (T = round(fraction x steps)), for presets that must fit
    # any data size; give this or path_warmup_steps. An absolute T over the training length is capped to it.
    path_warmup_fraction: float = 0.0
    supernet_eval_archs: int = 4  # fixed sampled architectures averaged when evaluating a supernet
    # Budget-aware supernet training: after the warm-up, a sampled path over this many MFLOPs (the
    # search's count) is redrawn, so the training goes to the paths a search under that cap can choose.
    path_max_mflops: float | None = None
    # How path_max_mflops counts a path: as a served model with layer norms or without (the recipe that will
    # train the searched model says which; `nasrec.model.cost.ServedCost`)
    path_count_layernorm: bool = False

    def __post_init__(self) -> None:
        positive = ("batch_size", "epochs", "eval_batch_size", "checkpoint_every", "log_every", "patience")
        for name in positive:
            if getattr(self, name) < 1:
                raise NasrecError(f"training config: {name} must be >= 1, not {getattr(self, name)}")
        if self.head_calib_batches < 0:
            raise NasrecError(f"training config: head_calib_batches must be >= 0, not {self.head_calib_batches}")
        if self.optimizer not in ("adagrad", "adam", "sgd"):
            raise NasrecError(f"training config: unknown optimizer {self.optimizer!r} (adagrad, adam, sgd)")
        if self.schedule not in ("warmup-cosine", "constant", "plateau"):
            raise NasrecError(f"training config: unknown schedule {self.schedule!r} (warmup-cosine, constant, plateau)")
        if self.early_stop_metric not in (None, "logloss", "auc"):
            raise NasrecError(
                f"training config: early_stop_metric must be logloss or auc, not {self.early_stop_metric!r}"
            )
        if self.path_max_mflops is not None and not self.path_max_mflops > 0:
            raise NasrecError(f"training config: path_max_mflops must be > 0, not {self.path_max_mflops}")
        if not 0 <= self.path_warmup_fraction <= 1:
            raise NasrecError(f"training config: path_warmup_fraction must be in [0, 1], not {self.path_warmup_fraction}")
        if self.path_warmup_fraction and self.path_warmup_steps:
            raise NasrecError("training config: give path_warmup_steps or path_warmup_fraction, not both")
        if self.lr <= 0 or not 0 <= self.warmup_fraction < 1:
            raise NasrecError("training config: lr must be > 0 and warmup_fraction in [0, 1)")
        try:
            resolve_device(self.device)  # an unavailable device fails here, before any work
        except NasrecError as e:
            raise NasrecError(f"training config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return checked_replace(self, "training config", changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output."""
        return cls().updated(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # spec 3: supernet training of the paper (Criteo: T = 15,000; one epoch on train)
    "paper-supernet": dict(batch_size=512, epochs=1, optimizer="adagrad", lr=0.12, eps=1e-2, schedule="warmup-cosine",
                           warmup_fraction=0.1, clip=5.0, path_warmup_steps=15_000, shuffle=False),
    # spec 4: final training from scratch (Criteo NASRec-Full lr 0.16; Small 0.1), LN off, batch 256
    "paper-final": dict(batch_size=256, epochs=1, optimizer="adagrad", lr=0.16, eps=1e-2, schedule="warmup-cosine",
                        warmup_fraction=0.1, clip=5.0, layernorm=False, shuffle=False, eval_every=10_000),
    # minutes on a 2-core CPU with a few hundred thousand rows. Layer norms on (like the supernet): without
    # them a random architecture's initial logits reach std 1e1-1e4 on small-vocabulary data and the
    # higher learning rates diverge (docs/design.md, "Layer norms and learning rate in standalone training").
    "cpu-quick": dict(batch_size=512, epochs=2, optimizer="adagrad", lr=0.15, schedule="warmup-cosine",
                      warmup_fraction=0.05, clip=5.0, shuffle=True, eval_every=500, eval_max_batches=10,
                      layernorm=True),
    # The full-path warm-up is a fifth of the training, the paper's share (15,000 of Criteo's ~72,000 steps
    # per epoch), so that it ends on any data size.
    # lr 0.1: with the centred head, a 4-epoch Small supernet on the demo data ends at train loss 0.37 at
    # lr 0.1 against 0.45 at 0.05 (docs/design.md, "Centred head")
    "cpu-supernet": dict(batch_size=512, epochs=1, optimizer="adagrad", lr=0.1, schedule="warmup-cosine",
                         warmup_fraction=0.05, clip=5.0, shuffle=True, path_warmup_fraction=0.2, eval_every=0,
                         eval_max_batches=10),
}  # fmt: skip


def preset(name: str | None, **overrides: Any) -> TrainConfig:
    """A named preset (or the defaults), with overrides applied."""
    if name is not None and name not in PRESETS:
        raise NasrecError(f"unknown preset {name!r} (expected one of: {', '.join(PRESETS)})")
    base = dict(PRESETS[name]) if name else {}
    # the warm-up is given one way: one given explicitly replaces the preset's other way
    for given, other in (("path_warmup_steps", "path_warmup_fraction"), ("path_warmup_fraction", "path_warmup_steps")):
        if given in overrides and other not in overrides:
            base.pop(other, None)
    return TrainConfig().updated(**{**base, **overrides})
