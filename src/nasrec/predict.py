"""Click probabilities for raw input files from a trained model (`nasrec predict`).

The input is raw data in the training format; it is encoded with the stored schema and fitted encoder
state of the model's cache (`nasrec.data.encode.RowEncoder`: unseen categories map to the
out-of-vocabulary or hashed row), in chunks, so files of any size stream through in bounded memory.
Malformed rows fail with their file, line and column, or with `on_error="skip"` are skipped and counted,
as in `prepare`. The output CSV has one row per input row: `line` (1-based line or row number in its
file; plus `file` with several inputs), `label` (the input's label) and `probability`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from nasrec.data.encode import RowEncoder
from nasrec.data.sources import ErrorLog
from nasrec.errors import NasrecError
from nasrec.train.metrics import StreamingMetrics
from nasrec.train.trainer import load_trained


def model_cache(model_dir: str | Path) -> Path:
    """The cache a training run was trained on (from its config.json)."""
    config = Path(model_dir) / "config.json"
    try:
        return Path(json.loads(config.read_text())["data"])
    except FileNotFoundError:
        raise NasrecError(f"{model_dir}: not a training run (no config.json)") from None


def predict(
    model_dir: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    *,
    data: str | Path | None = None,
    checkpoint: str = "final",
    on_error: str = "fail",
    batch_size: int = 65_536,
    device: str | None = None,
) -> dict[str, Any]:
    """Write click probabilities of the rows of `inputs` to the CSV `out`; returns counts and metrics.

    `data` is the cache whose encoder to use (default: the one the model was trained on); `device` is
    where the model runs (default cpu).
    """
    if on_error not in ("fail", "skip"):
        raise NasrecError(f"on_error must be fail or skip, not {on_error!r}")
    model, spec = load_trained(model_dir, checkpoint, device=device)
    on = next(model.parameters()).device
    if spec.kind == "supernet":
        raise NasrecError(f"{model_dir}: a supernet predicts per architecture; train the chosen one first")
    cache = Path(data) if data is not None else model_cache(model_dir)
    encoder = RowEncoder.from_cache(cache)
    if len(encoder.plan.dense) != spec.num_dense or len(encoder.plan.sparse) != len(spec.table_sizes):
        raise NasrecError(f"{cache}: this cache's fields differ from the model's")
    errors = ErrorLog()
    metrics = StreamingMetrics()
    several = len(inputs) > 1
    rows = 0
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.inference_mode(), open(tmp, "wb") as fh:
        header = True
        for chunk in encoder.iter_encoded(list(inputs), on_error=on_error, errors=errors):
            dense = torch.from_numpy(np.ascontiguousarray(chunk.dense, dtype=np.float32))
            sparse = torch.from_numpy(chunk.sparse.astype(np.int64))
            # one slice at a time on the device; the logits come back to the CPU for the CSV
            logits = torch.cat([model(dense[i : i + batch_size].to(on), sparse[i : i + batch_size].to(on)).cpu()
                                for i in range(0, len(dense), batch_size)]) if len(dense) else torch.zeros(0)  # fmt: skip
            metrics.update(chunk.label, logits)
            cols: dict[str, Any] = {}
            if several:
                cols["file"] = [chunk.file] * len(dense)
            cols.update(line=chunk.lines, label=chunk.label, probability=torch.sigmoid(logits).numpy())
            pl.DataFrame(cols).write_csv(fh, include_header=header, float_precision=None)
            header = False
            rows += len(dense)
        if header:  # no rows at all: still a valid CSV
            fh.write((("file," if several else "") + "line,label,probability\n").encode())
    tmp.replace(out)
    m = metrics.result()
    return {"rows": rows, "skipped": errors.count, "skipped_examples": errors.examples, "out": str(out),
            "logloss": m["logloss"] if rows and not math.isnan(m["logloss"]) else None,
            "auc": m["auc"] if rows and not math.isnan(m["auc"]) else None}  # fmt: skip
