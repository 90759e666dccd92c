"""The pipeline: prepare, supernet, search (with top-k retraining), final training, baselines, report.

Each stage works in its own folder of the run directory and is recorded in `stages.json` with a
fingerprint of everything it depends on (its configuration section, the seed, and the fingerprints of
the stages it reads from). Re-running skips a stage whose record is complete with the same fingerprint;
a stage started with the same fingerprint but not finished resumes (each stage's own resume: training
checkpoints, the search state); a stage whose inputs changed starts over, and so do the stages after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from nasrec import __version__, rundir
from nasrec.console import progress_enabled
from nasrec.errors import NasrecError
from nasrec.rundir import BASELINES_DIR, FINAL_DIR, SEARCH_DIR, SUPERNET_DIR, RunMetrics, StageRecord

log = logging.getLogger(__name__)
TUNE_DIR = "tune"

STAGES = ("prepare", "supernet", "search", "tune", "final", "baselines", "report")


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _metrics(r: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return f"{x:.5f}" if isinstance(x, int | float) else "n/a"

    return f"test log loss {f(r.get('logloss'))}, AUC {f(r.get('auc'))}"


def _brief(stage: str, r: dict[str, Any]) -> str:
    """What a finished stage found, in a few words for its log line."""
    try:
        if stage == "prepare":
            skipped = f", {r['skipped']:,} bad rows skipped" if r.get("skipped") else ""
            return f"{sum(r['rows'].values()):,} rows{skipped}"
        if stage == "supernet":
            m = RunMetrics.from_dict(r)
            return f"{m.steps:,} steps, validation log loss {m.split('val').logloss:.5f} (mean over sampled paths)"
        if stage == "search":
            chosen = (r.get("final") or {}).get("chosen") or {}
            return f"{r['scored']:,} candidates scored; final.json is {chosen.get('hash', '?')[:12]}"
        if stage == "tune":
            b = r["budget"]
            if not b["trials"]:
                return "off (tune.trials is 0): every model trains with its untuned recipe"
            done = ", ".join(f"{m} {v['complete']}/{v['trials']}" for m, v in r["models"].items())
            return f"each model {b['trials']} trials, timeout {b['timeout'] or 'none'}; complete: {done}"
        if stage == "final":
            return f"{_metrics(r)}, {r['mflops']:.4f} MFLOPs"
        if stage == "baselines":
            return "; ".join(f"{m} {_metrics(v)}" for m, v in r.items())
        if stage == "report":
            return str(r.get("html", ""))
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    return ""


class Pipeline:
    """One pipeline run in `out` (see module docstring)."""

    def __init__(self, cfg: dict[str, Any], out: str | Path, progress: bool | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress_enabled(progress)
        self.cache = self.out / "data" / "cache"
        self.records: dict[str, Any] = {}

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _save(self) -> None:
        rundir.atomic_write_json(self.out / rundir.STAGES_JSON, self.records, default=str)

    def _say(self, msg: str) -> None:
        log.info("%s", msg)  # the command line shows it on stderr and in <out>/nasrec.log

    def _stage(self, name: str, fp: str, dirs: list[Path], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        rec = StageRecord.from_dict(self.records[name]) if name in self.records else None
        n = STAGES.index(name) + 1
        if rec and rec.fingerprint == fp and rec.done:
            self._say(f"[{n}/{len(STAGES)}] {name}: complete, skipped")
            return rec.result
        if rec and rec.fingerprint != fp:
            for d in dirs:  # its inputs changed: start over
                shutil.rmtree(d, ignore_errors=True)
        resumed = rec is not None and rec.fingerprint == fp
        self._say(f"[{n}/{len(STAGES)}] {name}: {'resuming' if resumed else 'running'}")
        self.records[name] = StageRecord(fp, done=False).to_dict()
        self._save()
        t0 = time.perf_counter()
        result = json.loads(json.dumps(fn(), default=str))  # the same value whether fresh or read back
        done = StageRecord(fp, done=True, seconds=time.perf_counter() - t0, result=result)
        self.records[name] = done.to_dict()
        self._save()
        from nasrec.console import duration

        said = _brief(name, result)
        self._say(
            f"[{n}/{len(STAGES)}] {name}: done in {duration(done.seconds or 0.0)}" + (f": {said}" if said else "")
        )
        return result

    # -- stages --------------------------------------------------------------------------------------
    def _prepare(self) -> dict[str, Any]:
        from nasrec.data.cache import open_cache
        from nasrec.data.prepare import PrepareConfig, prepare

        d = self.cfg["data"]
        inputs, fmt = list(d["input"]), d["format"]
        if fmt == "synthetic":
            from nasrec.data.synthetic import SYNTH_PRESETS, generate_synthetic

            s = d["synthetic"]
            raw = self.out / "data" / "synthetic.tsv"
            raw.parent.mkdir(parents=True, exist_ok=True)
            generate_synthetic(raw, rows=s["rows"], seed=s["seed"], config=SYNTH_PRESETS[s["preset"]])
            inputs, fmt = [str(raw)], "criteo"
        res = prepare(
            PrepareConfig(
                inputs=tuple(inputs), out=str(self.cache), format=fmt, schema=d["schema"], force=True, **d["prepare"]
            )
        )
        meta = open_cache(self.cache).meta
        return {"rows": res.rows, "ctr": res.ctr, "skipped": res.skipped, "bayes_logloss": meta.get("bayes_logloss")}

    def _train_overrides(self, section: dict[str, Any]) -> dict[str, Any]:
        """The section's `set` with the run's seed and, for early stopping, one evaluation per epoch."""
        from nasrec.data.cache import open_cache
        from nasrec.train.config import preset

        o = {"seed": self.cfg["seed"], **section["set"]}  # `set` may name its own seed
        cfg = preset(section["preset"], **o)
        if (cfg.restore_best or cfg.early_stop_metric) and "eval_every" not in section["set"]:
            o["eval_every"] = max(1, len(open_cache(self.cache).split_index("train")) // cfg.batch_size)
        return o

    def _served_layernorm(self) -> bool:
        """Whether the final model has layer norms: every MFLOPs count of the run (caps, search, report) says so."""
        from nasrec.train.config import preset

        return preset(self.cfg["final"]["preset"], **self.cfg["final"]["set"]).layernorm

    def _counted(self, section: str, key: str, given: dict[str, Any]) -> dict[str, Any]:
        """`given` with `key` (how caps count MFLOPs) set to the final model's layer norms; another value is refused."""
        ln = self._served_layernorm()
        if given.get(key, ln) != ln:
            raise NasrecError(
                f"config {section}.set.{key}: the final recipe trains models with layernorm={ln}, and "
                f"caps count the model that will be served; drop {key}"
            )
        return {**given, key: ln}

    def _supernet(self) -> dict[str, Any]:
        from nasrec.train.api import train_supernet

        sn = self.cfg["supernet"]
        o = {"seed": self.cfg["seed"], **sn["set"]}
        if o.get("path_max_mflops") is not None or o.get("path_max_latency_ms") is not None:
            o = self._counted("supernet", "path_count_layernorm", o)
        if o.get("path_max_latency_ms") is not None:  # a zoo model's name: its latency timed here
            from nasrec.export.latency_caps import supernet_latency_cap

            o = supernet_latency_cap(o, self.cache, self.out / SUPERNET_DIR, resume=True)
        return train_supernet(
            self.cache,
            self.out / SUPERNET_DIR,
            space=sn["space"],
            embedding_dim=sn["embedding_dim"],
            preset_name=sn["preset"],
            overrides=o,
            resume=True,
            progress=self.progress,
        )

    def _search(self) -> dict[str, Any]:
        from nasrec.search.api import search
        from nasrec.search.retrain import Halving

        s = self.cfg["search"]
        retrain = {"seed": self.cfg["seed"], **s["retrain_set"]}
        o = self._counted("search", "count_layernorm", {"seed": self.cfg["seed"], **s["set"]})
        if s["seed_archs"]:  # known good models open the population (search.set: {keep_seed_archs: true} keeps them)
            from nasrec.space.arch import Architecture

            o["seed_archs"] = [Architecture.load(f).to_dict() for f in s["seed_archs"]]
        res = search(
            self.out / SUPERNET_DIR,
            self.cache,
            self.out / SEARCH_DIR,
            preset=s["preset"],
            overrides=o,
            workers=s["workers"],
            retrain=True,
            train_overrides=retrain,
            retrain_seeds=s["retrain_seeds"],
            halving=None if s["halving"] is None else Halving(**s["halving"]),
            resume=True,
            progress=self.progress,
            time_budget=s["time_budget"],
        )
        return {k: res[k] for k in ("scored", "seconds", "candidates_per_minute", "best", "pareto", "final")}

    def _repeat(self, out: Path, overrides: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        """`train(**job)` with the recipe's seed in `out` and, for `final.seeds` > 1, the next seeds in
        `out/seed-<s>`; `final.workers` of them at a time, each in its own process.

        Returns the first seed's metrics with `seeds`: each seed's test log loss and AUC.
        """
        first = overrides["seed"]
        seeds = list(range(first, first + self.cfg["final"]["seeds"]))
        runs = [
            dict(job, data=self.cache, out=out if s == first else out / f"seed-{s}", overrides={**overrides, "seed": s})
            for s in seeds
        ]
        workers = min(self.cfg["final"]["workers"], len(runs))
        if workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)  # the cores shared out, unless the recipe says
            for r in runs:
                r["overrides"] = {"threads": threads, **r["overrides"]}
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(_train_run, runs))
        else:
            results = [_train_run({**r, "progress": self.progress}) for r in runs]
        per = {str(s): {k: m.get(k) for k in ("logloss", "auc")} for s, m in zip(seeds, results, strict=True)}
        return {**results[0], "seeds": per}

    def _contenders(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(run folder, model or arch, the settings it trains with under the final recipe): searched model first.

        The folder is relative to the run directory for training and to `tune/` for tuning.
        """
        f, b = self.cfg["final"], self.cfg["baselines"]
        runs = [(FINAL_DIR, {"arch": self.out / SEARCH_DIR / rundir.FINAL_JSON}, f["set"])]
        if b.get("recipe") == "default":  # each zoo baseline's own recipe, not the final one
            runs += [(f"{BASELINES_DIR}/{m}", {"model": m, "recipe": "default"}, dict(b["set"])) for m in b["models"]]
        else:
            runs += [(f"{BASELINES_DIR}/{m}", {"model": m}, {**f["set"], **b["set"]}) for m in b["models"]]
        runs += [(f"{BASELINES_DIR}/{Path(p).stem}", {"arch": p}, {**f["set"], **b["set"]}) for p in b["published"]]
        return runs

    def _tune(self) -> dict[str, Any]:
        """Every contender tuned with the same budget (`tune.trials`, `tune.timeout`) from its base settings."""
        from nasrec.tune.api import tune

        t, f = self.cfg["tune"], self.cfg["final"]
        budget = {k: t[k] for k in ("trials", "timeout", "workers", "metric")}
        base = {"baselines_recipe": self.cfg["baselines"].get("recipe")}  # what the report says they started from
        if not t["trials"]:
            return {"budget": budget, "models": {}, **base}
        out: dict[str, Any] = {}
        for rel, what, settings in self._contenders():
            res = tune(
                self.cache,
                self.out / TUNE_DIR / rel,
                **what,
                preset_name=None if "recipe" in what else f["preset"],
                overrides={"seed": self.cfg["seed"], **settings, **t["set"]},
                trials=t["trials"],
                timeout=t["timeout"],
                workers=t["workers"],
                seed=self.cfg["seed"],
                metric=t["metric"],
            )
            out[Path(rel).name] = {k: res.get(k) for k in ("trials", "complete", "pruned", "seconds", "best", "recipe")}
        return {"budget": budget, "models": out, **base}

    def _fit(self, rel: str, what: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
        """Train one contender over `final.seeds`: with its tuned recipe when the tune stage made one."""
        from nasrec.train.recipe import read_recipe
        from nasrec.tune.api import BEST_RECIPE

        out = self.out / rel
        tuned = self.out / TUNE_DIR / rel / BEST_RECIPE
        if self.cfg["tune"]["trials"] and tuned.is_file():
            recipe = read_recipe(tuned)  # every setting; only the seed is the pipeline's
            return self._repeat(out, {"seed": self.cfg["seed"]}, {**what, "recipe": recipe})
        if self.cfg["tune"]["trials"]:
            log.warning("%s: no tuning trial completed, so it trains with the untuned recipe", rel)
        if "recipe" in what:  # a zoo baseline's default recipe, baselines.set over it
            return self._repeat(out, {"seed": self.cfg["seed"], **settings}, dict(what))
        preset_name = self.cfg["final"]["preset"]
        return self._repeat(
            out,
            self._train_overrides({"preset": preset_name, "set": settings}),
            {**what, "preset_name": preset_name},
        )

    def _final(self) -> dict[str, Any]:
        return self._fit(*self._contenders()[0])

    def _baselines(self) -> dict[str, Any]:
        return {Path(rel).name: self._fit(rel, what, settings) for rel, what, settings in self._contenders()[1:]}

    def _report(self) -> dict[str, Any]:
        from nasrec.report import write_report

        self._measure_latency()
        return {k: str(v) for k, v in write_report(self.out).items()}

    def _measure_latency(self) -> None:
        """With a latency table in the search settings: each final model's serving latency, measured after export.

        A model whose metrics.json is unchanged since the last measurement, at the same setting on the same
        machine, keeps its figure: the report stage runs on every rerun, and timing again gives another number.
        """
        from nasrec.export.latency import measure_run_latency
        from nasrec.machine import machine_identity

        s = self.cfg["search"]["set"]
        if not s.get("latency_table"):
            return
        setting = {
            "runtime": s.get("latency_runtime", "onnxruntime"),
            "batches": [int(s.get("latency_batch", 1))],
            "threads": [int(s.get("latency_threads", 1))],
        }
        record = {"machine": machine_identity(), **setting}
        before = rundir.read_json(self.out / rundir.LATENCY_JSON) or {}
        kept = before.get("models", {}) if {k: before.get(k) for k in record} == record else {}
        folders = [("searched (final)", self.out / FINAL_DIR)]
        folders += [(d.name, d) for d in sorted((self.out / BASELINES_DIR).glob("*")) if d.is_dir()]
        models = {}
        for name, folder in folders:
            metrics = folder / rundir.METRICS_JSON
            if not metrics.exists():
                continue
            stamp = metrics.stat().st_mtime_ns
            if kept.get(name, {}).get("metrics_mtime_ns") == stamp:
                models[name] = kept[name]
                continue
            r = measure_run_latency(folder, **setting)["results"][0]
            models[name] = {**{k: r[k] for k in ("p50_ms", "p99_ms", "mean_ms")}, "metrics_mtime_ns": stamp}
            log.info("%s: serving latency %.4f ms (p50, measured)", name, r["p50_ms"])
        rundir.atomic_write_json(self.out / rundir.LATENCY_JSON, {**record, "models": models})

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) every stage; returns the stage records."""
        with rundir.exclusive(self.out, "pipeline run"):  # one writer per run directory
            return self._run()

    def _run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.records = rundir.read_json(self.out / rundir.STAGES_JSON) or self.records
        rundir.atomic_write_json(self.out / rundir.PIPELINE_JSON, self.cfg, default=str)
        c, seed = self.cfg, self.cfg["seed"]
        files = [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in c["data"]["input"]]
        if c["data"]["schema"]:
            files.append((c["data"]["schema"], Path(c["data"]["schema"]).stat().st_mtime_ns))
        fp = {"prepare": _fingerprint(c["data"], files)}  # a changed input file invalidates the cache
        # How MFLOPs are counted follows the final recipe's layer norms, so a change re-runs what counted them.
        # Counting without them (as before the count followed the recipe) keeps the earlier fingerprints.
        ln = [{"served_layernorm": True}] if self._served_layernorm() else []
        capped = any(c["supernet"]["set"].get(k) is not None for k in ("path_max_mflops", "path_max_latency_ms"))
        fp["supernet"] = _fingerprint(fp["prepare"], c["supernet"], seed, *(ln if capped else []))
        search_cfg = {k: v for k, v in c["search"].items() if not (k == "time_budget" and v is None)}
        fp["search"] = _fingerprint(fp["supernet"], search_cfg, seed, *ln)
        tuned = [c["tune"]] if c["tune"]["trials"] else []  # untuned runs keep their earlier fingerprints
        fp["tune"] = _fingerprint(fp["search"], c["baselines"], c["final"], c["tune"], seed)
        fp["final"] = _fingerprint(fp["search"], c["final"], seed, *([fp["tune"]] if tuned else []))
        fp["baselines"] = _fingerprint(
            fp["prepare"], c["baselines"], c["final"], seed, *([fp["tune"]] if tuned else [])
        )
        fp["report"] = _fingerprint(fp["final"], fp["baselines"], time.time())  # always rewritten
        o = self.out
        self._stage("prepare", fp["prepare"], [o / "data"], self._prepare)
        self._stage("supernet", fp["supernet"], [o / SUPERNET_DIR], self._supernet)
        self._stage("search", fp["search"], [o / SEARCH_DIR], self._search)
        self._stage("tune", fp["tune"], [o / TUNE_DIR], self._tune)
        self._stage("final", fp["final"], [o / FINAL_DIR], self._final)
        self._stage("baselines", fp["baselines"], [o / BASELINES_DIR], self._baselines)
        self._stage("report", fp["report"], [], self._report)
        return self.records


def run_pipeline(config: dict[str, Any], out: str | Path | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run a resolved pipeline configuration (see `nasrec.pipeline.config`) into `out` (or its `out`)."""
    target = out or config.get("out")
    if not target:
        raise NasrecError("the pipeline needs an output directory (config key `out` or --out)")
    return Pipeline(config, target, progress).run()


def _train_run(job: dict[str, Any]) -> dict[str, Any]:
    """One training run of the pipeline (resumed where it stopped), in this process or a worker's."""
    from nasrec.train.api import train

    job = dict(job)
    return train(job.pop("data"), job.pop("out"), resume=True, progress=job.pop("progress", False), **job)
