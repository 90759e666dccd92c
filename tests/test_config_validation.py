"""Settings that used to be accepted and then broke a run: every configuration value is checked by type and
range in one place (`nasrec.configfile`), with one line naming the key; architectures are checked key by key
and against the memory they would need; optimizers get their own eps; foreign checkpoints are refused
without advice to switch the safety check off.
"""

from __future__ import annotations

import copy
import fractions
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

from nasrec.cli import main
from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.pipeline.config import resolve_config
from nasrec.rundir import load_checkpoint, save_checkpoint
from nasrec.search.config import SearchConfig
from nasrec.search.presets import resolve
from nasrec.search.scorer import ScoreConfig
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_SMALL, SearchSpace
from nasrec.train.api import train
from nasrec.train.config import TrainConfig, preset

ONE_LINE = re.compile(r"^[^\n]+$")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=3_000, seed=5)[1]


def _problem(kind: type[Exception], call: Any, *args: Any, **kwargs: Any) -> Exception:
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    assert ONE_LINE.match(str(info.value)), str(info.value)
    return info.value


# -- 1. every field by type and range, one line naming the key -------------------------------------
BAD_TRAINING = [
    # (setting, value, what the error says it expected); each of these used to exit 0 or crash
    ("clip", -1, "a number > 0 or null"),  # exited 0 and trained the wrong way
    ("clip", float("nan"), "a number > 0 or null"),
    ("eval_max_batches", 0, "an integer >= 1 or null"),  # exited 0 with NaN metrics
    ("threads", 0, "an integer >= 1 or null"),
    ("layernorm", "yes", "true or false"),
    ("eval_split", "nosuch", "one of train, val, test"),
    ("lr", float("nan"), "a number > 0 and <= 100"),  # crashed with a traceback
    ("lr", "nan", "a number > 0 and <= 100"),
    ("lr", 1e300, "a number > 0 and <= 100"),
    ("batch_size", "abc", "an integer >= 1"),
    ("batch_size", True, "an integer >= 1"),  # a bool is not an integer
    ("max_steps", -5, "an integer >= 1 or null"),  # said "the warm-up (-1 steps)"
    ("seed", -5, "an integer >= 0"),
    ("epochs", 1.5, "an integer >= 1"),
    ("warmup_fraction", 1.0, "a number >= 0 and < 1"),
    ("weight_decay", -0.1, "a number >= 0 and <= 1"),
    ("optimizer", "adamw", "one of adagrad, adam, sgd"),
    ("strategy", "greedy", "one of default, single-path"),
    ("path_max_mflops", 0, "a number > 0 or null"),
    ("early_stop_metric", "loss", "one of logloss, auc or null"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_TRAINING)
def test_training_settings_are_checked_by_type_and_range(key: str, value: Any, expected: str) -> None:
    e = _problem(ConfigError, preset, None, **{key: value})
    assert e.key == key and str(e).startswith(f"training config {key}: expected {expected}")
    assert re.search(r", got \S+$", str(e))


def test_values_keep_their_meaning_across_types() -> None:
    cfg = TrainConfig(lr=1, clip=5, path_max_mflops=2)  # integers are numbers
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and isinstance(cfg.clip, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert "upper" not in str(_problem(ConfigError, TrainConfig, lr=101))  # the bound says why it is there
    assert "per step" in str(_problem(ConfigError, TrainConfig, lr=101))
    e = _problem(ConfigError, preset, None, learning_rate=0.1)
    assert str(e).startswith(
        "training config learning_rate: unknown key (known: arch_batchnorm, arch_dropout, arch_head_centre, arch_max_embedding_std, "
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("clip=-1", "training config clip: expected a number > 0 or null, got -1"),
        ("clip=NaN", "training config clip: expected a number > 0 or null, got nan"),
        ("eval_max_batches=0", "training config eval_max_batches: expected an integer >= 1 or null, got 0"),
        ("threads=0", "training config threads: expected an integer >= 1 or null, got 0"),
        ('layernorm="yes"', "training config layernorm: expected true or false, got 'yes'"),
        ("eval_split=nosuch", "training config eval_split: expected one of train, val, test, got 'nosuch'"),
        ("lr=nan", "training config lr: expected a number > 0 and <= 100 ("),
        ("lr=1e300", "training config lr: expected a number > 0 and <= 100 ("),
        ("batch_size=abc", "training config batch_size: expected an integer >= 1, got 'abc'"),
        ("max_steps=-5", "training config max_steps: expected an integer >= 1 or null, got -5"),
    ],
)
def test_cli_set_values_are_refused_before_training(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    out = tmp_path / "run"
    rc = main(
        ["train", "--model", "lr", "--data", str(cache_dir), "--out", str(out), "--set", setting, "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"nasrec train: error: {message}"), err
    assert not (out / "checkpoint.pt").exists()


def test_an_empty_evaluation_split_is_refused_at_run_start(tmp_path: Path) -> None:
    cache = small_synth_cache(tmp_path, rows=2_000, seed=1, split="random", ratios=(0.9, 0.0, 0.1))[1]
    e = _problem(ConfigError, train, cache, tmp_path / "run", model="lr", overrides={"eval_every": 2}, progress=False)
    assert str(e) == f"training config eval_split: the val split of {cache} is empty"


@pytest.mark.parametrize(
    ("search", "score", "message"),
    [
        ({"seed": -5}, {}, "search config seed: expected an integer >= 0 and <= 4294967295, got -5"),
        ({"population": 0}, {}, "search config population: expected an integer >= 1, got 0"),
        ({"population": "8"}, {}, "search config population: expected an integer >= 1, got '8'"),
        ({"pareto": "yes"}, {}, "search config pareto: expected true or false, got 'yes'"),
        ({"max_params": 0}, {}, "search config max_params: expected an integer >= 1 or null, got 0"),
        ({"sample": 100}, {}, "search config sample: sample (100) exceeds population (16)"),
        ({}, {"val_split": "dev"}, "scoring config val_split: expected one of train, val, test, got 'dev'"),
        ({}, {"finetune_lr": float("inf")}, "scoring config finetune_lr: expected a number > 0 and <= 100 ("),
        ({}, {"clip": 0}, "scoring config clip: expected a number > 0 or null, got 0"),
        ({}, {"threads": 0}, "scoring config threads: expected an integer >= 1, got 0"),
        ({}, {"finetune": "body"}, "scoring config finetune: expected one of head, all, got 'body'"),
    ],
)
def test_search_and_scoring_settings_are_checked_alike(search: dict, score: dict, message: str) -> None:
    e = _problem(ConfigError, resolve, "cpu-quick", search, score)
    assert str(e).startswith(message)


def test_search_and_scoring_configs_check_every_field() -> None:
    assert SearchConfig(max_mflops=2).max_mflops == 2.0
    for cfg, what in ((SearchConfig(), "search config"), (ScoreConfig(), "scoring config")):
        e = _problem(ConfigError, cfg.updated, nosuch=1)
        assert str(e).startswith(f"{what} nosuch: unknown key (known: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--supernet", "s", "--data", "d", "--out", "o", "--seed", "-5"],
        ["arch", "sample", "--space", "small", "--seed", "-5"],
        ["prepare", "--format", "criteo", "--input", "x.tsv", "--out", "c", "--seed", "-1"],
        ["synth", "--rows", "2000", "--out", "x.tsv", "--seed", "-5"],
        ["rankcheck", "--supernet", "s", "--data", "d", "--out", "o", "--seed", "-5"],
    ],
)
def test_negative_seeds_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "argument --seed" in err and "Traceback" not in err


# -- 4. the pipeline's sections: one error shape each ----------------------------------------------
SHAPE = re.compile(r"^config (?P<path>[\w.\[\]]+): (unknown key \(known: .+\)|expected .+, got .+|.+ exceeds .+)$")
BASE = {"data": {"format": "synthetic"}}


def _with(section: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    if section.startswith("data."):
        cfg["data"][section[5:]] = value
    else:
        cfg[section] = value
    return cfg


@pytest.mark.parametrize(
    ("given", "path", "unknown"),
    [
        ({**BASE, "seedd": 1}, "seedd", True),
        ({**BASE, "seed": -1}, "seed", False),
        ({**BASE, "seed": True}, "seed", False),
        ({**BASE, "out": 3}, "out", False),
        (_with("data.colour", 1), "data.colour", True),
        ({"data": {"format": "csv"}}, "data.format", False),
        (_with("data.synthetic", {"rows": 10}), "data.synthetic.rows", False),
        (_with("data.synthetic", {"seed": -1}), "data.synthetic.seed", False),
        (_with("data.synthetic", {"rowz": 10}), "data.synthetic.rowz", True),
        (_with("data.prepare", {"splt": "random"}), "data.prepare.splt", True),
        (_with("data.prepare", {"seed": -1}), "data.prepare.seed", False),
        (_with("data.prepare", {"min_count": "2"}), "data.prepare.min_count", False),
        (_with("data.prepare", {"ratios": 0.8}), "data.prepare.ratios", False),
        (_with("supernet", {"sett": {}}), "supernet.sett", True),
        (_with("supernet", {"preset": "gpu"}), "supernet.preset", False),
        (_with("supernet", {"embedding_dim": 0}), "supernet.embedding_dim", False),
        (_with("supernet", {"embedding_dim": "20"}), "supernet.embedding_dim", False),
        (_with("supernet", {"set": {"clip": -1}}), "supernet.set.clip", False),
        (_with("supernet", {"set": {"epoch": 2}}), "supernet.set.epoch", True),
        (_with("supernet", {"set": [1]}), "supernet.set", False),
        (_with("search", {"set": {"populaton": 3}}), "search.set.populaton", True),  # was cut to "children, ..."
        (_with("search", {"set": {"seed": -5}}), "search.set.seed", False),
        (_with("search", {"set": {"val_split": "dev"}}), "search.set.val_split", False),
        (_with("search", {"set": {"sample": 100}}), "search.set.sample", False),
        (_with("search", {"set": {"population": 4}}), "search.set.population", False),  # the preset's sample is 8
        (_with("search", {"workers": 0}), "search.workers", False),
        (_with("search", {"retrain_set": {"lr": float("nan")}}), "search.retrain_set.lr", False),
        (_with("search", {"retrain_set": {"lr_": 1}}), "search.retrain_set.lr_", True),
        (_with("search", {"halving": {"eta": 1}}), "search.halving.eta", False),
        (_with("search", {"halving": {"min_steps": 0}}), "search.halving.min_steps", False),
        (_with("search", {"halving": {"etta": 3}}), "search.halving.etta", True),
        (_with("search", {"halving": 3}), "search.halving", False),
        (_with("final", {"set": {"eval_max_batches": 0}}), "final.set.eval_max_batches", False),
        (_with("final", {"seeds": "3"}), "final.seeds", False),
        (_with("final", {"workers": 0}), "final.workers", False),
        (_with("final", {"sede": 3}), "final.sede", True),
        (_with("baselines", {"set": {"threads": 0}}), "baselines.set.threads", False),
        (_with("baselines", {"models": ["gbdt"]}), "baselines.models[0]", False),
        (_with("baselines", {"model": ["dlrm"]}), "baselines.model", True),
    ],
)
def test_pipeline_errors_have_one_shape_in_every_section(tmp_path: Path, given: dict, path: str, unknown: bool) -> None:
    e = _problem(NasrecError, resolve_config, given, tmp_path)
    m = SHAPE.match(str(e))
    assert m and m["path"] == path, str(e)
    assert str(e).startswith(f"config {path}: unknown key (known: ") == unknown, str(e)


def test_a_typo_in_search_set_names_the_key_and_the_known_ones(tmp_path: Path) -> None:
    e = _problem(NasrecError, resolve_config, _with("search", {"set": {"populaton": 3}}), tmp_path)
    assert str(e).startswith("config search.set.populaton: unknown key (known: search ")
    assert "population" in str(e) and "finetune_steps" in str(e)  # search and scoring settings both listed


# -- 5. each optimizer its own eps -----------------------------------------------------------------
def _optimizer_eps(cache_dir: Path, tmp_path: Path, **overrides: Any) -> set[float]:
    from nasrec.data.cache import open_cache
    from nasrec.train.trainer import Trainer

    cache = open_cache(cache_dir)
    spec = ModelSpec(kind="zoo", zoo="dlrm", num_dense=len(cache.dense_fields), table_sizes=tuple(cache.table_sizes))
    trainer = Trainer(spec, cache, preset("cpu-quick", **overrides), tmp_path / "t")
    return {g["eps"] for g in trainer.optimizer.param_groups}


def test_each_optimizer_gets_its_own_eps(cache_dir: Path, tmp_path: Path) -> None:
    assert _optimizer_eps(cache_dir, tmp_path) == {1e-2}  # adagrad: the paper's
    assert _optimizer_eps(cache_dir, tmp_path, optimizer="adam") == {1e-8}  # kept adagrad's 1e-2 before
    assert _optimizer_eps(cache_dir, tmp_path, optimizer="adam", eps=1e-3) == {1e-3}  # given: kept
    assert preset("paper-final", optimizer="adam").eps is None  # no preset fixes adagrad's eps
    assert TrainConfig(eps=1e-2).eps is None and TrainConfig(optimizer="adam", eps=1e-2).eps == 1e-2
    e = _problem(ConfigError, TrainConfig, optimizer="sgd", eps=1e-3)
    assert str(e) == "training config eps: sgd has no eps (leave it unset)"
    # configurations saved when eps was always 0.01 read back as they trained
    old = {**TrainConfig().to_dict(), "eps": 0.01}
    assert TrainConfig.from_dict(old) == TrainConfig()
    assert TrainConfig.from_dict({**old, "optimizer": "sgd"}) == TrainConfig(optimizer="sgd")
    assert TrainConfig.from_dict({**old, "optimizer": "adam"}).eps == 0.01


def test_a_run_saved_with_eps_0_01_still_resumes(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.train.resume import run_identity

    cfg = dict(batch_size=256, max_steps=6, checkpoint_every=3, eval_max_batches=1, log_every=3)
    first = train(cache_dir, tmp_path / "old", model="lr", preset_name="cpu-quick", overrides=cfg, progress=False)
    # written as an older nasrec wrote it: eps 0.01 with adagrad, in config.json and in the checkpoint
    ck = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    saved = json.loads(ck["config_json"])
    assert saved["optimizer"] == "adagrad" and saved["eps"] is None
    ck["config_json"] = json.dumps({**saved, "eps": 0.01})
    save_checkpoint(tmp_path / "old" / "checkpoint.pt", ck)
    run_cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    run_cfg["train"]["eps"] = 0.01
    (tmp_path / "old" / "config.json").write_text(json.dumps(run_cfg))
    assert run_identity({**saved, "eps": 0.01}) == run_identity(saved)
    # resumed with its recipe (as the pipeline does) and without
    for kw in (dict(preset_name="cpu-quick", overrides=cfg), {}):
        again = train(cache_dir, tmp_path / "old", model="lr", resume=True, progress=False, **kw)  # type: ignore[arg-type]
        assert again["steps"] == first["steps"] == 6
        assert again["logloss"] == pytest.approx(first["logloss"], abs=1e-7)


# -- 2. architectures of absurd widths, and memory -------------------------------------------------
def _arch_dict(seed: int = 0) -> dict[str, Any]:
    return NASREC_SMALL.sample(np.random.default_rng(seed), "default").to_dict()


def test_a_width_beyond_what_nasrec_builds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _arch_dict()
    d["blocks"][0]["dense_width"] = 10**9
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(d))
    e = _problem(NasrecError, Architecture.load, path)
    assert str(e) == (
        f"{path}: architecture block 0, field dense_width: 1,000,000,000 is more than nasrec builds "
        "(65,536; NASRec's spaces stop at 1024)"
    )
    assert main(["arch", "info", str(path)]) == 2  # used to pass, then die in the allocator
    assert "dense_width" in capsys.readouterr().err
    with pytest.raises(NasrecError, match=r"field dense_widths: 1,000,000,000 is more than nasrec builds"):
        SearchSpace.from_dict({"dense_ops": ["fc"], "sparse_ops": ["efc"], "dense_widths": [16, 10**9]})


def test_arch_info_says_how_much_memory_the_model_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nasrec.data.formats import CRITEO_TABLE_SIZES
    from nasrec.model.cost import arch_cost

    path = tmp_path / "a.json"
    path.write_text(json.dumps(_arch_dict()))
    assert main(["arch", "info", str(path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    cost = arch_cost(Architecture.load(path), 13, 26, CRITEO_TABLE_SIZES)  # the default shape
    mem = r["memory"]
    assert mem["weights_bytes"] == 4 * cost.params
    assert mem["train_bytes"]["adagrad"] == 4 * (2 * cost.params + cost.dense_params)  # weights, state, gradients
    assert mem["train_bytes"]["adam"] == 4 * (3 * cost.params + cost.dense_params)
    assert mem["train_bytes"]["sgd"] == 4 * (cost.params + cost.dense_params)
    assert r["spaces"] == ["small", "full", "full+"]
    assert main(["arch", "info", str(path)]) == 0
    assert "to train, about" in capsys.readouterr().out
    monkeypatch.setattr("nasrec.model.memory.physical_memory", lambda: 10**6)
    assert main(["arch", "info", str(path)]) == 0
    assert "more than this machine's 1 MB, it cannot train here" in capsys.readouterr().out


def test_a_model_larger_than_the_machine_is_refused_before_it_is_built(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nasrec.model import memory

    built: list[ModelSpec] = []
    monkeypatch.setattr(ModelSpec, "build", lambda self: built.append(self))  # would allocate
    monkeypatch.setattr(memory, "physical_memory", lambda: 10**6)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_arch_dict()))
    e = _problem(NasrecError, train, cache_dir, tmp_path / "run", arch=path, progress=False)
    assert re.match(
        r"the architecture's model has [\d,]+ parameters and needs about [\d.]+ MB to train with "
        r"Adagrad \(.*\), more than this machine's 1 MB of memory; refused before building it$",
        str(e),
    )
    assert built == []
    with pytest.raises(NasrecError, match="more than this machine's 1 kB of memory"):
        memory.check_fits(10**6, 10**6, "adam", limit=1_000)
    memory.check_fits(10, 10, "adam", limit=1_000)  # 10 x 4 x 4 bytes fit


def test_an_architecture_outside_the_supernet_space_is_refused() -> None:
    from nasrec.model.supernet import Supernet

    supernet = Supernet(NASREC_SMALL, 2, (5, 7, 9), layernorm=True)
    d = _arch_dict()
    d["blocks"][3]["dense_width"] = 100
    with pytest.raises(NasrecError, match=r"not in search space 'small': block 3, field dense_width: 100"):
        supernet.features(torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.long), Architecture.from_dict(d))


# -- 3. architecture JSON: every missing, unknown or mistyped key named ----------------------------
def _edit(fn: Any) -> dict[str, Any]:
    d = _arch_dict()
    fn(d)
    return d


@pytest.mark.parametrize(
    ("d", "message"),
    [
        (_edit(lambda d: d["blocks"][2].pop("dense_width")), "x.json: architecture block 2: missing key 'dense_width'"),
        (_edit(lambda d: d["blocks"][0].pop("left")), "x.json: architecture block 0: missing key 'left'"),
        (_edit(lambda d: d["blocks"][1].update(width=3)), "x.json: architecture block 1: unknown key 'width' (known: "),
        (
            _edit(lambda d: d["blocks"][1].update(dense_width="64")),
            "x.json: architecture block 1, field dense_width: expected an integer, got '64'",
        ),
        (
            _edit(lambda d: d["blocks"][1].update(dense_ops="fc")),
            "x.json: architecture block 1, field dense_ops: expected a list of operator names, got 'fc'",
        ),
        (
            _edit(lambda d: d["blocks"][1].update(sparse_in=[0, "1"])),
            "x.json: architecture block 1, field sparse_in: expected a list of input indices, got a list",
        ),
        (
            _edit(lambda d: d["blocks"][1].update(d2s=1)),
            "x.json: architecture block 1, field d2s: expected true or false, got 1",
        ),
        (
            _edit(lambda d: d["blocks"].__setitem__(1, [])),
            "x.json: architecture block 1: expected a JSON object, got a list",
        ),
        (_edit(lambda d: d.pop("blocks")), "x.json: missing key 'blocks'"),
        (
            _edit(lambda d: d.update(name="mine")),
            "x.json: unknown key 'name' (known: format, version, blocks, embedding_dim, first_order)",
        ),
        (_edit(lambda d: d.update(blocks={})), "x.json: field blocks: expected a list of blocks, got a JSON object"),
    ],
)
def test_architecture_json_names_the_bad_key(d: dict, message: str) -> None:
    e = _problem(NasrecError, Architecture.from_dict, d, "x.json")
    assert str(e).startswith(message), str(e)


def test_reference_json_names_the_bad_key() -> None:
    ref = {
        "config": "xlarge",
        "macro": [{"dense_idx": [0], "sparse_idx": [0], "dense_left_idx": [0], "dense_right_idx": [0]}],
        "micro": [
            {
                "active_nodes": [0, 5],
                "dense_in_dims": 64,
                "sparse_in_dims": 16,
                "dense_sparse_interact": 0,
                "deep_fm": 0,
            }
        ],
    }
    assert Architecture.from_dict(ref).num_blocks == 1
    missing = copy.deepcopy(ref)
    del missing["micro"][0]["dense_in_dims"]
    assert str(_problem(NasrecError, Architecture.from_dict, missing, "r.json")) == (
        "r.json: block 0, micro: missing key 'dense_in_dims'"
    )
    typed = copy.deepcopy(ref)
    typed["macro"][0]["dense_idx"] = 0
    assert str(_problem(NasrecError, Architecture.from_dict, typed, "r.json")) == (
        "r.json: block 0, macro field dense_idx: expected a list of input indices, got 0"
    )


# -- 6. a foreign checkpoint is refused without advice to disable the check ------------------------
def test_a_checkpoint_holding_pickled_objects_is_refused_as_foreign(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "note": fractions.Fraction(1, 3)}, path)  # a pickled object: code to run on load
    e = _problem(NasrecError, load_checkpoint, path)
    assert str(e) == (
        f"{path}: refused: not a nasrec checkpoint, or from an untrusted source (it asks to build "
        "fractions.Fraction; nasrec loads nothing else)"
    )
    assert "weights_only" not in str(e).replace(str(path), "") and "False" not in str(e)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02" + b"x" * 64)
    e = _problem(NasrecError, load_checkpoint, garbage)
    assert "not a nasrec checkpoint" in str(e) and "weights_only" not in str(e).replace(str(garbage), "")


def test_a_config_error_pickles_whole() -> None:
    import pickle

    e = ConfigError("training config", "lr", "expected a number > 0, got -1", ("batch_size",))
    back = pickle.loads(pickle.dumps(e))  # as a worker process's error reaches its parent
    assert (back.what, back.key, back.problem, back.related, str(back)) == (e.what, e.key, e.problem, e.related, str(e))


def test_pipeline_seed_archs_are_files_next_to_the_config(tmp_path: Path) -> None:
    """search.seed_archs: architecture files relative to the config's folder, read back as absolute paths;
    a missing file or one that is no architecture is a one-line error naming the entry."""
    from nasrec.space.arch import Architecture, Block

    arch = Architecture((Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16),))
    arch.save(tmp_path / "mlp.json")
    (tmp_path / "bad.json").write_text('{"blocks": 3}')
    given = {"data": {"format": "synthetic"}, "search": {"seed_archs": ["mlp.json"]}}
    cfg = resolve_config(copy.deepcopy(given), tmp_path)
    assert cfg["search"]["seed_archs"] == [str((tmp_path / "mlp.json").resolve())]
    assert resolve_config({"data": {"format": "synthetic"}}, tmp_path)["search"]["seed_archs"] == []
    for files, key in (
        (["mlp.json", "gone.json"], r"search\.seed_archs\[1\]: .*no such file"),
        (["bad.json"], r"search\.seed_archs\[0\]: "),
        ("mlp.json", r"search\.seed_archs: expected a list"),
    ):
        with pytest.raises(ConfigError, match=key):
            resolve_config({"data": {"format": "synthetic"}, "search": {"seed_archs": files}}, tmp_path)
