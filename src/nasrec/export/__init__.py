"""Export a trained standalone model for serving (`nasrec export`): TorchScript or ONNX, plus its encoder.

`export_model(model_dir, out, fmt)` writes three artefacts side by side (``out`` = ``DIR/STEM.SUFFIX``):

``STEM.SUFFIX``          the whole model, embedding lookups included: inputs ``dense`` float32 [B, D] and
                         ``sparse`` int64 [B, S] (per-field embedding rows), output ``probability`` float32
                         [B], the click probability (sigmoid of the model's logit); the batch axis is dynamic.
                         TorchScript (``torch.jit.load``) or ONNX (any ONNX runtime; large models keep their
                         weights in ``STEM.SUFFIX.data`` beside it).
``STEM.encoder.json``    how raw rows become those two inputs, as plain JSON (see `encoder_spec`): field order,
                         per dense field its transform and fitted parameters, per categorical field how a raw
                         value becomes a 64-bit id and how the id becomes a table row (the hashing rule and
                         table size, or the vocabulary as an id -> row mapping), with the rules spelled out.
``STEM.export.json``     the manifest: format, inputs and output, the model spec, versions, and the result of
                         the built-in verification.

Verification: the exported file is loaded back (``torch.jit.load`` / an onnxruntime session) and run on up
to `verify_rows` rows of the cache's test split; its probabilities must match eager PyTorch's within 1e-5.
All files are written into a temporary directory first and moved into place only when that check passes.

ONNX goes through torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript):
the legacy TorchScript-based exporter (``dynamo=False``) is deprecated since torch 2.9 and fails on most
nasrec architectures, whose layer norms and attention reshape by traced sizes (``x.shape[-1]``) that it
turns into graph values it cannot put into static shape lists. The dynamo exporter handles every zoo model
and sampled architecture we tried, and emits opset 20, its native opset (no version conversion).
"""

from __future__ import annotations

import importlib  # noqa: F401 - tests replace export.importlib.import_module (the ONNX packages)
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec import __version__, rundir
from nasrec.data.cache import Cache, open_cache
from nasrec.data.loader import BatchLoader
from nasrec.errors import NasrecError
from nasrec.export.backends import (
    _EXAMPLE_BATCH,
    _EXTERNAL_DATA_BYTES,
    INPUT_NAMES,
    ONNX_OPSET,
    OUTPUT_NAME,
    _export_onnx,
    _export_torchscript,
    _import_onnx,
    _onnx_runner,
    _torchscript_runner,
    _weight_bytes,
)
from nasrec.export.encoder import ENCODER_FORMAT, ENCODER_FORMAT_VERSION, ENCODER_RULES, encoder_spec
from nasrec.model.spec import ModelSpec
from nasrec.predict import model_cache
from nasrec.train.loading import load_trained

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VERIFY_ROWS",
    "ENCODER_FORMAT",
    "ENCODER_FORMAT_VERSION",
    "ENCODER_RULES",
    "EXPORT_FORMATS",
    "INPUT_NAMES",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "VERIFY_TOLERANCE",
    "ProbabilityModel",
    "artefact_paths",
    "encoder_spec",
    "export_model",
]

EXPORT_FORMATS = ("torchscript", "onnx")
DEFAULT_VERIFY_ROWS = 65_536
VERIFY_TOLERANCE = 1e-5
_VERIFY_BATCH = 8192


class ProbabilityModel(nn.Module):
    """A trained CTR model returning click probabilities (the sigmoid of its logits) for serving."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Probabilities [B] for dense float32 [B, D] and sparse int64 [B, S] per-field rows."""
        return torch.sigmoid(self.model(dense, sparse))


def artefact_paths(out: str | Path) -> dict[str, Path]:
    """The files an export to `out` writes: model, encoder JSON and manifest (beside the model file)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return {
        "model": out,
        "encoder": stem.with_name(f"{stem.name}.encoder.json"),
        "manifest": stem.with_name(f"{stem.name}.export.json"),
    }


def export_model(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "torchscript",
    checkpoint: str = "final",
    data: str | Path | None = None,
    verify_rows: int = DEFAULT_VERIFY_ROWS,
) -> dict[str, Any]:
    """Export a trained run's model, encoder JSON and manifest beside `out`, verified; returns a summary.

    `data` is the cache whose encoder to write and whose test rows to verify on (default: the cache
    the model was trained on); `verify_rows=0` skips the verification.
    """
    if fmt not in EXPORT_FORMATS:
        raise NasrecError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if checkpoint not in ("final", "best"):
        raise NasrecError(f"checkpoint must be final or best, not {checkpoint!r}")
    if isinstance(verify_rows, bool) or not isinstance(verify_rows, int) or verify_rows < 0:
        raise NasrecError(f"verify rows must be an integer >= 0, not {verify_rows!r}")
    onnx_modules = _import_onnx() if fmt == "onnx" else {}
    paths = artefact_paths(out)
    model, spec = load_trained(model_dir, checkpoint)
    rundir.check_not_supernet(
        model_dir, spec.kind, "a supernet has no single model to export; train the chosen architecture first"
    )
    cache_path = Path(data) if data is not None else model_cache(model_dir)
    cache = open_cache(cache_path)
    if len(cache.dense_fields) != spec.num_dense or tuple(cache.table_sizes) != spec.table_sizes:
        raise NasrecError(f"{cache_path}: this cache's fields and table sizes differ from the model's")
    encoder = encoder_spec(cache)
    wrapper = ProbabilityModel(model).eval()

    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    tmp = paths["model"].parent / f".{paths['model'].name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        staged = tmp / paths["model"].name
        B, S = _EXAMPLE_BATCH, len(spec.table_sizes)
        example = (torch.zeros(B, spec.num_dense), torch.zeros(B, S, dtype=torch.int64))
        with torch.no_grad():
            # one eager pass first: it fills nasrec.model.ops.dot's index cache, so that the exported graphs
            # hold those indices as constants
            wrapper(*example)
        if fmt == "torchscript":
            _export_torchscript(wrapper, example, staged)
            run = _torchscript_runner(staged)
            exporter = {"name": "torch.jit.trace", "load_with": "torch.jit.load"}
        else:
            external = _weight_bytes(wrapper) > _EXTERNAL_DATA_BYTES
            _export_onnx(wrapper, example, staged, external)
            run = _onnx_runner(staged, onnx_modules)
            exporter = {
                "name": "torch.onnx.export (dynamo)",
                "opset": ONNX_OPSET,
                "external_data": external,
                "load_with": "onnxruntime.InferenceSession",
            }
        verification = _verify(wrapper, run, cache, verify_rows)
        if verification["passed"] is False:
            raise NasrecError(
                f"exported model differs from PyTorch by {verification['max_abs_diff']:.3g} on "
                f"{verification['rows']:,} {verification['split']} rows (tolerance {VERIFY_TOLERANCE:g}); nothing written"
            )
        model_files = sorted(p.name for p in tmp.iterdir())  # the model file and any external weight file
        manifest = _manifest(
            fmt, exporter, spec, Path(model_dir), checkpoint, cache, paths, model_files, verification, onnx_modules
        )
        (tmp / paths["encoder"].name).write_text(json.dumps(encoder, indent=1) + "\n")
        (tmp / paths["manifest"].name).write_text(json.dumps(manifest, indent=1) + "\n")
        written = []
        # the manifest last: its presence means that the files it lists are complete
        for name in [*model_files, paths["encoder"].name, paths["manifest"].name]:
            dest = paths["model"].parent / name
            os.replace(tmp / name, dest)
            written.append(str(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "format": fmt,
        "model": str(paths["model"]),
        "encoder": str(paths["encoder"]),
        "manifest": str(paths["manifest"]),
        "files": written,
        "verified_rows": verification["rows"],
        "split": verification["split"],
        "max_abs_diff": verification["max_abs_diff"],
        "passed": verification["passed"],
    }


def _verify(
    wrapper: nn.Module, run: Callable[[torch.Tensor, torch.Tensor], np.ndarray], cache: Cache, rows: int
) -> dict[str, Any]:
    """Max |exported - eager| probability over up to `rows` rows of the test split (else val, else train)."""
    split = next((s for s in ("test", "val", "train") if s in cache.split_names and len(cache.split_index(s))), None)
    result: dict[str, Any] = {
        "split": split,
        "rows": 0,
        "max_abs_diff": None,
        "tolerance": VERIFY_TOLERANCE,
        "passed": None,
    }
    if rows == 0 or split is None:
        return result
    worst, seen = 0.0, 0
    loader = BatchLoader(cache, split, batch_size=min(_VERIFY_BATCH, rows))
    with torch.no_grad():
        for batch in loader:
            dense, sparse = batch.dense[: rows - seen], batch.sparse[: rows - seen]
            expected = wrapper(dense, sparse).numpy()
            got = np.asarray(run(dense, sparse))
            if seen == 0:  # a single row too: the batch axis must be dynamic down to 1
                one = np.asarray(run(dense[:1], sparse[:1]))
                if one.shape != (1,):
                    raise NasrecError(f"exported model returned shape {one.shape} for 1 row, expected (1,)")
                worst = abs(float(one[0]) - float(expected[0]))
            if got.shape != expected.shape:
                raise NasrecError(f"exported model returned shape {got.shape} for {len(dense)} rows, expected [B]")
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
            seen += len(dense)
            if seen >= rows:
                break
    result.update(rows=seen, max_abs_diff=worst, passed=bool(worst <= VERIFY_TOLERANCE))
    log.debug("verified on %s %s rows: max |exported - eager| = %.3g", f"{seen:,}", split, worst)
    return result


def _manifest(
    fmt: str,
    exporter: dict[str, Any],
    spec: ModelSpec,
    model_dir: Path,
    checkpoint: str,
    cache: Cache,
    paths: dict[str, Path],
    model_files: list[str],
    verification: dict[str, Any],
    onnx_modules: dict[str, Any],
) -> dict[str, Any]:
    versions = {"nasrec": __version__, "torch": torch.__version__}
    versions.update({name: getattr(m, "__version__", None) for name, m in onnx_modules.items()})
    try:
        trained = rundir.read_metrics(model_dir)
    except json.JSONDecodeError:
        trained = None
    keys = ("logloss", "auc", "mflops", "params", "dense_params", "weights")
    metrics = None if trained is None else {k: getattr(trained, k) for k in keys}
    D, S = spec.num_dense, len(spec.table_sizes)
    return {
        "format": fmt,
        "exporter": exporter,
        "files": {
            "model": paths["model"].name,
            "weights": [f for f in model_files if f != paths["model"].name],
            "encoder": paths["encoder"].name,
            "manifest": paths["manifest"].name,
        },
        "inputs": [
            {"name": "dense", "dtype": "float32", "shape": ["batch", D], "fields": cache.dense_fields},
            {
                "name": "sparse",
                "dtype": "int64",
                "shape": ["batch", S],
                "fields": cache.sparse_fields,
                "range": "0 <= sparse[:, j] < table_sizes[j] (per-field rows; the model adds the table offsets)",
            },
        ],
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": "click probability: sigmoid of the model's logit",
        },
        "table_sizes": list(spec.table_sizes),
        "model": spec.to_dict(),
        "trained": {"run": str(model_dir), "checkpoint": checkpoint, "data": str(cache.path), "metrics": metrics},
        "versions": versions,
        "verification": verification,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
