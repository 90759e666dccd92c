"""Shared test fixtures: the real datasets in ../shared (tests skip cleanly without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data, or skip the test when it is absent."""
    if not DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return DATA
