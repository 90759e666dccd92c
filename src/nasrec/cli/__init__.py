"""The `nasrec` command line: one subcommand per pipeline stage, mirroring the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence

from nasrec import __version__, clicheck, console
from nasrec.cli import arch, data, pipeline, search, serve, train, tune
from nasrec.errors import NasrecError

_ALL = {
    **data.COMMANDS,
    **arch.COMMANDS,
    **train.COMMANDS,
    **search.COMMANDS,
    **serve.COMMANDS,
    **pipeline.COMMANDS,
    **tune.COMMANDS,
}
# The order of `nasrec --help`.
_ORDER = (
    "prepare",
    "synth",
    "arch",
    "train",
    "supernet",
    "evaluate",
    "compare",
    "unshard",
    "tune",
    "search",
    "rankcheck",
    "predict",
    "export",
    "latency",
    "run",
    "demo",
    "report",
    "cache",
)
COMMANDS = {name: _ALL[name] for name in _ORDER}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the full usage stays available with --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `nasrec` command."""
    parser = _Parser(prog="nasrec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nasrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():
        _add_verbosity(command)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """`--quiet` / `--verbose` on a command, or on each subcommand of a command group (`arch`, `cache`)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if groups:
        for command in groups[0].choices.values():
            _add_verbosity(command)
        return
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        help="on stderr warnings and errors only, no progress lines or bars (the result stays on stdout)",
    )
    how.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="debug lines as well, on stderr and in the run directory's nasrec.log",
    )
    parser.set_defaults(verbosity=0)


log = logging.getLogger(__name__)
# Commands whose --out is a run directory: their log is also written to <out>/nasrec.log (`run` adds its own).
_RUN_LOGS = ("train", "supernet", "tune", "search", "rankcheck", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors become a one-line message and exit code 2.

    Paths and numbers are checked first, before anything heavy is imported (`nasrec.clicheck`). Log
    lines go to stderr and, for a command with a run directory, to its `nasrec.log` (`nasrec.console`);
    stdout holds the result alone, as text or (`--json`) one JSON object.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    run_log = getattr(args, "out", None) if args.command in _RUN_LOGS else None
    with console.session(args.command, argv, run_log, verbosity=args.verbosity) as session:
        log.debug("nasrec %s on Python %s: %s", __version__, platform.python_version(), vars(args))
        try:
            clicheck.check(args)
            rc = COMMANDS[args.command][1](args)
            session.finished(rc)
            return rc
        except NasrecError as e:
            console.note(f"nasrec {args.command}: error: {e}")
            session.failed(f"error: {e}")
            return e.exit_code
        except BrokenPipeError:  # output piped into a program that stopped reading (e.g. `| head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            session.finished(0)
            return 0
        except KeyboardInterrupt:
            console.note(f"nasrec {args.command}: interrupted")
            session.failed("interrupted")
            return 130
        except Exception as e:  # a bug: its traceback goes to stderr as usual, and into the run log
            session.failed(f"failed: {type(e).__name__}: {e}", exc=e)
            raise
