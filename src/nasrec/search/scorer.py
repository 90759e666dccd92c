"""Scoring a candidate architecture with the supernet's inherited weights (spec 4).

A candidate's score is the validation log loss of its path through the trained supernet after a short
fine-tune of the head alone: `finetune_steps` Adagrad steps (eps 1e-2, `finetune_lr`, linear warm-up
over `warmup_steps` then cosine, gradient-norm clip 5) on the first train batches in file order, then
log loss (or, `metric: auc`, 1 - AUC) over the first `val_batches` validation batches of `val_batch_size`.
Every candidate sees the same batches, and the supernet's head is put back after each candidate, so a
score depends on nothing but the architecture (and the thread count, see `ScoreConfig.threads`). A
centred head (models with layer norms) first has its mean measured on the candidate's path over the
first `calib_batches` fine-tune batches: the supernet's running mean mixes every path it trained.

The body is frozen, so each fine-tune step runs it without autograd and differentiates only the head.
`finetune_head` is the same procedure for a materialised standalone model (`Subnet.from_supernet`),
whose validation loss after it equals the candidate's score (tested): in the supernet only the head's
slices that the path reads get gradients, and Adagrad leaves the rest untouched.

`finetune="all"` (nasrec's option, not the paper's) materialises the candidate and fine-tunes all of
its weights, embeddings included, with the same schedule: a short training run that starts from the
inherited weights. It costs a backward pass through the body per step, and it is the better proxy
when the supernet has had too few steps for its shared head to fit every path (small data, CPU
budgets; see docs/design.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasrec.configfile import LEARNING_RATE, ConfigError, Rule, check_fields, checked_replace
from nasrec.data.cache import SPLIT_NAMES, Cache
from nasrec.data.loader import Batch, BatchLoader
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.model.cell import Output
from nasrec.model.layers import calibrate_head
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_hash
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import build_optimizer
from nasrec.train.schedule import build_schedule

# The range of every ScoreConfig field that has one (types come from the annotations); see `nasrec.configfile`.
RULES: dict[str, Rule] = {
    "finetune_steps": Rule(ge=0),
    "finetune": Rule(choices=("head", "all")),
    "finetune_batch_size": Rule(ge=1),
    "finetune_lr": LEARNING_RATE,
    "warmup_steps": Rule(ge=0),
    "eps": Rule(gt=0, le=1),
    "clip": Rule(gt=0),
    "calib_batches": Rule(ge=1),
    "val_batches": Rule(ge=1),
    "val_batch_size": Rule(ge=1),
    "val_split": Rule(choices=SPLIT_NAMES),
    "threads": Rule(ge=1),
    "metric": Rule(choices=("logloss", "auc")),
}


@dataclass(frozen=True)
class ScoreConfig:
    """The fine-tune and validation budget of one candidate."""

    finetune_steps: int = 500  # 0: no fine-tune (the paper's "no-FT" ablation is 1 step)
    finetune: str = "head"  # "head" (the paper) or "all": every weight of the materialised subnet
    finetune_batch_size: int = 512
    finetune_lr: float = 0.04
    warmup_steps: int = 50
    eps: float = 1e-2
    clip: float | None = 5.0
    # Train batches (from the start of the fine-tune batches) over which a centred head's mean is measured
    # for each candidate before its validation (models with layer norms; see `HeadLinear.calibrate`).
    calib_batches: int = 8
    val_batches: int = 150
    val_batch_size: int = 8192
    val_split: str = "val"
    # Torch threads while scoring. Float sums can depend on the thread count, so the search fixes it
    # (whatever the number of workers) to keep results identical for any number of workers.
    threads: int = 1
    device: str = "cpu"  # where the supernet and the scoring batches live ("cpu", "cuda", "cuda:N", "auto")
    # The score: "logloss" (validation log loss) or "auc" (1 - validation AUC, so that lower is better in
    # both). AUC ignores the probabilities' level, which a path's short fine-tune sets poorly
    metric: str = "logloss"

    def __post_init__(self) -> None:
        check_fields(self, "scoring config", RULES)
        try:
            resolve_device(self.device)  # an unavailable device fails here, before any work
        except NasrecError as e:
            raise ConfigError("scoring config", "device", str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def updated(self, **changes: Any) -> ScoreConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return checked_replace(self, "scoring config", changes)


def _batches(cache: Cache, split: str, batch_size: int, count: int, cycle: bool) -> list[Batch]:
    """The first `count` batches of a split in file order (cycling over it again if `cycle`)."""
    if count == 0:
        return []
    loader = BatchLoader(cache, split, batch_size=batch_size)
    if len(loader) == 0:
        raise NasrecError(f"{cache.path}: the {split} split is empty; candidates cannot be scored")
    out: list[Batch] = []
    while len(out) < count:
        for b in loader:
            out.append(b)
            if len(out) == count:
                break
        if not cycle:
            break
    return out


def _to(b: Batch, device: torch.device) -> Batch:
    """A batch on `device` (the same tensors when it is there already)."""
    return Batch(b.dense.to(device), b.sparse.to(device), b.label.to(device))


class ScoringData:
    """The fine-tune and validation batches every candidate sees, loaded once."""

    def __init__(self, cache: Cache, cfg: ScoreConfig) -> None:
        self.cfg = cfg
        device = resolve_device(cfg.device)
        count = max(cfg.finetune_steps, cfg.calib_batches)
        train = _batches(cache, "train", cfg.finetune_batch_size, count, cycle=True)
        val = _batches(cache, cfg.val_split, cfg.val_batch_size, cfg.val_batches, cycle=False)
        # moved once: every candidate reuses them, so a GPU scorer copies nothing per candidate
        self.train = [_to(b, device) for b in train[: cfg.finetune_steps]]
        self.calib = [_to(b, device) for b in train[: cfg.calib_batches]]
        self.val = [_to(b, device) for b in val]
        self.val_rows = sum(int(b.label.shape[0]) for b in self.val)


def _val_loss(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: ScoringData) -> float:
    """The candidate's score on the validation batches: log loss, or 1 - AUC (`ScoreConfig.metric`)."""
    if data.cfg.metric == "auc":
        from nasrec.train.metrics import auc

        with torch.no_grad():
            logits = torch.cat([model(b.dense, b.sparse).float().cpu() for b in data.val])
        labels = torch.cat([b.label.float().cpu() for b in data.val])
        return 1.0 - auc(labels.numpy(), logits.numpy())
    total = 0.0
    with torch.no_grad():
        for b in data.val:
            total += float(F.binary_cross_entropy_with_logits(model(b.dense, b.sparse), b.label, reduction="sum"))
    return total / data.val_rows


def finetune_all(model: nn.Module, data: ScoringData) -> float:
    """Fine-tune every weight of a standalone `model`, then return the validation log loss."""
    cfg = data.cfg
    model.train()
    if cfg.finetune_steps:
        opt = build_optimizer(model, "adagrad", lr=cfg.finetune_lr, eps=cfg.eps)
        sched = build_schedule(
            opt,
            "warmup-cosine",
            total_steps=cfg.finetune_steps,
            warmup_steps=min(cfg.warmup_steps, cfg.finetune_steps - 1),
        )
        for b in data.train:
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(b.dense, b.sparse), b.label).backward()
            if cfg.clip is not None:
                clip_grad_norm(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
    model.eval()
    if hasattr(model, "features") and hasattr(model, "head"):
        calibrate_head(model.features, model.head, data.calib)
    return _val_loss(model, data)


def finetune_head(
    features: Callable[[torch.Tensor, torch.Tensor], Output], head: nn.Module, data: ScoringData
) -> float:
    """Fine-tune `head` on frozen `features`, then return the validation log loss (see module docstring)."""
    cfg = data.cfg
    params = list(head.parameters())
    head.eval()  # the body is frozen: a centred head uses the candidate's measured mean throughout
    calibrate_head(features, head, data.calib)
    if cfg.finetune_steps:
        opt = torch.optim.Adagrad(params, lr=cfg.finetune_lr, eps=cfg.eps)
        sched = build_schedule(
            opt,
            "warmup-cosine",
            total_steps=cfg.finetune_steps,
            warmup_steps=min(cfg.warmup_steps, cfg.finetune_steps - 1),
        )
        for b in data.train:
            with torch.no_grad():
                f = features(b.dense, b.sparse)
            opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(head(f.dense, f.tokens, f.d2s), b.label)
            loss.backward()
            if cfg.clip is not None:
                clip_grad_norm(params, cfg.clip)
            opt.step()
            sched.step()

    def logits(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        f = features(dense, sparse)
        return head(f.dense, f.tokens, f.d2s)

    return _val_loss(logits, data)


class SupernetScorer:
    """Scores architectures through a trained supernet; cached by functional hash (one score per function)."""

    def __init__(
        self, supernet: Supernet, cache: Cache | None, cfg: ScoreConfig | None = None, data: ScoringData | None = None
    ) -> None:
        """`data` replaces the batches read from `cache` (benchmarks score on batches held in memory)."""
        self.cfg = cfg or ScoreConfig()
        self.device = resolve_device(self.cfg.device)
        self.supernet = supernet.to(self.device).eval()
        for p in self.supernet.parameters():
            p.requires_grad_(False)
        if data is None:
            if cache is None:
                raise NasrecError("SupernetScorer needs a cache or scoring data")
            data = ScoringData(cache, self.cfg)
        else:  # batches built elsewhere (benchmarks): moved to the scoring device if they are not there
            data.train = [_to(b, self.device) for b in data.train]
            data.val = [_to(b, self.device) for b in data.val]
            data.calib = [_to(b, self.device) for b in data.calib]
        self.data = data
        self.scores: dict[str, float] = {}
        self._head0 = {k: v.clone() for k, v in self.supernet.head.state_dict().items()}

    def score(self, arch: Architecture) -> float:
        """Validation log loss (or 1 - AUC) of `arch` after its fine-tune (NaN if it diverged)."""
        key = functional_hash(arch)
        if key in self.scores:
            return self.scores[key]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            value = self._finetune_all(arch) if self.cfg.finetune == "all" else self._finetune_head(arch)
        finally:
            torch.set_num_threads(threads)
        self.scores[key] = value if math.isfinite(value) else math.nan
        return self.scores[key]

    def _finetune_all(self, arch: Architecture) -> float:
        with torch.random.fork_rng():  # construction draws initial weights, then overwritten
            model = Subnet.from_supernet(self.supernet, arch).to(self.device)
        return finetune_all(model, self.data)

    def _finetune_head(self, arch: Architecture) -> float:
        head = self.supernet.head
        try:
            for p in head.parameters():
                p.requires_grad_(True)
            return finetune_head(lambda d, s: self.supernet.features(d, s, arch), head, self.data)
        finally:
            for p in head.parameters():
                p.requires_grad_(False)
            head.load_state_dict(self._head0)

    def samples_per_candidate(self) -> int:
        """Examples forwarded through the body per candidate (fine-tune plus validation)."""
        return sum(int(b.label.shape[0]) for b in self.data.train) + self.data.val_rows
