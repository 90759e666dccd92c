"""The pipeline configuration (`nasrec run CONFIG.yaml`): defaults, validation with key paths, the demo.

A configuration is a mapping (YAML or JSON file) with these sections, all optional but `data`:

```yaml
out: runs/my-search          # run directory (the CLI's --out wins)
seed: 0                      # seeds the supernet, search and final training
data:
  format: criteo             # criteo | avazu | kdd12 | schema | synthetic
  input: [day_0.tsv]         # raw files (not for synthetic)
  schema: my_logs.yaml       # for format: schema
  synthetic: {rows: 60000, preset: interactions, seed: 0}   # for format: synthetic
  prepare: {split: random, encoding: vocab, min_count: 2}    # any `nasrec prepare` option
supernet: {space: full, preset: cpu-supernet, set: {epochs: 4}}
search: {preset: cpu-quick, workers: 2, set: {max_mflops: 1.0}, retrain_set: {epochs: 4}, retrain_seeds: 1}
final: {preset: cpu-quick, set: {epochs: 6}, seeds: 3}   # seeds: the final model and each baseline
baselines: {models: [dlrm, dcnv2], published: [criteo_xlarge_best.json], set: {lr: 0.1}}
```

Baselines train with the `final` recipe, then `baselines.set` on top (a baseline's own best learning rate,
say). `baselines: all` (or `models: all`) stands for every zoo model at its default hyper-parameters; the
report's goal check compares the searched model with the baselines trained here, and only those.
`search.preset: auto` fits the paper's search to the data and to `search.time_budget` (seconds or `15m`).
MFLOPs are counted for the models the final recipe trains (with its layer norms or without), by the search's
caps, a capped supernet's paths and the report alike. With
`final.seeds: N` the final model and every baseline train with the recipe's seed (in `final/`,
`baselines/<name>/`) and the next N-1 (in `seed-<s>/` below those), and the report compares them over the
seeds (`nasrec.train.compare`).

Every key is checked before any work starts; an error names the key path (`search.set.max_mflops`).
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

from nasrec.configfile import read_config_file
from nasrec.errors import NasrecError

FORMATS = ("criteo", "avazu", "kdd12", "schema", "synthetic")

DEFAULTS: dict[str, Any] = {
    "out": None,
    "seed": 0,
    "data": {"format": None, "input": [], "schema": None, "synthetic": {"rows": 60_000, "preset": "interactions",
             "seed": 0}, "prepare": {}},
    "supernet": {"space": "full", "preset": "cpu-supernet", "set": {}},
    "search": {"preset": "cpu-quick", "workers": 1, "set": {}, "retrain_set": {}, "retrain_seeds": 1,
               "time_budget": None},
    "final": {"preset": "cpu-quick", "set": {}, "seeds": 1},
    "baselines": {"models": [], "published": [], "set": {}},
}  # fmt: skip

# The demo: the whole pipeline on the bundled synthetic data in minutes on a 2-core CPU. The Small space
# (FC, dot product, EFC): its supernet trains in a minute or two here, and its architectures learn quickly with
# the layer norms of `cpu-quick`. Scoring fine-tunes the whole candidate (it ranks better than the head
# alone on this data); six candidates are retrained, the best of them by validation loss is final. The
# baselines train at lr 0.1, DLRM's best validation loss of 0.05 / 0.1 / 0.15 (docs/design.md).
DEMO: dict[str, Any] = {
    "data": {"format": "synthetic", "synthetic": {"rows": 60_000, "preset": "interactions", "seed": 0},
             "prepare": {"split": "random", "encoding": "vocab", "min_count": 2}},
    "supernet": {"space": "small", "preset": "cpu-supernet", "set": {"epochs": 4, "path_warmup_steps": 20}},
    "search": {"preset": "cpu-quick", "workers": 2,
               "set": {"finetune": "all", "finetune_steps": 20, "population": 24, "generations": 12, "top_k": 6},
               "retrain_set": {"epochs": 3}},
    "final": {"preset": "cpu-quick", "set": {"epochs": 6, "early_stop_metric": "logloss", "patience": 2,
                                             "restore_best": True}},
    "baselines": {"models": ["lr", "dlrm", "deepfm", "dcnv2"], "published": [], "set": {"lr": 0.1}},
}  # fmt: skip


def _fail(path: str, msg: str) -> None:
    raise NasrecError(f"config {path}: {msg}")


def _merge(defaults: dict[str, Any], given: dict[str, Any], path: str) -> dict[str, Any]:
    """`defaults` updated with `given`; unknown keys and non-mapping sections are errors."""
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        p = f"{path}.{k}" if path else k
        if k not in defaults:
            _fail(p, f"unknown key (expected one of: {', '.join(defaults)})")
        if isinstance(defaults[k], dict) and k not in ("set", "retrain_set", "prepare"):
            if not isinstance(v, dict):
                _fail(p, f"must be a mapping, got {type(v).__name__}")
            out[k] = _merge(defaults[k], v, p)
        else:
            out[k] = v
    return out


def _check_type(path: str, value: Any, kind: type, what: str) -> None:
    # bool is an int subclass, but `seed: true` is a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(path, f"must be {what}, got {value!r}")


def _check_overrides(path: str, values: Any, check: Any) -> None:
    """`values` must be a mapping accepted by `check(**values)` (a config's `updated`).

    An error is reported at the key that fails on its own, else (a combination, such as a tournament
    larger than the population) at the mapping.
    """
    if not isinstance(values, dict):
        _fail(path, f"must be a mapping, got {type(values).__name__}")

    def problem(kv: dict[str, Any]) -> str | None:
        try:
            check(**kv)
        except NasrecError as e:
            return str(e).split(": ", 1)[-1]
        except TypeError as e:
            return f"wrong type ({e})"
        return None

    whole = problem(values)
    if whole is None:
        return
    for k, v in values.items():
        msg = problem({k: v})
        if msg is not None:
            _fail(f"{path}.{k}", msg)
    _fail(path, whole)


def resolve_config(given: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The full configuration: defaults merged with `given`, every key checked; relative paths from `base`."""
    if not isinstance(given, dict):
        _fail("(top level)", "must be a mapping")
    if given.get("baselines") == "all":  # shorthand: the whole zoo at its defaults
        given = {**given, "baselines": {"models": "all"}}
    cfg = _merge(DEFAULTS, given, "")
    base = base or Path.cwd()
    _check_type("seed", cfg["seed"], int, "an integer")
    if cfg["out"] is not None:
        _check_type("out", cfg["out"], str, "a path")
    d = cfg["data"]
    if d["format"] not in FORMATS:
        _fail("data.format", f"must be one of {', '.join(FORMATS)}, got {d['format']!r}")
    if isinstance(d["input"], str):
        d["input"] = [d["input"]]
    _check_type("data.input", d["input"], list, "a list of files")
    if d["format"] == "synthetic":
        if d["input"]:
            _fail("data.input", "not used with format synthetic")
        s = d["synthetic"]
        from nasrec.data.synthetic import SYNTH_PRESETS

        _check_type("data.synthetic.rows", s["rows"], int, "an integer")
        if s["rows"] < 1_000:
            _fail("data.synthetic.rows", f"must be at least 1000, got {s['rows']}")
        if s["preset"] not in SYNTH_PRESETS:
            _fail("data.synthetic.preset", f"must be one of {', '.join(SYNTH_PRESETS)}, got {s['preset']!r}")
        _check_type("data.synthetic.seed", s["seed"], int, "an integer")
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

    known = {f.name for f in fields(PrepareConfig)} - {"inputs", "out", "format", "schema", "progress"}
    _check_type("data.prepare", d["prepare"], dict, "a mapping")
    for k, v in d["prepare"].items():
        if k not in known:
            _fail(f"data.prepare.{k}", f"unknown prepare option (expected one of: {', '.join(sorted(known))})")
        if k == "ratios":
            d["prepare"][k] = tuple(v)
    _check_stages(cfg)
    published = []
    for i, f in enumerate(cfg["baselines"]["published"]):
        _check_type(f"baselines.published[{i}]", f, str, "a path")
        p = (base / f).resolve()
        if not p.is_file():
            _fail(f"baselines.published[{i}]", f"{p}: no such file")
        published.append(str(p))
    cfg["baselines"]["published"] = published
    return cfg


def _check_stages(cfg: dict[str, Any]) -> None:
    from nasrec.search.api import PRESETS as SEARCH_PRESETS
    from nasrec.search.budget import names_as_numbers
    from nasrec.space.space import get_space
    from nasrec.train.config import PRESETS as TRAIN_PRESETS
    from nasrec.train.config import preset

    sn = cfg["supernet"]
    try:
        get_space(sn["space"])
    except NasrecError as e:
        _fail("supernet.space", str(e))
    for section in ("supernet", "final"):
        if cfg[section]["preset"] not in TRAIN_PRESETS:
            _fail(f"{section}.preset", f"must be one of {', '.join(TRAIN_PRESETS)}, got {cfg[section]['preset']!r}")
        _check_overrides(f"{section}.set", cfg[section]["set"], lambda **kv: preset(None, **names_as_numbers(kv)))
    s = cfg["search"]
    if s["preset"] not in SEARCH_PRESETS:
        _fail("search.preset", f"must be one of {', '.join(SEARCH_PRESETS)}, got {s['preset']!r}")
    for path, value in (("search.workers", s["workers"]), ("search.retrain_seeds", s["retrain_seeds"]),
                        ("final.seeds", cfg["final"]["seeds"])):  # fmt: skip
        _check_type(path, value, int, "an integer")
        if value < 1:
            _fail(path, f"must be >= 1, got {value}")
    if s["time_budget"] is not None:
        from nasrec.search.auto import parse_duration

        try:
            parse_duration(s["time_budget"])
        except NasrecError as e:
            _fail("search.time_budget", str(e))
        if s["preset"] != "auto":
            _fail("search.time_budget", f"applies to the auto preset only (preset is {s['preset']})")
    _check_overrides("search.set", s["set"], lambda **kv: _resolve_search(s["preset"], names_as_numbers(kv)))
    _check_overrides("search.retrain_set", s["retrain_set"], lambda **kv: preset(None, **kv))
    b = cfg["baselines"]
    from nasrec.zoo.registry import ZOO_MODELS

    if b["models"] == "all":
        b["models"] = list(ZOO_MODELS)
    _check_type("baselines.models", b["models"], list, "a list of zoo model names (or all)")
    for i, m in enumerate(b["models"]):
        if m not in ZOO_MODELS:
            _fail(f"baselines.models[{i}]", f"unknown zoo model {m!r} (one of: {', '.join(ZOO_MODELS)})")
    _check_type("baselines.published", b["published"], list, "a list of architecture files")
    _check_overrides("baselines.set", b["set"], lambda **kv: preset(None, **{**cfg["final"]["set"], **kv}))


def _resolve_search(preset_name: str, overrides: dict[str, Any]) -> None:
    from nasrec.search.api import _split_overrides, resolve

    s, sc = _split_overrides(overrides)
    resolve(preset_name, s, sc)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and resolve a pipeline configuration file (relative paths are taken from its folder)."""
    given = read_config_file(path, "pipeline config")
    if given is None:
        given = {}
    return resolve_config(given, Path(path).resolve().parent)
