"""The training engine: learning, supernet paths, evaluation, checkpoints and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

from nasrec.errors import NasrecError
from nasrec.model.cost import arch_cost
from nasrec.model.paths import supernet_path
from nasrec.rundir import load_checkpoint, save_checkpoint
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.api import evaluate_run, train, train_supernet
from nasrec.train.loading import load_trained


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=12_000, seed=2)[1]


def _arch_file(tmp_path: Path, seed: int = 0, max_mflops: float | None = None) -> Path:
    """A Small-space architecture, the first drawn from `seed` on within `max_mflops` (if given)."""
    arch = NASREC_SMALL.sample(np.random.default_rng(seed), "default")
    while max_mflops is not None and arch_cost(arch, 13, 26).mflops > max_mflops:
        seed += 1
        arch = NASREC_SMALL.sample(np.random.default_rng(seed), "uniform")
    path = tmp_path / "arch.json"
    arch.save(path)
    return path


QUICK = dict(
    batch_size=256,
    epochs=2,
    lr=0.05,
    shuffle=True,
    eval_every=20,
    eval_max_batches=2,
    log_every=10,
    checkpoint_every=10,
    layernorm=True,
)


@pytest.mark.slow
def test_training_learns_and_writes_a_run_directory(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # an architecture within 0.5 MFLOPs trains 2-3x faster than the first drawn (1.5) and learns as well
    res = train(cache_dir, out, arch=_arch_file(tmp_path, max_mflops=0.5), overrides=QUICK, progress=False)
    for name in ("config.json", "model.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "metrics.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [x["train_loss"] for x in lines if "train_loss" in x]
    assert train_losses[-1] < train_losses[0] - 0.02  # from the base rate: the centred head starts at the CTR
    ctr = res["test"]["ctr"]
    constant = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))  # log loss of predicting the CTR
    assert res["logloss"] < constant - 0.01 and res["auc"] > 0.58
    assert res["mflops"] > 0 and res["params"] > 0 and res["samples_per_s"] > 0
    assert res["steps"] == 2 * (9600 // 256)
    # evaluate reproduces the final test metrics from the saved model
    again = evaluate_run(out, cache_dir, "test")
    assert again["logloss"] == pytest.approx(res["test"]["logloss"], abs=1e-7)
    assert again["auc"] == pytest.approx(res["test"]["auc"], abs=1e-9)


@pytest.mark.slow
def test_centred_head_is_calibrated_on_fixed_train_batches(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.data.cache import open_cache
    from nasrec.data.loader import BatchLoader

    cfg = dict(QUICK, epochs=1, eval_every=15, head_calib_batches=3)
    arch = _arch_file(tmp_path, max_mflops=0.5)  # a cheap architecture: what is tested is the head's mean
    train(cache_dir, tmp_path / "cal", arch=arch, overrides=cfg, progress=False)
    model, _ = load_trained(tmp_path / "cal")
    head = model.head
    saved = head.mean.clone()
    batches = list(BatchLoader(open_cache(cache_dir), "train", batch_size=256))[:3]
    with torch.no_grad():
        head.calibrate((f.dense, f.tokens, f.d2s) for f in (model.features(b.dense, b.sparse) for b in batches))
    torch.testing.assert_close(head.mean, saved, rtol=0, atol=1e-6)  # the exact mean of those batches
    # 0 keeps the running mean of training, which is not that mean
    train(cache_dir, tmp_path / "run", arch=arch, overrides=dict(cfg, head_calib_batches=0), progress=False)
    running = load_trained(tmp_path / "run")[0].head.mean
    assert (running - head.mean).abs().max() > 1e-3
    with pytest.raises(NasrecError, match="head_calib_batches"):
        train(cache_dir, tmp_path / "bad", arch=arch, overrides=dict(cfg, head_calib_batches=-1), progress=False)


def test_a_run_saved_before_a_setting_existed_still_resumes(cache_dir: Path, tmp_path: Path) -> None:
    cfg = dict(QUICK, max_steps=12, eval_every=0)
    first = train(cache_dir, tmp_path / "old", model="lr", overrides=cfg, progress=False)
    ck = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    old = json.loads(ck["config_json"])
    del old["head_calib_batches"]  # as written by an earlier nasrec
    ck["config_json"] = json.dumps(old)
    save_checkpoint(tmp_path / "old" / "checkpoint.pt", ck)
    run_cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del run_cfg["train"]["head_calib_batches"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(run_cfg))
    again = train(cache_dir, tmp_path / "old", model="lr", overrides=cfg, resume=True, progress=False)
    assert again["steps"] == first["steps"] == 12 and again["logloss"] == pytest.approx(first["logloss"], abs=1e-7)
    with pytest.raises(NasrecError, match="own configuration"):  # a real change is still refused
        train(cache_dir, tmp_path / "old", model="lr", overrides=dict(cfg, lr=0.5), resume=True, progress=False)


def test_zoo_model_and_errors(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.data.cache import open_cache
    from nasrec.data.loader import BatchLoader
    from nasrec.zoo import zoo_cost

    res = train(cache_dir, tmp_path / "lr", model="lr", overrides=dict(QUICK, epochs=1), progress=False)
    assert np.isfinite(res["logloss"]) and res["mflops"] >= 0
    # the run serves the zoo model: one finite logit a row, its cost the zoo's analytic count of that model
    cache = open_cache(cache_dir)
    model, spec = load_trained(tmp_path / "lr")
    assert spec.kind != "supernet"
    batch = next(iter(BatchLoader(cache, "test", batch_size=100)))
    with torch.no_grad():
        logits = model(batch.dense, batch.sparse)
    assert logits.shape == (100,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert logits.std() > 0  # trained away from its all-zero start: the rows get different predictions
    cost = zoo_cost("lr", len(cache.dense_fields), cache.table_sizes)
    assert res["mflops"] == cost.mflops and res["params"] == cost.params == sum(p.numel() for p in model.parameters())
    # errors name what is wrong: the directory, the missing choice, the unknown key
    with pytest.raises(NasrecError, match=f"{tmp_path / 'lr'} is not empty"):
        train(cache_dir, tmp_path / "lr", model="lr", overrides=QUICK, progress=False)
    with pytest.raises(NasrecError, match=r"exactly one of --arch FILE\.json or --model NAME"):
        train(cache_dir, tmp_path / "x", progress=False)
    with pytest.raises(NasrecError, match="learning_rate: unknown key"):
        train(cache_dir, tmp_path / "y", model="lr", overrides={"learning_rate": 1}, progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything is written


def test_supernet_paths_are_a_function_of_seed_and_step() -> None:
    a = [supernet_path(NASREC_FULL, 3, t, "default", 100).hash() for t in range(20)]
    b = [supernet_path(NASREC_FULL, 3, t, "default", 100).hash() for t in range(20)]
    assert a == b and len(set(a)) > 10
    assert supernet_path(NASREC_FULL, 3, 0, "default", 100) == NASREC_FULL.full_path()  # t = 0: always full
    late = [supernet_path(NASREC_FULL, 3, t, "default", 100) for t in range(100, 120)]
    assert all(len(blk.dense_ops) == 1 for arch in late for blk in arch.blocks)  # warm-up over


def test_supernet_paths_within_a_flops_budget() -> None:
    from nasrec.model.cost import arch_cost
    from nasrec.model.paths import mflops_budget, sample_within

    within = mflops_budget(0.5, 13, [100] * 26)
    assert mflops_budget(None, 13, [100] * 26) is None
    paths = [supernet_path(NASREC_FULL, 3, t, "default", 10, within) for t in range(10, 40)]
    assert all(arch_cost(a, 13, 26).mflops <= 0.5 for a in paths)
    assert paths == [supernet_path(NASREC_FULL, 3, t, "default", 10, within) for t in range(10, 40)]
    # most unconstrained paths are over the budget, so the redraws changed them
    free = [supernet_path(NASREC_FULL, 3, t, "default", 10) for t in range(10, 40)]
    assert sum(a != b for a, b in zip(paths, free, strict=True)) > 15
    # the warm-up keeps its full paths
    assert supernet_path(NASREC_FULL, 3, 0, "default", 10, within) == NASREC_FULL.full_path()
    with pytest.raises(NasrecError, match="within the budget in 5 draws"):
        sample_within(NASREC_FULL, np.random.default_rng(0), "default", lambda a: False, tries=5)


@pytest.mark.slow
def test_supernet_training_within_a_flops_budget(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.cli import main

    cfg = dict(batch_size=256, max_steps=6, eval_max_batches=1, supernet_eval_archs=2)
    sets = [x for k, v in cfg.items() for x in ("--set", f"{k}={v}")]
    assert (
        main(
            [
                "supernet",
                "--space",
                "full",
                "--data",
                str(cache_dir),
                "--out",
                str(tmp_path / "sn"),
                "--max-mflops",
                "0.3",
                "--no-progress",
                *sets,
            ]
        )
        == 0
    )
    run = json.loads((tmp_path / "sn" / "metrics.json").read_text())
    assert run["steps"] == 6 and np.isfinite(run["logloss"])
    assert json.loads((tmp_path / "sn" / "config.json").read_text())["train"]["path_max_mflops"] == 0.3
    cfg["path_max_mflops"] = 0.3
    with pytest.raises(NasrecError, match="path_max_mflops: expected a number > 0"):
        train_supernet(cache_dir, tmp_path / "bad", space="full", overrides=dict(cfg, path_max_mflops=0.0))
    with pytest.raises(NasrecError, match="supernets only"):
        train(cache_dir, tmp_path / "lr", model="lr", overrides=dict(QUICK, path_max_mflops=1.0), progress=False)


@pytest.mark.slow
def test_supernet_training(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.model.spec import ModelSpec

    res = train_supernet(
        cache_dir,
        tmp_path / "sn",
        space="small",
        progress=False,
        overrides=dict(
            batch_size=256,
            max_steps=30,
            path_warmup_steps=10,
            eval_max_batches=1,
            supernet_eval_archs=2,
            head_calib_batches=2,
            lr=0.05,
            log_every=5,
        ),
    )
    assert res["steps"] == 30 and np.isfinite(res["logloss"])
    assert json.loads((tmp_path / "sn" / "model.json").read_text())["kind"] == "supernet"
    # Strict JSON (no NaN): a supernet has parameters but no single MFLOPs figure.
    metrics = json.loads((tmp_path / "sn" / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert metrics["mflops"] is None and metrics["params"] > 0
    # It learns: the training loss falls over the full-path warm-up and the sampled paths after it.
    lines = [json.loads(x) for x in (tmp_path / "sn" / "metrics.jsonl").read_text().splitlines()]
    logged = [(x["step"], x["path_warmup"], x["train_loss"]) for x in lines if "train_loss" in x]
    assert [(s, w) for s, w, _ in logged] == [(5, True), (10, True), (15, False), (20, False), (25, False), (30, False)]
    assert logged[-1][2] < logged[0][2], logged
    # Training moved the shared weights from their seeded start (the same seed builds the same supernet).
    spec = ModelSpec.from_dict(json.loads((tmp_path / "sn" / "model.json").read_text()))
    torch.manual_seed(0)
    start = spec.build().state_dict()
    trained = load_trained(tmp_path / "sn")[0].state_dict()
    moved = {k for k, v in trained.items() if k in start and not torch.equal(v, start[k])}
    assert any(k.startswith("embedding") for k in moved) and any(k.startswith("cells") for k in moved), moved


def _moved(run: Path) -> set[str]:
    """The state-dict entries a supernet run changed from its seeded start (seed 0)."""
    from nasrec.model.spec import ModelSpec

    spec = ModelSpec.from_dict(json.loads((run / "model.json").read_text()))
    torch.manual_seed(0)
    start = spec.build().state_dict()
    trained = load_checkpoint(run / "checkpoint.pt")["model"]
    return {k for k, v in trained.items() if k in start and not torch.equal(v, start[k])}


@pytest.mark.slow
def test_the_sandwich_rule_also_trains_the_largest_and_smallest_paths(cache_dir: Path, tmp_path: Path) -> None:
    """One step after the warm-up: the sampled path alone moves some weights; with the sandwich, more."""
    from nasrec.space.space import NASREC_FULL

    over = dict(max_steps=1, batch_size=256, path_warmup_steps=0, head_calib_batches=0, eval_max_batches=1)
    over.update(supernet_eval_archs=1, threads=1)
    runs = {}
    for name, extra in (("plain", {}), ("sandwich", {"sandwich": True}), ("labels", {"sandwich": True})):
        if name == "labels":
            extra = {**extra, "sandwich_distill": False}
        train_supernet(cache_dir, tmp_path / name, space="full", overrides={**over, **extra}, progress=False)
        runs[name] = _moved(tmp_path / name)
    assert runs["plain"] < runs["sandwich"]  # the sampled path's weights, and the full path's besides
    # the full path reaches every operator: a transformer and a gating layer in every block moved
    for i in range(7):
        assert {f"cells.{i}.gate.weight", f"cells.{i}.attn_in.weight"} <= runs["sandwich"], i
    a = load_checkpoint(tmp_path / "sandwich" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "labels" / "checkpoint.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # distillation changes the smaller paths' gradients
    small = NASREC_FULL.smallest_path(lambda arch: arch_cost(arch, 13, 26).mflops)
    assert all(b.dense_width == 16 and b.sparse_width == 16 and not (b.d2s or b.fm) for b in small.blocks)
    for d in NASREC_FULL.dense_ops:  # the cheapest operator pair of chains alike
        chain = NASREC_FULL.smallest_path(lambda arch, d=d: 0 if arch.blocks[0].dense_ops == (d,) else 1)
        assert chain.blocks[0].dense_ops == (d,) and arch_cost(chain, 13, 26).mflops >= arch_cost(small, 13, 26).mflops
    with pytest.raises(NasrecError, match="sandwich applies to supernets only"):
        train(cache_dir, tmp_path / "z", model="lr", overrides=dict(sandwich=True, max_steps=1), progress=False)


@pytest.mark.slow
def test_supernet_paths_are_judged_with_their_own_head_mean(cache_dir: Path, tmp_path: Path) -> None:
    from nasrec.data.cache import open_cache
    from nasrec.data.loader import BatchLoader
    from nasrec.model.layers import calibrate_head
    from nasrec.model.paths import EVAL_SEED
    from nasrec.model.spec import ModelSpec
    from nasrec.train.config import preset
    from nasrec.train.evaluation import evaluate
    from nasrec.train.trainer import Trainer

    cfg = dict(
        batch_size=256,
        max_steps=20,
        path_warmup_steps=5,
        eval_max_batches=1,
        supernet_eval_archs=3,
        lr=0.05,
        head_calib_batches=2,
        seed=4,
    )
    res = train_supernet(cache_dir, tmp_path / "sn", space="small", overrides=cfg, progress=False)
    net, _ = load_trained(tmp_path / "sn")
    saved = {k: v.clone() for k, v in net.head.named_buffers()}
    cache = open_cache(cache_dir)
    calib = list(BatchLoader(cache, "train", batch_size=256))[:2]
    rng = np.random.default_rng([4, EVAL_SEED])
    losses = []
    for _ in range(3):
        arch = NASREC_SMALL.sample(rng, "default")
        calibrate_head(lambda d, x, a=arch: net.features(d, x, a), net.head, calib)
        losses.append(evaluate(net, cache, "val", 8192, 1, arch)["logloss"])
        for k, v in net.head.named_buffers():
            v.copy_(saved[k])
    assert res["val"]["logloss"] == pytest.approx(float(np.mean(losses)), abs=1e-6)
    # an evaluation puts the supernet's running mean back, so training goes on with it
    trainer = Trainer(
        ModelSpec.from_dict(json.loads((tmp_path / "sn" / "model.json").read_text())),
        cache,
        preset(None, **cfg),
        tmp_path / "again",
    )
    trainer.model.load_state_dict(net.state_dict())
    assert trainer._eval_here("val")["logloss"] == pytest.approx(res["val"]["logloss"], abs=1e-6)
    for k, v in trainer.model.head.named_buffers():
        assert torch.equal(v, saved[k]), k


def test_early_stopping_keeps_the_best(cache_dir: Path, tmp_path: Path) -> None:
    cfg = dict(QUICK, lr=5.0, eval_every=5, early_stop_metric="logloss", patience=2, epochs=3)  # diverging lr
    res = train(cache_dir, tmp_path / "es", model="lr", overrides=cfg, progress=False)
    assert res["early_stopped"] and res["steps"] < 3 * (9600 // 256)
    best = load_checkpoint(tmp_path / "es" / "best.pt")
    assert best["step"] % 5 == 0


def test_restore_best_tests_and_serves_the_best_weights(cache_dir: Path, tmp_path: Path) -> None:
    # A diverging lr makes the last weights worse than an earlier evaluation's.
    cfg = dict(QUICK, lr=2.0, schedule="constant", eval_every=7, epochs=2, eval_max_batches=None)
    last = train(cache_dir, tmp_path / "last", model="fm", overrides=cfg, progress=False)
    best = train(cache_dir, tmp_path / "best", model="fm", overrides=dict(cfg, restore_best=True), progress=False)
    assert last["weights"] == "final" and best["weights"] == "best"
    # Same seed, same steps: the best run's final model is its best validation evaluation's.
    evals = [json.loads(x) for x in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()]
    val = {e["step"]: e["eval_logloss"] for e in evals if "eval_logloss" in e}
    assert best["best_step"] == min(val, key=val.get)
    assert best["steps"] in val  # the last step was evaluated too (75 steps is not a multiple of 7)
    assert best["val"]["logloss"] == pytest.approx(min(val.values()), abs=1e-6)
    assert best["val"]["logloss"] < last["val"]["logloss"]
    # `evaluate` on the run serves those weights.
    assert evaluate_run(tmp_path / "best", cache_dir)["logloss"] == pytest.approx(best["logloss"], abs=1e-6)


def _run_cli(cache_dir: Path, arch: Path, out: Path, resume: bool = False) -> subprocess.Popen:
    # 100 steps of 75 a epoch: the kill comes in the first epoch, the resume crosses into the second
    sets = [
        "batch_size=128",
        "epochs=2",
        "max_steps=100",
        "lr=0.05",
        "shuffle=true",
        "checkpoint_every=15",
        "eval_every=40",
        "eval_max_batches=2",
        "log_every=10",
        "layernorm=true",
        "threads=1",
    ]
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "train",
        "--data",
        str(cache_dir),
        "--arch",
        str(arch),
        "--out",
        str(out),
        "--no-progress",
        *[x for s in sets for x in ("--set", s)],
        *(["--resume"] if resume else []),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(cache_dir: Path, tmp_path: Path) -> None:
    arch = _arch_file(tmp_path, seed=4, max_mflops=0.5)
    # The uninterrupted reference runs beside the run that is killed and resumed (one thread each).
    ref = _run_cli(cache_dir, arch, tmp_path / "ref")

    out = tmp_path / "killed"
    proc = _run_cli(cache_dir, arch, out)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        ck = out / "checkpoint.pt"
        if ck.exists() and load_checkpoint(ck)["state"]["step"] >= 30:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()
    step = load_checkpoint(out / "checkpoint.pt")["state"]["step"]
    assert 30 <= step < 100
    resumed = _run_cli(cache_dir, arch, out, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    a = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    b = load_checkpoint(out / "checkpoint.pt")
    assert a["state"]["step"] == b["state"]["step"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    ma = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["val"] == mb["val"]
    # the metrics log has each step once, as the uninterrupted run's
    steps = lambda p: [json.loads(x)["step"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps(out) == steps(tmp_path / "ref")


def test_tensorboard_option(cache_dir: Path, tmp_path: Path) -> None:
    cfg = dict(QUICK, epochs=1, max_steps=12, log_every=4, eval_every=6, tensorboard=True)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(NasrecError, match="pip install tensorboard"):
            train(cache_dir, tmp_path / "tb", model="lr", overrides=cfg, progress=False)
        return
    train(cache_dir, tmp_path / "tb", model="lr", overrides=cfg, progress=False)
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    # every number of the metrics log is a scalar of the same name, at the step of its line
    expected: dict[str, list[tuple[int, float]]] = {}
    for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for k, v in record.items():
            if isinstance(v, int | float) and k != "step":
                expected.setdefault(k, []).append((record["step"], float(v)))
    assert [s for s, _ in expected["train_loss"]] == [4, 8, 12] and expected["eval_logloss"][0][0] == 6
    acc = accumulator.EventAccumulator(str(events[0]), size_guidance={accumulator.SCALARS: 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag  # stored as float32


def test_weights_that_do_not_fit_their_model_are_named(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cache_dir, out, arch=_arch_file(tmp_path), overrides={**QUICK, "max_steps": 2}, progress=False)
    ck = load_checkpoint(out / "checkpoint.pt")
    del ck["model"]["head.mean"]  # as saved before the head of models with layer norms was centred
    save_checkpoint(out / "checkpoint.pt", ck)
    with pytest.raises(NasrecError, match="do not fit the model built from its model"):
        load_trained(out)


@pytest.mark.slow
def test_supernet_warmup_as_a_fraction_or_capped_with_a_warning(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nasrec.train.config import TrainConfig, preset
    from nasrec.train.resume import run_identity
    from nasrec.train.sampling import path_warmup

    # the CPU preset gives its warm-up as a share of training, so that it ends on any data size
    cpu = preset("cpu-supernet")
    assert cpu.path_warmup_fraction == 0.2 and cpu.path_warmup_steps == 0
    assert path_warmup(cpu, 135) == 27 and path_warmup(cpu, 1000) == 200
    # an explicit warm-up of either kind replaces the preset's other kind
    assert (
        preset("cpu-supernet", path_warmup_steps=20).path_warmup_fraction,
        preset("paper-supernet", path_warmup_fraction=0.1).path_warmup_steps,
    ) == (0.0, 0)
    with pytest.raises(NasrecError, match="path_warmup_steps or path_warmup_fraction, not both"):
        TrainConfig(path_warmup_steps=10, path_warmup_fraction=0.1)
    with pytest.raises(NasrecError, match="path_warmup_fraction: expected a number >= 0 and <= 1"):
        TrainConfig(path_warmup_fraction=1.5)
    # an absolute warm-up longer than the training is capped to it, with a warning
    with caplog.at_level("WARNING", logger="nasrec.train.sampling"):
        assert path_warmup(TrainConfig(path_warmup_steps=200), 135) == 135
        assert path_warmup(TrainConfig(path_warmup_steps=100), 135) == 100
    assert [r.getMessage() for r in caplog.records] == [
        "path_warmup_steps 200 exceeds the 135 training steps: capped at 135, so the whole run is warm-up; "
        "path_warmup_fraction gives it as a share of training"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="nasrec.train.sampling"):
        res = train_supernet(
            cache_dir,
            tmp_path / "sn",
            space="small",
            preset_name="cpu-supernet",
            progress=False,
            overrides=dict(
                batch_size=256, max_steps=6, path_warmup_steps=50, eval_max_batches=1, supernet_eval_archs=2
            ),
        )
    assert res["steps"] == 6 and any("exceeds the 6 training steps" in r.getMessage() for r in caplog.records)
    # runs saved before the fraction existed keep their identity (a new setting counts with its default)
    old = TrainConfig(path_warmup_steps=200).to_dict()
    del old["path_warmup_fraction"], old["path_count_layernorm"]
    assert run_identity(old) == run_identity(TrainConfig(path_warmup_steps=200).to_dict())


@pytest.mark.slow
def test_a_supernet_reports_its_rate_after_the_warm_up_apart(cache_dir: Path, tmp_path: Path) -> None:
    # the final evaluation on 2 paths, each head mean measured on 2 batches: the rates are what is tested
    cfg = dict(
        QUICK, epochs=1, max_steps=12, log_every=3, path_warmup_steps=6, supernet_eval_archs=2, head_calib_batches=2
    )
    res = train_supernet(cache_dir, tmp_path / "sn", space="small", overrides=cfg, progress=False)
    assert res["samples_per_s_sampled"] > 0 and res["samples_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "sn" / "metrics.jsonl").read_text().splitlines()]
    phases = [(x["step"], x["path_warmup"]) for x in lines if "train_loss" in x]
    assert phases == [(3, True), (6, True), (9, False), (12, False)]
    # standalone models have no warm-up to report
    res = train(cache_dir, tmp_path / "lr", model="lr", overrides=cfg, progress=False)
    assert "samples_per_s_sampled" not in res
