"""Quality table: every zoo model and the six published NASRecNets on the real samples and on synthetic data.

Usage::

    python bench/bench_quality.py                               # everything: 4 datasets x 14 models x 3 seeds
    python bench/bench_quality.py --datasets avazu_9k --models lr dlrm criteo_xlarge_best --seeds 0
    python bench/bench_quality.py --default-recipes --datasets criteo_kaggle_8k --models lr deepfm dcnv2
    python bench/bench_quality.py --default-recipes --datasets synthetic --synthetic-rows 200000 \
        --synthetic-preset criteo-like --synthetic-base-ctr 0.003 --models lr dcnv2   # imbalanced

Datasets (prepared once under `--work`, vocabulary encoding fitted on the train split, ids seen fewer
than `--min-count` times there map to the out-of-vocabulary row):

- `criteo_kaggle_8k`: ../shared/data, raw Criteo format, autoctr split (8/1/1).
- `criteo_kaggle_indexed_20k`: ../shared/data, 40 integer columns (label, 13 bucketised integer fields
  read as dense features with the log transform, 26 categorical indices); the train file's first 9,000
  rows train, its last 1,000 validate, the 10,000 rows of the test file test.
- `avazu_9k`: ../shared/data, raw Avazu format, autoctr split.
- `frappe_x1_train`: ../shared/data, BARS Frappe_x1's training split, prepared and split as
  `bench/bench_frappe.py` does (8:1:1 at random, seed 0). Its recipe is the searched models' recipe of
  `examples/frappe.yaml` (`x-recipe`: DeepFM's tuned settings, early stopping on AUC, the logit calibrated);
  `--default-recipes` gives the zoo models theirs, as `bench/bench_frappe.py` does.
- `synthetic`: `--synthetic-rows` rows (default 60,000) of nasrec's synthetic Criteo-shaped data, preset
  `--synthetic-preset` (default "interactions": planted pairwise interactions and gates over few
  categories per field), seed 0, random split; its known click probabilities give the Bayes-optimal
  test log loss.

Every model trains with the same recipe on a dataset (Adagrad with eps 1e-2, warm-up then cosine, gradient
clipping at 5, evaluation on the validation split every `--evals-per-epoch`-th of an epoch, early stopping
after 2 evaluations without improvement, test metrics with the best validation weights). Seeds change the
initialisation and the shuffling, not the data split. With `--default-recipes` zoo models train instead
with their default recipes, exactly what `nasrec train --data D --model NAME` does with no options.
Prints one JSON line per run, then a Markdown table (mean ± std over seeds) with each model's mean test
prediction over the test CTR and the log loss of the constant predictor (the train split's CTR).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package

from nasrec.data.cache import open_cache
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.data.synthetic import SYNTH_PRESETS, generate_synthetic
from nasrec.space.arch import Architecture
from nasrec.train.api import train
from nasrec.train.evaluation import train_ctr
from nasrec.zoo.registry import ZOO_MODELS

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FRAPPE = "frappe_x1_train"
PUBLISHED = [f"{d}_{s}_best" for d in ("criteo", "avazu", "kdd") for s in ("autoctr", "xlarge")]
DATASETS = ["synthetic", "criteo_kaggle_8k", "criteo_kaggle_indexed_20k", "avazu_9k"]
# Per dataset: batch size, epochs at most, learning rate (one recipe for every model on that dataset).
RECIPES = {
    "synthetic": dict(batch_size=512, epochs=6, lr=0.05),
    "criteo_kaggle_8k": dict(batch_size=256, epochs=10, lr=0.03),
    "criteo_kaggle_indexed_20k": dict(batch_size=256, epochs=10, lr=0.03),
    "avazu_9k": dict(batch_size=256, epochs=10, lr=0.03),
}


def _indexed_schema(path: Path) -> Path:
    cols = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    schema = {
        "name": "criteo-kaggle-indexed",
        "label": "label",
        "separator": ",",
        "header": False,
        "columns": cols,
        "dense": [{"name": c, "column": c, "transform": "log"} for c in cols[1:14]],
        "sparse": [{"name": c, "column": c, "kind": "int"} for c in cols[14:]],
    }
    path.write_text(json.dumps(schema, indent=1))
    return path


def prepare_dataset(
    name: str, work: Path, min_count: int, synthetic_rows: int, synthetic_preset: str, base_ctr: float | None = None
) -> Path:
    """Prepare one dataset under `work` (reused when already there); returns the cache directory."""
    if name == FRAPPE:  # split as bench/bench_frappe.py splits it (8:1:1 at random, seed 0)
        from bench_frappe import prepare_frappe

        return prepare_frappe(work / "data" / FRAPPE, SHARED / "data" / FRAPPE / "train.csv")
    out = work / "data" / (name if name != "synthetic" else f"synthetic-{synthetic_preset}-{synthetic_rows}-{base_ctr}")
    if (out / "meta.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    common = dict(out=str(out), encoding="vocab", min_count=min_count, force=True)
    if name == "synthetic":
        raw = work / "data" / "synthetic.tsv"
        config = SYNTH_PRESETS[synthetic_preset]
        if base_ctr is not None:
            config = replace(config, base_ctr=base_ctr)
        generate_synthetic(raw, rows=synthetic_rows, seed=0, config=config)
        cfg = PrepareConfig(inputs=(str(raw),), format="criteo", split="random", **common)
    elif name == "criteo_kaggle_indexed_20k":
        d = SHARED / "data" / name
        files = (str(d / "tiny_train_input.csv"), str(d / "tiny_test_input.csv"))
        schema = _indexed_schema(work / "data" / "indexed_20k.json")
        cfg = PrepareConfig(
            inputs=files, format="schema", schema=str(schema), split="sequential", ratios=(0.45, 0.05, 0.5), **common
        )
    else:
        d = SHARED / "data" / name
        files = tuple(str(d / f) for f in ("train.csv", "dev.csv", "test.csv"))
        cfg = PrepareConfig(inputs=files, format="avazu" if name.startswith("avazu") else "criteo", **common)
    prepare(cfg)
    return out


def recipe(dataset: str, cache_dir: Path, seed: int, evals_per_epoch: int = 2) -> dict[str, Any]:
    """Training overrides of the benchmark recipe on one dataset (the same for every model)."""
    if dataset == FRAPPE:  # the searched models' recipe of the Frappe pipeline: DeepFM's tuned settings
        x = yaml.safe_load((EXAMPLES / "frappe.yaml").read_text())["x-recipe"]
        # over the default preset: shuffled, as the pipeline's cpu-quick preset trains them (the default
        # preset keeps the reference's file order, which cost the searched models 0.005 log loss here)
        return dict(x, seed=seed, shuffle=True, threads=2, checkpoint_every=10**9, log_every=10**9)
    r = RECIPES[dataset]
    steps_per_epoch = len(open_cache(cache_dir).split_index("train")) // r["batch_size"]
    return dict(
        r,
        seed=seed,
        optimizer="adagrad",
        eps=1e-2,
        schedule="warmup-cosine",
        warmup_fraction=0.05,
        clip=5.0,
        shuffle=True,
        eval_every=max(1, steps_per_epoch // evals_per_epoch),
        early_stop_metric="logloss",
        patience=2,
        restore_best=True,
        checkpoint_every=10**9,
        threads=2,
        log_every=10**9,
    )


def run_one(
    cache_dir: Path,
    dataset: str,
    model: str,
    seed: int,
    work: Path,
    evals_per_epoch: int,
    arch: Architecture | None = None,
    nasrec: dict[str, Any] | None = None,
    default_recipe: bool = False,
) -> dict[str, Any]:
    """Train one model (a zoo name, a published name, or `arch` named `model`) on one dataset with one seed.

    `nasrec` overrides the recipe for nasrec architectures only (layer norms and their learning rate).
    """
    cache = open_cache(cache_dir)
    overrides = recipe(dataset, cache_dir, seed, evals_per_epoch)
    if arch is not None or model not in ZOO_MODELS:
        overrides.update(nasrec or {})
    out = work / "runs" / f"{dataset}-{model}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if arch is None and model in ZOO_MODELS and default_recipe:
        overrides = {"seed": seed, "threads": 2}
        m = train(cache_dir, out, model=model, overrides=overrides, progress=False, recipe="default")
    elif arch is None and model in ZOO_MODELS:
        m = train(cache_dir, out, model=model, overrides=overrides, progress=False)
    else:
        a = arch or Architecture.load(SHARED / "configs" / f"{model}.json")
        m = train(cache_dir, out, arch=a, overrides=overrides, progress=False)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints are not needed: the metrics are the result
    row = {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "logloss": m["logloss"],
        "auc": m["auc"],
        "val_logloss": m["val"]["logloss"],
        "mflops": m["mflops"],
        "params": m["params"],
        "best_step": m["best_step"],
        "steps": m["steps"],
        "seconds": round(time.perf_counter() - t0, 1),
        "lr": overrides.get("lr"),
        "layernorm": bool(overrides.get("layernorm", False)),
        "recipe": "default" if default_recipe and model in ZOO_MODELS else "bench",
        "mean_pred_over_ctr": m["test"]["mean_pred"] / m["test"]["ctr"],
        # the base rate the model learnt: on rare positives the test CTR's own sampling error is large
        "mean_pred_over_train_ctr": m["test"]["mean_pred"] / train_ctr(cache),
        "constant_logloss": _constant_logloss(train_ctr(cache), m["test"]["ctr"]),
    }
    bayes = cache.meta.get("bayes_logloss")
    if bayes and bayes.get("test") is not None:
        row["bayes_logloss"] = bayes["test"]
    return row


def _constant_logloss(p: float, ctr: float) -> float:
    """Log loss of predicting `p` for every row of a split whose click rate is `ctr`."""
    return -(ctr * math.log(p) + (1 - ctr) * math.log(1 - p))


def nasrec_set(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides of nasrec architectures from `--nasrec-lr` and `--nasrec-layernorm`."""
    out: dict[str, Any] = {"layernorm": bool(args.nasrec_layernorm)}
    if args.nasrec_lr is not None:
        out["lr"] = args.nasrec_lr
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table per dataset: mean ± std over seeds of test log loss and AUC, MFLOPs, params."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == dataset]
        bayes = rs[0].get("bayes_logloss")
        lines += [f"\n### {dataset}" + (f" (Bayes-optimal test log loss {bayes:.4f})" if bayes else ""), ""]
        const = statistics.mean(r["constant_logloss"] for r in rs)
        lines += [f"Constant predictor (the train split's CTR): test log loss {const:.4f}.", ""]
        head = (
            "| model | test log loss | test AUC | mean prediction / test CTR | / train CTR | MFLOPs | params | seeds |"
        )
        lines += [
            head if not bayes else head.replace(" MFLOPs", " gap to Bayes | MFLOPs"),
            "|---" * (8 + bool(bayes)) + "|",
        ]
        models = list(dict.fromkeys(r["model"] for r in rs))
        models.sort(key=lambda m: statistics.mean(r["logloss"] for r in rs if r["model"] == m))
        for model in models:
            mr = [r for r in rs if r["model"] == model]
            ll = [r["logloss"] for r in mr]
            cells = [model, _mean_std(ll), _mean_std([r["auc"] for r in mr])]
            cells.append(f"{statistics.mean(r['mean_pred_over_ctr'] for r in mr):.3f}")
            train_ratio = [r["mean_pred_over_train_ctr"] for r in mr if "mean_pred_over_train_ctr" in r]
            cells.append(f"{statistics.mean(train_ratio):.3f}" if train_ratio else "—")
            if bayes:
                cells.append(f"{statistics.mean(ll) - bayes:.4f}")
            cells += [f"{mr[0]['mflops']:.4g}", f"{mr[0]['params']:,}", str(len(mr))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=DATASETS)
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS) + PUBLISHED)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/nasrec-bench-quality"))
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--synthetic-rows", type=int, default=60_000)
    ap.add_argument("--synthetic-preset", choices=list(SYNTH_PRESETS), default="interactions")
    ap.add_argument("--evals-per-epoch", type=int, default=2)
    ap.add_argument("--default-recipes", action="store_true", help="zoo models train with their default recipes")
    ap.add_argument("--synthetic-base-ctr", type=float, help="click rate of the synthetic data (default: the preset's)")
    ap.add_argument("--nasrec-lr", type=float, help="learning rate of the nasrec architectures (default: the recipe's)")
    ap.add_argument("--nasrec-layernorm", action="store_true", help="train the nasrec architectures with layer norms")
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    unknown = [m for m in args.models if m not in ZOO_MODELS and m not in PUBLISHED]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; zoo: {list(ZOO_MODELS)}, published: {PUBLISHED}")
    if any(d != "synthetic" for d in args.datasets) and not (SHARED / "data").is_dir():
        ap.error(f"{SHARED / 'data'} not found: the real samples are needed (or use --datasets synthetic)")
    rows = []
    for dataset in args.datasets:
        cache_dir = prepare_dataset(
            dataset, args.work, args.min_count, args.synthetic_rows, args.synthetic_preset, args.synthetic_base_ctr
        )
        for model in args.models:
            for seed in args.seeds:
                row = run_one(
                    cache_dir,
                    dataset,
                    model,
                    seed,
                    args.work,
                    args.evals_per_epoch,
                    nasrec=nasrec_set(args),
                    default_recipe=args.default_recipes,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(table(rows), flush=True)
    print(json.dumps({"bench": "quality", "machine": machine_info(), "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
