"""Run directories: one writer at a time, torn logs repaired, stale temporary files removed, lean final checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import small_synth_cache

from nasrec import rundir
from nasrec.errors import NasrecError
from nasrec.rundir import load_checkpoint, save_checkpoint
from nasrec.train.api import train, train_supernet

QUICK = dict(
    batch_size=256,
    epochs=1,
    max_steps=12,
    lr=0.05,
    eval_every=0,
    eval_max_batches=2,
    log_every=4,
    checkpoint_every=5,
    layernorm=True,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=4_000, seed=3)[1]


class _Holder:
    """Another process that holds a directory's writer lock until it is stopped."""

    def __init__(self, directory: Path, beside: bool = False) -> None:
        code = textwrap.dedent(f"""
            import sys
            from nasrec import rundir
            with rundir.exclusive({str(directory)!r}, beside={beside}):
                print("held", flush=True)
                sys.stdin.read()
        """)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    holder = _Holder(tmp_path / "run")
    try:
        with pytest.raises(NasrecError) as err, rundir.exclusive(tmp_path / "run"):
            pass
        msg = str(err.value)
        assert f"pid {holder.proc.pid}" in msg and "in use" in msg and "\n" not in msg
    finally:
        holder.stop()
    with rundir.exclusive(tmp_path / "run"):  # released when its holder exits
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with rundir.exclusive(tmp_path / "run"), rundir.exclusive(tmp_path / "run"):
        assert rundir.is_empty(tmp_path / "run")  # only the lock file is there
    holder = _Holder(tmp_path / "run")  # and released once the outer block ends
    holder.stop()


def test_training_into_a_locked_directory_is_refused_before_writing(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _Holder(out)
    try:
        with pytest.raises(NasrecError, match="in use by pid"):
            train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)
        with pytest.raises(NasrecError, match="in use by pid"):
            train_supernet(cache_dir, out, space="small", overrides=QUICK, resume=True, progress=False)
    finally:
        holder.stop()
    assert rundir.is_empty(out)
    train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)


@pytest.mark.slow
def test_a_second_cli_writer_fails_while_the_first_trains(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def start(lr: float, epochs: int) -> subprocess.Popen:
        sets = [
            f"{k}={json.dumps(v)}"
            for k, v in {**QUICK, "max_steps": None, "epochs": epochs, "lr": lr, "threads": 1}.items()
        ]
        cmd = [
            sys.executable,
            "-m",
            "nasrec.cli",
            "train",
            "--data",
            str(cache_dir),
            "--model",
            "lr",
            "--out",
            str(out),
            "--resume",
            "--no-progress",
            *[x for s in sets for x in ("--set", s)],
        ]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start(0.15, 2000)  # long enough to be still training when the second starts
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = start(0.02, 2000)
        _, err = second.communicate(timeout=120)
        assert second.returncode != 0
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0], err
    finally:
        first.kill()
        first.wait()
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.15


def test_resuming_a_finished_run_adds_no_log_line(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    log = (out / "metrics.jsonl").read_text()
    assert sum(1 for x in log.splitlines() if json.loads(x).get("final")) == 1
    again = train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == log
    assert again["test"] == first["test"]


def test_a_torn_last_log_line_is_dropped_on_resume(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    log = (out / "metrics.jsonl").read_text()
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 12, "train_lo')  # a kill in mid-append
    train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == log


def test_an_evaluation_after_the_final_checkpoint_is_logged_once(cache_dir: Path, tmp_path: Path) -> None:
    """restore_best evaluates the last weights after the final checkpoint; a resume must not log it twice."""
    out = tmp_path / "run"
    cfg = {**QUICK, "eval_every": 5, "restore_best": True}
    train(cache_dir, out, model="lr", overrides=cfg, progress=False)
    log = (out / "metrics.jsonl").read_text()
    assert sum(1 for x in log.splitlines() if json.loads(x).get("step") == 12 and "eval_logloss" in x) == 1
    train(cache_dir, out, model="lr", overrides=cfg, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == log


def test_a_checkpoint_without_a_line_count_resumes_by_step(cache_dir: Path, tmp_path: Path) -> None:
    """Checkpoints of an older nasrec do not count their log lines: lines are kept by step, the final one dropped."""
    out = tmp_path / "run"
    train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    log = (out / "metrics.jsonl").read_text()
    ck = load_checkpoint(out / "checkpoint.pt")
    del ck["state"]["log_lines"]
    save_checkpoint(out / "checkpoint.pt", ck)
    train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == log


def test_stale_temporary_files_are_removed_when_a_run_opens(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    dead = _dead_pid()
    stale = [out / f".checkpoint.pt.tmp-{dead}", out / ".state.json.tmp", out / f".metrics.json.tmp-{dead}"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    live = out / f".best.pt.tmp-{os.getppid()}"  # a live process other than us: not ours to delete
    live.write_bytes(b"x")
    train(cache_dir, out, model="lr", overrides=QUICK, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    assert live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_finished_run_keeps_its_weights_only_unless_asked(cache_dir: Path, tmp_path: Path) -> None:
    lean = tmp_path / "lean"
    train(cache_dir, lean, model="dlrm", overrides=QUICK, progress=False)
    ck = load_checkpoint(lean / "checkpoint.pt")
    assert ck["optimizer"] is None and ck["schedule"] is None and ck["model"]
    full = tmp_path / "full"
    train(cache_dir, full, model="dlrm", overrides={**QUICK, "keep_optimizer": True}, progress=False)
    assert load_checkpoint(full / "checkpoint.pt")["optimizer"] is not None
    assert (lean / "checkpoint.pt").stat().st_size < 0.7 * (full / "checkpoint.pt").stat().st_size
    # both are finished runs that a resume re-evaluates to the same figures
    m = json.loads((lean / "metrics.json").read_text())
    assert train(cache_dir, lean, model="dlrm", overrides=QUICK, resume=True, progress=False)["test"] == m["test"]


@pytest.mark.slow
def test_a_supernet_keeps_its_weights_only_once_final(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sn"
    train_supernet(cache_dir, out, space="small", overrides={**QUICK, "max_steps": 6}, progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["optimizer"] is None


def test_read_jsonl_repairs_a_torn_end_and_names_a_damaged_middle(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "x"')
    assert rundir.read_jsonl(p) == [{"step": 1}, {"step": 2}]
    assert p.read_text() == '{"step": 1}\n{"step": 2}\n'
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}')  # parses, but its newline never came
    assert rundir.read_jsonl(p) == [{"step": 1}, {"step": 2}]
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(NasrecError, match=r"log.jsonl, line 2: not a JSON record"):
        rundir.read_jsonl(p)
    p.write_text('{"step": 1}\n{"step": 2}\n')
    assert rundir.read_jsonl(p, keep=lambda r: r["step"] < 2) == [{"step": 1}]
    assert p.read_text() == '{"step": 1}\n'


def test_a_resume_may_ask_to_keep_the_optimizer_state(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["optimizer"] is None
    train(cache_dir, out, model="lr", overrides={**QUICK, "keep_optimizer": True}, resume=True, progress=False)
    with pytest.raises(NasrecError, match="own configuration"):  # but not train another run
        train(cache_dir, out, model="lr", overrides={**QUICK, "lr": 0.2}, resume=True, progress=False)


def test_typed_records_read_back_the_files_they_came_from(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cache_dir, out, model="lr", overrides=QUICK, progress=False)
    text = (out / rundir.METRICS_JSON).read_text()
    m = rundir.read_metrics(out)
    assert m is not None and m.extra == {}  # every key of metrics.json is a field
    assert json.dumps(m.to_dict(), indent=1) + "\n" == text  # same keys, same order, same values
    assert m.split("val").logloss == json.loads(text)["val"]["logloss"]
    assert rundir.model_kind(out) == "zoo"
    assert not rundir.is_supernet(out) and rundir.weights_path(out) == out / rundir.CHECKPOINT_PT
    with pytest.raises(NasrecError, match="not a supernet run"):
        rundir.read_supernet(out)
    with pytest.raises(NasrecError, match=r"not a training run \(no model.json\)"):
        rundir.read_model(tmp_path)
    retrained = {
        "chosen": {
            "rank": 0,
            "hash": "ab",
            "supernet_score": 0.4,
            "run": "r",
            "val_logloss": 0.4,
            "test_logloss": None,
            "test_auc": None,
            "mflops": 0.1,
        },
        "runs": [
            {
                "rank": 0,
                "hash": "ab",
                "supernet_score": 0.4,
                "run": "r",
                "val_logloss": 0.4,
                "test_logloss": None,
                "test_auc": None,
                "mflops": 0.1,
                "seeds": [
                    {"seed": 1, "run": "r", "val_logloss": 0.4, "test_logloss": None, "test_auc": None, "mflops": 0.1}
                ],
            }
        ],
        "seeds": 2,
        "later": "kept",
    }
    assert rundir.RetrainResult.from_dict(retrained).to_dict() == retrained
    stage = {"fingerprint": "f", "done": False}
    assert rundir.StageRecord.from_dict(stage).to_dict() == stage


def test_a_failed_atomic_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    rundir.atomic_write_json(p, {"a": 1})

    def fail(fh: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rundir.atomic_write(p, fail)
    assert json.loads(p.read_text()) == {"a": 1} and sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]
