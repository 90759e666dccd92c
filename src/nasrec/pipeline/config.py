"""The pipeline configuration (`nasrec run CONFIG.yaml`): defaults, validation with key paths, the demo.

A configuration is a mapping (YAML or JSON file) with these sections, all optional but `data`, and any
top-level keys starting with `x-`, which are ignored: a place for YAML anchors (`x-recipe: &recipe {...}`,
then `set: *recipe` in several sections).

```yaml
out: runs/my-search          # run directory (the CLI's --out wins)
seed: 0                      # seeds the supernet, search and final training
data:
  format: criteo             # criteo | avazu | kdd12 | schema | synthetic
  input: [day_0.tsv]         # raw files (not for synthetic)
  schema: my_logs.yaml       # for format: schema
  synthetic: {rows: 60000, preset: interactions, seed: 0}   # for format: synthetic
  prepare: {split: random, encoding: vocab, min_count: 2}    # any `nasrec prepare` option
supernet: {space: full, preset: cpu-supernet, set: {epochs: 4}}   # embedding_dim: N (default 16): every token's width
search: {preset: cpu-quick, workers: 2, set: {max_mflops: 1.0}, retrain_set: {epochs: 4}, retrain_seeds: 1,
         halving: {eta: 3, min_steps: 200},   # optional: successive halving of the top k before full runs
         seed_archs: [mlp.json]}              # optional: architectures that open the population
final: {preset: cpu-quick, set: {epochs: 6}, seeds: 3, workers: 2}   # seeds: the final model and each
                                                   # baseline; workers: seeds trained at a time
baselines: {models: [dlrm, dcnv2], published: [criteo_xlarge_best.json], set: {lr: 0.1}, recipe: null}
tune: {trials: 20, timeout: 10m, workers: 1, metric: logloss, set: {epochs: 10}}   # off unless trials > 0
```

With `tune.trials` > 0 a `tune` stage (`nasrec tune`, in `tune/<name>/`) gives the searched model and every
baseline the same budget, `trials` trials and at most `timeout` each, from the same base (the final
recipe, then `baselines.set` for a baseline, then `tune.set`); the final model and the baselines then
train with their own best recipe, and the report states the budget. Without it nothing is tuned, and the
report says so.

Baselines train with the `final` recipe, then `baselines.set` on top (a baseline's own best learning rate,
say); with `baselines.recipe: default` each zoo baseline trains with its own default recipe instead
(`nasrec/presets/recipes/<model>.yaml`, what `nasrec train --model NAME` gives: DeepFM's, DCNv2's and
FinalMLP's are tuned on Frappe), `baselines.set` on top, and a tune stage starts from it. `baselines: all` (or `models: all`) stands for every zoo model at its default hyper-parameters; the
report's goal check compares the searched model with the baselines trained here, and only those.
`search.preset: auto` fits the paper's search to the data and to `search.time_budget` (seconds or `15m`).
MFLOPs are counted for the models the final recipe trains (with its layer norms or without), by the search's
caps, a capped supernet's paths and the report alike. With
`final.seeds: N` the final model and every baseline train with the recipe's seed (in `final/`,
`baselines/<name>/`) and the next N-1 (in `seed-<s>/` below those), and the report compares them over the
seeds (`nasrec.train.compare`).

Every key is checked before any work starts, by the checks of `nasrec.configfile` (the `set` mappings by
the configurations they set); an error is one line naming the key path, of one shape for every section:
`config search.set.populaton: unknown key (known: ...)` or `config final.seeds: expected an integer >= 1,
got 0`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasrec.configfile import (
    SEED,
    ConfigError,
    Rule,
    check_mapping,
    check_value,
    preset_names,
    read_config_file,
    show,
)
from nasrec.errors import NasrecError

FORMATS = ("criteo", "avazu", "kdd12", "schema", "synthetic")

DEFAULTS: dict[str, Any] = {
    "out": None,
    "seed": 0,
    "data": {
        "format": None,
        "input": [],
        "schema": None,
        "synthetic": {"rows": 60_000, "preset": "interactions", "seed": 0},
        "prepare": {},
    },
    "supernet": {"space": "full", "preset": "cpu-supernet", "set": {}, "embedding_dim": None},
    "search": {
        "preset": "cpu-quick",
        "workers": 1,
        "set": {},
        "retrain_set": {},
        "retrain_seeds": 1,
        "halving": None,
        "time_budget": None,
        "seed_archs": [],
    },
    "final": {"preset": "cpu-quick", "set": {}, "seeds": 1, "workers": 1},
    "baselines": {"models": [], "published": [], "set": {}, "recipe": None},
    "tune": {"trials": 0, "timeout": None, "workers": 1, "metric": "logloss", "set": {}},
}

# The demo: the whole pipeline on the bundled synthetic data in minutes on a 2-core CPU. The Small space
# (FC, dot product, EFC): its supernet trains in a minute or two here, and its architectures learn quickly with
# the layer norms of `cpu-quick`. Scoring fine-tunes the whole candidate (it ranks better than the head
# alone on this data); six candidates are retrained, the best of them by validation loss is final. The
# baselines train at lr 0.1, DLRM's best validation loss of 0.05 / 0.1 / 0.15 (docs/design.md).
DEMO: dict[str, Any] = {
    "data": {
        "format": "synthetic",
        "synthetic": {"rows": 60_000, "preset": "interactions", "seed": 0},
        "prepare": {"split": "random", "encoding": "vocab", "min_count": 2},
    },
    "supernet": {"space": "small", "preset": "cpu-supernet", "set": {"epochs": 4, "path_warmup_steps": 20}},
    "search": {
        "preset": "cpu-quick",
        "workers": 2,
        "set": {"finetune": "all", "finetune_steps": 20, "population": 24, "generations": 12, "top_k": 6},
        "retrain_set": {"epochs": 3},
    },
    "final": {
        "preset": "cpu-quick",
        "set": {"epochs": 6, "early_stop_metric": "logloss", "patience": 2, "restore_best": True},
    },
    "baselines": {"models": ["lr", "dlrm", "deepfm", "dcnv2"], "published": [], "set": {"lr": 0.1}},
}


def _fail(path: str, msg: str) -> None:
    raise ConfigError("config", path, msg)


def _merge(defaults: dict[str, Any], given: dict[str, Any], path: str) -> dict[str, Any]:
    """`defaults` updated with `given`; unknown keys and non-mapping sections are errors."""
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        p = f"{path}.{k}" if path else k
        if k not in defaults:
            _fail(p, f"unknown key (known: {', '.join(defaults)})")
        if isinstance(defaults[k], dict) and k not in ("set", "retrain_set", "prepare"):
            _check_type(p, v, dict)
            out[k] = _merge(defaults[k], v, p)
        else:
            out[k] = v
    return out


def _check_type(path: str, value: Any, kind: type, what: str | None = None, rule: Rule | None = None) -> Any:
    """`value` checked by `nasrec.configfile.check_value` (a bool is not an integer: `seed: true` is a mistake)."""
    if what is not None:
        rule = replace(rule or Rule(), desc=what)
    return check_value("config", path, value, kind, rule)


# `data.prepare` options: PrepareConfig's fields less those the pipeline sets, with these ranges.
_PREPARE_RULES = {"seed": SEED, "min_count": Rule(ge=1), "max_table_size": Rule(ge=1), "chunk_bytes": Rule(ge=1)}


def _check_overrides(path: str, values: Any, check: Any) -> None:
    """`values` must be a mapping accepted by `check(**values)` (a config's `updated`).

    An error is reported at the key it names (or, for a combination such as a tournament larger than
    the population, at the first key of it the mapping gives), else at the mapping.
    """
    _check_type(path, values, dict)
    for k in values:
        if not isinstance(k, str):
            _fail(f"{path}.{k}", f"expected a setting name, got {show(k)}")
    try:
        check(**values)
    except ConfigError as e:
        given = [k for k in (e.key, *e.related) if k in values]
        if given:
            _fail(f"{path}.{given[0]}", e.problem)
        _fail(path, f"{e.key}: {e.problem}")
    except NasrecError as e:
        _fail(path, str(e))


def resolve_config(given: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The full configuration: defaults merged with `given`, every key checked; relative paths from `base`."""
    if not isinstance(given, dict):
        _fail("(top level)", "must be a mapping")
    # Top-level keys starting with "x-" are the file's own (as in Compose files): a place for YAML anchors
    given = {k: v for k, v in given.items() if not (isinstance(k, str) and k.startswith("x-"))}
    if given.get("baselines") == "all":  # shorthand: the whole zoo at its defaults
        given = {**given, "baselines": {"models": "all"}}
    cfg = _merge(DEFAULTS, given, "")
    base = base or Path.cwd()
    _check_type("seed", cfg["seed"], int, rule=SEED)
    if cfg["out"] is not None:
        _check_type("out", cfg["out"], str, "a path")
    d = cfg["data"]
    _check_type("data.format", d["format"], str, rule=Rule(choices=FORMATS))
    if isinstance(d["input"], str):
        d["input"] = [d["input"]]
    _check_type("data.input", d["input"], list, "a list of files")
    if d["format"] == "synthetic":
        if d["input"]:
            _fail("data.input", "not used with format synthetic")
        s = d["synthetic"]
        from nasrec.data.synthetic import SYNTH_PRESETS

        _check_type("data.synthetic.rows", s["rows"], int, rule=Rule(ge=1_000))
        _check_type("data.synthetic.preset", s["preset"], str, rule=Rule(choices=tuple(SYNTH_PRESETS)))
        _check_type("data.synthetic.seed", s["seed"], int, rule=SEED)
    else:
        if not d["input"]:
            _fail("data.input", f"format {d['format']} needs at least one input file")
        files = []
        for i, f in enumerate(d["input"]):
            _check_type(f"data.input[{i}]", f, str, "a path")
            p = (base / f).resolve()
            if not p.is_file():
                _fail(f"data.input[{i}]", f"{p}: no such file")
            files.append(str(p))
        d["input"] = files
    if d["format"] == "schema":
        if not d["schema"]:
            _fail("data.schema", "format schema needs a schema file")
        p = (base / d["schema"]).resolve()
        if not p.is_file():
            _fail("data.schema", f"{p}: no such file")
        d["schema"] = str(p)
    elif d["schema"]:
        _fail("data.schema", f"only used with format schema (format is {d['format']})")
    from nasrec.data.prepare import PrepareConfig

    _check_type("data.prepare", d["prepare"], dict)
    if "ratios" in d["prepare"]:
        r = d["prepare"]["ratios"]
        if not (
            isinstance(r, list | tuple)
            and len(r) == 3
            and all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in r)
        ):
            _fail("data.prepare.ratios", f"expected a list of three numbers >= 0 (train, val, test), got {r!r}")
        d["prepare"]["ratios"] = tuple(r)
    d["prepare"] = check_mapping(
        "config",
        "data.prepare",
        d["prepare"],
        PrepareConfig,
        _PREPARE_RULES,
        exclude=("inputs", "out", "format", "schema", "progress"),
    )
    _check_stages(cfg)
    cfg["baselines"]["published"] = _arch_files("baselines.published", cfg["baselines"]["published"], base, False)
    cfg["search"]["seed_archs"] = _arch_files("search.seed_archs", cfg["search"]["seed_archs"], base, True)
    return cfg


def _arch_files(key: str, files: Any, base: Path, read: bool) -> list[str]:
    """Architecture JSON files of the config (relative to its folder) as absolute paths; with `read`, each is
    read as an architecture now, so that a bad one fails before any work (published names are read later)."""
    from nasrec.space.arch import Architecture

    _check_type(key, files, list, "a list of architecture JSON files")
    out = []
    for i, f in enumerate(files):
        _check_type(f"{key}[{i}]", f, str, "a path")
        p = (base / f).resolve()
        if not p.is_file():
            _fail(f"{key}[{i}]", f"{p}: no such file")
        if read:
            try:
                Architecture.load(p)
            except NasrecError as e:
                _fail(f"{key}[{i}]", str(e))
        out.append(str(p))
    return out


def _check_stages(cfg: dict[str, Any]) -> None:
    from nasrec.space.space import get_space
    from nasrec.train.config import preset
    from nasrec.zoo.budget import names_as_numbers

    sn = cfg["supernet"]
    try:
        get_space(sn["space"])
    except NasrecError as e:
        _fail("supernet.space", str(e))
    _check_type("supernet.embedding_dim", sn["embedding_dim"], int, rule=Rule(ge=1, le=1024, optional=True))
    for section in ("supernet", "final"):
        _check_type(f"{section}.preset", cfg[section]["preset"], str, rule=Rule(choices=preset_names("train")))
        _check_overrides(f"{section}.set", cfg[section]["set"], lambda **kv: preset(None, **names_as_numbers(kv)))
    s = cfg["search"]
    _check_type("search.preset", s["preset"], str, rule=Rule(choices=preset_names("search")))
    for path, value in (
        ("search.workers", s["workers"]),
        ("search.retrain_seeds", s["retrain_seeds"]),
        ("final.seeds", cfg["final"]["seeds"]),
        ("final.workers", cfg["final"]["workers"]),
    ):
        _check_type(path, value, int, rule=Rule(ge=1))
    if s["time_budget"] is not None:
        from nasrec.search.auto import parse_duration

        try:
            parse_duration(s["time_budget"])
        except NasrecError as e:
            _fail("search.time_budget", str(e))
        if s["preset"] != "auto":
            _fail("search.time_budget", f"applies to the auto preset only (preset is {s['preset']})")
    _check_overrides("search.set", s["set"], lambda **kv: _resolve_search(s["preset"], names_as_numbers(kv)))
    if s["halving"] is not None:
        _check_type("search.halving", s["halving"], dict, "a mapping {eta: N, min_steps: N}, or null")
        from nasrec.search.retrain import Halving

        s["halving"] = {**Halving().to_dict(), **s["halving"]}
        for key, value in s["halving"].items():
            if key not in ("eta", "min_steps"):
                _fail(f"search.halving.{key}", "unknown key (known: eta, min_steps)")
            _check_type(f"search.halving.{key}", value, int, rule=Rule(ge=2 if key == "eta" else 1))
    _check_overrides("search.retrain_set", s["retrain_set"], lambda **kv: preset(None, **kv))
    b = cfg["baselines"]
    from nasrec.zoo.registry import ZOO_MODELS

    if b["models"] == "all":
        b["models"] = list(ZOO_MODELS)
    _check_type("baselines.models", b["models"], list, "a list of zoo model names (or all)")
    for i, m in enumerate(b["models"]):
        _check_type(f"baselines.models[{i}]", m, str, rule=Rule(choices=tuple(ZOO_MODELS)))
    _check_type("baselines.published", b["published"], list, "a list of architecture files")
    _check_type("baselines.recipe", b["recipe"], str, rule=Rule(choices=("default",), optional=True))
    base_set = {} if b["recipe"] == "default" else cfg["final"]["set"]
    _check_overrides("baselines.set", b["set"], lambda **kv: preset(None, **{**base_set, **kv}))
    t = cfg["tune"]
    _check_type("tune.trials", t["trials"], int, rule=Rule(ge=0))
    _check_type("tune.workers", t["workers"], int, rule=Rule(ge=1))
    from nasrec.tune.api import METRICS

    _check_type("tune.metric", t["metric"], str, rule=Rule(choices=METRICS))
    if t["timeout"] is not None:
        from nasrec.search.auto import parse_duration

        try:
            t["timeout"] = parse_duration(t["timeout"])
        except NasrecError as e:
            _fail("tune.timeout", str(e))
    _check_overrides("tune.set", t["set"], lambda **kv: preset(None, **{**cfg["final"]["set"], **kv}))


def _resolve_search(preset_name: str, overrides: dict[str, Any]) -> None:
    from nasrec.search.presets import resolve, split_overrides

    s, sc = split_overrides(overrides)
    resolve(preset_name, s, sc)


# Keys whose values are paths: given on the command line, a relative one is taken from the working directory
PATH_KEYS = ("data.input", "data.schema", "baselines.published")


def apply_overrides(given: dict[str, Any], overrides: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """`given` with `overrides` (dotted key paths, `search.set.max_mflops`) laid over it; checked later as a whole.

    A relative path given for one of `PATH_KEYS` is made absolute from `cwd` (the working directory), where
    the shell that typed it is; the file's own relative paths stay relative to the file's folder.
    """
    out = copy.deepcopy(given)
    cwd = cwd or Path.cwd()
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts):
            _fail(key, "expected a dotted key path such as search.set.max_mflops")
        if key in PATH_KEYS:
            absolute = lambda v: str((cwd / v).resolve()) if isinstance(v, str) else v  # noqa: E731
            value = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                _fail(".".join(parts[: i + 1]), f"is {node!r}, not a mapping: cannot set {key}")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and resolve a pipeline configuration file (relative paths are taken from its folder), with overrides."""
    given = read_config_file(path, "pipeline config")
    if given is None:
        given = {}
    if overrides:
        given = apply_overrides(given, overrides)
    return resolve_config(given, Path(path).resolve().parent)
