"""A search under a serving-latency cap: feasibility, the front over latency, caps named after a baseline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_search import SMALL_EA, Recorder, cost

from nasrec.configfile import ConfigError
from nasrec.export.latency_caps import resolve_latency_cap
from nasrec.latency.budget import cheapest_latency, check_latency_cap
from nasrec.model.cost import arch_cost
from nasrec.search.config import SearchConfig
from nasrec.search.evolution import Search
from nasrec.search.pareto import dominates
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_SMALL
from nasrec.zoo.budget import parse_latency_cap


def fake_latency(arch: Architecture) -> float:
    """Milliseconds that grow with blocks, widths and MFLOPs but do not order like MFLOPs alone."""
    c = arch_cost(arch, 13, 26)
    return 0.02 + 0.004 * sum(len(b.dense_in) + len(b.sparse_in) for b in arch.blocks) + 0.01 * c.mflops


@dataclass
class FakeModel:
    """What the search needs of a `LatencyModel`: predict, and the setting it was measured at."""

    batch: int = 1
    threads: int = 1

    def predict(self, arch: Architecture) -> float:
        return fake_latency(arch)


def history(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]


def test_every_candidate_is_within_the_latency_cap_and_records_its_prediction(tmp_path: Path) -> None:
    free = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, tmp_path / "free", latency=fake_latency).run()
    spread = sorted(h["latency_ms"] for h in history(tmp_path / "free"))
    cap = spread[len(spread) // 3]  # a cap most unconstrained candidates exceed
    cfg = SMALL_EA.updated(max_latency_ms=cap)
    rec = Recorder()
    res = Search(NASREC_SMALL, rec, cost, cfg, tmp_path / "capped", latency=fake_latency).run()
    assert all(fake_latency(a) <= cap for a in rec.seen)
    rows = history(tmp_path / "capped")
    assert all(
        h["latency_ms"] == pytest.approx(fake_latency(Architecture.from_dict(h["arch"])), abs=1e-6) for h in rows
    )
    assert res["best"]["latency_ms"] <= cap and "pareto_latency" in free


def test_the_latency_front_is_the_non_dominated_set_over_predicted_latency(tmp_path: Path) -> None:
    out = tmp_path / "s"
    res = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(pareto=True), out, latency=fake_latency).run()
    front = json.loads((out / "pareto_latency.json").read_text())
    assert [f["hash"] for f in front] == res["pareto_latency"] and len(front) >= 2
    pts = {h["hash"]: (h["score"], h["latency_ms"]) for h in history(out)}
    on = {f["hash"] for f in front}
    for h, p in pts.items():
        if h in on:
            assert not any(dominates(q, p) for q in pts.values())
        else:
            assert any(dominates(pts[f], p) or pts[f] == p for f in on)
    # the MFLOPs front is still written; a search without a table writes no latency front or figures
    assert (out / "pareto.json").exists()
    plain = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, tmp_path / "plain").run()
    assert "pareto_latency" not in plain and not (tmp_path / "plain" / "pareto_latency.json").exists()
    assert all("latency_ms" not in h for h in history(tmp_path / "plain"))


def test_a_killed_latency_search_resumes_to_the_same_result(tmp_path: Path) -> None:
    cfg = SMALL_EA.updated(max_latency_ms=0.2)
    ref = Search(NASREC_SMALL, Recorder(), cost, cfg, tmp_path / "ref", latency=fake_latency).run()
    with pytest.raises(KeyboardInterrupt):
        Search(NASREC_SMALL, Recorder(fail_at=4), cost, cfg, tmp_path / "cut", latency=fake_latency).run()
    res = Search(NASREC_SMALL, Recorder(), cost, cfg, tmp_path / "cut", latency=fake_latency).run(resume=True)
    assert res["best"] == ref["best"] and res["pareto_latency"] == ref["pareto_latency"]


def test_a_cap_without_a_table_and_an_unreachable_cap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="max_latency_ms needs a latency table"):
        Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(max_latency_ms=1.0), tmp_path / "x")
    least, arch = cheapest_latency(NASREC_SMALL, FakeModel())  # type: ignore[arg-type]
    assert NASREC_SMALL.contains(arch) and least == pytest.approx(fake_latency(arch))
    rng = np.random.default_rng(0)  # no drawn architecture is predicted faster
    assert all(fake_latency(NASREC_SMALL.sample(rng, "uniform")) >= least for _ in range(200))
    with pytest.raises(ConfigError, match=rf"max_latency_ms.*below the cheapest architecture.*{least:.4g} ms"):
        check_latency_cap(least * 0.9, NASREC_SMALL, FakeModel())  # type: ignore[arg-type]
    check_latency_cap(least * 1.01, NASREC_SMALL, FakeModel())  # type: ignore[arg-type]


def test_latency_caps_are_numbers_or_zoo_names(tmp_path: Path) -> None:
    assert parse_latency_cap("0.25") == 0.25 and parse_latency_cap(" DCNv2 ") == "dcnv2"
    assert parse_latency_cap(None) is None and parse_latency_cap(3) == 3
    for bad in ("fast", True, [1]):
        with pytest.raises(ConfigError, match=r"max_latency_ms.*neither a number nor a zoo model"):
            parse_latency_cap(bad)
    # a resumed search keeps the milliseconds it measured for a name: no timing, no changed cap
    assert resolve_latency_cap({"max_latency_ms": "dcnv2"}, tmp_path, 0.0712)["max_latency_ms"] == 0.0712
    assert resolve_latency_cap({"max_latency_ms": "0.3"}, tmp_path, None)["max_latency_ms"] == 0.3
    with pytest.raises(ConfigError, match="max_latency_ms"):
        SearchConfig(max_latency_ms=0)


# -- the search and the supernet with a latency table file ---------------------------------------------------
def fake_table(path: Path, space, num_dense: int, num_sparse: int, layernorm: bool = False) -> Path:
    """A latency table of this machine in the profile's format, with made-up milliseconds (nothing timed)."""
    from nasrec.latency.model import TABLE_FORMAT, TABLE_VERSION, component_keys, grids, setting_key
    from nasrec.machine import machine_identity

    grid = grids(space, num_dense, num_sparse)
    entries = {k: 0.001 * (1 + sum(map(ord, k)) % 97) for k in component_keys(space, grid)}
    table = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "machine": machine_identity(),
        "space": space.to_dict(),
        "shape": {"num_dense": num_dense, "num_sparse": num_sparse},
        "runtime": "onnxruntime",
        "layernorm": layernorm,
        "batches": [1],
        "threads": [1],
        "warmup": 0,
        "reps": 1,
        "grids": grid,
        "settings": {setting_key(1, 1): {"entries": entries, "fit": {"intercept_ms": 0.02, "head_ms_per_input": 1e-5}}},
    }
    path.write_text(json.dumps(table))
    return path


def shape(cache: Path) -> tuple[int, int]:
    """A cache's (dense, sparse) field counts."""
    from nasrec.data.cache import open_cache

    c = open_cache(cache)
    return len(c.dense_fields), len(c.table_sizes)


@pytest.fixture(scope="module")
def capped_supernet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, float]:
    """A Small supernet trained on paths within a latency cap: (supernet, cache, table, cap)."""
    from conftest import small_synth_cache

    from nasrec.data.cache import open_cache
    from nasrec.latency.model import load_latency_model
    from nasrec.train.api import train_supernet

    root = tmp_path_factory.mktemp("latency-search")
    cache = small_synth_cache(root, rows=6_000, seed=3)[1]
    c = open_cache(cache)
    table = fake_table(root / "table.json", NASREC_SMALL, len(c.dense_fields), len(c.table_sizes))
    model = load_latency_model(table, NASREC_SMALL, len(c.dense_fields), len(c.table_sizes))
    rng = np.random.default_rng(0)
    drawn = sorted(model.predict(NASREC_SMALL.sample(rng, "uniform")) for _ in range(200))
    cap = drawn[len(drawn) // 4]
    sets = dict(batch_size=256, max_steps=20, path_warmup_steps=5, threads=1, latency_table=str(table))
    train_supernet(
        cache,
        root / "sn",
        space="small",
        preset_name="cpu-supernet",
        overrides=dict(sets, path_max_latency_ms=cap),
        progress=False,
    )
    return root / "sn", cache, table, cap


TINY_SEARCH = dict(
    population=6,
    sample=3,
    children=2,
    generations=2,
    finetune_steps=4,
    warmup_steps=1,
    finetune_batch_size=128,
    calib_batches=2,
    val_batches=2,
    val_batch_size=256,
    count_layernorm=False,  # the table's models: without layer norms (cpu-quick's retraining has them)
)


def test_a_search_under_a_latency_cap_reads_the_table(capped_supernet, tmp_path: Path) -> None:
    from nasrec.latency.model import load_latency_model
    from nasrec.search.api import search

    sn, cache, table, cap = capped_supernet
    config = json.loads((sn / "config.json").read_text())["train"]
    assert config["path_max_latency_ms"] == cap and config["latency_table"] == str(table)
    out = tmp_path / "s"
    sets = dict(TINY_SEARCH, latency_table=str(table), max_latency_ms=cap)
    res = search(sn, cache, out, preset="cpu-quick", overrides=sets, progress=False)
    model = load_latency_model(table, NASREC_SMALL, *shape(cache))
    rows = history(out)
    assert len(rows) == 10 and all(h["latency_ms"] <= cap for h in rows)
    assert all(
        h["latency_ms"] == pytest.approx(model.predict(Architecture.from_dict(h["arch"])), abs=1e-6) for h in rows
    )
    assert res["pareto_latency"] and (out / "pareto_latency.json").exists()
    assert res["best"]["latency_ms"] <= cap
    again = search(sn, cache, out, preset="cpu-quick", overrides=sets, resume=True, progress=False)
    assert again["scored"] == 10


def test_latency_tables_for_another_use_and_unreachable_caps_are_refused(capped_supernet, tmp_path: Path) -> None:
    from nasrec.errors import NasrecError
    from nasrec.search.api import search

    sn, cache, table, cap = capped_supernet
    other = fake_table(tmp_path / "other.json", NASREC_SMALL, 5, 26)
    dense, sparse = shape(cache)
    with pytest.raises(NasrecError, match=f"measured at 5 dense / 26 sparse fields, the data has {dense} / {sparse}"):
        search(sn, cache, tmp_path / "a", preset="cpu-quick", overrides=dict(TINY_SEARCH, latency_table=str(other)))
    assert not (tmp_path / "a" / "history.jsonl").exists()
    with pytest.raises(ConfigError, match="below the cheapest architecture of space 'small', predicted at"):
        sets = dict(TINY_SEARCH, latency_table=str(table), max_latency_ms=1e-4)
        search(sn, cache, tmp_path / "b", preset="cpu-quick", overrides=sets)
    with pytest.raises(ConfigError, match="a latency cap needs a latency table"):
        search(sn, cache, tmp_path / "c", preset="cpu-quick", overrides=dict(TINY_SEARCH, max_latency_ms=cap))


def test_the_command_line_names_a_missing_table_in_one_line(capped_supernet, tmp_path: Path, capsys) -> None:
    from nasrec.cli import main

    sn, cache, table, _ = capped_supernet
    args = [
        "search",
        "--supernet",
        str(sn),
        "--data",
        str(cache),
        "--out",
        str(tmp_path / "s"),
        "--preset",
        "cpu-quick",
    ]
    assert main([*args, "--max-latency-ms", "0.5"]) != 0
    err = capsys.readouterr().err.strip()
    assert "max_latency_ms" in err and "latency table" in err and len(err.splitlines()) == 1
    assert main([*args, "--max-latency-ms", "fast", "--latency-table", str(table)]) != 0
    assert "neither a number nor a zoo model" in capsys.readouterr().err


def test_a_supernet_cap_needs_a_table_and_a_pipeline_accepts_a_named_cap(capped_supernet, tmp_path: Path) -> None:
    from nasrec.train.api import train_supernet
    from nasrec.zoo.budget import names_as_numbers

    _, cache, _, cap = capped_supernet
    sets = dict(batch_size=256, max_steps=2, path_warmup_steps=1, threads=1, path_max_latency_ms=cap)
    with pytest.raises(ConfigError, match=r"path_max_latency_ms.*a latency cap needs a latency table"):
        train_supernet(cache, tmp_path / "sn", space="small", preset_name="cpu-supernet", overrides=sets)
    # a configuration is checked before its data: a name stands for some number until the data is there
    assert names_as_numbers({"max_latency_ms": "DCNv2", "path_max_latency_ms": "0.2"}) == {
        "max_latency_ms": 1.0,
        "path_max_latency_ms": 0.2,
    }
