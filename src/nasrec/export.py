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

import contextlib
import importlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec import __version__
from nasrec.data.cache import Cache, open_cache
from nasrec.data.encode import RowEncoder
from nasrec.data.encoders import MISSING_ID, MISSING_INDEX, OOV_INDEX, VocabEncoder
from nasrec.data.loader import BatchLoader
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.predict import model_cache
from nasrec.train.trainer import load_trained

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 20
DEFAULT_VERIFY_ROWS = 65_536
VERIFY_TOLERANCE = 1e-5
ENCODER_FORMAT = "nasrec-encoder"
ENCODER_FORMAT_VERSION = 1
INPUT_NAMES = ("dense", "sparse")
OUTPUT_NAME = "probability"
_VERIFY_BATCH = 8192
_EXAMPLE_BATCH = 3  # > 1: exporters specialise axes of size 0 and 1 to constants
_EXTERNAL_DATA_BYTES = 1 << 30  # ONNX protobufs stop at 2 GiB: larger weights go to a .data file
_ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")

# How each encoding step works, written once into every encoder JSON so that the file explains itself.
ENCODER_RULES: dict[str, str] = {
    "missing": "A raw value is missing when it is empty or absent, or equals one of source.schema.missing. "
    "Missing values are legal everywhere; any other value that a rule below cannot parse (or a NaN or "
    "infinite number) makes the row invalid: nasrec rejects such rows, a server should too.",
    "dense.log": "float32(ln(max(x, 0) + 1)), computed in float64 from the value parsed as float64; missing -> 0.",
    "dense.none": "float32(x); missing -> 0.",
    "dense.standardize": "float32((float64(float32(x)) - mean) / std), float64 arithmetic; missing -> 0.",
    "dense.constant": "always 0 (the field has no source column).",
    "u64(s, base)": "s parsed as an unsigned 64-bit integer in that base (digits only, no sign or prefix).",
    "i64(s, base)": "s parsed as a signed 64-bit integer in that base.",
    "signed(u)": "u reinterpreted as a two's-complement signed 64-bit integer: u - 2^64 if u >= 2^63, else u.",
    "mod": "a mod m is floor modulo: the result is in [0, m) also for negative a.",
    "raw_id.hex": "u = u64(value, 16); id = u mod modulus if modulus is set (and derive is not), else signed(u).",
    "raw_id.int": "if value fits i64(value, 10) = s: id = s mod modulus (modulus set, derive not) else s; "
    "otherwise u = u64(value, 10): id = u mod modulus if modulus is set, else signed(u).",
    "raw_id.auto": "if value is all decimal digits: u = u64(value, 10), id = u mod modulus if modulus is set "
    "(and derive is not), else signed(u); otherwise s = i64(value, 16), id = s mod modulus if modulus is set, else s.",
    "raw_id.string": "h = string_hash(the UTF-8 bytes of value) as unsigned 64-bit; id = h mod modulus if "
    "modulus is set, else signed(h) (derive does not apply to string fields).",
    "string_hash": "n = byte length; h = 0x9E3779B97F4A7C15 XOR (n * 0xBF58476D1CE4E5B9 mod 2^64); for each "
    "8-byte block of the bytes, in order (the last may be shorter), read as a big-endian unsigned integer "
    "b (a 3-byte block is a 24-bit number): h = mix(h XOR b); finally h = mix(h). mix(x), all mod 2^64: "
    "x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31.",
    "derive.hour_of_day": "v = the raw id without modulus (the value is a YYMMDDHH number); id = v mod 100; "
    "invalid when above 23.",
    "derive.weekday": "v as for hour_of_day; day = (v div 100) mod 100, month = (v div 10^4) mod 100, "
    "year = 2000 + (v div 10^6) mod 100 (invalid unless 1 <= month <= 12 and 1 <= day <= 31); "
    "w = ISO weekday (Monday 1 .. Sunday 7) of the date year-month-min(day, 28); "
    "id = ((w - 1 + day - min(day, 28)) mod 7) + 1.",
    "raw_id.bucketize": "x = the column's value as float64; id = floor(ln(x)^2) if x > 2, else floor(x), "
    "as a signed 64-bit integer; missing -> missing.",
    "encoding.hash": "row = (id mod (table_size - 1)) + 1, with id taken as a signed 64-bit integer "
    "(operand 'signed', floor modulo) or as unsigned 64-bit (operand 'unsigned'); missing -> 0.",
    "encoding.vocab": "row = ids[decimal string of the signed 64-bit id] when present, else oov_id (1); "
    "missing -> missing_id (0), and so is the id -2^63 (missing_raw_id), which nasrec uses as its missing marker.",
    "model_input": "dense: float32 [B, D], fields in `dense` order; sparse: int64 [B, S], the per-field rows "
    "in `sparse` order. The model adds each field's table_offset itself: do not add it.",
}


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
    if spec.kind == "supernet":
        raise NasrecError(f"{model_dir}: a supernet has no single model to export; train the chosen architecture first")
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
            # one eager pass first: it fills nasrec.model.cell's index cache, so that the exported graphs
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
            exporter = {"name": "torch.onnx.export (dynamo)", "opset": ONNX_OPSET, "external_data": external,
                        "load_with": "onnxruntime.InferenceSession"}  # fmt: skip
        verification = _verify(wrapper, run, cache, verify_rows)
        if verification["passed"] is False:
            raise NasrecError(
                f"exported model differs from PyTorch by {verification['max_abs_diff']:.3g} on "
                f"{verification['rows']:,} {verification['split']} rows (tolerance {VERIFY_TOLERANCE:g}); nothing written"
            )
        model_files = sorted(p.name for p in tmp.iterdir())  # the model file and any external weight file
        manifest = _manifest(fmt, exporter, spec, Path(model_dir), checkpoint, cache, paths, model_files,
                             verification, onnx_modules)  # fmt: skip
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


# -- encoder JSON ----------------------------------------------------------------------------------


def encoder_spec(cache: Cache | str | Path) -> dict[str, Any]:
    """The self-describing JSON form of a cache's encoder: raw rows to the model's inputs (see ENCODER_RULES)."""
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    enc = RowEncoder.from_cache(cache)
    plan, state = enc.plan, enc.state
    sizes = state.table_sizes(plan.sparse_names)
    if sizes != cache.table_sizes or plan.dense_names != cache.dense_fields:
        raise NasrecError(f"{cache.path}: the stored encoder does not match the cache's fields")
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist() if sizes else []
    dense = []
    for j, f in enumerate(plan.dense):
        st = state.dense[f.name]
        item: dict[str, Any] = {"name": f.name, "position": j, "column": f.column, "transform": st["transform"]}
        if st["transform"] == "standardize":
            item.update(mean=float(st["mean"]), std=float(st["std"]))
        dense.append(item)
    sparse = []
    for j, out in enumerate(plan.sparse):
        if out.bucketized is not None:
            raw: dict[str, Any] = {"from": "bucketize", "column": out.bucketized.column}
            operand = "signed"
        else:
            f = out.field
            raw = {"from": "column", "column": f.column, "kind": f.kind, "modulus": f.modulus, "derive": f.derive}
            # string ids are hashed into the table as unsigned numbers, all other kinds as signed (parse.py)
            operand = "unsigned" if f.kind == "string" else "signed"
        e = state.sparse[out.name]
        if isinstance(e, VocabEncoder):
            keys = e.keys.tolist()
            encoding: dict[str, Any] = {"type": "vocab", "min_count": e.min_count, "max_size": e.max_size,
                                        "ids": {str(k): row for row, k in enumerate(keys, start=2)}}  # fmt: skip
        else:
            encoding = {"type": "hash", "operand": operand}
        sparse.append({"name": out.name, "position": j, "raw_id": raw, "encoding": encoding,
                       "table_size": sizes[j], "table_offset": offsets[j]})  # fmt: skip
    return {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "description": "How nasrec encodes a raw row into the exported model's inputs `dense` and `sparse`. "
        "Apply `dense` and `sparse` in order, following `rules` (keyed by transform, kind, derive and "
        "encoding type).",
        "rules": ENCODER_RULES,
        "source": {
            "format": cache.meta.get("format", "schema"),
            "schema": cache.meta["schema"],
            "kdd_profile": cache.meta.get("kdd_profile"),
        },
        "mode": state.mode,
        "max_table_size": state.max_table_size,
        "missing_id": MISSING_INDEX,
        "oov_id": OOV_INDEX if state.mode == "vocab" else None,
        "missing_raw_id": MISSING_ID if state.mode == "vocab" else None,
        "dense": dense,
        "sparse": sparse,
        "inputs": {
            "dense": {"dtype": "float32", "shape": ["batch", len(dense)], "fields": [d["name"] for d in dense]},
            "sparse": {"dtype": "int64", "shape": ["batch", len(sparse)], "fields": [s["name"] for s in sparse]},
        },
        "table_sizes": sizes,
        "table_offsets": offsets,
    }


# -- exporters and runners --------------------------------------------------------------------------


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
                wrapper, example, str(path), dynamo=True, opset_version=ONNX_OPSET, input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME], dynamic_shapes={"dense": {0: batch}, "sparse": {0: batch}},
                external_data=external, verbose=False,
            )  # fmt: skip
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


# -- verification and manifest ----------------------------------------------------------------------


def _verify(
    wrapper: nn.Module, run: Callable[[torch.Tensor, torch.Tensor], np.ndarray], cache: Cache, rows: int
) -> dict[str, Any]:
    """Max |exported - eager| probability over up to `rows` rows of the test split (else val, else train)."""
    split = next((s for s in ("test", "val", "train") if s in cache.split_names and len(cache.split_index(s))), None)
    result: dict[str, Any] = {"split": split, "rows": 0, "max_abs_diff": None, "tolerance": VERIFY_TOLERANCE,
                              "passed": None}  # fmt: skip
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
        trained = json.loads((model_dir / "metrics.json").read_text())
        metrics = {k: trained.get(k) for k in ("logloss", "auc", "mflops", "params", "dense_params", "weights")}
    except (FileNotFoundError, json.JSONDecodeError):
        metrics = None
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
