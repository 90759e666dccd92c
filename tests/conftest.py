"""Shared test fixtures: the real datasets in ../shared (tests skip cleanly without them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.data.synthetic import SynthConfig, generate_synthetic, synth_schema

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data, or skip the test when it is absent."""
    if not DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return DATA


# A small synthetic shape (4 dense, 6 categorical fields) for tests that train models end to end.
SMALL_SYNTH = SynthConfig(
    num_dense=4, num_sparse=6, cardinalities=(5, 12, 30, 60, 8, 20), num_dense_linear=2, num_interactions=3, num_gated=1
)


def small_synth_cache(root: Path, rows: int, seed: int, **prepare_options: object) -> tuple[Path, Path]:
    """Write `rows` SMALL_SYNTH rows under `root` and prepare them (vocabulary encoding); (raw file, cache)."""
    raw = root / "synth.tsv"
    generate_synthetic(raw, rows=rows, seed=seed, config=SMALL_SYNTH)
    schema = root / "schema.json"
    schema.write_text(json.dumps(synth_schema(SMALL_SYNTH).to_dict()))
    prepare(
        PrepareConfig(
            inputs=(str(raw),),
            out=str(root / "cache"),
            format="schema",
            schema=str(schema),
            encoding="vocab",
            **prepare_options,
        )
    )  # type: ignore[arg-type]
    return raw, root / "cache"
