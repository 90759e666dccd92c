"""Reading the YAML / JSON files users write (schemas, search spaces), with one-line errors; config checks.

Every configuration value (the training, search and scoring configurations, and the sections of a
pipeline configuration) is checked by one mechanism: `check_value` checks one value against its type
and a `Rule` (range, choices), `check_fields` every field of a dataclass (the types come from its
annotations, the rules from a table next to it), and `checked_replace` refuses unknown keys. A problem
raises `ConfigError`, one line of one of two shapes, naming the configuration and the key:

    training config lr: expected a number > 0 and <= 100 (...), got nan
    config search.set.populaton: unknown key (known: children, generations, ...)

Types: a bool is not an integer (`batch_size: true` is a mistake), an integer is accepted for a number
(and stored as a float), and a number must be finite.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import types
import typing
from dataclasses import dataclass, fields, replace
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

# Seeds of the training, search and pipeline configurations: >= 0 (numpy refuses negative ones), 32 bits.
SEED_MAX = 2**32 - 1


class ConfigError(NasrecError):
    """A configuration value that is refused: `what` names the configuration, `key` the setting.

    `related` lists other keys the problem involves (a combination, such as a tournament larger than
    the population), so that a caller can point at whichever of them a user gave.
    """

    def __init__(self, what: str, key: str, problem: str, related: tuple[str, ...] = ()) -> None:
        self.what, self.key, self.problem, self.related = what, key, problem, tuple(related)
        super().__init__(f"{what} {key}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments (a worker process's error reaches its parent whole)."""
        return (type(self), (self.what, self.key, self.problem, self.related))


@dataclass(frozen=True)
class Rule:
    """What a value may be besides its type: a range, a set of choices; `why` explains a bound.

    `kind` (int, float, str, bool, list, dict) and `optional` (None allowed) are taken from a
    dataclass field's annotation when not given; `desc` replaces the generated description.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    why: str | None = None
    kind: Any = None
    optional: bool = False
    desc: str | None = None


SEED = Rule(ge=0, le=SEED_MAX)
# Adagrad and Adam move a weight by up to the learning rate per step (the sign of its gradient), so a
# rate of 100 already throws every weight far off in one step, and one near 1e38 overflows float32.
LEARNING_RATE = Rule(gt=0, le=100, why="Adagrad and Adam move a weight by up to lr per step; the presets use 0.1-0.16")

_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def show(value: Any) -> str:
    """A value as a user wrote it in YAML or JSON (true, null, 'text', 1e+300, nan)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return type(value).__name__
    return repr(value)


def describe(kind: Any, rule: Rule | None = None, optional: bool = False) -> str:
    """What a value must be, in words ("an integer >= 1 or null")."""
    rule = rule or Rule()
    if rule.desc:
        text = rule.desc
    elif rule.choices is not None:
        text = "one of " + ", ".join(str(c) for c in rule.choices)
    else:
        text = _KIND_NAMES.get(kind, "a value")
        bounds = [
            f"{op} {_num(v)}"
            for op, v in ((">=", rule.ge), (">", rule.gt), ("<=", rule.le), ("<", rule.lt))
            if v is not None
        ]
        if bounds:
            text += " " + " and ".join(bounds)
    if optional:
        text += " or null"
    if rule.why:
        text += f" ({rule.why})"
    return text


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def check_value(
    what: str, key: str, value: Any, kind: Any = None, rule: Rule | None = None, optional: bool = False
) -> Any:
    """`value` checked against its type and `rule` (ints become floats for a float); raises ConfigError."""
    rule = rule or Rule()
    kind = rule.kind if rule.kind is not None else kind
    optional = optional or rule.optional

    given = value

    def fail() -> None:
        raise ConfigError(what, key, f"expected {describe(kind, rule, optional)}, got {show(given)}")

    if value is None:
        if not optional:
            fail()
        return None
    if kind is bool:
        if not isinstance(value, bool):
            fail()
    elif kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            fail()
    elif kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            fail()
        value = float(value)
    elif kind is not None and not isinstance(value, kind):
        fail()
    if rule.choices is not None and value not in rule.choices:
        fail()
    for bound, ok in ((rule.ge, operator.ge), (rule.gt, operator.gt), (rule.le, operator.le), (rule.lt, operator.lt)):
        if bound is not None and not ok(value, bound):
            fail()
    return value


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[Any, bool]]:
    """(kind, optional) of each field of a dataclass, from its annotations; kind None: not checked by type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint = hints.get(f.name)
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = [typing.get_origin(a) or a for a in args if a is not type(None)]  # dict[str, Any]: a dict
        kind = kinds[0] if len(kinds) == 1 and kinds[0] in _KIND_NAMES else None
        out[f.name] = (kind, len(kinds) < len(args))
    return out


def check_fields(config: Any, what: str, rules: dict[str, Rule]) -> None:
    """Check every field of the (frozen) dataclass `config` by type and rule; ints are stored as floats for floats."""
    for name, (kind, optional) in _field_kinds(type(config)).items():
        value = getattr(config, name)
        checked = check_value(what, name, value, kind, rules.get(name), optional)
        if checked is not value:
            object.__setattr__(config, name, checked)


def check_mapping(
    what: str, path: str, values: dict[str, Any], cls: type, rules: dict[str, Rule], exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`values` (some fields of the dataclass `cls`, less `exclude`) checked as `check_fields` would.

    Keys are named `path.key` in errors (`key` alone when `path` is empty).
    """
    kinds = {k: v for k, v in _field_kinds(cls).items() if k not in exclude}
    out = {}
    for k, v in values.items():
        key = f"{path}.{k}" if path else str(k)
        if k not in kinds:
            raise ConfigError(what, key, f"unknown key (known: {', '.join(sorted(kinds))})")
        out[k] = check_value(what, key, v, kinds[k][0], rules.get(k), kinds[k][1])
    return out


def checked_replace(config: T, what: str, changes: dict[str, Any]) -> T:
    """A copy of the dataclass `config` with `changes`; an unknown name raises ConfigError naming `what`."""
    known = [f.name for f in fields(config)]  # type: ignore[arg-type]
    unknown = sorted((k for k in changes if k not in known), key=str)
    if unknown:
        raise ConfigError(what, str(unknown[0]), f"unknown key (known: {', '.join(sorted(known))})")
    return replace(config, **changes)  # type: ignore[type-var]


# The presets shipped with nasrec, one YAML file per preset: presets/<kind>/<name>.yaml (package data). A new
# file is a new preset: every list of names (the CLI's choices, the pipeline's checks) is read from the folder.
PRESET_DIR = Path(__file__).parent / "presets"


def preset_names(kind: str) -> tuple[str, ...]:
    """Names of the presets of one kind ("train" or "search"), sorted: their files' names (none is read)."""
    return tuple(sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml")))


def preset_file(kind: str, name: str, what: str) -> Path:
    """The file of the preset `name` of a kind; an unknown name is an error listing the known ones."""
    names = preset_names(kind)
    if name not in names:
        raise NasrecError(f"unknown {what} {name!r} (expected one of: {', '.join(names)})")
    return PRESET_DIR / kind / f"{name}.yaml"


def read_preset(path: Path, what: str) -> dict[str, Any]:
    """The settings in a preset file (an empty file has none); anything but a mapping is a one-line error."""
    values = read_config_file(path, what)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise NasrecError(f"{path}: a {what} is a mapping of settings, not {show(values)}")
    return values
