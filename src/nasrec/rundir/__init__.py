"""The run directory: its file names, one writer at a time, atomic writes, checkpoints and typed records.

- `names`: the file names of training, search and pipeline run directories;
- `lock`: the exclusive writer lock and removal of an interrupted writer's temporary files;
- `io`: the atomic write (every file nasrec replaces goes through it) and JSON-lines logs;
- `checkpoint`: checkpoints, loaded without running code from the file;
- `results`: metrics, search results and stage records as dataclasses with `to_dict` / `from_dict`;
- `run`: reading a trained run back, and the checks of its kind (is it a supernet).

This package is a base layer: it imports nothing of nasrec but `nasrec.errors`.
"""

from __future__ import annotations

from nasrec.rundir import names
from nasrec.rundir.checkpoint import load_checkpoint, save_checkpoint
from nasrec.rundir.io import (
    append_jsonl,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
    tmp_path,
)
from nasrec.rundir.lock import LOCK_NAME, exclusive, is_empty, lock_path, remove_stale_tmp
from nasrec.rundir.names import *  # noqa: F403 - the file names are part of this package's interface
from nasrec.rundir.results import (
    Candidate,
    Record,
    RetrainedArch,
    RetrainResult,
    Rung,
    RunMetrics,
    SearchResult,
    SeedRun,
    SplitMetrics,
    StageRecord,
)
from nasrec.rundir.run import (
    SUPERNET,
    check_not_supernet,
    check_supernet,
    is_finished,
    is_supernet,
    model_kind,
    read_metrics,
    read_model,
    read_supernet,
    read_train_config,
    restores_best,
    trained_on,
    weights_path,
)

__all__ = [
    "LOCK_NAME",
    "SUPERNET",
    "Candidate",
    "Record",
    "RetrainResult",
    "RetrainedArch",
    "RunMetrics",
    "Rung",
    "SearchResult",
    "SeedRun",
    "SplitMetrics",
    "StageRecord",
    "append_jsonl",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_not_supernet",
    "check_supernet",
    "exclusive",
    "is_empty",
    "is_finished",
    "is_supernet",
    "load_checkpoint",
    "lock_path",
    "model_kind",
    "names",
    "read_json",
    "read_jsonl",
    "read_metrics",
    "read_model",
    "read_supernet",
    "read_train_config",
    "remove_stale_tmp",
    "restores_best",
    "save_checkpoint",
    "tmp_path",
    "trained_on",
    "weights_path",
]
