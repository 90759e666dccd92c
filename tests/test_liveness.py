"""Functional equivalence: architectures that differ only where nothing reaches the head are one model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nasrec.model.cost import arch_cost
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_form, functional_hash, live_outputs
from nasrec.space.space import NASREC_FULL, NASREC_SMALL, SearchSpace

TABLES = [7, 30, 3, 50, 11, 5, 19, 40, 2, 9, 13, 21, 8]
NUM_DENSE = 5


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    return dense, torch.stack([torch.randint(0, t, (n,), generator=g) for t in TABLES], 1)


def _equivalent_pairs(space: SearchSpace, n: int, seed: int) -> list[tuple[Architecture, Architecture]]:
    """Pairs (arch, mutant) with different hashes and equal functional hashes."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(50 * n):
        a = space.sample(rng, "default")
        for _ in range(30):
            b = space.mutate(a, rng)
            if b.hash() != a.hash() and functional_hash(b) == functional_hash(a):
                pairs.append((a, b))
                break
        if len(pairs) == n:
            return pairs
    raise AssertionError(f"found only {len(pairs)} equivalent pairs")


@pytest.mark.slow
@pytest.mark.parametrize("space", [NASREC_SMALL, NASREC_FULL], ids=["small", "full"])
def test_equivalent_architectures_compute_the_same_function(space: SearchSpace) -> None:
    torch.manual_seed(0)
    sup = Supernet(space, NUM_DENSE, TABLES, layernorm=True)
    dense, sparse = _batch()
    for a, b in _equivalent_pairs(space, 12, seed=1):
        assert arch_cost(a, NUM_DENSE, len(TABLES)).flops == arch_cost(b, NUM_DENSE, len(TABLES)).flops
        for train in (True, False):
            sup.train(train)
            with torch.no_grad():
                torch.testing.assert_close(sup(dense, sparse, a), sup(dense, sparse, b), rtol=0, atol=0)
        sa, sb = Subnet.from_supernet(sup, a).eval(), Subnet.from_supernet(sup, b).eval()
        with torch.no_grad():
            torch.testing.assert_close(sa(dense, sparse), sb(dense, sparse), rtol=0, atol=0)


@pytest.mark.parametrize("space", [NASREC_SMALL, NASREC_FULL], ids=["small", "full"])
def test_functional_form_is_a_fixpoint_with_the_same_flops(space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        a = space.sample(rng, "default")
        f = functional_form(a)
        assert functional_form(f) == f and functional_hash(f) == functional_hash(a)
        assert arch_cost(f).flops == arch_cost(a).flops
        assert live_outputs(f) == live_outputs(a)
        # `live_blocks` goes by what a block's operators read, dead operators included: the form can only drop.
        assert all(la or not lf for lf, la in zip(f.live_blocks(), a.live_blocks(), strict=True))


def test_what_reaches_the_head_changes_the_functional_hash() -> None:
    a = NASREC_SMALL.sample(np.random.default_rng(3), "default")
    last = a.blocks[-1]
    wider = Architecture((*a.blocks[:-1], replace(last, dense_width=last.dense_width + 1)))
    assert functional_hash(wider) != functional_hash(a)
    flipped = Architecture((*a.blocks[:-1], replace(last, fm=not last.fm)))
    assert functional_hash(flipped) != functional_hash(a)
    # A block nobody reads: its content is irrelevant.
    dead = [i for i, live in enumerate(a.live_blocks()) if not live]
    if dead:
        i = dead[0]
        other = replace(a.blocks[i], dense_width=a.blocks[i].dense_width + 1, d2s=not a.blocks[i].d2s)
        changed = Architecture((*a.blocks[:i], other, *a.blocks[i + 1 :]))
        assert changed.hash() != a.hash() and functional_hash(changed) == functional_hash(a)


def test_unused_inputs_do_not_count() -> None:
    a = NASREC_SMALL.sample(np.random.default_rng(4), "default")
    last = a.blocks[-1]
    assert not last.uses_left_right  # the Small space has neither sum nor gating
    moved = Architecture((*a.blocks[:-1], replace(last, left=len(a.blocks) - 1, right=0)))
    assert moved.hash() != a.hash() and functional_hash(moved) == functional_hash(a)
