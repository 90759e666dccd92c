"""Search spaces: built-ins, user space files, membership, every sampling strategy (determinism and the
distributions of spec section 3), full path, one-key mutation and the EA's mutation schedule (spec 4)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from nasrec.errors import NasrecError
from nasrec.space.arch import Architecture, Block
from nasrec.space.space import (
    MACRO_KEYS,
    MICRO_KEYS,
    NASREC_FULL,
    NASREC_SMALL,
    STRATEGIES,
    SearchSpace,
    get_space,
    mutation_count,
    sample_architecture,
)

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
SPACES = [NASREC_SMALL, NASREC_FULL]


def samples(space: SearchSpace, n: int, strategy: str = "default", seed: int = 0) -> list[Architecture]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng, strategy) for _ in range(n)]


def changed_fields(a: Block, b: Block) -> list[str]:
    return [f.name for f in fields(Block) if getattr(a, f.name) != getattr(b, f.name)]


# -- built-in spaces -----------------------------------------------------------------------------------
def test_builtin_spaces() -> None:
    assert NASREC_SMALL.dense_ops == ("fc", "dot") and NASREC_SMALL.sparse_ops == ("efc",)
    assert NASREC_FULL.dense_ops == ("fc", "dot", "gating", "sum")
    assert NASREC_FULL.sparse_ops == ("efc", "transformer")
    for s in SPACES:
        assert s.num_blocks == 7 and s.max_inputs == 4
        assert s.dense_widths == (16, 32, 64, 128, 256, 512, 768, 1024)
        assert s.sparse_widths == (16, 32, 48, 64)
    assert get_space("small") is get_space("autoctr") is NASREC_SMALL
    assert get_space("full") is get_space("xlarge") is NASREC_FULL
    assert get_space(NASREC_FULL) is NASREC_FULL
    # Spec 2.1: raw encoding counts ~1e39.7 (Small) and ~1e43.9 (Full).
    assert NASREC_SMALL.log10_size() == pytest.approx(39.7, abs=0.05)
    assert NASREC_FULL.log10_size() == pytest.approx(43.9, abs=0.05)


def test_published_architectures_are_in_their_space() -> None:
    if not CONFIGS.is_dir():
        pytest.skip("../shared/configs is not available")
    for path in sorted(CONFIGS.glob("*_best.json")):
        a = Architecture.load(path)
        space = get_space(json.loads(path.read_text())["config"])
        assert space.contains(a), path.name
        assert NASREC_FULL.contains(a)  # Small is a subspace of Full
    assert not NASREC_SMALL.contains(Architecture.load(CONFIGS / "criteo_xlarge_best.json"))


def test_check_names_block_and_field() -> None:
    a = NASREC_FULL.full_path()
    with pytest.raises(NasrecError, match=r"space 'small': block 0, field dense_ops: operator 'gating'"):
        NASREC_SMALL.check(a)
    single = sample_architecture("full", 1)
    odd_width = Architecture((*single.blocks[:3], replace(single.blocks[3], dense_width=100), *single.blocks[4:]))
    with pytest.raises(NasrecError, match=r"block 3, field dense_width: 100 is not one of 16, 32"):
        NASREC_FULL.check(odd_width)
    odd_tokens = Architecture((replace(single.blocks[0], sparse_width=8), *single.blocks[1:]))
    with pytest.raises(NasrecError, match=r"block 0, field sparse_width: 8"):
        NASREC_FULL.check(odd_tokens)
    with pytest.raises(NasrecError, match="it has 8 blocks, the space 7"):
        NASREC_FULL.check(Architecture((*single.blocks, replace(single.blocks[-1], dense_in=(7,)))))
    with pytest.raises(NasrecError, match="it has 6 blocks"):
        NASREC_FULL.check(Architecture(single.blocks[:6]))
    narrow = replace(NASREC_FULL, name="narrow", max_inputs=2)
    with pytest.raises(NasrecError, match=r"block 2, field dense_in: 3 inputs, the space allows at most 2"):
        narrow.check(NASREC_FULL.full_path())
    assert not narrow.contains(NASREC_FULL.full_path()) and NASREC_FULL.contains(a)


# -- sampling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_samples_the_space_deterministically(space: SearchSpace, strategy: str) -> None:
    archs = samples(space, 50, strategy, seed=7)
    assert all(space.contains(a) and a.num_blocks == 7 for a in archs)
    assert [a.hash() for a in archs] == [a.hash() for a in samples(space, 50, strategy, seed=7)]
    assert sample_architecture(space, 11, strategy) == sample_architecture(space.name, 11, strategy)
    if strategy == "full-path":
        assert len({a.hash() for a in archs}) == 1
    else:
        assert len({a.hash() for a in archs}) == 50
        assert samples(space, 5, strategy, seed=8) != archs[:5]


@pytest.mark.slow
def test_default_strategy_distributions() -> None:
    archs = samples(NASREC_FULL, 2000, "default", seed=123)
    blocks = [b for a in archs for b in a.blocks]
    n = len(blocks)
    assert all(len(b.dense_ops) == 1 and len(b.sparse_ops) == 1 for b in blocks)
    for op in NASREC_FULL.dense_ops:
        assert sum(b.dense_ops == (op,) for b in blocks) / n == pytest.approx(0.25, abs=0.02)
    for op in NASREC_FULL.sparse_ops:
        assert sum(b.sparse_ops == (op,) for b in blocks) / n == pytest.approx(0.5, abs=0.02)
    for w in NASREC_FULL.dense_widths:
        assert sum(b.dense_width == w for b in blocks) / n == pytest.approx(1 / 8, abs=0.015)
    for w in NASREC_FULL.sparse_widths:
        assert sum(b.sparse_width == w for b in blocks) / n == pytest.approx(1 / 4, abs=0.02)
    assert np.mean([b.d2s for b in blocks]) == pytest.approx(0.5, abs=0.02)
    assert np.mean([b.fm for b in blocks]) == pytest.approx(0.5, abs=0.02)
    for i in range(7):
        bi = [a.blocks[i] for a in archs]
        # |inputs| = 1 + Binomial(min(i, 3), 1/2); left and right uniform over 0..i.
        for name in ("dense_in", "sparse_in"):
            assert np.mean([len(getattr(b, name)) for b in bi]) == pytest.approx(1 + min(i, 3) / 2, abs=0.08)
        if i == 6:
            counts = np.bincount([len(b.dense_in) for b in bi], minlength=5)[1:] / len(bi)
            assert counts == pytest.approx([1 / 8, 3 / 8, 3 / 8, 1 / 8], abs=0.04)
            # Every candidate is equally likely to be an input: mean count 2.5 over 7 candidates.
            hits = np.bincount([j for b in bi for j in b.dense_in], minlength=7) / len(bi)
            assert hits == pytest.approx([2.5 / 7] * 7, abs=0.05)
        for name in ("left", "right"):
            assert np.mean([getattr(b, name) for b in bi]) == pytest.approx(i / 2, abs=0.15)


def test_single_path_has_single_inputs_and_operators() -> None:
    for a in samples(NASREC_FULL, 100, "single-path", seed=3):
        for b in a.blocks:
            assert len(b.dense_in) == len(b.sparse_in) == len(b.dense_ops) == len(b.sparse_ops) == 1


def test_any_path_draws_several_operators() -> None:
    blocks = [b for a in samples(NASREC_FULL, 500, "any-path", seed=4) for b in a.blocks]
    # 1 + Binomial(min(k - 1, 3), 1/2) operators: k = 4 dense (mean 2.5), k = 2 sparse (mean 1.5).
    assert np.mean([len(b.dense_ops) for b in blocks]) == pytest.approx(2.5, abs=0.1)
    assert np.mean([len(b.sparse_ops) for b in blocks]) == pytest.approx(1.5, abs=0.05)
    assert {len(b.dense_ops) for b in blocks} == {1, 2, 3, 4}
    assert all(list(b.dense_ops) == [op for op in NASREC_FULL.dense_ops if op in b.dense_ops] for b in blocks)
    # Small has one sparse operator: any-path keeps exactly it.
    assert {b.sparse_ops for a in samples(NASREC_SMALL, 50, "any-path") for b in a.blocks} == {("efc",)}


@pytest.mark.slow
def test_uniform_strategy_connection_counts() -> None:
    archs = samples(NASREC_FULL, 2000, "uniform", seed=5)
    assert all(len(b.dense_ops) == len(b.sparse_ops) == 1 for a in archs for b in a.blocks)
    for i in (0, 1, 6):
        counts = np.bincount([len(a.blocks[i].sparse_in) for a in archs], minlength=5)[1:] / len(archs)
        k = min(i + 1, 4)
        assert counts == pytest.approx([1 / k] * k + [0] * (4 - k), abs=0.04)


def test_full_path() -> None:
    a = NASREC_FULL.full_path()
    assert a == NASREC_FULL.sample(np.random.default_rng(0), "full-path")
    assert a.dead_blocks() == []
    for i, b in enumerate(a.blocks):
        assert b.dense_ops == NASREC_FULL.dense_ops and b.sparse_ops == NASREC_FULL.sparse_ops
        assert (b.dense_width, b.sparse_width, b.d2s, b.fm) == (1024, 64, True, True)
        expected = tuple(range(max(0, i - 3), i + 1))  # the newest min(i + 1, 4) candidates
        assert b.dense_in == b.sparse_in == expected and b.left == b.right == i
    small = NASREC_SMALL.full_path()
    assert {(b.dense_ops, b.sparse_ops) for b in small.blocks} == {(("fc", "dot"), ("efc",))}


def test_full_path_warm_up_probability() -> None:
    rng = np.random.default_rng(9)
    assert NASREC_FULL.sample(rng, "default", full_path_prob=1.0) == NASREC_FULL.full_path()
    # Probability 0 draws nothing extra: the same stream as a plain sample.
    assert NASREC_FULL.sample(np.random.default_rng(2), full_path_prob=0.0) == sample_architecture(NASREC_FULL, 2)
    archs = samples_with_prob(NASREC_FULL, 400, 0.5)
    full = NASREC_FULL.full_path().blocks[3]
    macro = np.mean([a.blocks[3].dense_in == full.dense_in and a.blocks[6].left == 6 for a in archs])
    micro = np.mean([a.blocks[3].dense_ops == full.dense_ops and a.blocks[3].dense_width == 1024 for a in archs])
    assert 0.4 < macro < 0.6 and 0.4 < micro < 0.6
    assert all(NASREC_FULL.contains(a) for a in archs)
    with pytest.raises(NasrecError, match="between 0 and 1"):
        NASREC_FULL.sample(rng, full_path_prob=1.5)


def samples_with_prob(space: SearchSpace, n: int, p: float) -> list[Architecture]:
    rng = np.random.default_rng(1)
    return [space.sample(rng, "default", full_path_prob=p) for _ in range(n)]


def test_unknown_strategy() -> None:
    with pytest.raises(NasrecError, match="unknown sampling strategy 'greedy'"):
        NASREC_FULL.sample(np.random.default_rng(0), "greedy")


# -- mutation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_mutation_changes_at_most_one_key_of_one_block(space: SearchSpace) -> None:
    rng = np.random.default_rng(17)
    seen: set[str] = set()
    unchanged = 0
    for parent in samples(space, 300, "uniform", seed=2):
        child = space.mutate(parent, rng)
        assert space.contains(child)
        diffs = [(i, changed_fields(a, b)) for i, (a, b) in enumerate(zip(parent.blocks, child.blocks, strict=True))]
        diffs = [(i, d) for i, d in diffs if d]
        assert len(diffs) <= 1
        if diffs:
            assert len(diffs[0][1]) == 1
            seen.add(diffs[0][1][0])
        else:
            unchanged += 1
    expected = set(MACRO_KEYS) | set(MICRO_KEYS)
    if len(space.sparse_ops) == 1:
        expected.discard("sparse_ops")  # one sparse operator: resampling it never changes anything
    assert seen == expected
    # A redrawn value may equal the old one: about a third of the time (a flag keeps its value half the time).
    assert 0.25 < unchanged / 300 < 0.5


def test_mutation_is_deterministic_and_keeps_inputs_in_range() -> None:
    parent = sample_architecture("full", 0)
    a = [NASREC_FULL.mutate(parent, np.random.default_rng(s)) for s in range(20)]
    assert a == [NASREC_FULL.mutate(parent, np.random.default_rng(s)) for s in range(20)]
    child = parent
    rng = np.random.default_rng(1)
    for _ in range(500):  # a long chain stays valid and in the space
        child = NASREC_FULL.mutate(child, rng)
    assert NASREC_FULL.contains(child) and child != parent


def test_mutation_of_an_operator_key_gives_one_operator() -> None:
    full = NASREC_FULL.full_path()
    rng = np.random.default_rng(0)
    for _ in range(200):
        child = NASREC_FULL.mutate(full, rng)
        for a, b in zip(full.blocks, child.blocks, strict=True):
            if changed_fields(a, b) in (["dense_ops"], ["sparse_ops"]):
                assert len(b.dense_ops) == 1 or len(b.sparse_ops) == 1


def test_mutation_outside_the_space_is_an_error() -> None:
    with pytest.raises(NasrecError, match="not in search space 'small'"):
        NASREC_SMALL.mutate(NASREC_FULL.full_path(), np.random.default_rng(0))


def test_mutation_count_schedule() -> None:
    expected = {0: 6, 1: 5, 48: 5, 49: 4, 96: 4, 97: 3, 144: 3, 145: 2, 192: 2, 193: 1, 239: 1}
    assert {g: mutation_count(g) for g in expected} == expected
    assert sum(mutation_count(g) for g in range(240)) == 6 + 5 * 48 + 4 * 48 + 3 * 48 + 2 * 48 + 47
    assert {mutation_count(g, 10) for g in range(10)} == {1}  # fewer than 20 generations: one mutation
    for g, total in ((240, 240), (-1, 240), (0, 0)):
        with pytest.raises(NasrecError):
            mutation_count(g, total)


# -- user spaces ---------------------------------------------------------------------------------------
def test_user_space_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    spec = {
        "num_blocks": 4,
        "dense_ops": ["dot", "fc"],
        "sparse_ops": ["transformer"],
        "dense_widths": [64, 32],
        "sparse_widths": [16],
        "max_inputs": 2,
    }
    path.write_text(yaml.safe_dump(spec))
    space = get_space(str(path))
    assert space.name == "tiny" and space.num_blocks == 4
    assert space.dense_ops == ("fc", "dot") and space.dense_widths == (32, 64)  # canonical order
    for strategy in STRATEGIES:
        for a in samples(space, 30, strategy):
            assert space.contains(a) and a.num_blocks == 4
            assert all(len(b.dense_in) <= 2 and len(b.sparse_in) <= 2 for b in a.blocks)
    assert space.full_path().blocks[3].dense_in == (2, 3)
    assert SearchSpace.from_dict(space.to_dict()) == space
    json_path = tmp_path / "tiny.json"
    json_path.write_text(json.dumps({**spec, "name": "mine"}))
    assert get_space(json_path) == replace(space, name="mine")
    # Defaults: NASRec-Full's blocks, widths and inputs.
    path.write_text("dense_ops: [fc]\nsparse_ops: [efc]\n")
    assert SearchSpace.load(path) == replace(NASREC_FULL, name="tiny", dense_ops=("fc",), sparse_ops=("efc",))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("dense_ops: [fc]\nsparse_ops: [efc]\nblocks: 3\n", "unknown key 'blocks'"),
        ("dense_ops: [fc]\n", "missing key 'sparse_ops'"),
        ("dense_ops: [fc, conv]\nsparse_ops: [efc]\n", "field dense_ops: unknown operator 'conv'"),
        ("dense_ops: [fc]\nsparse_ops: [fc]\n", "field sparse_ops: unknown operator 'fc'"),
        ("dense_ops: fc\nsparse_ops: [efc]\n", "field dense_ops"),
        ("dense_ops: [fc, fc]\nsparse_ops: [efc]\n", "field dense_ops: ['fc', 'fc'] lists an operator twice"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\ndense_widths: [16, 0]\n", "field dense_widths"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\nsparse_widths: [16, 16]\n", "field sparse_widths"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\nsparse_widths: []\n", "field sparse_widths"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\nnum_blocks: 0\n", "field num_blocks"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\nmax_inputs: 5\n", "field max_inputs: 5 is more than"),
        ("dense_ops: [fc]\nsparse_ops: [efc]\nname: ''\n", "field name"),
        ("- fc\n", "expected a mapping"),
        ("dense_ops: [fc\n", "cannot parse search space"),
    ],
)
def test_user_space_errors(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NasrecError) as e:
        get_space(path)
    assert words in str(e.value) and str(path) in str(e.value)


def test_unknown_space_name() -> None:
    with pytest.raises(NasrecError, match="unknown search space 'medium'"):
        get_space("medium")
    with pytest.raises(NasrecError, match="field dense_widths: \\[16, True\\] must be positive integers"):
        SearchSpace("x", 7, ("fc",), ("efc",), (16, True), (16,))
