"""Zoo baselines on real data: frappe_x1_train (BARS Frappe_x1's training split), several seeds each.

Usage::

    python bench/bench_frappe.py                                  # every zoo model, default recipes, 5 seeds
    python bench/bench_frappe.py --models deepfm finalmlp --seeds 0 1 2
    python bench/bench_frappe.py --recipes runs/tuned             # tuned recipes (DIR/<model>.yaml) where present
    python bench/bench_frappe.py --jobs 2                         # two runs at a time, one thread each
    python bench/bench_frappe.py --models dcnv2 --with runs.jsonl  # the table includes earlier runs' JSON lines
    python bench/bench_frappe.py --models finalmlp --hparam fs1_context=[0] --hparam fs2_context=[1]
    python bench/bench_frappe.py --models deepfm --set batch_size=4096   # one change to the recipe

The 202,027 rows of `../shared/data/frappe_x1_train/train.csv` are prepared once (10 categorical fields,
train-split vocabulary, random 8:1:1 split with seed 0: 161,622 / 20,203 / 20,202 rows). Each model
trains with its default recipe, exactly what `nasrec train --data D --model NAME` does with no options,
or with a tuned recipe (`nasrec tune`'s `best_recipe.yaml`, copied to `DIR/NAME.yaml`); seeds change
the initialisation and the shuffling, not the split. Test figures use the weights the recipe keeps.

Prints one JSON line per run, then a Markdown table: mean ± std over seeds of test AUC and log loss,
MFLOPs, the BARS leaderboard's figures for the model, and Welch's 95 % interval of the AUC difference to
DeepFM (with the same recipe changes where run, else its default recipe). `--hparam` and `--set` change
the recipe of every model run (the recipe column names the changes). BARS trains on 7:2:1 of all 288,609
rows (202k train rows, against 162k here) and evaluates on its own test split, so its figures are the
kind of number to expect, not the same measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package

from nasrec.cli.common import parse_sets
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.train.api import train
from nasrec.train.compare import difference
from nasrec.zoo.registry import ZOO_MODELS

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
# BARS Frappe_x1 (embedding size 10; ../shared/data/frappe_x1_train/SOURCE.md): test AUC, log loss of the
# leaderboard's single runs, and the 5-run mean AUC where published.
BARS = {
    "finalmlp": (0.9861, 0.1484, None),
    "autoint+": (0.9848, 0.1490, None),
    "xdeepfm": (0.9845, 0.1466, 0.98414),
    "dcnv2": (0.9845, 0.1491, 0.98382),
    "deepfm": (0.9842, 0.1482, 0.98395),
    "fm": (0.9671, 0.2065, None),
    "lr": (0.9356, 0.3076, None),
}


def die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the benchmark's process ends, killed or not.

    Otherwise a killed benchmark leaves its workers training, and a restarted one removes and rewrites
    the run folders they are still writing to.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def prepare_frappe(work: Path, data: Path) -> Path:
    """The prepared cache of frappe_x1_train under `work` (made once, reused after)."""
    out = work / "cache"
    if (out / "meta.json").exists():
        return out
    work.mkdir(parents=True, exist_ok=True)
    schema = {
        "name": "frappe_x1_train",
        "label": "label",
        "separator": ",",
        "header": True,
        "dense": [],
        "sparse_kind": "int",
        "sparse": FIELDS,
    }
    (work / "schema.json").write_text(json.dumps(schema, indent=1))
    cfg = PrepareConfig(
        inputs=(str(data),),
        format="schema",
        schema=str(work / "schema.json"),
        out=str(out),
        split="random",
        ratios=(0.8, 0.1, 0.1),
        seed=0,
        encoding="vocab",
        force=True,
    )
    prepare(cfg)
    return out


def tuned(recipes: Path | None, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The hyper-parameters and training settings of `recipes/<model>.yaml`, or None when there is none."""
    if recipes is None or not (recipes / f"{model}.yaml").exists():
        return None
    from nasrec.train.recipe import read_recipe

    r = read_recipe(recipes / f"{model}.yaml")
    if r.model != model:
        raise SystemExit(f"{recipes / f'{model}.yaml'}: a recipe for {r.kind}, not zoo model {model!r}")
    return dict(r.hparams), dict(r.train)


def run_one(
    cache: Path,
    model: str,
    seed: int,
    work: Path,
    recipes: Path | None,
    threads: int | None = None,
    changes: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
) -> dict[str, Any]:
    """Train one model with one seed (default or tuned recipe, with `changes`); its test figures and cost."""
    out = work / "runs" / f"{model}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = tuned(recipes, model)
    hparams, settings = recipe if recipe else ({}, {})
    t0 = time.perf_counter()
    m = train(
        cache,
        out,
        model=model,
        hparams={**hparams, **changes[0]},
        overrides={**settings, **changes[1], "seed": seed, **({"threads": threads} if threads else {})},
        progress=False,
        recipe=None if recipe else "default",  # a tuned recipe holds every setting
    )
    shutil.rmtree(out, ignore_errors=True)  # the metrics are the result
    return {
        "model": model,
        "recipe": run_label(recipes if recipe else None, changes),
        "seed": seed,
        "auc": m["auc"],
        "logloss": m["logloss"],
        "val_auc": m["val"]["auc"],
        "val_logloss": m["val"]["logloss"],
        "mflops": m["mflops"],
        "params": m["params"],
        "steps": m["steps"],
        "best_step": m["best_step"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_label(recipes: Path | None, changes: tuple[dict[str, Any], dict[str, Any]]) -> str:
    """The recipe column of a run: default or tuned, then the changes given (key=value, JSON values)."""
    given = [f"{k}={json.dumps(v, separators=(',', ':'))}" for c in changes for k, v in c.items()]
    return ("tuned" if recipes else "default") + "".join(f" {g}" for g in given)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, best mean test AUC first, with BARS's figures and Welch's interval against DeepFM."""
    keys = list(dict.fromkeys((r["model"], r["recipe"]) for r in rows))
    auc = {k: [r["auc"] for r in rows if (r["model"], r["recipe"]) == k] for k in keys}
    keys.sort(key=lambda k: -statistics.mean(auc[k]))
    lines = [
        "| model | recipe | test AUC | test log loss | MFLOPs | BARS AUC / log loss | AUC − DeepFM (95 %) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        rs = [r for r in rows if (r["model"], r["recipe"]) == k]
        bars = BARS.get(k[0])
        ref = ("deepfm", k[1]) if ("deepfm", k[1]) in auc else ("deepfm", "default")  # same recipe, else default
        vs = "—"
        if ref in auc and k != ref:
            d = difference(auc[k], auc[ref], lower_is_better=False)
            if d["low"] is not None:
                vs = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {d['verdict']}"
        cells = [
            k[0],
            k[1],
            _mean_std(auc[k]),
            _mean_std([r["logloss"] for r in rs]),
            f"{rs[0]['mflops']:.4g}",
            f"{bars[0]:.4f} / {bars[1]:.4f}" if bars else "—",
            vs,
            str(len(rs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS), choices=list(ZOO_MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "frappe_x1_train" / "train.csv")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nasrec-bench-frappe"))
    ap.add_argument("--recipes", type=Path, help="directory of tuned recipes, <model>.yaml (default: none)")
    ap.add_argument("--with", dest="earlier", type=Path, help="JSON lines of earlier runs to include in the table")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, the cores shared between them (default 1)")
    ap.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="a model hyper-parameter over the recipe's")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="a training setting over the recipe's")
    args = ap.parse_args(argv)
    changes = (parse_sets(args.hparam), parse_sets(args.set))
    if not args.data.is_file():
        ap.error(f"{args.data} not found: this benchmark needs the real data in ../shared (or --data FILE)")
    print(machine_line(), flush=True)
    cache = prepare_frappe(args.work, args.data)
    rows = []
    if args.earlier is not None:
        rows = [json.loads(x) for x in args.earlier.read_text().splitlines() if x.startswith('{"model"')]
    label = run_label(args.recipes, changes)
    have = {(r["model"], r["seed"]) for r in rows if r["recipe"] == label}
    runs = [(model, seed) for model in args.models for seed in args.seeds if (model, seed) not in have]
    if args.jobs <= 1:
        for model, seed in runs:
            rows.append(run_one(cache, model, seed, args.work, args.recipes, None, changes))
            print(json.dumps(rows[-1]), flush=True)
    else:  # separate processes (spawned: torch's thread pools do not survive a fork), cores split evenly
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=die_with_parent) as pool:
            futures = [pool.submit(run_one, cache, m, s, args.work, args.recipes, threads, changes) for m, s in runs]
            for future in as_completed(futures):
                rows.append(future.result())
                print(json.dumps(rows[-1]), flush=True)
    print(table(rows), flush=True)
    print(json.dumps({"bench": "frappe", "machine": machine_info(), "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
