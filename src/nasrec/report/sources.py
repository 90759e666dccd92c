"""What the report reads from a run directory: JSON files and the trained models to compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _models(run: Path) -> list[dict[str, Any]]:
    """Every trained model of the run with its metrics: the final one, baselines, retrained candidates.

    `logloss_seeds` holds the test log loss of the folder's own run and of its `seed-<s>/` runs.
    """
    rows = []

    def add(name: str, group: str, folder: Path) -> None:
        metrics = _json(folder / "metrics.json")
        if metrics:
            seeds = [metrics] + [m for d in sorted(folder.glob("seed-*")) if (m := _json(d / "metrics.json"))]
            rows.append({"name": name, "group": group, "logloss": metrics.get("logloss"), "auc": metrics.get("auc"),
                         "val_logloss": (metrics.get("val") or {}).get("logloss"), "mflops": metrics.get("mflops"),
                         "params": metrics.get("params"), "samples_per_s": metrics.get("samples_per_s"),
                         "logloss_seeds": [m["logloss"] for m in seeds if m.get("logloss") is not None],
                         "auc_seeds": [m["auc"] for m in seeds if m.get("auc") is not None]})  # fmt: skip

    add("searched (final)", "final", run / "final")
    for d in sorted((run / "baselines").glob("*")) if (run / "baselines").exists() else []:
        model = _json(d / "model.json") or {}
        add(d.name, "zoo" if model.get("kind") == "zoo" else "published", d)
    for d in sorted((run / "search" / "retrain").glob("*")) if (run / "search" / "retrain").exists() else []:
        add(f"retrained {d.name}", "retrained", d)
    return rows
