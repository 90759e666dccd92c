"""The file names of a run directory: every module spells them through these constants.

A training run (train, supernet, a retrained or final model)::

    config.json      the resolved TrainConfig, the model spec and the data it was trained on
    model.json       the ModelSpec (enough to rebuild the model for evaluation or prediction)
    checkpoint.pt    the latest state (model, optimizer, schedule, RNG, data position, counters)
    best.pt          the model weights at the best evaluation (when evaluating during training)
    metrics.jsonl    one JSON object per log line or evaluation
    metrics.json     the final evaluation (`RunMetrics`)

A search: search.json (its resolved settings), state.json and history.jsonl (to resume), best.json,
top.json, pareto.json and result.json (`SearchResult`); after retraining, retrain/ with one training run
per architecture, final.json (the chosen architecture) and final_metrics.json (`RetrainResult`). A
pipeline run: pipeline.json, stages.json (`StageRecord` per stage) and one folder per stage.
"""

from __future__ import annotations

# a training run
CONFIG_JSON = "config.json"
MODEL_JSON = "model.json"
CHECKPOINT_PT = "checkpoint.pt"
BEST_PT = "best.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"

# a search
SEARCH_JSON = "search.json"
STATE_JSON = "state.json"
HISTORY_JSONL = "history.jsonl"
BEST_JSON = "best.json"
TOP_JSON = "top.json"
PARETO_JSON = "pareto.json"
PARETO_LATENCY_JSON = "pareto_latency.json"  # the front over predicted serving latency, with a latency table
RESULT_JSON = "result.json"
RETRAIN_DIR = "retrain"
FINAL_JSON = "final.json"
FINAL_METRICS_JSON = "final_metrics.json"

# a rank check
RANKCHECK_JSON = "rankcheck.json"

# a pipeline run: its files and the folders of its stages
PIPELINE_JSON = "pipeline.json"
STAGES_JSON = "stages.json"
# with a latency table in the search settings: the trained models' serving latency, measured after export
LATENCY_JSON = "latency.json"
SUPERNET_DIR = "supernet"
SEARCH_DIR = "search"
FINAL_DIR = "final"
BASELINES_DIR = "baselines"
RANKCHECK_DIR = "rankcheck"
