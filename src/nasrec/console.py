"""What the `nasrec` command shows: log lines on stderr (and in a run directory's `nasrec.log`), results on stdout.

The library logs through `logging` under the `nasrec.*` logger names: a line per stage, epoch, evaluation or
search generation, and a summary at the end. It configures no handler itself; the command line does,
for one command at a time (`session`):

- stderr: one line per record, `HH:MM:SS message`: INFO and above, warnings only with `--quiet`, DEBUG too
  with `--verbose`. When stderr is a terminal (and not `--quiet`) the long commands show tqdm progress
  bars as well (`progress_bar`, the one progress mechanism), and a record that only repeats what a bar
  shows (`extra=BAR`) is left out there. Lines are written through tqdm when it is loaded, so that they
  do not break a bar. Outside a command no bar is shown unless a caller asks for one.
- `<run dir>/nasrec.log` (train, supernet, search, rankcheck, run, demo): every record, with the date,
  level and logger. The file appears once the command has written its run directory (so that a run
  directory is still "empty" until then); lines logged before are kept and written first.

stdout holds the command's result alone: readable text, or with `--json` one JSON object (`show`, `out`).

This module imports nothing heavy (no torch, numpy or tqdm): the command line loads it first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOG_NAME = "nasrec.log"
_BAR_KEY = "nasrec_bar"
# extra= of a log line that a progress bar on the terminal already shows (a periodic step line, say)
BAR: dict[str, Any] = {_BAR_KEY: True}


def bar_extra(bar_shown: bool) -> dict[str, Any] | None:
    """`extra=` for a progress line: BAR while a bar shows the same progress, else None."""
    return BAR if bar_shown else None


class Heartbeat:
    """True at most once every `every` seconds: periodic progress lines when no bar shows progress."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last = time.monotonic()

    def reset(self) -> None:
        """Count the interval from now (a line was just written for another reason)."""
        self._last = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False


def duration(seconds: float) -> str:
    """`seconds` as a short readable duration: 4.2 s, 3 min 05 s, 2 h 07 min."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


# -- handlers --------------------------------------------------------------------------------------
class _StderrFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            record.message = f"{record.levelname.lower()}: {record.message}"
        return super().formatMessage(record)


class _StderrHandler(logging.StreamHandler):
    """Lines on the current sys.stderr (as pytest's capsys replaces it), through tqdm when it is loaded."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(_StderrFormatter())
        self.addFilter(lambda r: not getattr(r, _BAR_KEY, False))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is None or not _isatty(self.stream):
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)  # clears and redraws open bars
        except Exception:
            self.handleError(record)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class RunLogHandler(logging.Handler):
    """Appends records to `<directory>/nasrec.log` once this process writes the run directory.

    Records are kept in memory until this process holds the directory's writer lock (`nasrec.rundir`)
    and the directory holds a file of the run (anything but dot-files, such as the lock and temporary
    files, and the log itself): the log then never makes a new run directory look used, and a command
    refused because another one writes the directory leaves that run's log alone. `close` writes the
    records kept if the directory was written by then; a failed command drops them (`discard_pending`).
    """

    def __init__(self, directory: str | Path, header: str) -> None:
        super().__init__(logging.DEBUG)
        self.directory = Path(directory)
        self.header = header
        self._pending: list[logging.LogRecord] = []
        self._fh: Any = None
        self._failed = False
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))

    @property
    def path(self) -> Path:
        return self.directory / LOG_NAME

    def _has_files(self) -> bool:
        try:
            return any(not e.name.startswith(".") and e.name != LOG_NAME for e in os.scandir(self.directory))
        except OSError:
            return False

    def _ours(self) -> bool:
        """Whether this process holds the directory's writer lock (or the directory has no lock file)."""
        from nasrec.rundir import LOCK_NAME

        try:
            holder = (self.directory / LOCK_NAME).read_text()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return holder.split()[:2] == ["pid", str(os.getpid())]

    def _started(self) -> bool:
        return self._has_files() and self._ours()

    def _open(self) -> bool:
        if self._fh is None and not self._failed:
            try:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open while the command runs
                self._fh.write(f"---- {self.header}\n")
            except OSError:
                self._failed = True  # a read-only directory: the log on stderr is all there is
        return self._fh is not None

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed:
            return
        if self._fh is None:
            self._pending.append(record)
            if not self._started() or not self._open():
                return
            records, self._pending = self._pending, []
        else:
            records = [record]
        try:
            for r in records:
                self._fh.write(self.format(r) + "\n")
            self._fh.flush()
        except Exception:
            self.handleError(record)

    def discard_pending(self) -> None:
        """Forget the records not written yet (a command that failed before its run directory was written)."""
        self._pending = []

    @property
    def opened(self) -> bool:
        return self._fh is not None

    def close(self) -> None:
        try:
            if self._pending and self._has_files() and self._open():
                for r in self._pending:
                    self._fh.write(self.format(r) + "\n")
            self._pending = []
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        except OSError:
            pass
        finally:
            super().close()


# -- one command's logging -------------------------------------------------------------------------
class Session:
    """The logging set up for one command: a stderr handler and any run-directory logs."""

    def __init__(self, command: str, argv: list[str], level: int, bars: bool = False) -> None:
        self.command = command
        self.bars = bars  # whether progress bars are wanted when a caller leaves it open (`progress_enabled`)
        self.header = f"nasrec {' '.join(argv)} (pid {os.getpid()})"
        self.logger = logging.getLogger("nasrec")
        self.stderr = _StderrHandler()
        self.stderr.setLevel(level)
        self.run_logs: list[RunLogHandler] = []
        self.t0 = time.perf_counter()

    def add_run_log(self, directory: str | Path) -> None:
        """Also log to `<directory>/nasrec.log` (only rank 0 of a torchrun group writes it)."""
        if _rank() != 0 or any(h.directory == Path(directory) for h in self.run_logs):
            return
        h = RunLogHandler(directory, self.header)
        self.run_logs.append(h)
        self.logger.addHandler(h)

    def _to_run_logs(self, level: int, message: str, exc: BaseException | None = None, opened: bool = False) -> None:
        """A line for the run logs only (`opened`: those written to already), not for stderr."""
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        record = self.logger.makeRecord(self.logger.name, level, __file__, 0, message, None, exc_info)
        for h in self.run_logs:
            if h.opened or not opened:
                h.handle(record)

    def finished(self, rc: int) -> None:
        """Close the run logs' account of the command: its time and exit status."""
        self._to_run_logs(logging.INFO, f"finished in {duration(time.perf_counter() - self.t0)} (exit {rc})")

    def failed(self, message: str, exc: BaseException | None = None) -> None:
        """Record why the command stopped, in the run logs it has written to (the others are left alone)."""
        for h in self.run_logs:
            if not h.opened:
                h.discard_pending()  # e.g. refused: the directory holds another run, whose log this is not
        self._to_run_logs(logging.ERROR, message, exc, opened=True)


_current: Session | None = None


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def session(command: str, argv: list[str], run_dir: str | Path | None = None, verbosity: int = 0) -> Iterator[Session]:
    """Configure the `nasrec` loggers for one command, and put them back as they were afterwards.

    INFO and above go to stderr; `verbosity` -1 (`--quiet`) keeps warnings and errors only and no progress
    bars, 1 (`--verbose`) adds DEBUG. Torchrun ranks other than 0, which would repeat rank 0's lines, show
    warnings and errors only. `run_dir` adds its `nasrec.log`, which gets INFO and above (DEBUG too when
    verbose) whatever stderr shows.
    """
    global _current
    logger = logging.getLogger("nasrec")
    saved = (logger.level, logger.propagate, _current)
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    s = Session(command, argv, level if _rank() == 0 else logging.WARNING, bars=verbosity >= 0 and _isatty(sys.stderr))
    logger.addHandler(s.stderr)
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False  # one handler on stderr, not another through the root logger
    _current = s
    if run_dir is not None:
        s.add_run_log(run_dir)
    try:
        yield s
    finally:
        for h in [s.stderr, *s.run_logs]:
            logger.removeHandler(h)
            h.close()
        logger.level, logger.propagate, _current = saved


def add_run_log(directory: str | Path) -> None:
    """Log the current command to `<directory>/nasrec.log` as well (no-op outside a command)."""
    if _current is not None:
        _current.add_run_log(directory)


# -- progress bars --------------------------------------------------------------------------------
def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress bars: `progress` when given; else the command's choice, none outside one."""
    if progress is not None:
        return progress
    return _current is not None and _current.bars


def progress_bar(progress: bool | None, **kwargs: Any) -> Any:
    """A tqdm bar on stderr that disappears when closed, or None when bars are off (`progress_enabled`)."""
    if not progress_enabled(progress):
        return None
    from tqdm import tqdm  # log lines are written through tqdm once it is loaded, so they do not break a bar

    return tqdm(file=sys.stderr, leave=False, **kwargs)


# -- results on stdout ----------------------------------------------------------------------------
def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None, so that the JSON is strict (jq, JavaScript)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """One line of strict JSON (non-finite numbers as null; paths and other objects as strings)."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=str))), allow_nan=False)


def out(text: str, end: str = "\n") -> None:
    """Write (part of) a command's result on stdout: the one place the command line prints its results."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def note(text: str) -> None:
    """A line on stderr as it is, without time stamp or level: a command's error line, a skipped input row."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def show(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """Write a command's result on stdout: `text(result)`, or one JSON object with `--json`."""
    out(to_json(result) if as_json else text(result).rstrip("\n"))


def mflops(x: float | None) -> str:
    """MFLOPs for a summary: 4 significant digits (a logistic regression's 1.3e-05 stays visible)."""
    return "n/a" if x is None else f"{x:.4g}"


def num(x: Any, digits: int = 5) -> str:
    """A metric for a summary line: fixed digits, `n/a` when missing or not finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"
