"""Standalone training throughput: published Criteo NASRecNets and DeepFM, real and capped tables.

Usage::

    python bench/bench_train.py                    # all models, both table settings, sparse and dense
    python bench/bench_train.py --models criteo_xlarge_best --tables capped --runs 5
    python bench/bench_train.py --models deepfm --tables capped --embedding-l2 1e-4 --runs 8

Criteo shape (13 dense, 26 sparse fields, embedding dim 16); "real" tables are the NASRec Criteo table
sizes (33.8 M rows, 2.16 GB of float32 embeddings), "capped" caps each at 500,000 rows. Batch 256 with
real tables and 512 with capped ones (the reference's settings), 2 threads, Adagrad (lr 0.12, eps 1e-2)
through nasrec's optimizer, gradient clipping at 5, no layer norms. "sparse" is nasrec's row-wise
embedding update; "dense" gives the embeddings dense gradients, so Adagrad touches every row every step
(what the reference does). Pre-generated random batches; warm-up steps first; median of `--runs` runs.

``--modes torchrec torchrec-rowwise`` measure TorchRec's fused tables (`--embeddings torchrec`, the torchrec
extra): the same model with its embedding swapped for a FusedEmbeddingBagCollection whose fbgemm kernels
apply exact Adagrad (as "sparse") or row-wise Adagrad inside backward; the dense part as above.

``--embedding-l2 VALUE`` measures instead the cost of the embedding L2 penalty (`nasrec.train.regularize`)
on the sparse update: one model and optimizer, runs without and with the penalty alternated in one process
(plain then penalised, then the other way round), since only interleaved ratios survive the machine's
drift; it reports both rates and the median of the per-pair ratios (penalised over plain).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import (  # bench/ is not a package
    LoadSample,
    available_models,
    machine_info,
    machine_line,
    reference,
    reference_text,
)

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.model.subnet import Subnet
from nasrec.space.arch import Architecture
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import build_optimizer
from nasrec.train.regularize import EmbeddingL2

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"  # ../shared/configs beside the repository


def build(name: str, tables: list[int], configs: Path = CONFIGS) -> torch.nn.Module:
    """A published architecture (from `configs`) or a zoo model."""
    if name.startswith("criteo_"):
        return Subnet(Architecture.load(configs / f"{name}.json"), 13, tables, layernorm=False)
    from nasrec.zoo.registry import build_zoo_model

    return build_zoo_model(name, 13, tables)


def random_batches(batch: int, tables: list[int], steps: int) -> list[tuple[torch.Tensor, ...]]:
    """`steps` random Criteo-shaped batches (dense, sparse ids, labels)."""
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch, 13, generator=g) * 3,
            torch.stack([torch.randint(0, t, (batch,), generator=g) for t in tables], 1),
            torch.randint(0, 2, (batch,), generator=g).float(),
        )
        for _ in range(steps)
    ]


def measure(model: torch.nn.Module, batch: int, tables: list[int], steps: int, runs: int) -> dict:
    """Median samples/s of training steps on random batches."""
    data = random_batches(batch, tables, steps)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2)

    def run() -> None:
        for dense, sparse, y in data:
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(dense, sparse), y).backward()
            clip_grad_norm(model.parameters(), 5.0)
            opt.step()

    run()  # warm-up (allocates optimizer state)
    rates, shares = [], []
    for _ in range(runs):
        load = LoadSample()
        load.start()
        t0 = time.perf_counter()
        run()
        rates.append(steps * batch / (time.perf_counter() - t0))
        shares.append(round(load.stop(), 3))
    return {
        "median": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
        "other_share": shares,
    }


def measure_l2(
    model: torch.nn.Module, batch: int, tables: list[int], steps: int, runs: int, strength: float, per: str = "lookup"
) -> dict:
    """Samples/s without and with the embedding L2 penalty, runs interleaved, and their per-pair ratios."""
    data = random_batches(batch, tables, steps)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2)
    penalty = {"plain": EmbeddingL2.for_model(model, 0.0), "l2": EmbeddingL2.for_model(model, strength, per)}

    def run(l2: EmbeddingL2) -> float:
        t0 = time.perf_counter()
        for dense, sparse, y in data:
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(dense, sparse), y).backward()
            l2(y.shape[0])  # as the trainer: right after backward, before clipping coalesces the gradient
            clip_grad_norm(model.parameters(), 5.0)
            opt.step()
        return steps * batch / (time.perf_counter() - t0)

    run(penalty["plain"])  # warm-up (allocates optimizer state)
    run(penalty["l2"])
    rates: dict[str, list[float]] = {"plain": [], "l2": []}
    ratios, shares = [], []
    for r in range(runs):
        load = LoadSample()
        load.start()
        pair = {k: run(penalty[k]) for k in (("plain", "l2") if r % 2 == 0 else ("l2", "plain"))}
        shares.append(round(load.stop(), 3))
        for k, v in pair.items():
            rates[k].append(v)
        ratios.append(pair["l2"] / pair["plain"])
    summary = {
        k: {"median": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]} for k, v in rates.items()
    }
    return {
        **summary,
        "l2_over_plain": round(statistics.median(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "other_share": shares,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["criteo_autoctr_best", "criteo_xlarge_best", "deepfm"])
    ap.add_argument("--tables", nargs="+", choices=["real", "capped"], default=["real", "capped"])
    ap.add_argument(
        "--modes", nargs="+", choices=["sparse", "dense", "torchrec", "torchrec-rowwise"], default=["sparse", "dense"]
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dense-steps", type=int, default=3, help="steps per run with dense embedding gradients")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--embedding-l2",
        type=float,
        default=None,
        metavar="VALUE",
        help="compare the sparse update without and with this embedding L2 penalty, interleaved (see above)",
    )
    ap.add_argument(
        "--embedding-l2-per",
        choices=("lookup", "row", "auto"),
        default="lookup",
        help="the penalty's form (auto: the default recipes' choice, row on tables of over 2M weights)",
    )
    ap.add_argument(
        "--configs",
        type=Path,
        default=CONFIGS,
        help="directory of the published architectures (default: ../shared/configs beside the repository)",
    )
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    models = available_models(args.models, args.configs)
    torch.set_num_threads(args.threads)
    results = []
    for tables_kind in args.tables:
        tables = list(CRITEO_TABLE_SIZES) if tables_kind == "real" else [min(n, 500_000) for n in CRITEO_TABLE_SIZES]
        batch = 256 if tables_kind == "real" else 512
        for name in models:
            row = {"model": name, "tables": tables_kind, "batch": batch}
            if args.embedding_l2 is not None:
                torch.manual_seed(0)
                model = build(name, tables, args.configs)
                row["embedding_l2"], row["embedding_l2_per"] = args.embedding_l2, args.embedding_l2_per
                row.update(
                    measure_l2(model, batch, tables, args.steps, args.runs, args.embedding_l2, args.embedding_l2_per)
                )
                del model
                print(
                    f"{name} {tables_kind} plain {row['plain']['median']:,.0f} samples/s, embedding_l2 "
                    f"{args.embedding_l2:g} {row['l2']['median']:,.0f}: ratio {row['l2_over_plain']:.3f}",
                    flush=True,
                )
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            for mode in args.modes:
                torch.manual_seed(0)
                model = build(name, tables, args.configs)
                if mode.startswith("torchrec"):
                    from nasrec.backend.fused import use_torchrec

                    use_torchrec(model, "rowwise_adagrad" if mode.endswith("rowwise") else "adagrad", lr=0.12, eps=1e-2)
                else:
                    model.embedding.table.sparse = mode == "sparse"
                steps = args.dense_steps if mode == "dense" else args.steps
                row[mode] = measure(model, batch, tables, steps, args.runs)
                del model
            if "sparse" in row:  # a ratio only against a reference figure of this CPU capability
                key = f"train {name} {tables_kind} b{batch}"
                row.update(reference(key, row["sparse"]["median"]))
                print(
                    f"{name} {tables_kind} sparse {row['sparse']['median']:,.0f} samples/s  [{reference_text(key, row['sparse']['median'])}]",
                    flush=True,
                )
            for fused in ("torchrec", "torchrec-rowwise"):
                if "sparse" in row and fused in row:
                    row[f"{fused}_over_sparse"] = round(row[fused]["median"] / row["sparse"]["median"], 2)
                    print(f"{name} {tables_kind} {fused} {row[fused]['median']:,.0f} samples/s", flush=True)
            if "sparse" in row and "dense" in row:
                row["sparse_over_dense"] = round(row["sparse"]["median"] / row["dense"]["median"], 1)
            results.append(row)
            print(json.dumps(row), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "train",
                "machine": machine_info(),
                "threads": args.threads,
                "results": results,
                "peak_rss_mb": round(peak),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
