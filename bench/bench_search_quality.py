"""The whole search on small data: supernet, evolution, top-k retraining, the final model over 3 seeds.

Usage::

    python bench/bench_search_quality.py                      # synthetic and criteo_kaggle_indexed_20k
    python bench/bench_search_quality.py --datasets synthetic --space small --max-mflops 0.5

Per dataset (prepared as `bench/bench_quality.py` prepares it, under the same `--work`; `frappe_x1_train`
is BARS Frappe_x1's training split, split as `bench/bench_frappe.py` splits it, and its nasrec
architectures train with the searched models' recipe of `examples/frappe.yaml`):

1. `nasrec supernet` over `--space` with the "cpu-supernet" preset (`--supernet-epochs` epochs, full-path
   warm-up over the first quarter of the steps; with `--supernet-budget` only paths within `--max-mflops`
   afterwards);
2. `nasrec search --preset cpu` (regularized evolution, 224 candidates, 2 workers) under
   `--max-mflops` (default: the MFLOPs of the best zoo model of `bench/bench_quality.py`, DCNv2), then
   the top 3 (`--top-k`) retrained with the quality benchmark's recipe (`--retrain-seeds` seeds each)
   and the final one chosen by validation loss;
3. the final architecture trained with that recipe for seeds 0, 1, 2 (rows directly comparable with
   `bench/bench_quality.py`'s; `--seeds` with no value skips them), and the zoo models of `--baselines`
   with their default recipes for the same seeds, each compared with it by Welch's 95 % interval;
4. `nasrec rankcheck`: `--rank-k` architectures scored through the supernet and trained with the recipe
   (seed 0, at most `--rank-epochs` epochs): Kendall tau and Spearman rho; the same architectures re-scored without fine-tune and with
   4x the preset's fine-tune steps (the fine-tune ablation). `--rank-k 0` skips it; `--rank-capped`
   draws only architectures within `--max-mflops`, where the search looks.

Under a serving-latency budget (issue 25): `--latency-dir DIR` profiles (or reuses) a latency table per
dataset and space, `DIR/<dataset>-<space>.json` (`nasrec latency profile`: onnxruntime, batch 1, one
thread; a profile takes minutes), and `--max-latency-ms X|MODEL` caps the search (and, with
`--supernet-budget`, the supernet's paths) by the predicted latency; `--max-mflops none` drops the MFLOPs
cap. The summary then holds the final architecture's latency measured after export and the named
baseline's, on this machine.

`--nasrec-layernorm` / `--nasrec-lr` change the recipe of the nasrec architectures (retraining, final
seeds, rank check) but not of the zoo; `--finetune` / `--finetune-steps` change the scoring.

Prints JSON lines (one per final seed, then the search and rank summaries) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package
from bench_quality import SHARED, nasrec_set, prepare_dataset, recipe, run_one, table

from nasrec.data.cache import open_cache
from nasrec.search.api import search
from nasrec.search.parallel import ScorerSpec, ScoringPool
from nasrec.search.presets import resolve
from nasrec.search.rankcheck import rank_correlation, rankcheck
from nasrec.search.retrain import Halving
from nasrec.space.arch import Architecture
from nasrec.space.space import SearchSpace
from nasrec.train.api import train_supernet
from nasrec.zoo.budget import parse_latency_cap


def finetune_ablation(sn: Path, cache: Path, rc: dict, preset: str, workers: int, scoring: dict) -> list[dict]:
    """Kendall tau and Spearman rho of the rank check's architectures scored with other fine-tune budgets."""
    _, base, _ = resolve(preset, None, scoring)
    ok = [c for c in rc["candidates"] if c["scratch_val_logloss"] is not None]
    archs = [Architecture.from_dict(c["arch"]) for c in ok]
    out = []
    for steps in (0, base.finetune_steps, 4 * base.finetune_steps):
        cfg = base.updated(finetune_steps=steps, warmup_steps=min(base.warmup_steps, max(steps - 1, 0)))
        with ScoringPool(ScorerSpec(str(sn), str(cache), cfg.to_dict()), workers) as pool:
            scores = pool(archs)
        stats = rank_correlation(scores, [c["scratch_val_logloss"] for c in ok])
        out.append(
            {"finetune_steps": steps, "kendall_tau": stats["kendall_tau"], "spearman_rho": stats["spearman_rho"]}
        )
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "criteo_kaggle_indexed_20k"])
    ap.add_argument("--space", default="full")
    ap.add_argument("--embedding-dim", type=int, help="the space's token width (default: its own, 16)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nasrec-bench-quality"))
    ap.add_argument("--synthetic-rows", type=int, default=60_000, help="rows of the synthetic dataset")
    ap.add_argument("--supernet-epochs", type=int, default=4)
    ap.add_argument("--max-mflops", default="1.0446", help="the cap: MFLOPs or a zoo model (its MFLOPs on the data)")
    ap.add_argument("--latency-dir", type=Path, help="latency tables per dataset and space (profiled if missing)")
    ap.add_argument("--max-latency-ms", help="a latency cap: milliseconds or a zoo model (needs --latency-dir)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rank-k", type=int, default=12, help="architectures of the rank check (0: no rank check)")
    ap.add_argument("--top-k", type=int, help="architectures retrained after the search (default: the preset's)")
    ap.add_argument("--retrain-seeds", type=int, default=1, help="seeds per retrained architecture (mean val loss)")
    ap.add_argument("--rank-epochs", type=int, default=2, help="training epochs of each rank-check architecture")
    ap.add_argument("--rank-capped", action="store_true", help="rank-check architectures only within --max-mflops")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--preset", default="cpu", help="search preset (cpu-quick for a dry run)")
    ap.add_argument("--finetune", choices=["head", "all"], help="scoring fine-tune mode (default: the preset's)")
    ap.add_argument("--finetune-steps", type=int, help="scoring fine-tune steps (default: the preset's)")
    ap.add_argument("--supernet-lr", type=float, help="supernet learning rate (default: the cpu-supernet preset's)")
    ap.add_argument(
        "--supernet-budget",
        action="store_true",
        help="train the supernet only on paths within --max-mflops after its warm-up",
    )
    ap.add_argument("--nasrec-lr", type=float, help="learning rate of the nasrec architectures (default: the recipe's)")
    ap.add_argument("--nasrec-layernorm", action="store_true", help="train the nasrec architectures with layer norms")
    ap.add_argument(
        "--supernet-from",
        type=Path,
        help="the --work of an earlier run whose cache and supernet (same options) this one searches again",
    )
    ap.add_argument(
        "--halving",
        nargs=2,
        type=int,
        metavar=("ETA", "MIN_STEPS"),
        help="successive halving of the top k before the full retraining (nasrec search --halving)",
    )
    ap.add_argument(
        "--seed-arch",
        nargs="*",
        type=Path,
        default=[],
        help="architecture JSON files the initial population starts with (nasrec search --seed-arch)",
    )
    ap.add_argument(
        "--with",
        dest="earlier",
        type=Path,
        help="JSON lines of an earlier run of this benchmark: its --baselines rows join the table and the comparison",
    )
    ap.add_argument(
        "--keep-seed-archs",
        action="store_true",
        help="the seed architectures join the retrained top k whatever their supernet scores",
    )
    ap.add_argument(
        "--baselines",
        nargs="*",
        default=[],
        help="zoo models trained with their default recipes for --seeds, compared with the final model (Welch)",
    )
    args = ap.parse_args(argv)
    print(machine_line(), flush=True)
    nasrec = nasrec_set(args)
    scoring = {k: v for k, v in (("finetune", args.finetune), ("finetune_steps", args.finetune_steps)) if v is not None}
    searching = {"top_k": args.top_k} if args.top_k is not None else {}
    if args.seed_arch:
        searching["seed_archs"] = [json.loads(f.read_text()) for f in args.seed_arch]
        if args.keep_seed_archs:  # set only when on: a search resumed from before the option keeps its settings
            searching["keep_seed_archs"] = True
    if any(d != "synthetic" for d in args.datasets) and not (SHARED / "data").is_dir():
        ap.error(f"{SHARED / 'data'} not found: the real samples are needed (or use --datasets synthetic)")
    if args.max_latency_ms is not None and args.latency_dir is None:
        ap.error("--max-latency-ms needs --latency-dir (where the latency tables are)")
    max_mflops = None if str(args.max_mflops).lower() == "none" else args.max_mflops
    rows, summaries = [], []
    if args.earlier is not None:  # baseline rows only: the searched model is this run's
        earlier = [json.loads(x) for x in args.earlier.read_text().splitlines() if x.startswith('{"dataset"')]
        rows = [r for r in earlier if "model" in r and not r["model"].startswith("searched")]
    for dataset in args.datasets:
        home = args.supernet_from or args.work  # where the cache and the supernet are
        cache = prepare_dataset(dataset, home, 2, args.synthetic_rows, "interactions")
        latency = latency_settings(args, dataset, cache, max_mflops is not None and args.supernet_budget)
        t0 = time.perf_counter()
        sn = home / f"supernet-{dataset}-{space_tag(args)}"
        steps = args.supernet_epochs * (len(open_cache(cache).split_index("train")) // 512)
        sn_metrics = train_supernet(  # resumed: a finished supernet is read back, not trained again
            cache,
            sn,
            space=args.space,
            embedding_dim=args.embedding_dim,
            preset_name="cpu-supernet",
            resume=True,
            overrides=dict(
                epochs=args.supernet_epochs,
                path_warmup_steps=steps // 4,
                threads=2,
                **({"lr": args.supernet_lr} if args.supernet_lr else {}),
                **({"path_max_mflops": max_mflops} if args.supernet_budget and max_mflops is not None else {}),
                **latency["supernet"],
            ),
            progress=False,
        )
        t_sn = time.perf_counter() - t0
        out = args.work / f"search-{dataset}-{space_tag(args)}"
        t1 = time.perf_counter()
        res = search(
            sn,
            cache,
            out,
            preset=args.preset,
            overrides=dict(max_mflops=max_mflops, seed=0, **scoring, **searching, **latency["search"]),
            workers=args.workers,
            retrain=True,
            train_overrides={**recipe(dataset, cache, 0), **nasrec},
            retrain_seeds=args.retrain_seeds,
            halving=Halving(*args.halving) if args.halving else None,
            resume=True,
            progress=False,
        )
        t_search = time.perf_counter() - t1
        final = Architecture.load(out / "final.json")
        name = f"searched ({space_tag(args)})"
        for seed in args.seeds:
            row = run_one(cache, dataset, name, seed, args.work, 2, arch=final, nasrec=nasrec)
            rows.append(row)
            print(json.dumps(row), flush=True)
        for model in args.baselines:
            for seed in args.seeds:
                row = run_one(cache, dataset, model, seed, args.work, 2, default_recipe=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
        rc, ablation = {"kendall_tau": None, "spearman_rho": None, "pairs": 0}, []
        if args.rank_k > 0:
            rc = rankcheck(
                sn,
                cache,
                args.work / f"rankcheck-{dataset}-{space_tag(args)}",
                k=args.rank_k,
                preset=args.preset,
                train_overrides=dict(recipe(dataset, cache, 0), epochs=args.rank_epochs, **nasrec),
                workers=args.workers,
                score_overrides=scoring,
                max_mflops=max_mflops if args.rank_capped else None,
            )
            ablation = finetune_ablation(sn, cache, rc, args.preset, args.workers, scoring)
        summary = {
            "dataset": dataset,
            "space": args.space,
            "supernet_seconds": round(t_sn),
            "supernet_val_logloss": sn_metrics.get("logloss"),
            "search_seconds": round(t_search),
            "scored": res["scored"],
            "candidates_per_minute": round(res["candidates_per_minute"], 1),
            "retrained": res["final"]["runs"],
            "best_supernet_score": res["best"]["score"],
            "final": res["final"]["chosen"],
            "final_arch": final.to_dict(),
            "kendall_tau": rc["kendall_tau"],
            "spearman_rho": rc["spearman_rho"],
            "rank_pairs": rc["pairs"],
            "finetune_ablation": ablation,
            "final_test_logloss_mean": _mean(
                [r["logloss"] for r in rows if r["dataset"] == dataset and r["model"] == name]
            ),
            **measured_latency(args, cache, final, latency),
            "against_baselines": against(
                rows,
                dataset,
                name,
                list(
                    dict.fromkeys(
                        [*args.baselines, *(r["model"] for r in rows if not r["model"].startswith("searched"))]
                    )
                ),
            ),
        }
        summaries.append(summary)
        print(json.dumps(summary), flush=True)
    print(table(rows), flush=True)
    print(json.dumps({"bench": "search_quality", "machine": machine_info(), "summaries": len(summaries)}))
    return 0


def against(rows: list[dict], dataset: str, name: str, baselines: list[str]) -> dict[str, dict]:
    """The final model minus each baseline over the seeds: Welch's 95 % interval of test log loss and AUC."""
    from nasrec.train.compare import difference

    def of(model: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["dataset"] == dataset and r["model"] == model]

    out = {}
    for model in (m for m in baselines if of(name, "logloss") and of(m, "logloss")):
        out[model] = {
            key: difference(of(name, key), of(model, key), lower_is_better=key == "logloss")
            for key in ("logloss", "auc")
        }
        out[model]["mflops"] = of(model, "mflops")[0] if of(model, "mflops") else None
    return out


def bench_space(args: argparse.Namespace) -> SearchSpace:
    """The searched space: --space at --embedding-dim."""
    from nasrec.space.space import get_space

    return get_space(args.space).at_embedding_dim(args.embedding_dim)


def space_tag(args: argparse.Namespace) -> str:
    """The space's part of the work folders' and latency tables' names (with its embedding dim when set)."""
    return args.space + (f"-e{args.embedding_dim}" if args.embedding_dim is not None else "")


def latency_settings(args: argparse.Namespace, dataset: str, cache: Path, mflops_budget: bool) -> dict[str, dict]:
    """The latency table's and cap's settings for the supernet and the search (empty without --latency-dir)."""
    if args.latency_dir is None:
        return {"supernet": {}, "search": {}}
    from nasrec.export.latency_table import profile_table

    table = args.latency_dir / f"{dataset}-{space_tag(args).replace('+', 'plus')}.json"
    c = open_cache(cache)
    t0 = time.perf_counter()
    sizes = tuple(c.table_sizes)  # with the served models' layer norms; resumes a profile, or reuses a finished one
    profile_table(bench_space(args), len(c.dense_fields), sizes, table, layernorm=args.nasrec_layernorm)
    print(json.dumps({"latency_table": str(table), "seconds": round(time.perf_counter() - t0)}), flush=True)
    common = {"latency_table": str(table)}
    cap = parse_latency_cap(args.max_latency_ms)
    if isinstance(cap, str):  # a zoo model: timed once, for both stages, and kept for a resumed run
        from nasrec.export.latency_caps import zoo_latency_ms

        kept = args.work / f"latency-cap-{dataset}-{cap}.json"
        if kept.exists():
            cap = json.loads(kept.read_text())["ms"]
        else:
            cap = zoo_latency_ms(cap, cache, "onnxruntime", 1, 1)
            args.work.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({"ms": cap}))
        print(json.dumps({"latency_cap": args.max_latency_ms, "ms": cap}), flush=True)
    search = dict(common, **({"max_latency_ms": cap} if cap is not None else {}))
    supernet = dict(common)
    if args.supernet_budget and cap is not None:  # paths priced as the served models: with their layer norms
        supernet.update(path_max_latency_ms=cap, path_count_layernorm=args.nasrec_layernorm)
    return {"supernet": supernet if len(supernet) > 1 or mflops_budget else {}, "search": search}


def measured_latency(args: argparse.Namespace, cache: Path, final: Architecture, latency: dict) -> dict:
    """The final architecture's serving latency predicted and measured after export (and a named cap's model's)."""
    if args.latency_dir is None:
        return {}
    from nasrec.export.latency import measure_model_latency
    from nasrec.export.latency_caps import zoo_latency_ms
    from nasrec.latency.model import load_latency_model
    from nasrec.model.subnet import Subnet

    c = open_cache(cache)
    num_dense, sizes = len(c.dense_fields), tuple(c.table_sizes)
    model = Subnet(final, num_dense, sizes, layernorm=args.nasrec_layernorm)
    path, space = latency["search"]["latency_table"], bench_space(args)
    table = load_latency_model(path, space, num_dense, len(sizes), layernorm=args.nasrec_layernorm)
    out = {
        "final_latency_ms_measured": measure_model_latency(model, num_dense, sizes)["results"][0]["p50_ms"],
        "final_latency_ms_predicted": round(table.predict(final), 5),
    }
    cap = parse_latency_cap(args.max_latency_ms)
    if isinstance(cap, str):
        out[f"{cap}_latency_ms_measured"] = zoo_latency_ms(cap, cache, "onnxruntime", 1, 1)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
