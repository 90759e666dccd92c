"""Reading the YAML / JSON files users write (schemas, search spaces), with one-line errors; config updates."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

from nasrec.errors import NasrecError


def read_config_file(path: Path | str, what: str) -> Any:
    """Parsed content of a .yaml/.yml or .json file; `what` names it in error messages."""
    path = Path(path)
    if not path.is_file():
        raise NasrecError(f"{path}: {what} file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # both parsers raise their own error types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NasrecError(f"{path}: cannot parse {what} ({first})") from None


T = TypeVar("T")


def checked_replace(config: T, what: str, changes: dict[str, Any]) -> T:
    """A copy of the dataclass `config` with `changes`; unknown names raise NasrecError naming `what`."""
    unknown = sorted(set(changes) - {f.name for f in fields(config)})  # type: ignore[arg-type]
    if unknown:
        raise NasrecError(f"{what}: unknown key(s) {', '.join(unknown)}")
    return replace(config, **changes)  # type: ignore[type-var]
