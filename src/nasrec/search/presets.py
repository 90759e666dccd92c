"""The search presets: named search and scoring settings with the training recipe of the top-k retraining.

Each is a YAML file in nasrec/presets/search (package data): `search` holds `SearchConfig` fields,
`score` holds `ScoreConfig` fields, and `train_preset` names the training preset the top-k are retrained
with. A file is checked by type and range when its preset is used, and a mistake is one line naming the
file and the key. The default, `auto`, is the paper's preset fitted to the data and to a time budget
(`nasrec.search.auto`); its file holds the base it starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nasrec.configfile import ConfigError, Rule, check_mapping, preset_file, preset_names, read_preset
from nasrec.search import config, scorer
from nasrec.search.config import SearchConfig
from nasrec.search.scorer import ScoreConfig

DEFAULT_PRESET = "auto"


@dataclass(frozen=True)
class SearchPreset:
    """A search preset as its file gives it: settings that differ from the configurations' defaults."""

    train_preset: str
    search: dict[str, Any] = field(default_factory=dict)
    score: dict[str, Any] = field(default_factory=dict)


def load_preset(name: str) -> SearchPreset:
    """The search preset `name` (nasrec/presets/search/NAME.yaml), checked by type and range."""
    path = preset_file("search", name, "search preset")
    what = f"search preset {path}"
    given = read_preset(path, "search preset")
    top = check_mapping(what, "", given, SearchPreset, {"train_preset": Rule(choices=preset_names("train"))})
    if "train_preset" not in top:
        raise ConfigError(what, "train_preset", "missing (the training preset of the top-k retraining)")
    search = check_mapping(what, "search", top.get("search", {}), SearchConfig, config.RULES)
    score = check_mapping(what, "score", top.get("score", {}), ScoreConfig, scorer.RULES)
    for section, cls, values in (("search", SearchConfig, search), ("score", ScoreConfig, score)):
        try:  # the combinations too (a tournament larger than the population)
            cls().updated(**values)
        except ConfigError as e:
            raise ConfigError(
                what, f"{section}.{e.key}", e.problem, tuple(f"{section}.{k}" for k in e.related)
            ) from None
    return SearchPreset(top["train_preset"], search, score)


def resolve(
    preset: str | None, search: dict[str, Any] | None, score: dict[str, Any] | None
) -> tuple[SearchConfig, ScoreConfig, str]:
    """Search and scoring configurations of a preset (default "auto") with overrides applied.

    For `auto` these are its base, the paper's settings: `search` fits them to the data and the machine.
    """
    p = load_preset(preset or DEFAULT_PRESET)
    return (
        SearchConfig().updated(**{**p.search, **(search or {})}),
        ScoreConfig().updated(**{**p.score, **(score or {})}),
        p.train_preset,
    )


def split_overrides(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` keys go to the search or the scoring configuration by name."""
    search_keys = set(SearchConfig().to_dict())
    score_keys = set(ScoreConfig().to_dict())
    s, sc = {}, {}
    for k, v in (overrides or {}).items():
        if k in search_keys:
            s[k] = v
        elif k in score_keys:
            sc[k] = v
        else:
            raise ConfigError(
                "search settings",
                str(k),
                f"unknown key (known: search {', '.join(sorted(search_keys))}; "
                f"scoring {', '.join(sorted(score_keys))})",
            )
    return s, sc
