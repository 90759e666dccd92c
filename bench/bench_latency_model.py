"""The latency model against end-to-end measurements: profile a table, fit its overhead, validate on random architectures.

Usage (pin it to one otherwise idle core; the timings are what is measured)::

    taskset -c 1 python bench/bench_latency_model.py                      # small and full, 50 archs each
    taskset -c 1 python bench/bench_latency_model.py --spaces full --archs 20 --tables runs/latency

Per space: `nasrec.export.latency_table.profile_table` measures (or, with the same --tables folder, resumes
or reuses) the table `TABLES/SPACE.json` at the Criteo shape (13 dense fields, 26 tables capped at
`--max-rows` rows) and fits its overhead on its calibration architectures (seeds 1,000,000 + k). Then
`--archs` architectures (seeds `--seed`, `--seed` + 1, ..., the ``uniform`` strategy, disjoint from the
calibration seeds) and `--small` small ones (narrowest widths, the last block reading one earlier output, as
the calibration's small half) are exported and timed end to end as `nasrec latency measure` times them, and
predicted from the table. `--data CACHE` takes a prepared cache's shape (fields, table sizes) instead of
Criteo's, `--layernorm` models with layer norms (as `cpu-quick` trains them). The first `--repeat` of them are timed a second time: the repeat noise.

Prints one JSON line per architecture, then per space the relative error |predicted - measured| / measured
of each fit form (``overhead``: the table's sum plus the fitted intercept and per-head-input cost;
``scaled``: the same with a fitted scale on the sum; ``params``: the overhead plus a fitted cost per million
non-embedding parameters; ``auto``: the form of these three with the least leave-one-out error on the
calibration architectures, the profile's default; ``mflops``: a line in MFLOPs fitted on the same
calibration architectures, for comparison), median and 90th percentile, and the profile's duration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package

from nasrec.data.formats import CRITEO_TABLE_SIZES
from nasrec.export.latency import measure_model_latency
from nasrec.export.latency_table import fit_setting, model_of, profile_table, small_arch
from nasrec.latency.model import setting_key
from nasrec.model.cost import arch_cost
from nasrec.model.subnet import Subnet
from nasrec.space.arch import Architecture
from nasrec.space.space import get_space

FORMS = ("overhead", "scaled", "params", "auto")


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred - meas) / meas
    return {
        "median": round(float(np.median(rel)), 4),
        "p90": round(float(np.percentile(rel, 90)), 4),
        "max": round(float(rel.max()), 4),
        "mean_signed": round(float(np.mean((pred - meas) / meas)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["small", "full"])
    ap.add_argument("--archs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="architectures timed twice (repeat noise)")
    ap.add_argument("--tables", default="runs/latency", help="folder of the tables (SPACE.json), reused if present")
    ap.add_argument("--calibration", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=100_000)
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torchscript"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--data", type=Path, help="a prepared cache: its fields and table sizes (default: Criteo's shape)")
    ap.add_argument("--layernorm", action="store_true", help="models with layer norms (as their recipe trains them)")
    ap.add_argument("--small", type=int, default=0, help="small architectures validated besides the uniform draws")
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    sizes = [min(n, args.max_rows) for n in CRITEO_TABLE_SIZES]
    nd = 13
    if args.data is not None:
        from nasrec.data.cache import open_cache

        cache = open_cache(args.data)
        nd, sizes = len(cache.dense_fields), list(cache.table_sizes)
    ln = args.layernorm
    timing = dict(runtime=args.runtime, batches=(args.batch,), threads=(args.threads,), warmup=args.warmup,
                  reps=args.reps)  # fmt: skip
    Path(args.tables).mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.spaces:
        space = get_space(name)
        path = Path(args.tables) / f"{name.replace('+', 'plus')}.json"
        t0 = time.perf_counter()
        table = profile_table(space, nd, sizes, path, calibration=args.calibration, layernorm=ln, **timing)
        profile_s = time.perf_counter() - t0
        setting = table["settings"][setting_key(args.batch, args.threads)]
        fits = {form: fit_setting(table, setting, form) for form in FORMS}
        calib = [(Architecture.from_dict(p["arch"]), p["measured_ms"]) for p in setting["calibration"]]
        # MFLOPs line on the same calibration architectures: what FLOPs alone would give
        cx = np.array([arch_cost(a, nd, len(sizes), use_layernorm=ln).mflops for a, _ in calib])
        cy = np.array([m for _, m in calib])
        flops_line = np.polyfit(cx, cy, 1)
        rows = []
        last = space.num_blocks - 1
        draws = [(args.seed + k, "uniform", space.sample(np.random.default_rng(args.seed + k), "uniform"))
                 for k in range(args.archs)]  # fmt: skip
        # small ones as the calibration's small half draws them (other seeds): the last block reading output j
        draws += [(s, f"small, j={k % (last + 1)}", small_arch(space, np.random.default_rng(s), k % (last + 1)))
                  for k, s in enumerate(range(args.seed + 100_000, args.seed + 100_000 + args.small))]  # fmt: skip
        for k, (seed, kind, arch) in enumerate(draws):
            model_of_arch = Subnet(arch, nd, sizes, layernorm=ln)
            measured = measure_model_latency(model_of_arch, nd, sizes, **timing)["results"][0]["p50_ms"]
            row = {
                "space": name,
                "seed": seed,
                "draw": kind,
                "measured_ms": measured,
                "mflops": round(arch_cost(arch, nd, len(sizes), use_layernorm=ln).mflops, 4),
            }
            for form, fit in fits.items():
                model = model_of(table, {**setting, "fit": fit})
                row[f"pred_{form}_ms"] = round(model.predict(arch), 5)
            row["pred_mflops_ms"] = round(float(np.polyval(flops_line, row["mflops"])), 5)
            if k < args.repeat:
                row["measured_again_ms"] = measure_model_latency(model_of_arch, nd, sizes, **timing)["results"][0][
                    "p50_ms"
                ]
            rows.append(row)
            print(json.dumps(row), flush=True)
        meas = np.array([r["measured_ms"] for r in rows])
        out = {
            "archs": len(rows),
            "entries": len(setting["entries"]),
            "profile_s": round(profile_s, 1),
            "calibration_archs": len(calib),
            "fits": fits,
            "measured_ms_range": [round(float(meas.min()), 4), round(float(meas.max()), 4)],
        }
        for form in (*FORMS, "mflops"):
            out[form] = _errors(np.array([r[f"pred_{form}_ms"] for r in rows]), meas)
            small = [r for r in rows if r["draw"] != "uniform"]
            if small:
                pred = np.array([r[f"pred_{form}_ms"] for r in small])
                out[f"{form}_small"] = _errors(pred, np.array([r["measured_ms"] for r in small]))
        again = [(r["measured_ms"], r["measured_again_ms"]) for r in rows if "measured_again_ms" in r]
        if again:
            a = np.array(again)
            out["repeat_noise"] = {
                "archs": len(a),
                "median": round(float(np.median(np.abs(a[:, 1] - a[:, 0]) / a[:, 0])), 4),
                "max": round(float(np.max(np.abs(a[:, 1] - a[:, 0]) / a[:, 0])), 4),
            }
        summary[name] = out
        print(json.dumps({"space": name, **out}), flush=True)
    print(json.dumps({"bench": "latency_model", "machine": machine_info(), "timing": timing, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
