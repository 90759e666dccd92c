"""What the `nasrec` command shows: log lines on stderr and in the run's nasrec.log, the result on stdout
(text, or one JSON object with --json), help texts, and path errors before torch is imported."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_synth_cache

from nasrec import console
from nasrec.cli import build_parser, main

TIME = re.compile(r"^\d\d:\d\d:\d\d ")  # every stderr log line starts with the time

TINY_PIPELINE = {
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
            "max_steps": 6,
            "batch_size": 256,
            "path_warmup_steps": 2,
            "threads": 1,
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
            "top_k": 1,
            "finetune_steps": 2,
            "warmup_steps": 1,
            "val_batches": 1,
            "val_batch_size": 256,
            "calib_batches": 2,
        },
        "retrain_set": {"max_steps": 3, "batch_size": 256, "threads": 1, "head_calib_batches": 2},
    },
    "final": {"preset": "cpu-quick", "set": {"max_steps": 4, "batch_size": 256, "threads": 1, "head_calib_batches": 2}},
    "baselines": {"models": ["lr"], "published": []},
}


def _cli(*args: str, stderr_file: Path) -> subprocess.CompletedProcess:
    """`nasrec ARGS` in a subprocess with stderr redirected to a file (not a terminal), as in a batch job."""
    with open(stderr_file, "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "nasrec.cli", *args], stdout=subprocess.PIPE, stderr=err, text=True, timeout=300
        )


def _one_json_object(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    obj = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert isinstance(obj, dict)
    return obj


# -- logs and results ------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_logs_each_epoch_to_a_redirected_stderr_and_json_is_alone_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cache = small_synth_cache(tmp_path, rows=3000, seed=2)
    run, err = tmp_path / "run", tmp_path / "stderr.log"
    sets = ["batch_size=256", "epochs=2", "eval_every=5", "eval_max_batches=1", "threads=1"]
    args = ["train", "--data", str(cache), "--model", "lr", "--out", str(run), *[x for s in sets for x in ("--set", s)]]
    proc = _cli(*args, stderr_file=err)
    assert proc.returncode == 0, err.read_text()
    lines = err.read_text().splitlines()
    assert lines and all(TIME.match(line) for line in lines), lines
    text = "\n".join(lines)
    for expected in (
        "training the lr model",
        "epoch 1/2 done: step",
        "epoch 2/2 done: step",
        "val log loss",
        "done, ",
        "test log loss",
    ):
        assert expected in text, (expected, text)
    # stdout: a readable summary, not JSON
    assert proc.stdout.startswith(f"trained model in {run}:") and "test  log loss" in proc.stdout
    # the run directory keeps the same lines, with the date
    log = (run / console.LOG_NAME).read_text()
    assert "epoch 2/2 done" in log and "finished in" in log and "(exit 0)" in log

    # --json: one strict JSON object on stdout and nothing else; the log lines still go to stderr
    proc = _cli(*args, "--resume", "--json", stderr_file=err)
    assert proc.returncode == 0, err.read_text()
    summary = _one_json_object(proc.stdout)
    assert summary["steps"] == 2 * 9 and 0 < summary["logloss"] < 1  # 2,400 train rows: 9 batches of 256
    assert "done, " in err.read_text()

    # a second writer refused: the run's log is left as it was
    before = (run / console.LOG_NAME).read_text()
    proc = _cli(*args, stderr_file=err)
    assert proc.returncode == 2 and "is not empty" in err.read_text()
    assert len(err.read_text().splitlines()) == 1
    assert (run / console.LOG_NAME).read_text() == before

    for command in (
        ["evaluate", "--model", str(run), "--data", str(cache)],
        ["compare", str(run), str(run), "--data", str(cache)],
    ):
        assert main(command) == 0
        text = capsys.readouterr().out
        assert "log loss" in text and "AUC" in text and not text.lstrip().startswith("{"), text
        assert main([*command, "--json"]) == 0
        assert _one_json_object(capsys.readouterr().out)


@pytest.mark.slow
def test_pipeline_logs_a_line_per_stage_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, out = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(TINY_PIPELINE))
    assert main(["run", str(cfg), "--out", str(out)]) == 0  # capsys: stderr is not a terminal, so no bars
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err and all(TIME.match(line) for line in err), err
    for n, stage in enumerate(("prepare", "supernet", "search", "tune", "final", "baselines", "report"), 1):
        assert any(f"[{n}/7] {stage}: running" in line for line in err), stage
        assert any(f"[{n}/7] {stage}: done in" in line for line in err), stage
    assert any("tune: done in" in line and "off (tune.trials is 0)" in line for line in err), err
    text = captured.err
    assert "prepare: split train" in text and "training the supernet" in text and "done, 6 steps" in text
    assert re.search(r"search generation 2/2: 8/8 scored, best \d\.\d{5}", text), text
    assert "search done: 8 candidates" in text and "retrained the top 1" in text
    assert captured.out.startswith(f"pipeline run in {out}") and "searched model" in captured.out
    assert "report: " in captured.out and "lr" in captured.out
    log = (out / console.LOG_NAME).read_text()
    assert "[7/7] report: done" in log and "search generation 2/2" in log and "finished in" in log

    # a rerun skips the finished stages; --json prints one object on stdout
    assert main(["run", str(cfg), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = _one_json_object(captured.out)
    assert summary["out"] == str(out) and set(summary["baselines"]) == {"lr"} and summary["report"]
    assert "[2/7] supernet: complete, skipped" in captured.err


def test_run_log_waits_until_the_run_directory_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".nasrec.lock"  # nasrec.rundir's writer lock, as its holder fills it in
    lock.write_text(f"pid {os.getpid()} (nasrec train)\n")  # the lock alone: the directory still counts as empty
    lg = logging.getLogger("nasrec.test")
    handlers = list(logging.getLogger("nasrec").handlers)  # the library's NullHandler alone
    with console.session("train", ["train", "--out", str(run)], run) as s:
        lg.info("before the run wrote anything")
        assert not (run / console.LOG_NAME).exists()
        (run / "config.json").write_text("{}")
        lg.info("after")
        s.finished(0)
    log = (run / console.LOG_NAME).read_text()
    assert log.index("before the run wrote anything") < log.index("after") < log.index("finished in")
    # another process holds the directory: its log is not ours to write, and a refused command leaves it alone
    lock.write_text(f"pid {os.getpid() + 1} (nasrec train --resume)\n")
    with console.session("train", ["train", "--out", str(run)], run) as s:
        lg.info("a second writer")
        s.failed("error: in use")
    assert (run / console.LOG_NAME).read_text() == log
    # a command that fails before writing its directory leaves no log there
    fresh = tmp_path / "fresh"
    with console.session("train", ["train"], fresh) as s:
        lg.info("starting")
        s.failed("error: something")
    assert not fresh.exists()
    assert logging.getLogger("nasrec").handlers == handlers  # the session put the loggers back


def test_json_output_is_strict() -> None:
    assert console.to_json({"a": float("nan"), "b": [float("inf"), 1.5], "p": Path("x")}) == (
        '{"a": null, "b": [null, 1.5], "p": "x"}'
    )


# -- help texts ------------------------------------------------------------------------------------
def _subcommand_help(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return sub.choices[name].format_help()


def test_help_texts() -> None:
    for name in ("prepare", "train", "supernet", "search", "run", "demo"):
        text = " ".join(_subcommand_help(name).split())
        assert re.search(r"--no-progress no progress bars", text), name
    for name in (
        "train",
        "supernet",
        "evaluate",
        "compare",
        "search",
        "rankcheck",
        "predict",
        "export",
        "run",
        "demo",
        "report",
        "prepare",
    ):
        assert "--json" in _subcommand_help(name), name
    for name in ("predict", "evaluate", "compare", "rankcheck"):
        assert "resume" not in _subcommand_help(name), name
    assert "on resume: the run's own" in " ".join(_subcommand_help("train").split())


# -- --quiet and --verbose ---------------------------------------------------------------------------
def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command that runs something, by its words (`arch info`), with its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return {prefix: parser}
    return {k: v for name, p in groups[0].choices.items() for k, v in _commands(p, (*prefix, name)).items()}


def test_every_command_takes_quiet_and_verbose() -> None:
    commands = _commands(build_parser())
    assert ("arch", "draw") in commands and ("cache", "verify") in commands and ("demo",) in commands
    for words, parser in commands.items():
        text = " ".join(parser.format_help().split())
        assert "-q, --quiet" in text and "-v, --verbose" in text, words
        assert parser.get_default("verbosity") == 0, words
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["report", "RUN", "--quiet", "--verbose"])  # one or the other
    assert e.value.code == 2


def test_quiet_keeps_warnings_and_the_result_verbose_adds_debug_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw.tsv"
    assert main(["synth", "--rows", "300", "--out", str(raw), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {raw}: 300 rows") and captured.err == ""
    prepare = ["prepare", "--format", "criteo", "--input", str(raw), "--split", "random"]

    assert main([*prepare, "--out", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr()
    assert "prepare: " in plain.err and "Python" not in plain.err  # INFO lines, no DEBUG line
    assert main([*prepare, "--out", str(tmp_path / "quiet"), "-q"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith(f"prepared {tmp_path / 'quiet'}: 300 rows")  # the result, no log
    assert quiet.out.splitlines()[1:] == plain.out.splitlines()[1:]
    assert main([*prepare, "--out", str(tmp_path / "verbose"), "--verbose"]) == 0
    verbose = capsys.readouterr()
    debug = [line for line in verbose.err.splitlines() if "on Python" in line]
    assert len(debug) == 1 and TIME.match(debug[0]) and "'command': 'prepare'" in debug[0]
    assert "prepare: " in verbose.err and verbose.out.splitlines()[1:] == plain.out.splitlines()[1:]

    # warnings and errors still reach stderr when quiet; no progress bars then, and none outside a command
    log = logging.getLogger("nasrec.test")
    with console.session("test", [], verbosity=-1):
        log.info("an info line")
        log.warning("a warning line")
        assert console.progress_bar(None, total=1) is None and console.progress_bar(False, total=1) is None
    err = capsys.readouterr().err
    assert "a warning line" in err and "an info line" not in err
    assert not console.progress_enabled(None) and console.progress_enabled(True)
    assert main(["report", str(tmp_path / "none"), "--quiet"]) == 2
    assert "no such run directory" in capsys.readouterr().err


# -- cheap errors ------------------------------------------------------------------------------------
_CHECK = """
import json, sys
from nasrec.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    results.append(rc)
print(json.dumps({"rc": results, "torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules}))
"""


@pytest.mark.slow
def test_path_and_number_errors_come_before_torch_is_imported(tmp_path: Path) -> None:
    fake_cache = tmp_path / "cache"
    fake_cache.mkdir()
    (fake_cache / "meta.json").write_text("{}")  # looks like a cache: the next argument is the wrong one
    not_cache, missing, out = tmp_path / "plain", tmp_path / "missing", tmp_path / "out"
    not_cache.mkdir()
    commands = [
        ["train", "--data", "/nonexistent", "--model", "lr", "--out", str(out)],
        ["train", "--data", str(fake_cache), "--arch", str(missing / "a.json"), "--out", str(out)],
        ["supernet", "--data", str(not_cache), "--out", str(out)],
        ["evaluate", "--model", str(missing), "--data", str(fake_cache)],
        ["compare", str(missing), str(missing), "--data", str(fake_cache)],
        ["search", "--supernet", str(not_cache), "--data", str(fake_cache), "--out", str(out)],
        ["rankcheck", "--supernet", str(missing), "--data", str(fake_cache), "--out", str(out)],
        ["predict", "--model", str(missing), "--input", "x.tsv", "--out", str(out / "p.csv")],
        ["export", "--model", str(missing), "--format", "onnx", "--out", str(out / "m.onnx")],
        ["prepare", "--format", "criteo", "--input", str(missing / "x.tsv"), "--out", str(out)],
        ["arch", "info", str(missing / "a.json")],
        ["run", str(missing / "c.yaml")],
        ["train", "--data", str(fake_cache), "--model", "lr", "--out", str(out), "--device", "tpu"],
        ["search", "--supernet", str(missing), "--data", str(fake_cache), "--out", str(out), "--workers", "0"],
        ["rankcheck", "--supernet", str(missing), "--data", str(fake_cache), "--out", str(out), "-k", "2"],
        ["compare", str(missing), str(missing), "--data", str(fake_cache), "--level", "1.5"],
        ["prepare", "--format", "criteo", "--input", "x", "--out", str(out), "--min-count", "0"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(commands)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["rc"] == [2] * len(commands), proc.stderr
    assert not res["torch"] and not res["numpy"], "an argument check imported torch or numpy"
    errors = proc.stderr.splitlines()
    assert len(errors) == len(commands) and "Traceback" not in proc.stderr, proc.stderr
    for argv, line in zip(commands, errors, strict=True):
        assert line.startswith(f"nasrec {argv[0]}: error: "), line
    assert "/nonexistent: no such directory" in errors[0] and "a.json: no such file" in errors[1]
    assert "not a nasrec cache" in errors[2] and "no such directory" in errors[3]
    assert "device must be one of" in errors[12] and "--workers: must be >= 1" in errors[13]
    assert not out.exists()  # nothing was written
