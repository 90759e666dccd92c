"""`nasrec export`: exported models equal PyTorch, and the encoder JSON alone reproduces the encoding."""

from __future__ import annotations

import json
import math
import struct
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

import nasrec.export as export_mod
from nasrec.cli import main
from nasrec.data.cache import open_cache
from nasrec.data.encode import RowEncoder
from nasrec.data.loader import BatchLoader
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.errors import NasrecError
from nasrec.export import encoder_spec, export_model
from nasrec.space.arch import Architecture, Block
from nasrec.train.api import train, train_supernet
from nasrec.train.loading import load_trained

FAST = dict(batch_size=256, threads=1, lr=0.05)
# A small architecture with every operator kind that needs care when exporting: attention, dot products,
# gating, dense-to-sparse tokens, the FM term (of efc's and the raw tokens summed), the first-order term and
# layer norms (layernorm=True below).
SUBNET = Architecture(
    (
        Block(("fc",), ("transformer",), (0,), (0,), 0, 0, 32, 16, d2s=True),
        Block(("dot",), ("efc", "tcat"), (1,), (0, 1), 0, 1, 16, 16, fm=True),
        Block(("gating",), ("efc",), (2,), (2,), 1, 2, 16, 16),
    ),
    first_order=True,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    raw, cache = small_synth_cache(root, rows=3_000, seed=5, min_count=2, split="random")
    train(cache, root / "deepfm", model="deepfm", progress=False, overrides=dict(max_steps=15, **FAST))
    return {"root": root, "raw": raw, "cache": cache, "deepfm": root / "deepfm"}


def _reference(run: Path, cache_dir: Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], np.ndarray]:
    """Test-split batches and eager PyTorch probabilities of a run's model on them."""
    model, _ = load_trained(run)
    batches = [(b.dense, b.sparse) for b in BatchLoader(open_cache(cache_dir), "test", batch_size=1000)]
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(d, s)) for d, s in batches]).numpy()
    return batches, probs


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_equals_pytorch(runs, tmp_path: Path) -> None:
    res = export_model(runs["deepfm"], tmp_path / "serve" / "ctr.pt", "torchscript")
    assert res["passed"] is True and res["split"] == "test" and res["max_abs_diff"] <= 1e-5
    assert res["verified_rows"] == len(open_cache(runs["cache"]).split_index("test"))
    names = sorted(p.name for p in (tmp_path / "serve").iterdir())
    assert names == ["ctr.encoder.json", "ctr.export.json", "ctr.pt"]  # no temporary files left
    loaded = torch.jit.load(res["model"])
    batches, expected = _reference(runs["deepfm"], runs["cache"])
    with torch.no_grad():
        got = torch.cat([loaded(d, s) for d, s in batches]).numpy()
        one = loaded(batches[0][0][:1], batches[0][1][:1]).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert one.shape == (1,) and abs(one[0] - expected[0]) <= 1e-5
    manifest = json.loads(Path(res["manifest"]).read_text())
    assert manifest["format"] == "torchscript" and manifest["model"]["zoo"] == "deepfm"
    assert [(i["name"], i["dtype"], i["shape"]) for i in manifest["inputs"]] == [
        ("dense", "float32", ["batch", 4]),
        ("sparse", "int64", ["batch", 6]),
    ]
    assert manifest["output"]["name"] == "probability" and manifest["verification"]["passed"] is True
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["files"]["encoder"] == "ctr.encoder.json"


@pytest.mark.slow
def test_onnx_export_equals_pytorch(runs, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    res = export_model(runs["deepfm"], tmp_path / "ctr.onnx", "onnx", verify_rows=100)
    assert res["passed"] is True and res["verified_rows"] == 100
    session = ort.InferenceSession(res["model"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["dense", "sparse"]
    assert [o.name for o in session.get_outputs()] == ["probability"]
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0] == "batch"
    batches, expected = _reference(runs["deepfm"], runs["cache"])
    got = np.concatenate([session.run(None, {"dense": d.numpy(), "sparse": s.numpy()})[0] for d, s in batches])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    manifest = json.loads((tmp_path / "ctr.export.json").read_text())
    assert manifest["exporter"]["opset"] == export_mod.ONNX_OPSET and manifest["versions"]["onnxruntime"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_subnet_and_zoo_models_export(runs, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    root = runs["root"]
    if not (root / "subnet").exists():
        train(
            runs["cache"],
            root / "subnet",
            arch=SUBNET,
            progress=False,
            overrides=dict(max_steps=5, layernorm=True, **FAST),
        )
        train(runs["cache"], root / "dcnv2", model="dcnv2", progress=False, overrides=dict(max_steps=5, **FAST))
    for name in ("subnet", "dcnv2"):
        res = export_model(root / name, tmp_path / f"{name}.{fmt}", fmt)
        assert res["passed"] is True and res["max_abs_diff"] <= 1e-5, name
        kind = json.loads(Path(res["manifest"]).read_text())["model"]["kind"]
        assert kind == ("nasrec" if name == "subnet" else "zoo")
    # the ONNX export traces with fake tensors: the model must still run eagerly afterwards
    model, _ = load_trained(root / "subnet")
    with torch.no_grad():
        assert model(torch.zeros(2, 4), torch.zeros(2, 6, dtype=torch.int64)).shape == (2,)


def test_a_supernet_is_refused(runs, tmp_path: Path) -> None:
    space = tmp_path / "tiny.json"
    space.write_text(
        json.dumps(
            {
                "name": "tiny",
                "num_blocks": 2,
                "dense_ops": ["fc"],
                "sparse_ops": ["efc"],
                "dense_widths": [16],
                "sparse_widths": [16],
            }
        )
    )
    train_supernet(
        runs["cache"],
        tmp_path / "sn",
        space=str(space),
        progress=False,
        overrides=dict(max_steps=1, supernet_eval_archs=1, eval_max_batches=1, **FAST),
    )
    with pytest.raises(NasrecError, match="supernet"):
        export_model(tmp_path / "sn", tmp_path / "x.pt")
    assert not any(p.name.startswith("x.") for p in tmp_path.iterdir())


def test_failed_verification_writes_nothing(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "VERIFY_TOLERANCE", -1.0)  # no difference can pass
    with pytest.raises(NasrecError, match="differs from PyTorch"):
        export_model(runs["deepfm"], tmp_path / "out" / "m.pt", verify_rows=10)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_onnx_packages_name_the_extra(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_mod.importlib.import_module

    def fake(name: str):
        if name == "onnxscript":
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(export_mod.importlib, "import_module", fake)
    with pytest.raises(NasrecError, match=r'pip install "nasrec\[export\]"'):
        export_model(runs["deepfm"], tmp_path / "m.onnx", "onnx")
    with pytest.raises(NasrecError, match="format"):
        export_model(runs["deepfm"], tmp_path / "m.x", "tflite")


def test_cli_export(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli" / "m.pt"
    args = ["export", "--model", str(runs["deepfm"]), "--format", "torchscript", "--out", str(out)]
    assert main([*args, "--verify-rows", "50"]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and "m.encoder.json" in text and "verified on 50 test rows" in text
    assert main([*args, "--json", "--checkpoint", "final", "--data", str(runs["cache"])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] is True and summary["model"] == str(out) and len(summary["files"]) == 3
    assert main(["export", "--model", str(runs["cache"]), "--format", "torchscript", "--out", str(out)]) == 2
    assert "not a training run" in capsys.readouterr().err


# -- the encoder JSON is sufficient: a pure-Python encoder that reads only it ------------------------

_M64 = 1 << 64


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _signed(u: int) -> int:
    return u - _M64 if u >= 1 << 63 else u


def _u64(s: str, base: int) -> int:
    digits = "0123456789abcdefABCDEF"[: base + (6 if base == 16 else 0)]
    assert s and all(c in digits for c in s), s
    v = int(s, base)
    assert v < _M64
    return v


def _i64(s: str, base: int) -> int | None:
    try:
        v = int(s, base)
    except ValueError:
        return None
    return v if -(1 << 63) <= v < 1 << 63 else None


def _mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % _M64
    return x ^ (x >> 31)


def _string_hash(b: bytes) -> int:
    h = 0x9E3779B97F4A7C15 ^ ((len(b) * 0xBF58476D1CE4E5B9) % _M64)
    for i in range(0, len(b), 8):
        h = _mix(h ^ int.from_bytes(b[i : i + 8], "big"))
    return _mix(h)


def _raw_id(rule: dict, value: str | None, values: dict[str, str | None]) -> int | None:
    if rule["from"] == "bucketize":
        x = values[rule["column"]]
        if x is None:
            return None
        x = float(x)
        return math.floor(math.log(x) ** 2) if x > 2 else math.floor(x)
    if value is None:
        return None
    kind, derive = rule["kind"], rule["derive"]
    m = rule["modulus"] if not derive else None
    if kind == "string":
        h = _string_hash(value.encode())
        return h % rule["modulus"] if rule["modulus"] else _signed(h)
    if kind == "hex":
        u = _u64(value, 16)
        v = u % m if m else _signed(u)
    elif kind == "int":
        s = _i64(value, 10)
        v = (s % m if m else s) if s is not None else (_u64(value, 10) % m if m else _signed(_u64(value, 10)))
    elif value.isascii() and value.isdigit():  # auto, decimal
        u = _u64(value, 10)
        v = u % m if m else _signed(u)
    else:  # auto, hexadecimal
        s = _i64(value, 16)
        assert s is not None, value
        v = s % m if m else s
    if derive == "hour_of_day":
        v %= 100
        assert v <= 23
    elif derive == "weekday":
        day, month, year = (v // 100) % 100, (v // 10_000) % 100, 2000 + (v // 1_000_000) % 100
        assert 1 <= month <= 12 and 1 <= day <= 31
        w = date(year, month, min(day, 28)).isoweekday()
        v = (w - 1 + day - min(day, 28)) % 7 + 1
    return v


def _py_encode(spec: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Encode a raw file as the JSON says, without nasrec: dense float32 [n, D], sparse rows [n, S]."""
    schema = spec["source"]["schema"]
    lines = path.read_text(encoding="utf-8").splitlines()
    columns = schema["columns"]
    if schema["header"] is True:
        columns, lines = lines[0].split(schema["separator"]), lines[1:]
    dense_rows, sparse_rows = [], []
    for line in lines:
        raw = dict(zip(columns, line.split(schema["separator"]), strict=True))
        values = {c: (None if v in schema["missing"] else v) for c, v in raw.items()}
        dense = []
        for f in spec["dense"]:
            x = values[f["column"]] if f["column"] is not None else None
            if f["transform"] == "constant" or x is None:
                dense.append(0.0)
            elif f["transform"] == "log":
                dense.append(_f32(math.log(max(float(x), 0.0) + 1.0)))
            elif f["transform"] == "none":
                dense.append(_f32(float(x)))
            else:
                assert f["transform"] == "standardize"
                dense.append(_f32((_f32(float(x)) - f["mean"]) / f["std"]))
        sparse = []
        for f in spec["sparse"]:
            rule = f["raw_id"]
            ident = _raw_id(rule, values.get(rule["column"]), values)
            enc = f["encoding"]
            if ident is None or (enc["type"] == "vocab" and ident == spec["missing_raw_id"]):
                sparse.append(spec["missing_id"])
            elif enc["type"] == "hash":
                operand = ident if enc["operand"] == "signed" else ident % _M64
                sparse.append(operand % (f["table_size"] - 1) + 1)
            else:
                sparse.append(enc["ids"].get(str(ident), spec["oov_id"]))
        dense_rows.append(dense)
        sparse_rows.append(sparse)
    return np.array(dense_rows, np.float32), np.array(sparse_rows, np.int64)


def _assert_same_encoding(spec: dict, cache: Path, raw: Path) -> None:
    expected = RowEncoder.from_cache(cache).encode([raw])
    dense, sparse = _py_encode(json.loads(json.dumps(spec)), raw)  # through JSON: only what the file holds
    np.testing.assert_array_equal(sparse, expected.sparse.astype(np.int64))
    np.testing.assert_array_equal(dense, expected.dense)


def test_exported_encoder_json_reencodes_raw_rows(runs, tmp_path: Path) -> None:
    res = export_model(runs["deepfm"], tmp_path / "m.pt", verify_rows=10)
    spec = json.loads(Path(res["encoder"]).read_text())
    assert spec["inputs"]["sparse"]["fields"] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert spec["table_offsets"] == list(np.cumsum([0, *spec["table_sizes"][:-1]]))
    lines = runs["raw"].read_text().splitlines()[:300]
    unseen = lines[0].split("\t")
    unseen[-1], unseen[1], unseen[-2] = "ffffffffffff", "", ""  # an unseen id, a missing value and id
    raw = tmp_path / "rows.tsv"
    raw.write_text("\n".join([*lines, "\t".join(unseen)]) + "\n")
    _assert_same_encoding(spec, runs["cache"], raw)
    dense, sparse = _py_encode(spec, raw)
    assert sparse[-1, -1] == spec["oov_id"] and sparse[-1, -2] == spec["missing_id"] and dense[-1, 0] == 0.0


def _all_kinds_file(path: Path, rows: int, seed: int, reserved: bool = True) -> None:
    """`reserved`: include the ids that read as -2^63, which only hashing accepts (a vocabulary's missing marker)."""
    rng = np.random.default_rng(seed)
    pools = {
        "n_log": ["", "0", "1", "-3.5", "2.5", "1e3", "123456789", "0.001", "7"],
        "n_std": ["", "0", "1.25", "-4", "100", "3.3333", "1e-3"],
        "n_none": ["", "0", "-1.5", "2", "1e10", "0.1"],
        "n_bkt": ["", "-2.5", "0", "1.5", "2", "2.0001", "3", "1e6", "-1000", "55.5"],
        "c_hex": ["", "0", "ffffffffffffffff", "8000000000000000", "7fffffffffffffff", "deadbeef", "00ff", "A1B2"],
        "c_int": [
            "",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "-5",
            "0",
            "12",
            "-1234567",
            "42",
        ],
        "c_auto": ["", "123", "0", "18446744073709551615", "abc", "ff", "7fffffffffffffff", "1a2b3c", "00042"],
        "c_str": [
            "",
            "a",
            "hello",
            "café",
            "日本語のテキスト",
            "exactly8",
            "a string longer than sixteen bytes",
            "x" * 40,
            " spaced ",
        ],
        "hour": ["", "14102100", "14102123", "16022915", "14103007", "14013123", "99123100", "20111105"],
    }
    if not reserved:
        pools["c_hex"].remove("8000000000000000")
        pools["c_int"] = [v for v in pools["c_int"] if v.lstrip("-") != "9223372036854775808"]
    lines = [",".join(["label", *pools])]
    for _ in range(rows):
        picks = [pool[rng.integers(0, len(pool))] for pool in pools.values()]
        lines.append(",".join([str(rng.integers(0, 2)), *picks]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


ALL_KINDS_SCHEMA = {
    "name": "allkinds",
    "label": "label",
    "separator": ",",
    "header": True,
    "quote": None,
    "dense": [
        {"column": "n_log", "transform": "log"},
        {"column": "n_std", "transform": "standardize"},
        {"column": "n_none", "transform": "none"},
        {"column": "n_bkt", "transform": "bucketize"},
        {"name": "zero", "column": None},
    ],
    "sparse": [
        {"column": "c_hex", "kind": "hex", "table_size": 53},
        {"name": "c_hexmod", "column": "c_hex", "kind": "hex", "modulus": 1000, "table_size": 53},
        {"column": "c_int", "kind": "int", "table_size": 53},
        {"name": "c_intmod", "column": "c_int", "kind": "int", "modulus": 97, "table_size": 53},
        {"column": "c_auto", "kind": "auto", "modulus": 2147483647, "table_size": 53},
        {"name": "c_auto_raw", "column": "c_auto", "kind": "auto", "table_size": 53},
        {"column": "c_str", "kind": "string", "table_size": 53},
        {"name": "c_strmod", "column": "c_str", "kind": "string", "modulus": 50, "table_size": 53},
        {"name": "hour_of_day", "column": "hour", "kind": "int", "derive": "hour_of_day", "table_size": 25},
        {"name": "weekday", "column": "hour", "kind": "int", "derive": "weekday", "table_size": 8},
    ],
}


@pytest.mark.parametrize(
    "options",
    [
        dict(encoding="hash"),
        dict(encoding="hash", max_table_size=20),
        dict(encoding="vocab"),
        dict(encoding="vocab", min_count=2, max_table_size=6),
    ],
)
def test_encoder_json_covers_every_kind_and_transform(tmp_path: Path, options: dict) -> None:
    raw = tmp_path / "rows.csv"
    _all_kinds_file(raw, rows=400, seed=1, reserved=options.get("encoding") != "vocab")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(ALL_KINDS_SCHEMA))
    prepare(
        PrepareConfig(
            inputs=(str(raw),),
            out=str(tmp_path / "cache"),
            format="schema",
            schema=str(schema),
            split="random",
            **options,
        )
    )
    spec = encoder_spec(tmp_path / "cache")
    assert [f["name"] for f in spec["dense"]] == ["n_log", "n_std", "n_none", "zero"]
    assert spec["sparse"][-1]["name"] == "n_bkt_bucket" and spec["sparse"][-1]["raw_id"]["from"] == "bucketize"
    assert spec["table_sizes"] == open_cache(tmp_path / "cache").table_sizes
    _assert_same_encoding(spec, tmp_path / "cache", raw)
