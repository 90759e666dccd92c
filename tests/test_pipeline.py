"""`nasrec run` / `demo` / `report`: the pipeline end to end on a tiny configuration."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.pipeline.config import DEMO, load_config, resolve_config
from nasrec.pipeline.runner import run_pipeline
from nasrec.report import write_report
from nasrec.train.recipe import default_recipe

TINY = {
    "seed": 1,
    "data": {
        "format": "synthetic",
        "synthetic": {"rows": 3000, "preset": "interactions", "seed": 0},
        "prepare": {"split": "random", "encoding": "vocab", "min_count": 2},
    },
    "supernet": {
        "space": "small",
        "preset": "cpu-supernet",
        "set": {
            "max_steps": 8,
            "batch_size": 256,
            "path_warmup_steps": 4,
            "threads": 1,
            "log_every": 2,
            "supernet_eval_archs": 2,
            "head_calib_batches": 2,
        },
    },
    "search": {
        "preset": "cpu-quick",
        "workers": 1,
        "set": {
            "population": 4,
            "sample": 2,
            "children": 2,
            "generations": 2,
            "top_k": 2,
            "finetune_steps": 2,
            "warmup_steps": 1,
            "val_batches": 1,
            "val_batch_size": 256,
            "calib_batches": 2,
        },
        "retrain_set": {"max_steps": 4, "batch_size": 256, "threads": 1, "head_calib_batches": 2},
    },
    "final": {
        "preset": "cpu-quick",
        "set": {"max_steps": 6, "batch_size": 256, "threads": 1, "restore_best": True, "head_calib_batches": 2},
    },
    "baselines": {"models": ["lr"], "published": []},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "run"
    run_pipeline(resolve_config(TINY), out, progress=False)
    return out


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_reports(tiny_run: Path) -> None:
    records = json.loads((tiny_run / "stages.json").read_text())
    assert list(records) == ["prepare", "supernet", "search", "tune", "final", "baselines", "report"]
    assert all(r["done"] for r in records.values())
    final = json.loads((tiny_run / "final" / "metrics.json").read_text())
    chosen = json.loads((tiny_run / "search" / "final.json").read_text())
    assert json.loads((tiny_run / "final" / "model.json").read_text())["arch"] == chosen
    assert final["steps"] == 6 and final["weights"] == "best"
    assert records["baselines"]["result"]["lr"]["logloss"] > 0
    md = (tiny_run / "report" / "report.md").read_text()
    for section in (
        "## Data",
        "## Search",
        "## Final comparison",
        "## Supernet training",
        "## Search trajectory",
        "## Pareto fronts",
        "## Final architecture",
        "searched (final)",
        "| lr |",
        "Bayes-optimal",
        "No model was tuned",
    ):
        assert section in md, section
    page = (tiny_run / "report" / "report.html").read_text()
    # three plots, and the architecture: Graphviz's SVG inline, else a matplotlib PNG
    pngs = 3 if shutil.which("dot") else 4
    assert page.count("data:image/png;base64,") == pngs and "<table>" in page


@pytest.mark.slow
def test_rerun_skips_complete_stages_and_redoes_changed_ones(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "stages.json").read_text())
    ck = {d: (run / d / "checkpoint.pt").stat().st_mtime_ns for d in ("supernet", "final")}
    after = run_pipeline(resolve_config(TINY), run, progress=False)
    for name in ("prepare", "supernet", "search", "final", "baselines"):
        assert after[name] == before[name], name
    assert (run / "supernet" / "checkpoint.pt").stat().st_mtime_ns == ck["supernet"]
    # a changed final recipe re-trains the final model only
    changed = json.loads(json.dumps(TINY))
    changed["final"]["set"]["max_steps"] = 7
    again = run_pipeline(resolve_config(changed), run, progress=False)
    assert again["final"]["result"]["steps"] == 7
    assert again["search"] == before["search"] and again["supernet"] == before["supernet"]
    assert (run / "supernet" / "checkpoint.pt").stat().st_mtime_ns == ck["supernet"]
    assert again["baselines"]["fingerprint"] != before["baselines"]["fingerprint"]  # same recipe as the final


def _rerun_baselines(tiny_run: Path, run: Path, baselines: dict) -> tuple[dict, dict]:
    """A copy of the tiny run re-run with another `baselines` section: (stage records before, after)."""
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "stages.json").read_text())
    changed = {**json.loads(json.dumps(TINY)), "baselines": baselines}
    return before, run_pipeline(resolve_config(changed), run, progress=False)


@pytest.mark.slow
def test_baselines_take_their_own_overrides_on_the_final_recipe(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    before, after = _rerun_baselines(tiny_run, run, {**TINY["baselines"], "set": {"max_steps": 3, "lr": 0.07}})
    assert after["final"] == before["final"]  # the searched model keeps the final recipe
    cfg = json.loads((run / "baselines" / "lr" / "config.json").read_text())["train"]
    assert (cfg["max_steps"], cfg["lr"], cfg["batch_size"]) == (3, 0.07, 256)  # the rest from `final`
    assert after["baselines"]["result"]["lr"]["steps"] == 3


@pytest.mark.slow
def test_baselines_with_their_default_recipes(tiny_run: Path, tmp_path: Path) -> None:
    """`baselines.recipe: default`: each zoo baseline trains with its own recipe, `baselines.set` over it."""
    run = tmp_path / "run"
    baselines = {"models": ["lr"], "recipe": "default", "set": {"max_steps": 3, "threads": 1}}
    before, after = _rerun_baselines(tiny_run, run, baselines)
    assert after["final"] == before["final"]  # the searched model keeps the final recipe
    saved = json.loads((run / "baselines" / "lr" / "config.json").read_text())["train"]
    recipe = default_recipe("lr").train
    assert (saved["optimizer"], saved["lr"], saved["batch_size"]) == (
        recipe["optimizer"],
        recipe["lr"],
        recipe["batch_size"],
    )
    assert saved["max_steps"] == 3 and after["baselines"]["result"]["lr"]["steps"] == 3
    assert after["baselines"]["fingerprint"] != before["baselines"]["fingerprint"]
    assert "the zoo baselines with their own default recipes" in (run / "report" / "report.md").read_text()
    with pytest.raises(ConfigError, match=r"baselines\.recipe"):
        resolve_config({**json.loads(json.dumps(TINY)), "baselines": {"models": ["lr"], "recipe": "tuned"}})


@pytest.mark.slow
def test_tune_gives_the_searched_model_and_every_baseline_the_same_budget(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from nasrec.train.recipe import read_recipe

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "stages.json").read_text())
    changed = json.loads(json.dumps(TINY))
    changed["tune"] = {"trials": 2, "set": {"max_steps": 4}}
    after = run_pipeline(resolve_config(changed), run, progress=False)
    assert after["search"] == before["search"]  # tuning comes after the search
    tuned = after["tune"]["result"]
    assert tuned["budget"]["trials"] == 2 and set(tuned["models"]) == {"final", "lr"}
    for name, folder in (("final", run / "final"), ("lr", run / "baselines" / "lr")):
        assert tuned["models"][name]["trials"] == 2
        best = read_recipe(run / "tune" / folder.relative_to(run) / "best_recipe.yaml")
        cfg = json.loads((folder / "config.json").read_text())["train"]
        for k, v in best.train.items():  # the best trial's recipe, with the pipeline's seed
            assert cfg[k] == (TINY["seed"] if k == "seed" else v), (name, k)
    md = (run / "report" / "report.md").read_text()
    assert "## Tuning" in md and "same budget: 2 trials" in md and "| lr | " in md


@pytest.mark.slow
def test_final_seeds_train_every_model_again_and_the_report_compares_them(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "stages.json").read_text())
    changed = json.loads(json.dumps(TINY))
    changed["final"]["seeds"] = 2
    after = run_pipeline(resolve_config(changed), run, progress=False)
    assert after["search"] == before["search"]  # only the trained models are redone
    results = after["final"]["result"], after["baselines"]["result"]["lr"]
    for res, folder in zip(results, (run / "final", run / "baselines" / "lr"), strict=True):
        assert sorted(res["seeds"]) == ["1", "2"]  # the run's seed 1, then 2
        second = json.loads((folder / "seed-2" / "metrics.json").read_text())
        assert json.loads((folder / "seed-2" / "config.json").read_text())["train"]["seed"] == 2
        assert res["seeds"]["2"]["logloss"] == second["logloss"] and res["seeds"]["1"]["logloss"] == res["logloss"]
        assert second["logloss"] != res["logloss"]
    lls = [s["logloss"] for s in after["final"]["result"]["seeds"].values()]
    md = (run / "report" / "report.md").read_text()
    assert f"{sum(lls) / 2:.4f} ± " in md and "(2 seeds)" in md
    assert "## Goal check" in md and "Best baseline by mean test log loss: lr" in md
    assert "test rows (the recipe's seed of each), searched minus lr: log loss " in md and "(DeLong's test)" in md
    assert "searched minus model" in md


@pytest.mark.slow
def test_final_workers_train_the_seeds_in_parallel_to_the_same_results(tiny_run: Path, tmp_path: Path) -> None:
    """`final.workers: 2`: the seeds' runs in two processes at once give what one process gives."""
    results = {}
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        shutil.copytree(tiny_run, run)
        changed = json.loads(json.dumps(TINY))
        changed["final"].update(seeds=3, workers=workers)
        after = run_pipeline(resolve_config(changed), run, progress=False)
        results[workers] = after["final"]["result"]["seeds"], after["baselines"]["result"]["lr"]["seeds"]
        assert json.loads((run / "final" / "seed-3" / "config.json").read_text())["train"]["seed"] == 3
    assert results[1] == results[2]
    assert len({v["logloss"] for v in results[2][0].values()}) == 3


def test_report_checks_the_goal_against_the_best_and_the_costlier_baselines(tmp_path: Path) -> None:
    def model(folder: Path, kind: str, mflops: float, lls: list[float]) -> None:
        for i, ll in enumerate(lls):
            d = folder if i == 0 else folder / f"seed-{i}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"logloss": ll, "auc": 0.7, "mflops": mflops, "params": 10}))
            (d / "model.json").write_text(json.dumps({"kind": kind}))

    model(tmp_path / "final", "nasrec", 4.0, [0.300, 0.302, 0.301])
    model(tmp_path / "baselines" / "lr", "zoo", 1e-5, [0.320, 0.321, 0.322])  # cheap and worse
    model(tmp_path / "baselines" / "tiny", "zoo", 0.5, [0.280, 0.281, 0.282])  # cheap and better: the best
    model(tmp_path / "baselines" / "big", "zoo", 20.0, [0.300, 0.303, 0.300])  # costlier and level
    md = write_report(tmp_path)["markdown"].read_text()
    assert "| searched (final) | 0.3010 ± 0.0010 (3 seeds) |" in md
    assert "| lr | 0.3210 ± 0.0010 (3 seeds) |" in md and "-0.0200 [" in md and "] better |" in md
    assert "Best baseline by mean test log loss: tiny (0.5 MFLOPs)" in md and "(more)" in md
    assert "at no more MFLOPs): **not met**" in md
    assert "with at least its MFLOPs the best is big (20 MFLOPs)" in md and "**within noise** against it" in md


@pytest.mark.slow
def test_interrupted_stage_resumes(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    records = json.loads((run / "stages.json").read_text())
    # as if killed inside the search: its record open, the result not yet written
    records["search"]["done"] = False
    for name in ("final", "baselines", "report"):
        del records[name]
    (run / "stages.json").write_text(json.dumps(records))
    for f in ("result.json", "final.json", "final_metrics.json"):
        (run / "search" / f).unlink()
    shutil.rmtree(run / "final")
    out = run_pipeline(resolve_config(TINY), run, progress=False)
    ref = json.loads((tiny_run / "stages.json").read_text())
    assert out["search"]["result"]["best"] == ref["search"]["result"]["best"]
    assert out["final"]["result"]["logloss"] == ref["final"]["result"]["logloss"]


@pytest.mark.slow
def test_config_errors_name_the_key_before_any_work(tmp_path: Path) -> None:
    def err(cfg: dict, match: str) -> None:
        with pytest.raises(NasrecError, match=match):
            resolve_config(cfg, tmp_path)

    err({"data": {"format": "synthetic"}, "serach": {}}, r"config serach: unknown key")
    err({"data": {"format": "synthetic"}, "search": {"set": {"populaton": 3}}}, r"config search\.set\.populaton")
    err({"data": {"format": "synthetic"}, "final": {"set": {"lr": -1}}}, r"config final\.set\.lr")
    err(
        {"data": {"format": "synthetic"}, "seed": "x"},
        r"config seed: expected an integer >= 0 and <= 4294967295, got 'x'",
    )
    err({"data": {"format": "criteo", "input": ["nope.tsv"]}}, r"config data\.input\[0\]: .*nope\.tsv: no such file")
    err({"data": {"format": "csv"}}, r"config data\.format: expected one of criteo, .*, got 'csv'")
    err({"data": {"format": "synthetic"}, "supernet": {"space": "huge"}}, r"config supernet\.space")
    err({"data": {"format": "synthetic"}, "baselines": {"models": ["dlrm", "gbdt"]}}, r"baselines\.models\[1\]")
    err({"data": {"format": "synthetic"}, "search": {"workers": 0}}, r"config search\.workers")
    err(
        {"data": {"format": "synthetic"}, "search": {"retrain_seeds": 0}},
        r"search\.retrain_seeds: expected an integer >= 1, got 0",
    )
    err(
        {"data": {"format": "synthetic"}, "final": {"seeds": 0}},
        r"config final\.seeds: expected an integer >= 1, got 0",
    )
    err(
        {"data": {"format": "synthetic"}, "final": {"seeds": "3"}},
        r"config final\.seeds: expected an integer >= 1, got '3'",
    )
    err({"data": {"format": "synthetic", "prepare": {"splt": "random"}}}, r"config data\.prepare\.splt")
    err({"data": {"format": "synthetic"}, "baselines": {"set": {"lr": 0}}}, r"config baselines\.set\.lr")
    err({"data": {"format": "synthetic"}, "tune": {"trials": -1}}, r"config tune\.trials: expected an integer >= 0")
    err({"data": {"format": "synthetic"}, "tune": {"metric": "acc"}}, r"config tune\.metric: expected one of")
    err({"data": {"format": "synthetic"}, "tune": {"timeout": "soon"}}, r"config tune\.timeout: time budget 'soon'")
    err({"data": {"format": "synthetic"}, "tune": {"set": {"lr": 0}}}, r"config tune\.set\.lr")
    err({"data": {"format": "synthetic"}, "tune": {"trails": 3}}, r"config tune\.trails: unknown key")
    # a cap may name a zoo model (resolved on the data later), not anything else
    err(
        {"data": {"format": "synthetic"}, "search": {"set": {"max_mflops": "dcnv3"}}},
        r"search\.set\.max_mflops: 'dcnv3' is neither a number nor a zoo model \(lr, fm",
    )
    err({"data": {"format": "synthetic"}, "supernet": {"set": {"path_max_mflops": "x"}}}, r"supernet\.set\.path_max")
    err(
        {"data": {"format": "synthetic"}, "search": {"set": {"max_params": "-5"}}},
        r"search\.set\.max_params: expected an integer >= 1 or null, got -5",
    )
    named = {
        "data": {"format": "synthetic"},
        "supernet": {"set": {"path_max_mflops": "dcnv2"}},
        "search": {"set": {"max_mflops": "DCNv2", "max_params": "dlrm"}},
    }
    assert resolve_config(named, tmp_path)["search"]["set"]["max_mflops"] == "DCNv2"
    # the CLI reports it and creates nothing
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"out": str(tmp_path / "never"), "data": {"format": "synthetic"}, "final": {"sett": {}}})
    )
    proc = subprocess.run([sys.executable, "-m", "nasrec.cli", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "config final.sett: unknown key" in proc.stderr
    assert not (tmp_path / "never").exists()
    demo = [sys.executable, "-m", "nasrec.cli", "demo", "--seeds", "0", "--out", str(tmp_path / "never")]
    proc = subprocess.run(demo, capture_output=True, text=True)
    assert proc.returncode == 2 and "config final.seeds: expected an integer >= 1, got 0" in proc.stderr
    assert not (tmp_path / "never").exists()


def test_config_file_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "day0.tsv").write_text("0\t1\n")
    cfg_file = tmp_path / "d" / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"format": "criteo", "input": ["day0.tsv"]}}))
    cfg = load_config(cfg_file)
    assert cfg["data"]["input"] == [str((tmp_path / "d" / "day0.tsv").resolve())]
    assert resolve_config(DEMO)["baselines"]["models"] == ["lr", "dlrm", "deepfm", "dcnv2"]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_report_html_renders_in_a_headless_browser(tiny_run: Path, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed")
    page = tiny_run / "report" / "report.html"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<img") == (3 if shutil.which("dot") else 4) and "Final comparison" in dom
    assert "<strong>" in dom and "**" not in dom and "```" not in dom and "flowchart" not in dom
    # every image decoded: a script in the page would be needed for naturalWidth; check via screenshot size instead
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile2'}",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


@pytest.mark.slow
def test_caps_search_and_goal_check_count_the_served_model(tiny_run: Path, tmp_path: Path) -> None:
    """The final recipe (cpu-quick) has layer norms: the search's cap, its history and the report count them alike."""
    from nasrec.model.cost import ServedCost
    from nasrec.space.arch import Architecture
    from nasrec.zoo.registry import zoo_cost

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    capped = json.loads(json.dumps(TINY))
    capped["search"]["set"]["max_mflops"] = "dcnv2"  # its trained run reports this count too (test_search.py)
    records = run_pipeline(resolve_config(capped), run, progress=False)
    assert records["baselines"]["seconds"] == json.loads((tiny_run / "stages.json").read_text())["baselines"]["seconds"]
    saved = json.loads((run / "search" / "search.json").read_text())
    assert saved["search"]["count_layernorm"] is True
    meta = json.loads((run / "data" / "cache" / "meta.json").read_text())
    dcnv2 = zoo_cost("dcnv2", len(meta["dense_fields"]), tuple(meta["table_sizes"])).mflops
    assert saved["search"]["max_mflops"] == dcnv2
    served = ServedCost(len(meta["dense_fields"]), tuple(meta["table_sizes"]), True)
    for line in (run / "search" / "history.jsonl").read_text().splitlines():
        h = json.loads(line)
        assert h["mflops"] == served(Architecture.from_dict(h["arch"]))[0] <= dcnv2
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["mflops"] <= dcnv2 and records["final"]["done"]
    md = (run / "report" / "report.md").read_text()
    assert "MFLOPs); the searched model has" in md and "## Goal check" in md
    assert "The goal check compares the searched model with the baselines this run trained (" in md
    assert (
        "this run trained (lr) and no others: fm, dnn, dlrm, deepfm, dcnv2, autoint+, xdeepfm, wdl, ipnn, dcn, finalmlp were not trained"
        in md
    )
    assert "the searched one with the layer norms of its final recipe, as the search's caps counted it" in md
    # a count stated against the final recipe is refused, naming the key
    wrong = json.loads(json.dumps(capped))
    wrong["search"]["set"]["count_layernorm"] = False
    with pytest.raises(NasrecError, match=r"search\.set\.count_layernorm: the final recipe trains models with"):
        run_pipeline(resolve_config(wrong), tmp_path / "wrong", progress=False)


def test_baselines_all_is_the_whole_zoo(tmp_path: Path) -> None:
    from nasrec.zoo.registry import ZOO_MODELS

    for given in ("all", {"models": "all"}, {"models": "all", "set": {"lr": 0.1}}):
        cfg = resolve_config({"data": {"format": "synthetic"}, "baselines": given}, tmp_path)
        assert cfg["baselines"]["models"] == list(ZOO_MODELS)
    with pytest.raises(NasrecError, match=r"config baselines\.models: .*zoo model names \(or all\)"):
        resolve_config({"data": {"format": "synthetic"}, "baselines": {"models": "some"}}, tmp_path)
    with pytest.raises(NasrecError, match=r"config search\.time_budget: applies to the auto preset only"):
        resolve_config({"data": {"format": "synthetic"}, "search": {"time_budget": "5m"}}, tmp_path)
    with pytest.raises(NasrecError, match=r"config search\.time_budget: time budget 'soon'"):
        resolve_config({"data": {"format": "synthetic"}, "search": {"preset": "auto", "time_budget": "soon"}}, tmp_path)
    cfg = resolve_config({"data": {"format": "synthetic"}, "search": {"preset": "auto", "time_budget": "5m"}}, tmp_path)
    assert cfg["search"]["time_budget"] == "5m"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_command_line_sets_change_keys_and_take_paths_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nasrec run examples/frappe.yaml --set data.input=train.csv --set final.seeds=2`, checked as the file is."""
    from nasrec.cli.common import parse_sets

    (tmp_path / "train.csv").write_text(
        "label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\n"
    )
    monkeypatch.chdir(tmp_path)
    sets = parse_sets(["data.input=train.csv", "final.seeds=2", "search.set.max_mflops=0.3"], dotted=True)
    cfg = load_config(EXAMPLES / "frappe.yaml", sets)
    assert cfg["data"]["input"] == [str(tmp_path / "train.csv")]  # from where the command was typed
    assert cfg["data"]["schema"] == str(EXAMPLES / "frappe.schema.yaml")  # the file's own: from its folder
    assert cfg["final"]["seeds"] == 2 and cfg["search"]["set"]["max_mflops"] == 0.3
    assert cfg["final"]["set"]["optimizer"] == "adam"  # the rest as written
    assert cfg["search"]["retrain_set"] == cfg["final"]["set"]  # one recipe, given once (an x- anchor)
    assert cfg["search"]["halving"] == {"eta": 3, "min_steps": 150} and "x-recipe" not in cfg
    with pytest.raises(ConfigError, match=r"^config data\.input: format schema needs at least one input file$"):
        load_config(EXAMPLES / "frappe.yaml")
    with pytest.raises(ConfigError, match=r"config search\.set\.populaton: unknown key"):
        load_config(EXAMPLES / "frappe.yaml", {**sets, "search.set.populaton": 3})
    with pytest.raises(
        ConfigError, match=r"config baselines\.models: is .* not a mapping: cannot set baselines\.models\.x"
    ):
        load_config(EXAMPLES / "frappe.yaml", {**sets, "baselines.models.x": 1})


@pytest.mark.slow
def test_a_latency_budget_runs_through_the_pipeline_and_its_report(tiny_run: Path, tmp_path: Path) -> None:
    """search.set's latency table and cap: candidates within the cap, each final model timed after export."""
    from test_search_latency import fake_table

    from nasrec.latency.model import load_latency_model
    from nasrec.space.arch import Architecture
    from nasrec.space.space import get_space

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "data" / "cache" / "meta.json").read_text())
    shape = (len(meta["dense_fields"]), len(meta["table_sizes"]))
    space = get_space("small")
    # the served models of the final recipe (cpu-quick) have layer norms, and so must the table's
    table = fake_table(tmp_path / "table.json", space, *shape, layernorm=True)
    model = load_latency_model(table, space, *shape, layernorm=True)
    rng = np.random.default_rng(0)
    cap = float(np.median([model.predict(space.sample(rng, "uniform")) for _ in range(100)]))
    timed = json.loads(json.dumps(TINY))
    timed["search"]["set"].update(latency_table=str(table), max_latency_ms=cap)
    run_pipeline(resolve_config(timed), run, progress=False)
    for line in (run / "search" / "history.jsonl").read_text().splitlines():
        h = json.loads(line)
        assert h["latency_ms"] == pytest.approx(model.predict(Architecture.from_dict(h["arch"])), abs=1e-6)
        assert h["latency_ms"] <= cap
    measured = json.loads((run / "latency.json").read_text())
    assert set(measured["models"]) == {"searched (final)", "lr"}
    assert all(m["p50_ms"] > 0 for m in measured["models"].values()) and measured["machine"]["cpu"]
    md = (run / "report" / "report.md").read_text()
    assert "latency ms (measured)" in md and "predicted to serve in" in md
    assert (run / "report" / "pareto_latency.png").exists()
    # a rerun rewrites the report but keeps the figures of models that did not change
    run_pipeline(resolve_config(timed), run, progress=False)
    assert json.loads((run / "latency.json").read_text()) == measured


@pytest.mark.slow
def test_seed_archs_open_the_search_and_are_kept_for_retraining(tiny_run: Path, tmp_path: Path) -> None:
    """search.seed_archs (a file next to the config) opens the population; with keep_seed_archs it is retrained."""
    from nasrec.space.space import NASREC_SMALL

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    seed = NASREC_SMALL.sample(np.random.default_rng(123), "uniform")
    seed.save(tmp_path / "seed.json")
    changed = json.loads(json.dumps(TINY))
    changed["search"]["seed_archs"] = ["seed.json"]
    changed["search"]["set"]["keep_seed_archs"] = True
    run_pipeline(resolve_config(changed, tmp_path), run, progress=False)
    history = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    assert history[0]["hash"] == seed.hash()  # the seed opened the population
    top = [c["hash"] for c in json.loads((run / "search" / "top.json").read_text())]
    assert seed.hash() in top
    assert any(seed.hash()[:12] in d.name for d in (run / "search" / "retrain").iterdir())
