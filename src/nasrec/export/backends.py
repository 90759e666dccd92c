"""The two export formats: writing a model as TorchScript or ONNX, and running the written file back."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec.errors import NasrecError

ONNX_OPSET = 20
INPUT_NAMES = ("dense", "sparse")
OUTPUT_NAME = "probability"
_EXAMPLE_BATCH = 3  # > 1: exporters specialise axes of size 0 and 1 to constants
_EXTERNAL_DATA_BYTES = 1 << 30  # ONNX protobufs stop at 2 GiB: larger weights go to a .data file
_ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def _import_onnx() -> dict[str, Any]:
    modules = {}
    for name in _ONNX_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            raise NasrecError(
                f'ONNX export needs the {name} package, which is not installed: pip install "nasrec[export]"'
            ) from None
    return modules


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter: TorchScript deprecation warnings, the ONNX exporter's notices and logs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_torchscript(wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    # Tracing records sizes taken from the inputs as graph operations, so the batch axis stays dynamic.
    # check_trace would trace a second time to compare graphs; the verification afterwards compares outputs
    # on real rows at two batch sizes, which is the check that matters.
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(dense: torch.Tensor, sparse: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(dense, sparse).numpy()

    return run


def _export_onnx(wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path, external: bool) -> None:
    batch = torch.export.Dim("batch")
    try:
        with _quiet():
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"dense": {0: batch}, "sparse": {0: batch}},
                external_data=external,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; its first line names the failing operation
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise NasrecError(f"ONNX export failed ({type(e).__name__}: {first})") from e


def _onnx_runner(path: Path, modules: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    modules["onnx"].checker.check_model(str(path))  # by path: also checks an external weight file
    ort = modules["onnxruntime"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(dense: torch.Tensor, sparse: torch.Tensor) -> np.ndarray:
        feed = {"dense": np.ascontiguousarray(dense.numpy()), "sparse": np.ascontiguousarray(sparse.numpy())}
        return session.run([OUTPUT_NAME], feed)[0]

    return run


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
