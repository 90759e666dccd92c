"""What the report reads from a run directory: JSON files and the trained models to compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasrec import rundir
from nasrec.rundir import BASELINES_DIR, FINAL_DIR, METRICS_JSON, RETRAIN_DIR, SEARCH_DIR, RunMetrics


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _json(path: Path) -> Any:
    return rundir.read_json(path)


def _models(run: Path) -> list[dict[str, Any]]:
    """Every trained model of the run with its metrics: the final one, baselines, retrained candidates.

    `logloss_seeds` holds the test log loss of the folder's own run and of its `seed-<s>/` runs.
    """
    rows = []

    def add(name: str, group: str, folder: Path) -> None:
        raw = _json(folder / METRICS_JSON)
        if raw:
            m = RunMetrics.from_dict(raw)
            seeds = [m] + [s for d in sorted(folder.glob("seed-*")) if (s := rundir.read_metrics(d))]
            rows.append(
                {
                    "name": name,
                    "group": group,
                    "logloss": m.logloss,
                    "auc": m.auc,
                    "val_logloss": m.split("val").logloss,
                    "mflops": m.mflops,
                    "params": m.params,
                    "samples_per_s": m.samples_per_s,
                    "logloss_seeds": [s.logloss for s in seeds if s.logloss is not None],
                    "auc_seeds": [s.auc for s in seeds if s.auc is not None],
                }
            )

    add("searched (final)", "final", run / FINAL_DIR)
    measured = (_json(run / rundir.LATENCY_JSON) or {}).get("models", {})
    baselines, retrained = run / BASELINES_DIR, run / SEARCH_DIR / RETRAIN_DIR
    for d in sorted(baselines.glob("*")) if baselines.exists() else []:
        add(d.name, "zoo" if rundir.model_kind(d) == "zoo" else "published", d)
    for d in sorted(retrained.glob("*")) if retrained.exists() else []:
        add(f"retrained {d.name}", "retrained", d)
    for row in rows:  # the serving latency measured after export, where the run measured it
        row["latency_ms"] = (measured.get(row["name"]) or {}).get("p50_ms")
    return rows
