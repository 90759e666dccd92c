"""Cheap checks of a command's arguments, run before anything heavy (torch, numpy) is imported.

A wrong path or number then fails in a fraction of a second with a one-line error, instead of after
the seconds that importing torch takes on a loaded machine. The commands check the same things again
where they do the work; these checks only look at the file system and the numbers.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from nasrec.errors import NasrecError
from nasrec.rundir import MODEL_JSON

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|auto")  # as nasrec.device.check_device_name, which imports torch


# -- argparse types: a bad number is a usage error ------------------------------------------------
def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, not {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {text}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = _number(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


# -- paths ---------------------------------------------------------------------------------------
def input_file(path: str | Path) -> None:
    """An existing regular file (the messages of `nasrec.data.sources.check_inputs`)."""
    p = Path(path)
    if not p.exists():
        raise NasrecError(f"{p}: no such file")
    if not p.is_file():
        raise NasrecError(f"{p}: not a file" + (" (a directory)" if p.is_dir() else ""))


def config_file(path: str | Path, what: str) -> None:
    """A YAML / JSON file the user wrote (the message of `nasrec.configfile.read_config_file`)."""
    if not Path(path).is_file():
        raise NasrecError(f"{path}: {what} file not found")


def cache_dir(path: str | Path) -> None:
    p = Path(path)
    if not p.exists():
        raise NasrecError(f"{p}: no such directory (expected a cache made by `nasrec prepare`)")
    if not p.is_dir() or not (p / "meta.json").is_file():
        raise NasrecError(f"{p}: not a nasrec cache (no meta.json)")


def run_dir(path: str | Path, what: str = "training run", made_by: str = "nasrec train") -> None:
    p = Path(path)
    if not p.exists():
        raise NasrecError(f"{p}: no such directory (expected a {what} of `{made_by}`)")
    if not p.is_dir() or not (p / MODEL_JSON).is_file():
        raise NasrecError(f"{p}: not a {what} (no {MODEL_JSON})")


def output_dir(path: str | Path) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NasrecError(f"{p}: exists and is not a directory")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NasrecError(f"{p}: cannot be created ({parent} is not a directory)")
            break


def output_file(path: str | Path) -> None:
    p = Path(path)
    if p.is_dir():
        raise NasrecError(f"{p}: is a directory (expected a file name)")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NasrecError(f"{p}: cannot be created ({parent} is not a directory)")
            break


def device(name: str | None) -> None:
    if name is not None and not _DEVICE.fullmatch(name):
        raise NasrecError(f"device must be one of cpu, cuda, cuda:N, auto, not {name!r}")


# -- per command ---------------------------------------------------------------------------------
def _prepare(a: argparse.Namespace) -> None:
    for f in a.input:
        input_file(f)
    if a.schema:
        config_file(a.schema, "schema")
    if a.kdd_profile:
        input_file(a.kdd_profile)
    if any(r < 0 for r in a.ratios) or not sum(a.ratios) > 0:
        raise NasrecError(f"--ratios must be >= 0 with a positive sum, not {' '.join(map(str, a.ratios))}")
    output_dir(a.out)


def _synth(a: argparse.Namespace) -> None:
    if a.config:
        input_file(a.config)
    if getattr(a, "like", None):
        input_file(a.like)
    output_file(a.out)


def _arch(a: argparse.Namespace) -> None:
    if a.arch_command in ("info", "draw"):
        input_file(a.file)
    if a.arch_command == "info" and a.cache:
        cache_dir(a.cache)
    if getattr(a, "out", None):
        output_file(a.out)


def _train(a: argparse.Namespace) -> None:
    cache_dir(a.data)
    if getattr(a, "arch", None):
        input_file(a.arch)
    output_dir(a.out)


def _evaluate(a: argparse.Namespace) -> None:
    run_dir(a.model)
    cache_dir(a.data)


def _compare(a: argparse.Namespace) -> None:
    for r in a.runs:
        run_dir(r)
    cache_dir(a.data)


def _search(a: argparse.Namespace) -> None:
    if getattr(a, "halving", None) is not None and not a.retrain:
        raise NasrecError("--halving chooses among the retrained top k: give --retrain too")
    run_dir(a.supernet, "supernet run directory", "nasrec supernet")
    cache_dir(a.data)
    output_dir(a.out)


def _predict(a: argparse.Namespace) -> None:
    run_dir(a.model)
    for f in a.input:
        input_file(f)
    if a.data:
        cache_dir(a.data)
    output_file(a.out)


def _export(a: argparse.Namespace) -> None:
    run_dir(a.model)
    if a.data:
        cache_dir(a.data)
    output_file(a.out)


def _run(a: argparse.Namespace) -> None:
    config_file(a.config, "pipeline config")
    if a.out:
        output_dir(a.out)


def _demo(a: argparse.Namespace) -> None:
    output_dir(a.out)


def _report(a: argparse.Namespace) -> None:
    if not Path(a.run).is_dir():
        raise NasrecError(f"{a.run}: no such run directory")


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "prepare": _prepare,
    "synth": _synth,
    "arch": _arch,
    "train": _train,
    "supernet": _train,
    "evaluate": _evaluate,
    "compare": _compare,
    "search": _search,
    "rankcheck": _search,
    "predict": _predict,
    "export": _export,
    "run": _run,
    "demo": _demo,
    "report": _report,
}


def check(args: argparse.Namespace) -> None:
    """Check a parsed command's paths and device name; raises NasrecError (nothing heavy is imported)."""
    device(getattr(args, "device", None))
    fn = CHECKS.get(args.command)
    if fn is not None:
        fn(args)
