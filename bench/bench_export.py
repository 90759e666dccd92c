"""Serving latency of exported models: TorchScript and ONNX Runtime, with eager PyTorch for reference.

Usage::

    python bench/bench_export.py                          # train deepfm + criteo_autoctr_best on synthetic data
    python bench/bench_export.py --model runs/demo/final  # an existing run directory instead
    python bench/bench_export.py --models deepfm dcnv2 --batches 1 512 --threads 1 2 --reps 200

Without `--model`, `--rows` rows of nasrec's synthetic Criteo-shaped data (13 dense, 26 categorical
fields) are prepared once under `--work` (vocabulary encoding, random split), and each model of
`--models` (zoo names, or a published NASRecNet from ../shared/configs such as criteo_autoctr_best)
trains one epoch on it. Every model is exported with `nasrec.export.export_model` (TorchScript and ONNX,
verified against PyTorch) and timed on rows of the test split at each batch size and thread count:
`--warmup` calls first, then `--reps` single calls timed one by one; p50 and p99 in milliseconds per
call. Eager PyTorch runs the same model (sigmoid included) under `torch.inference_mode`; TorchScript and
eager use `torch.set_num_threads`, ONNX Runtime its session's intra-op thread count (inter-op 1).
Prints one JSON line per measurement, then a JSON summary and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import LoadSample, available_models, machine_info, machine_line  # bench/ is not a package

from nasrec import rundir
from nasrec.data.cache import open_cache
from nasrec.data.loader import BatchLoader
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.data.synthetic import generate_synthetic
from nasrec.export import ProbabilityModel, export_model
from nasrec.export.latency import time_calls as timed
from nasrec.predict import model_cache
from nasrec.space.arch import Architecture
from nasrec.train.api import train
from nasrec.train.loading import load_trained

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"


def prepare_data(work: Path, rows: int) -> Path:
    """Synthetic Criteo-shaped rows prepared under `work` (reused when already there)."""
    cache = work / "data" / "cache"
    if (cache / "meta.json").exists():
        return cache
    raw = work / "data" / "synthetic.tsv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    generate_synthetic(raw, rows=rows, seed=0)
    prepare(
        PrepareConfig(inputs=(str(raw),), out=str(cache), format="criteo", split="random", encoding="vocab", force=True)
    )
    return cache


def train_model(name: str, cache: Path, work: Path, threads: int, configs: Path = CONFIGS) -> Path:
    """One epoch of a zoo model or a published NASRecNet (reused when already trained)."""
    out = work / "runs" / name
    if rundir.is_finished(out):
        return out
    shutil.rmtree(out, ignore_errors=True)
    overrides = dict(batch_size=512, epochs=1, lr=0.05, threads=threads)
    if (configs / f"{name}.json").exists():
        train(cache, out, arch=Architecture.load(configs / f"{name}.json"), overrides=overrides, progress=False)
    else:
        train(cache, out, model=name, overrides=overrides, progress=False)
    return out


def runners(run: Path, exports: dict[str, Path], threads: int) -> dict[str, Callable[[dict], object]]:
    """Callables running one batch (a dict of numpy and torch inputs) in each runtime."""
    import onnxruntime as ort

    model, _ = load_trained(run)
    eager = ProbabilityModel(model).eval()
    scripted = torch.jit.load(str(exports["torchscript"]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(exports["onnx"]), opts, providers=["CPUExecutionProvider"])

    def run_eager(b: dict) -> object:
        with torch.inference_mode():
            return eager(b["dense"], b["sparse"])

    def run_script(b: dict) -> object:
        with torch.inference_mode():
            return scripted(b["dense"], b["sparse"])

    def run_onnx(b: dict) -> object:
        return session.run(None, b["feed"])

    return {"pytorch eager": run_eager, "torchscript": run_script, "onnxruntime": run_onnx}


def time_calls(fn: Callable[[dict], object], batch: dict, warmup: int, reps: int) -> dict:
    """p50 / p99 / mean milliseconds of single calls (`nasrec.export.latency.time_calls`), and the machine's load."""
    load = LoadSample()
    load.start()
    stats = timed(lambda: fn(batch), warmup, reps)
    return {**stats, "other_share": round(load.stop(), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", metavar="DIR", help="existing run directory (repeatable)")
    ap.add_argument("--models", nargs="+", default=["deepfm", "criteo_autoctr_best"], help="models to train")
    ap.add_argument("--rows", type=int, default=50_000, help="synthetic rows to train on")
    ap.add_argument("--work", default="/tmp/nasrec-bench-export", help="data, runs and exported files")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument(
        "--configs",
        type=Path,
        default=CONFIGS,
        help="directory of the published architectures (default: ../shared/configs beside the repository)",
    )
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    work = Path(args.work)
    if args.model:
        runs = {Path(m).name: Path(m) for m in args.model}
    else:
        cache = prepare_data(work, args.rows)
        names = available_models(args.models, args.configs)
        runs = {m: train_model(m, cache, work, max(args.threads), args.configs) for m in names}
    results = []
    for name, run in runs.items():
        exports, export_s = {}, {}
        for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
            t0 = time.perf_counter()
            res = export_model(run, work / "exported" / f"{name}.{suffix}", fmt)
            export_s[fmt] = round(time.perf_counter() - t0, 2)
            exports[fmt] = Path(res["model"])
            print(
                json.dumps(
                    {
                        "model": name,
                        "export": fmt,
                        "seconds": export_s[fmt],
                        "rows": res["verified_rows"],
                        "max_abs_diff": res["max_abs_diff"],
                    }
                ),
                flush=True,
            )
        test = next(iter(BatchLoader(open_cache(model_cache(run)), "test", batch_size=max(args.batches))))
        for threads in args.threads:
            torch.set_num_threads(threads)
            fns = runners(run, exports, threads)
            for size in args.batches:
                rows = torch.arange(size) % len(test.dense)  # repeats rows when the test split is smaller
                dense, sparse = test.dense[rows].contiguous(), test.sparse[rows].contiguous()
                batch = {"dense": dense, "sparse": sparse, "feed": {"dense": dense.numpy(), "sparse": sparse.numpy()}}
                for runtime, fn in fns.items():
                    row = {
                        "model": name,
                        "runtime": runtime,
                        "threads": threads,
                        "batch": len(dense),
                        **time_calls(fn, batch, args.warmup, args.reps),
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "export",
                "machine": machine_info(),
                "reps": args.reps,
                "warmup": args.warmup,
                "results": results,
                "peak_rss_mb": round(peak),
            }
        )
    )
    print()
    print("| model | runtime | threads | batch | p50 ms | p99 ms | rows/s at p50 | other processes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        rate = r["batch"] / (r["p50_ms"] / 1e3)
        print(
            f"| {r['model']} | {r['runtime']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {rate:,.0f} | {r['other_share']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
