"""The search presets: named search and scoring settings with the training recipe of the top-k retraining."""

from __future__ import annotations

from typing import Any

from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.search.config import SearchConfig
from nasrec.search.scorer import ScoreConfig

DEFAULT_PRESET = "auto"
# name -> (search settings, scoring settings, training preset of the top-k retraining)
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # the paper's, fitted to the data and the time budget when the search starts (nasrec.search.auto)
    "auto": ({}, {}, "paper-final"),
    # spec 4: 128 + 240 x 8 = 2,048 candidates; 500 head steps; 150 x 8192 validation rows
    "paper": ({}, {}, "paper-final"),
    # about an hour on a 2-core CPU for Criteo-shaped data: 32 + 24 x 8 = 224 candidates
    "cpu": (
        dict(population=32, sample=16, generations=24, keep_per_generation=None, top_k=3),
        dict(finetune_steps=50, warmup_steps=5, val_batches=4),
        "cpu-quick",
    ),
    # minutes: the demo and quick checks
    "cpu-quick": (
        dict(population=16, sample=8, children=4, generations=8, keep_per_generation=None, top_k=2),
        dict(finetune_steps=20, warmup_steps=2, val_batches=2, val_batch_size=4096),
        "cpu-quick",
    ),
}


def resolve(
    preset: str | None, search: dict[str, Any] | None, score: dict[str, Any] | None
) -> tuple[SearchConfig, ScoreConfig, str]:
    """Search and scoring configurations of a preset (default "auto") with overrides applied.

    For `auto` these are its base, the paper's settings: `search` fits them to the data and the machine.
    """
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise NasrecError(f"unknown search preset {name!r} (expected one of: {', '.join(PRESETS)})")
    s, sc, train_preset = PRESETS[name]
    return (
        SearchConfig().updated(**{**s, **(search or {})}),
        ScoreConfig().updated(**{**sc, **(score or {})}),
        train_preset,
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
