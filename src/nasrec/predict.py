"""Click probabilities for raw input files from a trained model (`nasrec predict`).

The input is raw data in the training format; it is encoded with the stored schema and fitted encoder
state of the model's cache (`nasrec.data.encode.RowEncoder`: unseen categories map to the
out-of-vocabulary or hashed row), in chunks, so files of any size stream through in bounded memory.
Malformed rows fail with their file, line and column, or with `on_error="skip"` are skipped and counted,
as in `prepare`. The output CSV has one row per input row: `line` (1-based line or row number in its
file; plus `file` with several inputs), `label` (the input's label) and `probability`.

Drift check: for every categorical field, the share of the new rows whose value was never seen in
training, i.e. whose embedding row no train row of the cache reads (`seen_rows`: a per-table mask
computed once from the train split's ids) or which is the out-of-vocabulary row of a vocabulary. The
same share over the validation split is what rows from the training distribution give. A field whose
share is more than `DRIFT_RATIO` (2) times the validation split's and more than `DRIFT_POINTS` (5
percentage points) above it is named in a warning (logged, and in the result's `drift`): such rows do
not look like the training data, and the model's probabilities for them are guesses. In hash mode an
unseen raw id that lands on a trained row counts as seen, so there the share is a lower bound.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
import torch

from nasrec import rundir
from nasrec.data.cache import Cache, open_cache
from nasrec.data.encode import RowEncoder
from nasrec.data.encoders import OOV_INDEX, VocabEncoder
from nasrec.data.sources import DEFAULT_MAX_BAD_FRACTION, ErrorLog, check_bad_share
from nasrec.errors import NasrecError
from nasrec.train.loading import load_trained
from nasrec.train.metrics import StreamingMetrics

log = logging.getLogger(__name__)

# A field drifts when its share of values unseen in training is more than DRIFT_RATIO times the validation
# split's and more than DRIFT_POINTS (a fraction: 0.05 is 5 percentage points) above it.
DRIFT_RATIO = 2.0
DRIFT_POINTS = 0.05
_BLOCK_ROWS = 1 << 18


def seen_rows(cache: Cache, encoder: RowEncoder | None = None, split: str = "train") -> list[np.ndarray]:
    """Per categorical field, a bool mask over its embedding table: True where some row of `split` reads it.

    The out-of-vocabulary row of a vocabulary-encoded field is always False (a value that maps there is
    not in the training vocabulary). One pass over the split's ids, in blocks, one vectorised scatter per
    field and block: about 2 s per million rows of 26 fields with Criteo's table sizes on this project's
    2-core machine.
    """
    seen = [np.zeros(n, dtype=bool) for n in cache.table_sizes]
    idx = np.asarray(cache.split_index(split))
    for lo in range(0, len(idx), _BLOCK_ROWS):
        block = np.ascontiguousarray(np.asarray(cache.sparse[idx[lo : lo + _BLOCK_ROWS]]).T)
        for j, mask in enumerate(seen):
            mask[block[j]] = True
    encoder = encoder or RowEncoder.from_cache(cache)
    for j, name in enumerate(encoder.plan.sparse_names):
        if isinstance(encoder.state.sparse[name], VocabEncoder):
            seen[j][OOV_INDEX] = False
    return seen


class UnseenCounter:
    """Counts, per categorical field, the rows whose embedding row `seen` marks as never trained."""

    def __init__(self, seen: list[np.ndarray]) -> None:
        self.seen = seen
        self.unseen = np.zeros(len(seen), dtype=np.int64)
        self.rows = 0

    def update(self, sparse: np.ndarray) -> None:
        """Count a block of encoded rows (int [n, S] table rows)."""
        for j, mask in enumerate(self.seen):
            self.unseen[j] += len(sparse) - int(np.count_nonzero(mask[sparse[:, j]]))
        self.rows += len(sparse)

    def shares(self) -> list[float | None]:
        """The share of unseen values per field (None without rows)."""
        return [float(u) / self.rows if self.rows else None for u in self.unseen]


def _reference(cache: Cache, seen: list[np.ndarray]) -> tuple[str | None, list[float | None]]:
    """The unseen shares of the validation split (the test split when there is none)."""
    for split in ("val", "test"):
        if split in cache.split_names and len(cache.split_index(split)):
            counter = UnseenCounter(seen)
            idx = np.asarray(cache.split_index(split))
            for lo in range(0, len(idx), _BLOCK_ROWS):
                counter.update(np.asarray(cache.sparse[idx[lo : lo + _BLOCK_ROWS]]))
            return split, counter.shares()
    return None, [None] * len(seen)


def drifted(share: float, reference: float | None) -> bool:
    """Whether a field's unseen share is far above the reference split's (see DRIFT_RATIO, DRIFT_POINTS)."""
    ref = reference or 0.0
    return share > DRIFT_RATIO * ref and share - ref > DRIFT_POINTS


def unseen_report(
    names: list[str], shares: list[float | None], split: str | None, reference: list[float | None]
) -> dict[str, Any]:
    """The `unseen` and `drift` entries of a prediction's result, and the warning (None without drift)."""
    fields = {n: {"share": s, "reference": r} for n, s, r in zip(names, shares, reference, strict=True)}
    drift = [n for n, s, r in zip(names, shares, reference, strict=True) if s is not None and drifted(s, r)]
    warning = None
    if drift:
        shown = ", ".join(
            f"{n} {fields[n]['share']:.1%} ({split or 'reference'} {reference[names.index(n)] or 0:.1%})"
            for n in drift[:6]
        ) + (f" and {len(drift) - 6} more" if len(drift) > 6 else "")
        warning = (
            f"values unseen in training in {len(drift)} of {len(names)} categorical fields, far above the "
            f"{split or 'reference'} split's share (over {DRIFT_RATIO:g}x it and over {DRIFT_POINTS * 100:g} "
            f"percentage points more): "
            f"{shown}. These rows do not look like the training data; their probabilities are unreliable."
        )
    return {"unseen": {"reference_split": split, "fields": fields}, "drift": drift, "warning": warning}


def model_cache(model_dir: str | Path) -> Path:
    """The cache a training run was trained on (from its config.json)."""
    return rundir.trained_on(model_dir)


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
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    drift_check: bool = True,
) -> dict[str, Any]:
    """Write click probabilities of the rows of `inputs` to the CSV `out`; returns counts and metrics.

    `data` is the cache whose encoder to use (default: the one the model was trained on); `device` is
    where the model runs (default cpu). With `on_error="skip"` the run fails all the same when no row is
    left, or when more than `max_bad_fraction` of the rows read are malformed (as `prepare`). With
    `drift_check` (the default) the result also holds `unseen` (per categorical field, the share of values
    unseen in training, and the validation split's), `drift` (the fields far above the validation split's
    share) and `warning` (None without drift); see the module's docstring.
    """
    if on_error not in ("fail", "skip"):
        raise NasrecError(f"on_error must be fail or skip, not {on_error!r}")
    if not 0 <= max_bad_fraction <= 1:
        raise NasrecError(f"--max-bad-fraction must be between 0 and 1, not {max_bad_fraction}")
    model, spec = load_trained(model_dir, checkpoint, device=device)
    on = next(model.parameters()).device
    rundir.check_not_supernet(model_dir, spec.kind, "a supernet predicts per architecture; train the chosen one first")
    cache = open_cache(Path(data) if data is not None else model_cache(model_dir))
    encoder = RowEncoder.from_cache(cache)
    if len(encoder.plan.dense) != spec.num_dense or len(encoder.plan.sparse) != len(spec.table_sizes):
        raise NasrecError(f"{cache.path}: this cache's fields differ from the model's")
    seen = seen_rows(cache, encoder) if drift_check else None
    unseen = UnseenCounter(seen) if seen is not None else None
    errors = ErrorLog()
    metrics = StreamingMetrics()
    several = len(inputs) > 1
    rows = 0
    out = Path(out)

    def write(fh: IO[bytes]) -> None:
        nonlocal rows
        with torch.inference_mode():
            header = True
            for chunk in encoder.iter_encoded(list(inputs), on_error=on_error, errors=errors):
                dense = torch.from_numpy(np.ascontiguousarray(chunk.dense, dtype=np.float32))
                sparse = torch.from_numpy(chunk.sparse.astype(np.int64))
                # one slice at a time on the device; the logits come back to the CPU for the CSV
                logits = (
                    torch.cat(
                        [
                            model(dense[i : i + batch_size].to(on), sparse[i : i + batch_size].to(on)).cpu()
                            for i in range(0, len(dense), batch_size)
                        ]
                    )
                    if len(dense)
                    else torch.zeros(0)
                )
                metrics.update(chunk.label, logits)
                if unseen is not None:
                    unseen.update(chunk.sparse)
                cols: dict[str, Any] = {}
                if several:
                    cols["file"] = [chunk.file] * len(dense)
                cols.update(line=chunk.lines, label=chunk.label, probability=torch.sigmoid(logits).numpy())
                pl.DataFrame(cols).write_csv(fh, include_header=header, float_precision=None)
                header = False
                rows += len(dense)
            if header:  # no rows at all: still a valid CSV
                fh.write((("file," if several else "") + "line,label,probability\n").encode())
        # a refusal leaves no file behind (nor a previous one changed)
        check_bad_share(", ".join(map(str, inputs)), rows, errors, max_bad_fraction)

    rundir.atomic_write(out, write, binary=True)
    m = metrics.result()
    drift: dict[str, Any] = {}
    if unseen is not None and seen is not None:
        drift = unseen_report(encoder.plan.sparse_names, unseen.shares(), *_reference(cache, seen))
        if drift["warning"]:
            log.warning(drift["warning"])
    return {
        "rows": rows,
        "skipped": errors.count,
        "skipped_examples": errors.examples,
        "out": str(out),
        "logloss": m["logloss"] if rows and not math.isnan(m["logloss"]) else None,
        "auc": m["auc"] if rows and not math.isnan(m["auc"]) else None,
        **drift,
    }
