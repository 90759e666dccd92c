"""Training and scoring throughput on one device (a GPU by default): supernets, standalone models, scoring.

Usage::

    python bench/bench_gpu.py                          # --device cuda; under 5 minutes on one H200
    python bench/bench_gpu.py --device cpu --quick     # the same code paths, a tiny budget (a CPU check)

Criteo shape (13 dense, 26 sparse fields, tables capped at 500,000 rows, embedding dim 16), random batches
generated on the CPU and moved to the device once, as `nasrec` moves each batch. Each training step is the
Trainer's: forward, log loss, read the loss (a device sync, as the Trainer checks it is finite), backward,
gradient-norm clip at 5, Adagrad (lr 0.12, eps 1e-2; row-wise sparse embedding updates), one supernet path
sampled per step ("default" strategy). Measured:

* supernet training samples/s, NASRec-Small and NASRec-Full (layer norms on), batch 512 and 4096;
* standalone training samples/s of the published Criteo NASRec-Full best architecture
  (../shared/configs/criteo_xlarge_best.json; a sampled NASRec-Full architecture when absent) and DLRM;
* candidate scoring examples/s through `SupernetScorer` (head fine-tune, then validation), NASRec-Full.

Warm-up steps come first and the clock stops after a device sync. Without CUDA `--device cuda` prints why
and exits 0 (a skip, not a failure). Prints one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.data.loader import Batch
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.search.scorer import ScoreConfig, SupernetScorer
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import build_optimizer
from nasrec.zoo.registry import build_zoo_model

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
TABLES = [min(n, 500_000) for n in CRITEO_TABLE_SIZES]
SPACES = {"small": NASREC_SMALL, "full": NASREC_FULL}


def random_batches(n: int, batch: int, device: torch.device, seed: int = 0) -> list[Batch]:
    """`n` random Criteo-shaped batches, already on `device`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        dense = torch.rand(batch, 13, generator=g) * 3
        sparse = torch.stack([torch.randint(0, t, (batch,), generator=g) for t in TABLES], 1)
        label = torch.randint(0, 2, (batch,), generator=g).float()
        out.append(Batch(dense.to(device), sparse.to(device), label.to(device)))
    return out


class MemoryData:
    """Random scoring batches on `device` with the shape of `nasrec.search.scorer.ScoringData`."""

    def __init__(self, cfg: ScoreConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.train = random_batches(cfg.finetune_steps, cfg.finetune_batch_size, device, seed=1)
        self.calib = self.train[: cfg.calib_batches]  # as ScoringData: the first fine-tune batches
        self.val = random_batches(cfg.val_batches, cfg.val_batch_size, device, seed=2)
        self.val_rows = cfg.val_batches * cfg.val_batch_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model: torch.nn.Module, data: list[Batch], warmup: int, device: torch.device, space=None) -> float:
    """Samples/s of Trainer-like steps over `data` after `warmup` untimed ones (a path per step for a supernet)."""
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2)
    rng = np.random.default_rng(0)

    def step(b: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        path = () if space is None else (space.sample(rng, "default"),)
        logits = model(b.dense, b.sparse, *path)
        loss = F.binary_cross_entropy_with_logits(logits, b.label)
        float(loss.detach())  # the Trainer reads every loss (to stop on divergence): one sync per step
        loss.backward()
        clip_grad_norm(model.parameters(), 5.0)
        opt.step()

    for b in data[:warmup]:
        step(b)
    _sync(device)
    t0 = time.perf_counter()
    for b in data[warmup:]:
        step(b)
    _sync(device)
    return sum(int(b.label.shape[0]) for b in data[warmup:]) / (time.perf_counter() - t0)


def published_arch(configs: Path = CONFIGS) -> tuple[str, Architecture]:
    """The published Criteo NASRec-Full best architecture, or a sampled NASRec-Full one without it."""
    path = configs / "criteo_xlarge_best.json"
    if path.is_file():
        return "criteo_xlarge_best", Architecture.load(path)
    print(f"{path} not found (give --configs DIR): a sampled NASRec-Full architecture instead", flush=True)
    return "sampled_full_seed0", NASREC_FULL.sample(np.random.default_rng(0), "default")


def _record(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; 0 also when the device is missing (the bench is then skipped)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cpu, cuda, cuda:N or auto (default cuda)")
    ap.add_argument("--quick", action="store_true", help="a tiny budget, to check the code paths (e.g. on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument(
        "--configs",
        type=Path,
        default=CONFIGS,
        help="directory of the published architectures (default: ../shared/configs beside the repository)",
    )
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    try:
        device = resolve_device(args.device)
    except NasrecError as e:
        print(f"bench_gpu: skipped: {e}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = (512,) if args.quick else (512, 4096)
    warmup, steps = (1, 2) if args.quick else (5, 30)
    score_cfg = ScoreConfig(device=args.device)
    score_cfg = score_cfg.updated(
        **(
            dict(finetune_steps=3, warmup_steps=1, val_batches=1, val_batch_size=2048)
            if args.quick
            else dict(finetune_steps=100, warmup_steps=10, val_batches=20, val_batch_size=8192)
        )
    )
    rows: list[dict] = []
    t_start = time.perf_counter()
    info = {"bench": "gpu", "device": str(device), "quick": args.quick, "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps({**info, "machine": machine_info()}), flush=True)

    for name, space in SPACES.items():
        torch.manual_seed(0)
        model = Supernet(space, 13, TABLES, layernorm=True).to(device)
        for batch in batches:
            rate = train_rate(model, random_batches(warmup + steps, batch, device), warmup, device, space)
            _record(
                rows,
                {
                    "what": "supernet training",
                    "model": f"supernet-{name}",
                    "batch": batch,
                    "samples_per_s": round(rate),
                },
            )
        del model
        _free(device)

    arch_name, arch = published_arch(args.configs)
    for model_name in (arch_name, "dlrm"):
        for batch in batches:
            torch.manual_seed(0)
            if model_name == "dlrm":
                model = build_zoo_model("dlrm", 13, TABLES).to(device)
            else:
                model = Subnet(arch, 13, TABLES, layernorm=False).to(device)
            rate = train_rate(model, random_batches(warmup + steps, batch, device), warmup, device)
            _record(
                rows, {"what": "standalone training", "model": model_name, "batch": batch, "samples_per_s": round(rate)}
            )
            del model
            _free(device)

    torch.manual_seed(0)
    data = MemoryData(score_cfg, device)
    scorer = SupernetScorer(Supernet(NASREC_FULL, 13, TABLES, layernorm=True), None, score_cfg, data=data)  # type: ignore[arg-type]
    rng = np.random.default_rng(1000)
    candidates = 1 if args.quick else 5
    scorer.score(NASREC_FULL.sample(rng, "uniform"))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    scores = [scorer.score(NASREC_FULL.sample(rng, "uniform")) for _ in range(candidates)]
    _sync(device)
    seconds = time.perf_counter() - t0
    per = scorer.samples_per_candidate()
    _record(
        rows,
        {
            "what": "candidate scoring",
            "model": "supernet-full",
            "batch": score_cfg.val_batch_size,
            "samples_per_s": round(candidates * per / seconds),
            "candidates_per_min": round(60 * candidates / seconds, 2),
            "examples_per_candidate": per,
            "scores_finite": bool(np.all(np.isfinite(scores))),
        },
    )

    if device.type == "cuda":
        info["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps({**info, "results": rows}), flush=True)
    print(f"\n{device} ({info.get('gpu', 'CPU')}), Criteo shape, tables capped at 500,000\n")
    print("| what | model | batch | samples/s |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['model']} | {r['batch']} | {r['samples_per_s']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
