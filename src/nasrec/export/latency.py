"""Serving latency measured on this machine: a model exported to onnxruntime or TorchScript, timed call by call.

Latency does not depend on the weights, so a model is timed as built (an architecture or a zoo model at a
data shape) or as trained (a run directory). It is exported the way `nasrec export` exports it (the
probability model, dynamic batch axis) into a temporary folder, loaded in the serving runtime with
`threads` intra-op threads (onnxruntime: inter-op 1; TorchScript: `torch.set_num_threads`), and called
on random inputs of each batch size: `warmup` untimed calls, then `reps` calls timed one by one; p50, p99
and the mean in milliseconds. Every result carries the machine (`nasrec.machine.machine_identity`): a
latency holds for the CPU it was measured on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.export import ProbabilityModel
from nasrec.export.backends import (
    _EXAMPLE_BATCH,
    INPUT_NAMES,
    OUTPUT_NAME,
    _export_onnx,
    _export_torchscript,
    _import_onnx,
)
from nasrec.machine import machine_identity

RUNTIMES = ("onnxruntime", "torchscript")
DEFAULT_WARMUP, DEFAULT_REPS = 50, 300


def _runner(path: Path, runtime: str, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """A callable running one batch (numpy dense, sparse) through the exported model in `runtime`."""
    if runtime == "onnxruntime":
        ort = _import_onnx()["onnxruntime"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = list(INPUT_NAMES)

        def run_onnx(dense: np.ndarray, sparse: np.ndarray) -> Any:
            return session.run([OUTPUT_NAME], {names[0]: dense, names[1]: sparse})

        return run_onnx
    scripted = torch.jit.load(str(path))

    def run_script(dense: np.ndarray, sparse: np.ndarray) -> Any:
        with torch.inference_mode():
            return scripted(torch.from_numpy(dense), torch.from_numpy(sparse))

    return run_script


def time_calls(fn: Callable[[], object], warmup: int, reps: int) -> dict[str, float]:
    """p50, p99 and mean milliseconds of `reps` single calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 5),
        "p99_ms": round(float(np.percentile(ms, 99)), 5),
        "mean_ms": round(float(ms.mean()), 5),
    }


def _check(runtime: str, batches: Sequence[int], threads: Sequence[int], warmup: int, reps: int) -> None:
    if runtime not in RUNTIMES:
        raise NasrecError(f"latency runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    for name, values, low in (("batch", batches, 1), ("threads", threads, 1)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise NasrecError(f"latency {name} sizes must be integers >= {low}, got {list(values)}")
    if warmup < 0 or reps < 1:
        raise NasrecError(f"latency needs warmup >= 0 and reps >= 1, got warmup {warmup}, reps {reps}")


def measure_model_latency(
    model: nn.Module,
    num_dense: int,
    table_sizes: Sequence[int],
    runtime: str = "onnxruntime",
    batches: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    warmup: int = DEFAULT_WARMUP,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of `model` (dense [B, num_dense], ids [B, S] within `table_sizes`) exported to `runtime`."""
    _check(runtime, batches, threads, warmup, reps)
    wrapper = ProbabilityModel(model).eval()
    sizes = [int(n) for n in table_sizes]
    example = (torch.zeros(_EXAMPLE_BATCH, num_dense), torch.zeros(_EXAMPLE_BATCH, len(sizes), dtype=torch.int64))
    rng = np.random.default_rng(seed)
    results = []
    before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="nasrec-latency-") as tmp:
        path = Path(tmp) / ("model.onnx" if runtime == "onnxruntime" else "model.pt")
        with torch.no_grad():
            wrapper(*example)  # fills nasrec.model.ops.dot's index cache before export, as `nasrec export` does
        if runtime == "onnxruntime":
            _export_onnx(wrapper, example, path, external=False)
        else:
            _export_torchscript(wrapper, example, path)
        try:
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                run = _runner(path, runtime, n_threads)
                for batch in batches:
                    dense = rng.standard_normal((batch, num_dense)).astype(np.float32)
                    sparse = np.stack([rng.integers(0, n, batch) for n in sizes], axis=1).astype(np.int64)
                    stats = time_calls(lambda: run(dense, sparse), warmup, reps)  # noqa: B023 - called here
                    results.append({"runtime": runtime, "batch": batch, "threads": n_threads, **stats})
        finally:
            torch.set_num_threads(before)
    return {"machine": machine_identity(), "warmup": warmup, "reps": reps, "results": results}


def measure_run_latency(run: str | Path, **options: Any) -> dict[str, Any]:
    """Latency of a trained run's model (`measure_model_latency`'s options); its data shape from model.json."""
    from nasrec.train.loading import load_trained

    model, spec = load_trained(run)
    if spec.kind == "supernet":
        raise NasrecError(f"{run}: a supernet has no single model to time; train the chosen architecture first")
    out = measure_model_latency(model, spec.num_dense, spec.table_sizes, **options)
    return {"model": str(run), **out}
