"""The one exception type nasrec raises for problems a user can fix."""

from __future__ import annotations


class NasrecError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""

    exit_code = 2


class DataError(NasrecError):
    """Malformed input data, located by file, line and column where known."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        unit: str = "line",
    ) -> None:
        self.reason = reason
        self.unit = unit
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def to_dict(self) -> dict:
        """Return the error as a JSON-serialisable record (used for skipped-row reports)."""
        return {"file": self.file, "line": self.line, "column": self.column, "reason": self.reason}
