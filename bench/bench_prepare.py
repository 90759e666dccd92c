"""End-to-end speed and peak memory of `nasrec prepare` on a synthetic Criteo-format file.

Usage::

    python bench/bench_prepare.py                           # 2,000,000 rows, 5 timed runs
    python bench/bench_prepare.py --sizes 500000 1000000 2000000 4000000 --runs 1   # memory vs size

Each run is a fresh `python -m nasrec.cli prepare` process (so interpreter start and imports are in
the figure, and its peak RSS is its own), timed from launch to exit, after one untimed warm-up run
that also brings the input into the page cache. Around each run the machine-wide busy time is
sampled from /proc/stat, and the CPU time of this process and the child is subtracted: the rest is
the share of the machine used by other processes, printed per run and flagged above 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import LoadSample, machine_info, machine_line  # bench/ is not a package

from nasrec.data.synthetic import generate_synthetic

TARGET_ROWS_S = 500_000
NOISY_SHARE = 0.05


def ensure_input(workdir: Path, rows: int, seed: int) -> Path:
    """The synthetic Criteo TSV of `rows` rows, generated once and reused."""
    path = workdir / f"criteo-synth-{rows}-s{seed}.tsv"
    if not path.exists():
        print(f"generating {rows:,} rows into {path} ...", file=sys.stderr)
        generate_synthetic(path, rows=rows, seed=seed)
    return path


def run_once(inp: Path, out: Path, extra: list[str], threads: int) -> dict:
    """One timed prepare process: wall seconds, its own figures, peak RSS and other-process share."""
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "prepare",
        "--format",
        "criteo",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--force",
        "--no-progress",
        "--json",
        *extra,
    ]
    env = dict(os.environ, POLARS_MAX_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    load = LoadSample()
    load.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    share = load.stop()
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    rows = sum(res["rows"].values())
    return {
        "wall_s": wall,
        "rows": rows,
        "rows_s": rows / wall,
        "inproc_rows_s": res["rows_per_s"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "other_share": share,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000_000], help="rows of the input file(s)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/nasrec-bench-prepare")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs for later runs")
    ap.add_argument("prepare_args", nargs="*", help="extra prepare flags after --, e.g. -- --split random")
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for rows in args.sizes:
            inp = ensure_input(workdir, rows, args.seed)
            out = workdir / "cache"
            run_once(inp, out, args.prepare_args, args.threads)  # warm-up (page cache, imports)
            runs = [run_once(inp, out, args.prepare_args, args.threads) for _ in range(args.runs)]
            rates = [r["rows_s"] for r in runs]
            results.append(
                {
                    "rows": rows,
                    "input_mb": round(inp.stat().st_size / 1e6, 1),
                    "median_rows_s": round(statistics.median(rates)),
                    "min_rows_s": round(min(rates)),
                    "max_rows_s": round(max(rates)),
                    "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
                    "median_inproc_rows_s": round(statistics.median(r["inproc_rows_s"] for r in runs)),
                    "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
                    "other_share": [round(r["other_share"], 3) for r in runs],
                }
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nnasrec prepare --format criteo {' '.join(args.prepare_args)} ({args.threads} threads, "
        f"{args.runs} timed runs each, whole process from launch to exit)"
    )
    print(
        f"{'rows':>10}{'MB':>8}{'median rows/s':>15}{'min - max rows/s':>24}{'in-process':>12}{'peak RSS MB':>13}"
        "   other processes per run"
    )
    for r in results:
        shares = " ".join(f"{s:.1%}" + ("!" if s > NOISY_SHARE else "") for s in r["other_share"])
        span = f"{r['min_rows_s']:,} - {r['max_rows_s']:,}"
        print(
            f"{r['rows']:>10,}{r['input_mb']:>8}{r['median_rows_s']:>15,}{span:>24}"
            f"{r['median_inproc_rows_s']:>12,}{r['peak_rss_mb']:>13,}   {shares}"
        )
    print(
        json.dumps(
            {
                "bench": "prepare",
                "machine": machine_info(),
                "threads": args.threads,
                "prepare_args": args.prepare_args,
                "target_rows_s": TARGET_ROWS_S,
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
