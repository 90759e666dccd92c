"""Latency tables and the latency model (`nasrec latency profile` / `predict`): structure, resume, refusals.

No test asserts a timing: only what is measured, what is kept, what is refused and how a prediction adds up.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasrec.errors import NasrecError
from nasrec.export import latency_table
from nasrec.latency.model import (
    LatencyModel,
    component_keys,
    entry_key,
    fit_overhead,
    grids,
    load_latency_model,
    loo_errors,
    read_table,
    setting_key,
)
from nasrec.space.arch import Architecture, Block
from nasrec.space.space import SearchSpace, get_space

pytest.importorskip("onnxruntime")
TINY = {
    "name": "tiny",
    "num_blocks": 2,
    "dense_ops": ["fc", "dot"],
    "sparse_ops": ["efc"],
    "dense_widths": [16, 32],
    "sparse_widths": [16],
    "max_inputs": 2,
}
QUICK = ["--warmup", "0", "--reps", "2"]


def _fake_model(space: SearchSpace, num_dense: int = 13, num_sparse: int = 26, **fit: float) -> LatencyModel:
    """A model whose every entry is known: a distinct value per key, from a hash of the key."""
    keys = component_keys(space, grids(space, num_dense, num_sparse))
    entries = {k: 0.001 * (1 + sum(map(ord, k)) % 97) for k in keys}
    return LatencyModel(
        entries, num_dense, num_sparse, 1, 1, fit={"intercept_ms": 0.01, "head_ms_per_input": 1e-5, **fit}
    )


@pytest.mark.parametrize("name", ["small", "full", "full+"])
def test_every_architecture_of_a_space_is_priced_from_its_table(name: str) -> None:
    space = get_space(name)
    model = _fake_model(space, scale=1.5)
    for seed in range(40):
        for strategy in ("uniform", "any-path", "full-path"):
            arch = space.sample(np.random.default_rng(seed), strategy)
            parts = model.components(arch)
            assert parts and all(ms >= 0 or "dot" in what for what, ms in parts)
            expected = 0.01 + 1e-5 * model.head_inputs(arch) + 1.5 * sum(ms for _, ms in parts)
            assert model.predict(arch) == pytest.approx(expected)


def test_a_prediction_is_the_sum_of_the_components_the_model_runs() -> None:
    space = SearchSpace.from_dict(TINY, source="tiny")
    g = grids(space, 3, 4)
    model = _fake_model(space, 3, 4)
    e = model.entries
    # block 0: fc on the raw dense input (3 wide) and efc on the 4 raw tokens, d2s on;
    # block 1: fc on raw + block 0 (3 + 16 = 19 wide: interpolated), efc on both token sets (4 + 16 + 8 d2s tokens)
    arch = Architecture(
        (
            Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16, d2s=True),
            Block(("fc",), ("efc",), (0, 1), (0, 1), 0, 0, 32, 16, fm=True),
        )
    )
    parts = dict(model.components(arch))
    assert parts["block 0 fc"] == e[entry_key("fc", 3, 16)]
    lo, hi = max(d for d in g["din"] if d <= 19), min(d for d in g["din"] if d >= 19)
    f_lo, f_hi = e[entry_key("fc", lo, 32)], e[entry_key("fc", hi, 32)]
    assert parts["block 1 fc"] == pytest.approx(f_lo + (f_hi - f_lo) * (19 - lo) / (hi - lo))
    assert "block 1 cat_dense" in parts and "block 1 cat_tokens" in parts and "block 0 cat_tokens" not in parts
    assert parts["block 0 d2s"] == e[entry_key("d2s", 16)]
    assert parts["block 1 fm"] == e[entry_key("fm", 16, 32)]
    assert model.predict(arch) == pytest.approx(0.01 + 1e-5 * (32 + 16 * 16) + sum(parts.values()))
    # dot's dense projection: fc(din -> 16) replaces the probe's (at din 64); none when din is already 16
    dot = Architecture(
        (
            Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16),
            Block(("dot",), ("efc",), (1,), (0,), 0, 0, 32, 16),
        )
    )
    (dot_ms,) = [ms for what, ms in model.components(dot) if what == "block 1 dot"]
    tin = g["tin"]
    assert 4 in tin
    assert dot_ms == pytest.approx(e[entry_key("dot", 4, 32)] - e[entry_key("fc", 64, 16)])


def test_dead_parts_cost_nothing() -> None:
    space = SearchSpace.from_dict(TINY, source="tiny")
    model = _fake_model(space, 3, 4)
    # block 0 is dead (block 1 reads only the raw input); block 1's sparse side feeds nothing but the head
    arch = Architecture(
        (Block(("fc",), ("efc",), (0,), (0,), 0, 0, 32, 16), Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16))
    )
    assert [what for what, _ in model.components(arch)] == ["block 1 fc", "block 1 efc"]


def test_the_overhead_fit_recovers_a_known_line() -> None:
    points = [{"measured_ms": 0.02 + 2e-5 * h + s, "components_ms": s, "head_inputs": h}
              for s, h in [(0.1, 100), (0.2, 300), (0.05, 50), (0.3, 1000)]]  # fmt: skip
    fit = fit_overhead(points)
    assert fit["intercept_ms"] == pytest.approx(0.02) and fit["head_ms_per_input"] == pytest.approx(2e-5)
    scaled = fit_overhead([{**p, "measured_ms": 0.01 + 2 * p["components_ms"]} for p in points], "scaled")
    assert scaled["scale"] == pytest.approx(2.0) and scaled["head_ms_per_input"] == pytest.approx(0, abs=1e-12)
    with_params = [
        {**p, "params_m": m, "measured_ms": p["measured_ms"] + 0.003 * m}
        for p, m in zip(points, [1, 4, 2, 0.5], strict=True)
    ]
    params = fit_overhead(with_params, "params")
    assert params["ms_per_million_params"] == pytest.approx(0.003) and params["scale"] == 1.0
    with pytest.raises(NasrecError, match="at least 3 calibration"):
        fit_overhead(points[:2])


def test_auto_fit_picks_the_form_that_predicts_left_out_models() -> None:
    """`auto` chooses by leave-one-out error: `params` where latency grows with weights, `overhead` where it
    does not (the extra coefficient fits no better, and a tie goes to the simpler form); too few points: overhead."""
    rng = np.random.default_rng(0)
    base = [
        {"components_ms": float(s), "head_inputs": float(h), "params_m": float(m)}
        for s, h, m in zip(
            rng.uniform(0.02, 0.5, 12), rng.integers(16, 1000, 12), rng.uniform(0.01, 6, 12), strict=True
        )
    ]
    heavy = [
        {**p, "measured_ms": 0.01 + 1e-5 * p["head_inputs"] + p["components_ms"] + 0.05 * p["params_m"]} for p in base
    ]
    fit = fit_overhead(heavy, "auto")
    assert fit["form"] == "params" and fit["chosen"] == "auto"
    assert fit["ms_per_million_params"] == pytest.approx(0.05)
    assert fit["loo"]["params"]["p90"] < 1e-6 < fit["loo"]["overhead"]["p90"]
    assert loo_errors(heavy, "params") == pytest.approx([0.0] * 12, abs=1e-9)
    plain = [{**p, "measured_ms": 0.01 + 1e-5 * p["head_inputs"] + p["components_ms"]} for p in base]
    assert fit_overhead(plain, "auto")["form"] == "overhead"
    assert "loo" not in fit_overhead(plain[:4], "auto") and fit_overhead(plain[:4], "auto")["form"] == "overhead"
    with pytest.raises(NasrecError, match="auto"):
        fit_overhead(plain, "cubic")


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A table of the tiny space at 3 dense / 4 sparse fields, made by `nasrec latency profile` after a kill."""
    from nasrec.cli import main

    tmp = tmp_path_factory.mktemp("latency")
    space_file = tmp / "tiny.json"
    space_file.write_text(json.dumps(TINY))
    out = tmp / "table.json"
    args = ["latency", "profile", "--space", str(space_file), "--shape", "3,4", *QUICK, "--calibration", "3"]
    # a profile killed part way: the entries measured so far are in the file
    calls = {"n": 0}
    real = latency_table._Timer.p50

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    latency_table._Timer.p50 = dying
    try:
        assert main([*args, "--out", str(out)]) != 0  # the command line reports the interruption
    finally:
        latency_table._Timer.p50 = real
    partial = read_table(out)["settings"][setting_key(1, 1)]["entries"]
    assert 0 < len(partial) < 8
    first = next(iter(partial))
    table = json.loads(out.read_text())
    table["settings"][setting_key(1, 1)]["entries"][first] = 123.0  # a kept entry is not measured again
    out.write_text(json.dumps(table))
    assert main([*args, "--out", str(out), "--json"]) == 0
    return out, space_file


def test_a_profile_resumes_and_holds_every_component_and_its_fit(profiled: tuple[Path, Path]) -> None:
    out, _ = profiled
    table = read_table(out)
    space = SearchSpace.from_dict(TINY, source="tiny")
    setting = table["settings"][setting_key(1, 1)]
    assert set(setting["entries"]) == set(component_keys(space, grids(space, 3, 4)))
    assert next(iter(setting["entries"].values())) == 123.0
    assert {"cpu", "cpu_capability"} <= set(table["machine"]) and table["space"] == space.to_dict()
    assert table["shape"] == {"num_dense": 3, "num_sparse": 4}
    assert (table["runtime"], table["batches"], table["threads"], table["warmup"], table["reps"]) == (
        "onnxruntime", [1], [1], 0, 2)  # fmt: skip
    # two drawn uniformly, one small: the last block reading the raw inputs, the only live block
    seeds = [latency_table.CALIBRATION_SEED + k for k in range(2)] + [latency_table.SMALL_CALIBRATION_SEED]
    assert [p["seed"] for p in setting["calibration"]] == seeds
    assert sum(Architecture.from_dict(setting["calibration"][-1]["arch"]).live_blocks()) == 1
    assert set(setting["fit"]) >= {"intercept_ms", "head_ms_per_input", "scale"}
    model = load_latency_model(out, space, 3, 4)
    arch = space.sample(np.random.default_rng(0), "uniform")
    assert model.predict(arch) == pytest.approx(
        setting["fit"]["intercept_ms"] + setting["fit"]["head_ms_per_input"] * model.head_inputs(arch)
        + model.component_sum(arch)
    )  # fmt: skip


def test_predict_prints_the_prediction_and_the_measurement(
    profiled: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from nasrec.cli import main

    out, _ = profiled
    capsys.readouterr()
    assert main(["latency", "predict", "--table", str(out), "--seed", "3", "--measure", *QUICK, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # 2 timed calls make a meaningless fit: only that both figures are there and compared
    assert isinstance(res["predicted_ms"], float) and res["measured_ms"] > 0 and res["warnings"] == []
    assert res["relative_error"] == pytest.approx(
        (res["predicted_ms"] - res["measured_ms"]) / res["measured_ms"], abs=1e-3
    )


def _edited(out: Path, tmp_path: Path, edit) -> Path:
    table = json.loads(out.read_text())
    edit(table)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(table))
    return path


def test_a_table_for_another_machine_space_or_shape_is_refused_unless_forced(
    profiled: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nasrec.cli import main

    out, _ = profiled
    space = SearchSpace.from_dict(TINY, source="tiny")
    other_cpu = _edited(out, tmp_path, lambda t: t["machine"].update(cpu="Imaginary CPU 9000"))
    with pytest.raises(NasrecError, match=r"measured on Imaginary CPU 9000 \(.*\), this machine is"):
        load_latency_model(other_cpu, space, 3, 4)
    forced = load_latency_model(other_cpu, space, 3, 4, force=True)
    assert len(forced.warnings) == 1 and "Imaginary CPU 9000" in forced.warnings[0]
    with pytest.raises(NasrecError, match="measured for space 'tiny', not 'small'"):
        load_latency_model(out, get_space("small"), 3, 4)
    with pytest.raises(NasrecError, match="measured at 3 dense / 4 sparse fields, the data has 13 / 26"):
        load_latency_model(out, space, 13, 26)
    with pytest.raises(NasrecError, match="measured in onnxruntime, not torchscript"):
        load_latency_model(out, space, 3, 4, runtime="torchscript")
    with pytest.raises(NasrecError, match=r"no calibrated setting batch 64, threads 1 \(batch 1, threads 1\)"):
        load_latency_model(out, space, 3, 4, batch=64, force=True)
    # the command line: one line naming what differs; --force predicts with the warning in the result
    assert main(["latency", "predict", "--table", str(other_cpu), "--seed", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert "Imaginary CPU 9000" in err and "--force" in err and len(err.splitlines()) == 1
    assert main(["latency", "predict", "--table", str(other_cpu), "--seed", "1", "--force", "--json"]) == 0
    assert "Imaginary CPU 9000" in json.loads(capsys.readouterr().out)["warnings"][0]
    small_arch = tmp_path / "small.json"
    get_space("small").sample(np.random.default_rng(0), "uniform").save(small_arch)
    assert main(["latency", "predict", "--table", str(out), "--arch", str(small_arch)]) != 0
    assert "architecture not in search space 'tiny'" in capsys.readouterr().err
    assert main(["latency", "predict", "--table", str(out), "--seed", "1", "--shape", "criteo"]) != 0
    assert "the data has 13 / 26" in capsys.readouterr().err
    # resuming a profile into a table made for another space is refused too
    args = ["latency", "profile", "--space", "small", "--shape", "3,4", *QUICK, "--out", str(out)]
    assert main(args) != 0
    assert "holds a latency table measured for space 'tiny'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("machine"), "latency table has no key 'machine'"),
        (lambda t: t.update(reps="many"), "latency table key 'reps' must be a int"),
        (lambda t: t["settings"]["batch 1, threads 1"]["entries"].update({"fc|x": 1.0}), r"entries.fc\|x' is not"),
        (lambda t: t["settings"]["batch 1, threads 1"]["entries"].update({"fc|1|2": "x"}), "must be a number"),
        (lambda t: t["settings"]["batch 1, threads 1"]["fit"].pop("intercept_ms"), "fit.intercept_ms' must be"),
        (lambda t: t["shape"].pop("num_sparse"), "'shape.num_sparse' must be an integer"),
        (lambda t: t["settings"]["batch 1, threads 1"]["calibration"][1].pop("arch"), r"calibration\[1\]' needs"),
    ],
)
def test_a_malformed_table_is_a_one_line_error_naming_the_file_and_key(
    profiled: tuple[Path, Path],
    tmp_path: Path,
    edit,
    message: str,
) -> None:
    path = _edited(profiled[0], tmp_path, edit)
    with pytest.raises(NasrecError, match=message) as err:
        read_table(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_file_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(NasrecError, match=r"bad.json: not a JSON latency table"):
        read_table(bad)
    with pytest.raises(NasrecError, match=r"missing.json: no such latency table"):
        read_table(tmp_path / "missing.json")


def test_a_profile_covers_each_batch_size_and_thread_count_in_torchscript_too(tmp_path: Path) -> None:
    space = SearchSpace.from_dict({**TINY, "dense_ops": ["fc"], "dense_widths": [16]}, source="tinier")
    out = tmp_path / "ts.json"
    table = latency_table.profile_table(
        space, 3, [5, 6, 7, 8], out, runtime="torchscript", batches=(1, 4), threads=(1, 2), warmup=0, reps=2,
        calibration=3,
    )  # fmt: skip
    assert json.loads(json.dumps(table)) == read_table(out) and table["runtime"] == "torchscript"
    assert sorted(table["settings"]) == [setting_key(b, t) for b in (1, 4) for t in (1, 2)]
    keys = component_keys(space, grids(space, 3, 4))
    for setting in table["settings"].values():
        assert sorted(setting["entries"]) == sorted(keys) and all(v >= 0 for v in setting["entries"].values())
        assert len(setting["calibration"]) == 3 and "intercept_ms" in setting["fit"]


def test_a_profile_with_layer_norms_exports_every_probe(tmp_path: Path) -> None:
    """Served models with layer norms: the probes (tracing exporter) need the norms' shapes constant."""
    space = SearchSpace.from_dict({**TINY, "dense_ops": ["fc", "gating"], "sparse_ops": ["efc", "transformer"]})
    keys = component_keys(space, grids(space, 3, 4))
    table = latency_table.profile_table(
        space, 3, (20, 30, 40, 50), tmp_path / "sub" / "ln.json", warmup=0, reps=2, layernorm=True, calibration=3
    )
    assert table["layernorm"] is True and set(table["settings"][setting_key(1, 1)]["entries"]) == set(keys)
    model = load_latency_model(tmp_path / "sub" / "ln.json", space, 3, 4, layernorm=True)
    rng = np.random.default_rng(0)  # every architecture of the space is priced from the table's entries
    assert all(np.isfinite(model.predict(space.sample(rng, "uniform"))) for _ in range(20))
    with pytest.raises(NasrecError, match="measured with layer norms, the models have them off"):
        load_latency_model(tmp_path / "sub" / "ln.json", space, 3, 4, layernorm=False)


def test_a_table_at_another_embedding_dimension_prices_its_architectures_only(tmp_path: Path) -> None:
    """`--embedding-dim 20`: the probes take 20-wide tokens (dot's projection is fc to 20), the calibration models
    are 20 wide, the head reads 20 per token; a 16-wide space or architecture is refused, naming what differs."""
    from dataclasses import replace

    from nasrec.cli import main

    space_file = tmp_path / "tiny.json"
    space_file.write_text(json.dumps(TINY))
    out = tmp_path / "t20.json"
    args = ["latency", "profile", "--space", str(space_file), "--embedding-dim", "20", "--shape", "3,4", *QUICK]
    assert main([*args, "--calibration", "3", "--out", str(out)]) == 0
    space16 = SearchSpace.from_dict(TINY, source="tiny")
    space20 = replace(space16, embedding_dim=20)
    table = read_table(out)
    assert table["space"] == space20.to_dict() and table["space"]["embedding_dim"] == 20
    setting = table["settings"][setting_key(1, 1)]
    assert set(setting["entries"]) == set(component_keys(space20, grids(space20, 3, 4)))
    assert entry_key("fc", 64, 20) in setting["entries"]  # dot's projection to one 20-wide token
    assert all(p["arch"]["embedding_dim"] == 20 for p in setting["calibration"])
    _, shapes, _ = latency_table._component(entry_key("efc", 8, 16), False, 20)
    assert shapes == [(8, 20)]
    model = load_latency_model(out, space20, 3, 4)
    arch = space20.sample(np.random.default_rng(0), "uniform")
    last = arch.blocks[-1]
    assert model.head_inputs(arch) == last.dense_width + 20 * (last.sparse_width + (8 if last.d2s else 0))
    assert np.isfinite(model.predict(arch))
    with pytest.raises(NasrecError, match="measured at 20-wide tokens; the architecture's embedding_dim is 16"):
        model.predict(replace(arch, embedding_dim=16))
    with pytest.raises(NasrecError, match=r"measured for space 'tiny' \(same name, other choices\)"):
        load_latency_model(out, space16, 3, 4)


def test_a_fuse_probe_whose_width_is_not_a_multiple_of_its_heads_exports_exactly(tmp_path: Path) -> None:
    """fuse at m = 24 into 16 heads (chunks of 2, the last ones padded): the traced ONNX probe loads and gives
    torch's outputs (the chunk width was once computed by a traced -(-d // h), which ONNX truncates)."""
    import onnxruntime as ort
    import torch

    make, shapes, _ = latency_table._component(entry_key("fuse", 24, 16), False, 20)
    torch.manual_seed(0)
    probe = latency_table._Probe([make()]).eval()
    xs = tuple(torch.randn(3, *s) for s in shapes)
    path = tmp_path / "fuse.onnx"
    names = [f"x{k}" for k in range(len(xs))]
    with torch.no_grad():
        torch.onnx.export(probe, xs, str(path), dynamo=False, input_names=names, output_names=["y"])
        expected = probe(*xs).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["y"], {n: x.numpy() for n, x in zip(names, xs, strict=True)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
