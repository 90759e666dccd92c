"""The reference's masking semantics, kept as a supernet option to measure what slicing changes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_synth_cache

from nasrec.errors import NasrecError
from nasrec.model.supernet import Supernet
from nasrec.search.parallel import ScorerSpec
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_FULL, NASREC_SMALL
from nasrec.train.api import train_supernet

TABLES = [7, 30, 3, 50, 11, 5, 19, 40, 2, 9, 13, 21, 8]
NUM_DENSE = 5


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, NUM_DENSE, generator=g), torch.stack(
        [torch.randint(0, t, (n,), generator=g) for t in TABLES], 1
    )


def _pair(space) -> tuple[Supernet, Supernet]:
    torch.manual_seed(0)
    sliced = Supernet(space, NUM_DENSE, TABLES)
    masked = Supernet(space, NUM_DENSE, TABLES, masking=True)
    masked.load_state_dict(sliced.state_dict())
    return sliced.eval(), masked.eval()


@pytest.mark.slow
@pytest.mark.parametrize("space", [NASREC_SMALL, NASREC_FULL], ids=["small", "full"])
def test_at_full_widths_masking_and_slicing_agree(space) -> None:
    sliced, masked = _pair(space)
    dense, sparse = _batch()
    rng = np.random.default_rng(3)
    W, Ws = max(space.dense_widths), max(space.sparse_widths)
    for _ in range(20):
        a = space.sample(rng)
        wide = Architecture(tuple(dataclasses.replace(b, dense_width=W, sparse_width=Ws) for b in a.blocks))
        with torch.no_grad():
            torch.testing.assert_close(masked(dense, sparse, wide), sliced(dense, sparse, wide), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_narrow_paths_differ_and_depend_on_the_masked_neurons() -> None:
    sliced, masked = _pair(NASREC_FULL)
    dense, sparse = _batch()
    rng = np.random.default_rng(5)
    archs = [NASREC_FULL.sample(rng) for _ in range(10)]
    with torch.no_grad():
        before = [(sliced(dense, sparse, a), masked(dense, sparse, a)) for a in archs]
        assert any((s - m).abs().max() > 1e-3 for s, m in before)
        # perturb only the output neurons beyond every block's fc width: the layer norm over all of them
        # (the reference's) feels it, nasrec's sliced layer norm does not
        for cell, arch_blocks in zip(sliced.cells, zip(*[a.blocks for a in archs], strict=True), strict=True):
            w = max(b.dense_width for b in arch_blocks)
            for block in cell.fc.blocks:
                block[w:] += 1.0
        masked.load_state_dict(sliced.state_dict())
        after = [(sliced(dense, sparse, a), masked(dense, sparse, a)) for a in archs]
    uses_fc = [i for i, a in enumerate(archs) if any("fc" in b.dense_ops for b in a.blocks)]
    assert uses_fc
    for i in range(len(archs)):
        torch.testing.assert_close(after[i][0], before[i][0], atol=0, rtol=0)
    assert any((after[i][1] - before[i][1]).abs().max() > 1e-3 for i in uses_fc)


@pytest.mark.slow
def test_a_masking_supernet_trains_scores_and_keeps_its_semantics(tmp_path: Path) -> None:
    _, cache = small_synth_cache(tmp_path, rows=2_000, seed=1)
    # its final evaluation on 1 path, the head's mean measured on 1 batch: 3 steps train, the rest is checks
    o = {"max_steps": 3, "batch_size": 128, "threads": 1, "log_every": 1}
    o |= {"supernet_eval_archs": 1, "head_calib_batches": 1}
    res = train_supernet(
        cache, tmp_path / "m", space="small", preset_name="cpu-supernet", overrides=o, semantics="mask", progress=False
    )
    assert res["steps"] == 3
    assert json.loads((tmp_path / "m" / "model.json").read_text())["hparams"] == {"semantics": "mask"}
    score = dict(
        finetune_steps=1, warmup_steps=1, finetune_batch_size=128, calib_batches=1, val_batches=1, val_batch_size=128
    )
    scorer = ScorerSpec(str(tmp_path / "m"), str(cache), score).build()
    assert scorer.supernet.masking
    assert np.isfinite(scorer.score(NASREC_SMALL.sample(np.random.default_rng(0))))
    with pytest.raises(NasrecError, match="holds another model"):
        train_supernet(
            cache, tmp_path / "m", space="small", preset_name="cpu-supernet", overrides=o, resume=True, progress=False
        )
    with pytest.raises(NasrecError, match="semantics must be one of slice, mask"):
        train_supernet(cache, tmp_path / "x", space="small", semantics="masked")
