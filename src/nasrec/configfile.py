"""Reading the YAML / JSON files users write (schemas, search spaces), with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
