"""Architecture values: validation messages, canonical JSON and hash, NASRec reference JSON import, and the
published best architectures decoded as spec section 2.7 describes them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nasrec.errors import NasrecError
from nasrec.space.arch import Architecture, Block, from_nasrec
from nasrec.space.draw import head_width

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
CONFIG_NAMES = [f"{d}_{s}_best.json" for d in ("criteo", "avazu", "kdd") for s in ("xlarge", "autoctr")]


def two_blocks() -> Architecture:
    return Architecture(
        (
            Block(("fc",), ("efc",), (0,), (0,), 0, 0, 64, 16),
            Block(("dot",), ("transformer",), (0, 1), (1,), 1, 0, 128, 32, d2s=True, fm=False),
        )
    )


def config(name: str) -> Architecture:
    if not CONFIGS.is_dir():
        pytest.skip("../shared/configs is not available")
    return Architecture.load(CONFIGS / name)


# -- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("dense_ops", ("conv",), "distinct names"),
        ("dense_ops", (), "distinct names"),
        ("dense_ops", ("fc", "fc"), "distinct names"),
        ("sparse_ops", ("fc",), "distinct names"),
        ("dense_in", (0, 2), "0 (raw input) to 1"),
        ("dense_in", (-1, 0), "0 (raw input) to 1"),
        ("dense_in", (1, 0), "distinct and ascending"),
        ("sparse_in", (0, 0), "distinct and ascending"),
        ("sparse_in", (0, 1, 2, 3, 4), "needs 1 to 4 inputs, has 5"),
        ("sparse_in", (), "needs 1 to 4 inputs, has 0"),
        ("dense_in", (0.0,), "must be integers"),
        ("left", 2, "0 (raw input) to 1"),
        ("right", -1, "0 (raw input) to 1"),
        ("left", True, "0 (raw input) to 1"),
        ("dense_width", 0, "positive integer"),
        ("dense_width", 1.5, "positive integer"),
        ("sparse_width", True, "positive integer"),
        ("d2s", 1, "true or false"),
        ("fm", "yes", "true or false"),
    ],
)
def test_validation_names_block_and_field(field: str, value: Any, words: str) -> None:
    a = two_blocks()
    bad = replace(a.blocks[1], **{field: value})
    with pytest.raises(NasrecError) as e:
        Architecture((a.blocks[0], bad))
    assert f"block 1, field {field}:" in str(e.value) and words in str(e.value)


def test_no_blocks_is_an_error() -> None:
    with pytest.raises(NasrecError, match="no blocks"):
        Architecture(())


def test_liveness_follows_only_the_inputs_operators_read() -> None:
    # B2 is gating: its dense_in (B0, B1) is not read, and left = right = raw input.
    b0 = Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16)
    b1 = Block(("fc",), ("efc",), (0,), (0,), 1, 1, 16, 16)
    b2 = Block(("gating",), ("efc",), (1, 2), (0,), 0, 0, 16, 16)
    a = Architecture((b0, b1, b2))
    assert a.dead_blocks() == [0, 1]
    # Reading B1 through `right` makes B1 live, but not B0: B1 is fc, which ignores its left/right (B0).
    a2 = Architecture((b0, b1, replace(b2, right=2)))
    assert a2.dead_blocks() == [0]
    assert a2.live_blocks() == (False, True, True)


# -- canonical JSON and hash ---------------------------------------------------------------------------
def test_canonical_round_trip(tmp_path: Path) -> None:
    a = two_blocks()
    d = json.loads(a.to_json())
    assert d["format"] == "nasrec-architecture" and d["version"] == 1
    assert Architecture.from_dict(d) == a
    assert Architecture.from_dict(json.loads(a.to_json(indent=2))) == a
    path = tmp_path / "a.json"
    a.save(path)
    assert Architecture.load(path) == a
    assert Architecture.load(path).to_json() == a.to_json()


def test_hash_is_stable_and_sensitive() -> None:
    a = two_blocks()
    assert a.hash() == two_blocks().hash()
    # Pinned: a change of the canonical form (and so of every stored hash) must be deliberate.
    assert a.hash() == "a9a9ec109026a3d9"
    changes = {
        "dense_ops": ("fc",),
        "sparse_ops": ("efc",),
        "dense_in": (1,),
        "sparse_in": (0, 1),
        "left": 0,
        "right": 1,
        "dense_width": 256,
        "sparse_width": 48,
        "d2s": False,
        "fm": True,
    }
    hashes = {a.hash()}
    for field, value in changes.items():
        b = Architecture((a.blocks[0], replace(a.blocks[1], **{field: value})))
        assert b != a
        hashes.add(b.hash())
    assert len(hashes) == len(changes) + 1


def test_from_dict_errors() -> None:
    d = two_blocks().to_dict()
    with pytest.raises(NasrecError, match="not a nasrec architecture"):
        Architecture.from_dict({**d, "format": "other"})
    with pytest.raises(NasrecError, match="version 2"):
        Architecture.from_dict({**d, "version": 2})
    broken = json.loads(json.dumps(d))
    del broken["blocks"][1]["dense_width"]
    with pytest.raises(NasrecError, match=r"^x\.json: architecture block 1: missing key 'dense_width'$"):
        Architecture.from_dict(broken, "x.json")
    broken = json.loads(json.dumps(d))
    broken["blocks"][1]["left"] = 5
    with pytest.raises(NasrecError, match=r"x\.json: architecture block 1, field left"):
        Architecture.from_dict(broken, "x.json")
    with pytest.raises(NasrecError, match="expected a JSON object"):
        Architecture.from_dict([1, 2])  # type: ignore[arg-type]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(NasrecError, match="no such file"):
        Architecture.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(NasrecError, match="invalid JSON"):
        Architecture.load(tmp_path / "bad.json")


# -- the NASRec reference format -----------------------------------------------------------------------
def nasrec_dict() -> dict[str, Any]:
    return {
        "num_blocks": 2,
        "config": "xlarge",
        "use_layernorm": 1,
        "macro": [
            {"dense_idx": [0], "sparse_idx": [0], "dense_left_idx": [0], "dense_right_idx": [0]},
            {"dense_idx": [1, 0], "sparse_idx": [1], "dense_left_idx": [1], "dense_right_idx": [0]},
        ],
        "micro": [
            {
                "active_nodes": [0, 5],
                "dense_in_dims": 64,
                "sparse_in_dims": 16,
                "dense_sparse_interact": 0,
                "deep_fm": 0,
            },
            {
                "active_nodes": [1, 4],
                "dense_in_dims": 128,
                "sparse_in_dims": 32,
                "dense_sparse_interact": 1,
                "deep_fm": 0,
            },
        ],
    }


def test_nasrec_json_decodes_to_the_same_architecture() -> None:
    d = nasrec_dict()
    assert Architecture.from_dict(d) == two_blocks()
    assert from_nasrec(d).hash() == two_blocks().hash()  # index order inside a list does not matter
    small = {**d, "config": "autoctr"}
    small["micro"] = [{**m, "active_nodes": [0, 2]} for m in d["micro"]]
    a = Architecture.from_dict(small)
    assert [b.dense_ops for b in a.blocks] == [("fc",), ("fc",)] and {b.sparse_ops for b in a.blocks} == {("efc",)}


def test_nasrec_json_errors() -> None:
    with pytest.raises(NasrecError, match="unknown NASRec config"):
        Architecture.from_dict({**nasrec_dict(), "config": "huge"})
    bad = nasrec_dict()
    bad["micro"][1]["active_nodes"] = [1, 9]
    with pytest.raises(NasrecError, match="block 1: unknown node 9"):
        Architecture.from_dict(bad)
    bad = nasrec_dict()
    bad["macro"][1]["dense_idx"] = [0, 3]
    with pytest.raises(NasrecError, match="block 1, field dense_in"):
        Architecture.from_dict(bad)
    bad = nasrec_dict()
    bad["micro"] = bad["micro"][:1]
    with pytest.raises(NasrecError, match="2 macro entries but 1 micro"):
        Architecture.from_dict(bad)


# -- the published best architectures (spec 2.7) -------------------------------------------------------
LAST_BLOCKS = {
    # name: (dead blocks, last block's dense ops, dense width, sparse ops, sparse width, d2s, head input)
    "criteo_xlarge_best.json": ([3, 4, 5], ("fc",), 128, ("transformer",), 48, False, 896),
    "avazu_xlarge_best.json": ([3, 4, 5], ("gating",), 768, ("transformer",), 16, True, 1152),
    "kdd_xlarge_best.json": ([5], ("gating",), 768, ("efc",), 16, True, 1152),
    "criteo_autoctr_best.json": ([5], ("fc",), 1024, ("efc",), 64, False, 2048),
    "avazu_autoctr_best.json": ([], ("fc",), 512, ("efc",), 32, True, 1152),
    "kdd_autoctr_best.json": ([], ("dot",), 1024, ("efc",), 48, True, 1920),
}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_published_architectures_decode(name: str) -> None:
    a = config(name)
    dead, dense_ops, w, sparse_ops, ws, d2s, head = LAST_BLOCKS[name]
    last = a.blocks[-1]
    assert a.num_blocks == 7
    assert a.dead_blocks() == dead
    assert (last.dense_ops, last.dense_width, last.sparse_ops, last.sparse_width, last.d2s) == (
        dense_ops,
        w,
        sparse_ops,
        ws,
        d2s,
    )
    assert head_width(a) == head
    # Canonical form round trip of the decoded reference JSON.
    assert Architecture.from_dict(json.loads(a.to_json())) == a
    if "autoctr" in name:
        assert all(set(b.dense_ops) <= {"fc", "dot"} and b.sparse_ops == ("efc",) for b in a.blocks)


def block(a: Architecture, i: int) -> tuple:
    b = a.blocks[i]
    ins = b.dense_in if b.uses_dense_in else (b.left, b.right)
    return (b.dense_ops, ins, b.dense_width, b.sparse_ops, b.sparse_in, b.sparse_width)


def test_criteo_full_blocks() -> None:
    a = config("criteo_xlarge_best.json")
    assert block(a, 0) == (("gating",), (0, 0), 128, ("transformer",), (0,), 64) and a.blocks[0].d2s
    assert block(a, 1) == (("dot",), (0,), 32, ("efc",), (0,), 64) and a.blocks[1].sparse_in == (0,)
    assert block(a, 2) == (("dot",), (1, 2), 768, ("efc",), (0, 1, 2), 32)
    assert a.blocks[2].fm and not a.blocks[2].d2s
    assert block(a, 6) == (("fc",), (0, 2, 3), 128, ("transformer",), (1, 3), 48) and a.blocks[6].fm


def test_avazu_full_blocks() -> None:
    a = config("avazu_xlarge_best.json")
    assert block(a, 0) == (("dot",), (0,), 32, ("transformer",), (0,), 48) and a.blocks[0].d2s
    assert block(a, 1) == (("dot",), (0, 1), 768, ("efc",), (0, 1), 64) and a.blocks[1].d2s
    assert block(a, 2) == (("fc",), (0,), 512, ("efc",), (0,), 48) and a.blocks[2].d2s
    # Gating with the raw (all-zero, for Avazu) dense input on the left and B1 on the right.
    assert block(a, 6) == (("gating",), (0, 2), 768, ("transformer",), (2, 3), 16)


def test_kdd_full_blocks() -> None:
    a = config("kdd_xlarge_best.json")
    assert block(a, 0) == (("dot",), (0,), 128, ("transformer",), (0,), 48)
    assert block(a, 1) == (("gating",), (0, 0), 768, ("transformer",), (1,), 64)
    assert block(a, 2)[:4] == (("gating",), (1, 0), 16, ("efc",)) and a.blocks[2].sparse_width == 48
    assert block(a, 3)[:4] == (("sum",), (2, 2), 64, ("transformer",)) and a.blocks[3].sparse_width == 16
    assert block(a, 4)[:4] == (("sum",), (0, 2), 64, ("efc",)) and a.blocks[4].sparse_width == 48
    assert block(a, 6) == (("gating",), (5, 5), 768, ("efc",), (1, 3, 4, 5), 16)
