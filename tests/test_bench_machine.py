"""The bench scripts' machine description and reference ratios (bench/_machine.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _machine  # bench/ is not a package


def test_machine_line_names_the_cpu_and_torch_capability() -> None:
    info = _machine.machine_info()
    assert info["cpu"] and info["cpu_capability"] not in ("", None)
    line = _machine.machine_line()
    assert str(info["cpu"]) in line and f"capability {info['cpu_capability']}" in line


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_a_ratio_only_against_a_figure_of_this_cpu_capability(monkeypatch: pytest.MonkeyPatch, capability: str) -> None:
    monkeypatch.setattr(_machine, "cpu_capability", lambda: capability)
    r = _machine.reference("supernet small sampled b512", 944.0)
    assert r["reference"] == {"AVX512": 799, "AVX2": 472}  # both machines' raw figures, always shown
    if capability == "AVX2":
        assert r["ratio"] == 2.0 and r["ratio_against"] == "AVX2"
    elif capability == "AVX512":
        assert r["ratio"] == round(944 / 799, 1)
    else:
        assert "ratio" not in r and "not divided" in _machine.reference_text("supernet small sampled b512", 944.0)
    # a figure the reference has only on the AVX-512 CPU is never divided on the AVX2 one
    full = _machine.reference("supernet small full-path b512", 100.0)
    assert ("ratio" in full) == (capability == "AVX512")
