"""Architecture search: supernet scoring, evolution vs random, constraints, Pareto, resume, workers."""

from __future__ import annotations

import faulthandler
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import small_synth_cache

from nasrec.configfile import ConfigError
from nasrec.data.cache import open_cache
from nasrec.errors import NasrecError
from nasrec.model.cost import arch_cost
from nasrec.model.subnet import Subnet
from nasrec.search.api import search
from nasrec.search.candidate import top_k
from nasrec.search.config import SearchConfig
from nasrec.search.evolution import Search
from nasrec.search.parallel import ScorerSpec, ScoringPool
from nasrec.search.pareto import dominates, pareto_front
from nasrec.search.retrain import Halving, retrain_top
from nasrec.search.scorer import ScoreConfig, ScoringData, finetune_all, finetune_head
from nasrec.space.arch import Architecture
from nasrec.space.liveness import functional_hash
from nasrec.space.space import NASREC_SMALL
from nasrec.train.api import train_supernet
from nasrec.zoo.budget import resolve_cap
from nasrec.zoo.registry import zoo_cost

# -- a cheap analytic objective: distance to a hidden target architecture ------------------------------
TARGET = NASREC_SMALL.sample(np.random.default_rng(123), "uniform")


def analytic(arch: Architecture) -> float:
    """0 at TARGET; every differing key of a block adds to it."""
    loss = 0.0
    for b, t in zip(arch.blocks, TARGET.blocks, strict=True):
        loss += abs(math.log2(b.dense_width) - math.log2(t.dense_width)) / 6
        loss += abs(b.sparse_width - t.sparse_width) / 48
        loss += (b.dense_ops != t.dense_ops) + (b.sparse_ops != t.sparse_ops)
        loss += 0.5 * ((b.d2s != t.d2s) + (b.fm != t.fm)) + 0.25 * len(set(b.dense_in) ^ set(t.dense_in))
    return loss


def cost(arch: Architecture) -> tuple[float, int]:
    c = arch_cost(arch, 13, 26)
    return c.mflops, c.dense_params


class Recorder:
    """A score_batch that records what it was asked and can fail on its n-th call (a simulated kill)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.seen: list[Architecture] = []
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, archs: Sequence[Architecture]) -> list[float]:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        self.seen += archs
        return [analytic(a) for a in archs]


SMALL_EA = SearchConfig(population=16, sample=8, children=4, generations=20, keep_per_generation=None, top_k=3)


def _best(strategy: str, seed: int, tmp: Path) -> float:
    cfg = SMALL_EA.updated(strategy=strategy, seed=seed)
    res = Search(NASREC_SMALL, Recorder(), cost, cfg, tmp / f"{strategy}{seed}").run()
    return res["best"]["score"]


@pytest.mark.slow
def test_evolution_beats_random_search_at_equal_budget(tmp_path: Path) -> None:
    evo = [_best("evolution", s, tmp_path) for s in range(4)]
    rnd = [_best("random", s, tmp_path) for s in range(4)]
    assert np.mean(evo) < np.mean(rnd) - 0.5, (evo, rnd)
    assert sum(e < r for e, r in zip(evo, rnd, strict=True)) >= 3


@pytest.mark.slow
def test_search_runs_its_budget_without_duplicates_and_is_seeded(tmp_path: Path) -> None:
    rec = Recorder()
    res = Search(NASREC_SMALL, rec, cost, SMALL_EA, tmp_path / "a").run()
    assert res["scored"] == len(rec.seen) == SMALL_EA.budget == 16 + 20 * 4
    # no two candidates compute the same function (they never differ only where nothing reaches the head)
    assert len({functional_hash(a) for a in rec.seen}) == len(rec.seen)
    history = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["generation"] for h in history] == [-1] * 16 + [g for g in range(20) for _ in range(4)]
    assert all(h["parent"] in {x["hash"] for x in history[: 16 + 4 * h["generation"]]} for h in history[16:])
    # the best architecture is written as architecture JSON and is the lowest score of the history
    best = Architecture.load(tmp_path / "a" / "best.json")
    assert analytic(best) == min(h["score"] for h in history) == res["best"]["score"]
    again = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, tmp_path / "b").run()
    assert (tmp_path / "b" / "history.jsonl").read_text() == (tmp_path / "a" / "history.jsonl").read_text()
    assert again["best"] == res["best"]
    other = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(seed=1), tmp_path / "c").run()
    assert other["top"] != res["top"]
    with pytest.raises(NasrecError, match="already holds a search"):
        Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, tmp_path / "a").run()


@pytest.mark.slow
def test_constraints_are_respected_and_infeasible_never_scored(tmp_path: Path) -> None:
    flops = sorted(cost(NASREC_SMALL.sample(np.random.default_rng(s), "uniform"))[0] for s in range(200))
    limit, plimit = flops[60], 400_000  # about a third of random architectures pass the MFLOPs limit
    for strategy in ("evolution", "random"):
        rec = Recorder()
        cfg = SMALL_EA.updated(strategy=strategy, max_mflops=limit, max_params=plimit)
        res = Search(NASREC_SMALL, rec, cost, cfg, tmp_path / strategy).run()
        assert len(rec.seen) == cfg.budget
        for a in rec.seen:
            mflops, params = cost(a)
            assert mflops <= limit and params <= plimit
        assert res["best"]["mflops"] <= limit
    with pytest.raises(NasrecError, match="no new architecture within the constraints"):
        Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(max_mflops=1e-6, max_tries=50), tmp_path / "x").run()


class CountingSpace:
    """The Small space, counting its mutations."""

    def __init__(self) -> None:
        self.mutations = 0

    def __getattr__(self, name: str) -> object:
        return getattr(NASREC_SMALL, name)

    def mutate(self, arch: Architecture, rng: np.random.Generator) -> Architecture:
        self.mutations += 1
        return NASREC_SMALL.mutate(arch, rng)


def test_children_under_a_tight_cap_take_few_mutations(tmp_path: Path) -> None:
    flops = sorted(cost(NASREC_SMALL.sample(np.random.default_rng(s), "uniform"))[0] for s in range(300))
    limit = flops[5]  # about 2 % of random architectures pass
    space = CountingSpace()
    cfg = SMALL_EA.updated(population=8, sample=4, children=2, generations=10, max_mflops=limit)
    rec = Recorder()
    Search(space, rec, cost, cfg, tmp_path / "s").run()  # type: ignore[arg-type]
    assert all(cost(a)[0] <= limit for a in rec.seen) and len(rec.seen) == cfg.budget
    # a walk through infeasible children took thousands of mutations per child here
    assert space.mutations <= 100 * cfg.generations * cfg.children, space.mutations


def test_pareto_front_of_known_points() -> None:
    pts = [(0.50, 3.0), (0.45, 5.0), (0.50, 2.0), (0.40, 9.0), (0.47, 5.0), (0.45, 5.0), (math.nan, 0.1), (0.6, 1.0)]
    # (0.50, 3.0) is dominated by (0.50, 2.0); (0.47, 5.0) by (0.45, 5.0); the repeated (0.45, 5.0) kept once
    assert pareto_front(pts) == [3, 1, 2, 7]
    assert dominates((0.4, 1.0), (0.4, 2.0)) and not dominates((0.4, 2.0), (0.4, 2.0))
    assert pareto_front([]) == []


def test_pareto_search_returns_the_non_dominated_candidates(tmp_path: Path) -> None:
    res = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(pareto=True), tmp_path / "p").run()
    history = [json.loads(x) for x in (tmp_path / "p" / "history.jsonl").read_text().splitlines()]
    front = json.loads((tmp_path / "p" / "pareto.json").read_text())
    assert [f["hash"] for f in front] == res["pareto"] and len(front) >= 2
    pts = {h["hash"]: (h["score"], h["mflops"]) for h in history}
    on = {f["hash"] for f in front}
    for h, p in pts.items():  # nothing dominates a front member; every other point is dominated by one
        if h in on:
            assert not any(dominates(q, p) for q in pts.values())
        else:
            assert any(dominates(pts[f], p) or pts[f] == p for f in on)


def test_top_k_skips_equal_scores() -> None:
    from nasrec.search.candidate import Candidate

    archs = [NASREC_SMALL.sample(np.random.default_rng(s), "uniform") for s in range(5)]
    cands = [
        Candidate(i, 0, a, a.hash(), s, 1.0, 1)
        for i, (a, s) in enumerate(zip(archs, [0.3, 0.1, 0.1 + 1e-8, math.nan, 0.2], strict=True))
    ]
    assert [c.index for c in top_k(cands, 3)] == [1, 4, 0]


@pytest.mark.slow
@pytest.mark.parametrize("fail_at", [1, 3, 4, 9, 20])
def test_interrupted_search_resumes_to_the_same_result(tmp_path: Path, fail_at: int) -> None:
    ref = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, tmp_path / "ref").run()
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Search(NASREC_SMALL, Recorder(fail_at=fail_at), cost, SMALL_EA, out).run()
    res = Search(NASREC_SMALL, Recorder(), cost, SMALL_EA, out).run(resume=True)
    assert res["best"] == ref["best"] and res["top"] == ref["top"] and res["pareto"] == ref["pareto"]
    assert (out / "history.jsonl").read_text() == (tmp_path / "ref" / "history.jsonl").read_text()
    with pytest.raises(NasrecError, match="its own configuration"):
        Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(seed=5), out).run(resume=True)


def test_seed_architectures_open_the_initial_population(tmp_path: Path) -> None:
    """Seeds come first, in order; a duplicate function or one over the cap is passed over; a kill resumes."""
    from nasrec.space.space import NASREC_FULL

    rng = np.random.default_rng(9)
    seeds = [NASREC_SMALL.sample(rng, "uniform") for _ in range(3)]
    caps = sorted(cost(a)[0] for a in seeds)
    big = max(seeds, key=lambda a: cost(a)[0])
    cfg = SMALL_EA.updated(generations=3, seed_archs=[a.to_dict() for a in (*seeds, seeds[0])])
    rec = Recorder()
    Search(NASREC_SMALL, rec, cost, cfg, tmp_path / "a").run()
    assert [a.hash() for a in rec.seen[:3]] == [a.hash() for a in seeds]  # the repeated seed is passed over
    assert len({functional_hash(a) for a in rec.seen}) == len(rec.seen) == cfg.budget
    # the seeds are part of the search's settings: saved, and a resume needs the same ones
    saved = json.loads((tmp_path / "a" / "state.json").read_text())["config"]["seed_archs"]
    assert [Architecture.from_dict(d).hash() for d in saved] == [a.hash() for a in (*seeds, seeds[0])]
    with pytest.raises(KeyboardInterrupt):
        Search(NASREC_SMALL, Recorder(fail_at=2), cost, cfg, tmp_path / "cut").run()
    Search(NASREC_SMALL, Recorder(), cost, cfg, tmp_path / "cut").run(resume=True)
    assert (tmp_path / "cut" / "history.jsonl").read_text() == (tmp_path / "a" / "history.jsonl").read_text()
    # under a cap the seed above it is never scored
    assert caps[1] < caps[2]
    capped = cfg.updated(max_mflops=(caps[1] + caps[2]) / 2)
    rec = Recorder()
    Search(NASREC_SMALL, rec, cost, capped, tmp_path / "b").run()
    assert big.hash() not in {a.hash() for a in rec.seen}
    assert [a.hash() for a in rec.seen[:2]] == [a.hash() for a in seeds if a is not big]
    # a seed outside the space, or not an architecture, is an error naming it
    full_only = next(a for a in (NASREC_FULL.sample(rng, "uniform") for _ in range(50)) if not NASREC_SMALL.contains(a))
    with pytest.raises(NasrecError, match=r"seed architecture 1 \(\w+\) is not in the .small. space"):
        Search(NASREC_SMALL, Recorder(), cost, SMALL_EA.updated(seed_archs=[full_only.to_dict()]), tmp_path / "c")
    with pytest.raises(ConfigError) as info:
        SMALL_EA.updated(seed_archs=[{"blocks": "no"}])
    assert info.value.key == "seed_archs[0]"


def test_kept_seed_architectures_join_the_top_k_whatever_their_score(tmp_path: Path) -> None:
    """keep_seed_archs: every scored seed is in top.json (after the top k, which it may also be in)."""
    rng = np.random.default_rng(9)
    seeds = [NASREC_SMALL.sample(rng, "uniform") for _ in range(3)]
    cfg = SMALL_EA.updated(generations=3, top_k=2, seed_archs=[a.to_dict() for a in seeds])
    plain = Search(NASREC_SMALL, Recorder(), cost, cfg, tmp_path / "plain").run()
    kept = Search(NASREC_SMALL, Recorder(), cost, cfg.updated(keep_seed_archs=True), tmp_path / "kept").run()
    assert kept["top"][:2] == plain["top"] == plain["top"][:2]
    assert {a.hash() for a in seeds} <= set(kept["top"]) and len(kept["top"]) == len(set(kept["top"]))
    top = json.loads((tmp_path / "kept" / "top.json").read_text())
    assert [c["hash"] for c in top] == kept["top"]


def test_a_kept_seed_at_another_embedding_dimension_is_retrained_at_its_own(tmp_path: Path) -> None:
    """A seed 20 wide in a 16-wide space is scored at 16 and listed in top.json at 20, with its cost there and
    its twin's score; one outside the caps at 20 (but inside at 16) is listed at 16, with a warning."""
    rng = np.random.default_rng(9)
    seeds = [NASREC_SMALL.sample(rng, "uniform") for _ in range(2)]
    wide = [replace(a, embedding_dim=20) for a in seeds]
    at16, at20 = cost(seeds[0])[0], cost(wide[0])[0]
    assert at20 > at16
    cfg = SMALL_EA.updated(generations=2, top_k=1, seed_archs=[a.to_dict() for a in wide], keep_seed_archs=True)
    kept = Search(NASREC_SMALL, Recorder(), cost, cfg, tmp_path / "kept").run()
    history = {c["hash"]: c for c in map(json.loads, (tmp_path / "kept" / "history.jsonl").read_text().splitlines())}
    assert {a.hash() for a in seeds} <= set(history) and not {a.hash() for a in wide} & set(history)
    top = {c["hash"]: c for c in json.loads((tmp_path / "kept" / "top.json").read_text())}
    for narrow, given in zip(seeds, wide, strict=True):
        c = top[given.hash()]
        assert Architecture.from_dict(c["arch"]) == given and c["mflops"] == cost(given)[0]
        assert c["score"] == history[narrow.hash()]["score"]
    assert len(kept["top"]) == len(set(kept["top"]))
    # a 16-wide seed (NASRec's encodings state no width) in a 20-wide space is retrained at the space's 20
    space20 = replace(NASREC_SMALL, embedding_dim=20)
    top20 = Search(space20, Recorder(), cost, cfg.updated(seed_archs=[seeds[0].to_dict()]), tmp_path / "s20").run()
    assert wide[0].hash() in top20["top"] and seeds[0].hash() not in top20["top"]
    # a cap that the first seed meets at 16 but not at 20: it is retrained at 16
    capped = Search(NASREC_SMALL, Recorder(), cost, cfg.updated(max_mflops=(at16 + at20) / 2), tmp_path / "capped")
    top = capped.run()["top"]
    assert seeds[0].hash() in top and wide[0].hash() not in top


# -- the supernet scorer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared data of the search tests (cheap: no training)."""
    return small_synth_cache(tmp_path_factory.mktemp("search"), rows=6_000, seed=3)[1]


@pytest.fixture(scope="module")
def supernet_run(search_cache: Path) -> tuple[Path, Path]:
    root = search_cache.parent
    train_supernet(
        root / "cache",
        root / "sn",
        space="small",
        preset_name="cpu-supernet",
        overrides=dict(batch_size=256, max_steps=30, path_warmup_steps=10, threads=1),
        progress=False,
    )
    return root / "sn", root / "cache"


def test_a_supernet_at_another_embedding_dimension_searches_at_it(search_cache: Path, tmp_path: Path) -> None:
    """`embedding_dim` (`nasrec supernet --embedding-dim`): the supernet's space, its tables and every scored
    architecture are 20 wide; a 16-wide seed architecture is taken at the space's width."""
    from nasrec import rundir
    from nasrec.space.space import SearchSpace

    cache = search_cache.parent / "cache"
    train_supernet(
        cache,
        tmp_path / "sn",
        space="small",
        preset_name="cpu-supernet",
        overrides=dict(batch_size=256, max_steps=4, path_warmup_steps=1, threads=1),
        progress=False,
        embedding_dim=20,
    )
    space = SearchSpace.from_dict(rundir.read_supernet(tmp_path / "sn")["space"])
    assert space.embedding_dim == 20 and space.name == "small"
    seed = NASREC_SMALL.sample(np.random.default_rng(5), "default")
    sets = dict(population=3, sample=2, children=2, generations=1, seed_archs=[seed.to_dict()], **TINY_SCORE)
    search(tmp_path / "sn", cache, tmp_path / "s", preset="cpu-quick", overrides=sets, progress=False)
    lines = (tmp_path / "s" / "history.jsonl").read_text().splitlines()
    archs = [Architecture.from_dict(json.loads(x)["arch"]) for x in lines]
    assert len(archs) == 5 and all(a.embedding_dim == 20 for a in archs)
    assert replace(seed, embedding_dim=20).hash() in {a.hash() for a in archs}


# calib_batches: a centred head's mean is measured on 2 batches (default 8, more than the fine-tune's 6 steps)
TINY_SCORE = dict(
    finetune_steps=6, warmup_steps=2, finetune_batch_size=128, calib_batches=2, val_batches=2, val_batch_size=256
)


@pytest.mark.slow
def test_score_equals_the_materialised_subnet_after_the_same_finetune(supernet_run: tuple[Path, Path]) -> None:
    sn, cache = supernet_run
    scorer = ScorerSpec(str(sn), str(cache), TINY_SCORE).build()
    rng = np.random.default_rng(0)
    for _ in range(3):
        arch = NASREC_SMALL.sample(rng, "default")
        head0 = {k: v.clone() for k, v in scorer.supernet.head.state_dict().items()}
        score = scorer.score(arch)
        for k, v in scorer.supernet.head.state_dict().items():  # the supernet's head is put back
            torch.testing.assert_close(v, head0[k], rtol=0, atol=0)
        sub = Subnet.from_supernet(scorer.supernet, arch)
        for p in sub.parameters():
            p.requires_grad_(False)
        for p in sub.head.parameters():
            p.requires_grad_(True)
        standalone = finetune_head(sub.features, sub.head, scorer.data)
        assert standalone == pytest.approx(score, abs=1e-5)
        # the fine-tune matters: without it the loss differs
        no_ft_data = ScoringData(open_cache(cache), ScoreConfig().updated(**{**TINY_SCORE, "finetune_steps": 0}))
        no_ft = finetune_head(sub.features, Subnet.from_supernet(scorer.supernet, arch).head, no_ft_data)
        assert no_ft != pytest.approx(score, abs=1e-6)
        scorer.scores.clear()
        assert scorer.score(arch) == score  # deterministic


@pytest.mark.slow
def test_full_finetune_scores_like_training_the_materialised_subnet(supernet_run: tuple[Path, Path]) -> None:
    sn, cache = supernet_run
    scorer = ScorerSpec(str(sn), str(cache), {**TINY_SCORE, "finetune": "all"}).build()
    before = {k: v.clone() for k, v in scorer.supernet.state_dict().items()}
    arch = NASREC_SMALL.sample(np.random.default_rng(1), "default")
    score = scorer.score(arch)
    for k, v in scorer.supernet.state_dict().items():  # the supernet itself is never trained
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert finetune_all(Subnet.from_supernet(scorer.supernet, arch), scorer.data) == pytest.approx(score, abs=1e-6)
    head_only = ScorerSpec(str(sn), str(cache), TINY_SCORE).build().score(arch)
    assert head_only != pytest.approx(score, abs=1e-6)
    with pytest.raises(NasrecError, match="scoring config finetune: expected one of head, all"):
        ScoreConfig(finetune="body")


def test_auc_scoring_is_one_minus_the_auc_of_the_scored_model(supernet_run: tuple[Path, Path]) -> None:
    """`metric: auc`: the score is 1 - validation AUC of the same fine-tuned model the log-loss score judges."""
    from nasrec.train.metrics import auc

    sn, cache = supernet_run
    arch = NASREC_SMALL.sample(np.random.default_rng(1), "default")
    scorer = ScorerSpec(str(sn), str(cache), {**TINY_SCORE, "finetune": "all", "metric": "auc"}).build()
    score = scorer.score(arch)
    model = Subnet.from_supernet(scorer.supernet, arch)
    finetune_all(model, ScorerSpec(str(sn), str(cache), {**TINY_SCORE, "finetune": "all"}).build().data)
    with torch.no_grad():
        logits = torch.cat([model(b.dense, b.sparse) for b in scorer.data.val])
    labels = torch.cat([b.label for b in scorer.data.val])
    assert 0.0 < score < 1.0 and score == pytest.approx(1.0 - auc(labels.numpy(), logits.numpy()), abs=1e-9)
    with pytest.raises(NasrecError, match="scoring config metric: expected one of logloss, auc"):
        ScoreConfig(metric="accuracy")


@pytest.mark.slow
def test_an_equivalent_architecture_reuses_the_score(supernet_run: tuple[Path, Path]) -> None:
    sn, cache = supernet_run
    rng = np.random.default_rng(5)
    a = NASREC_SMALL.sample(rng, "default")
    while True:  # a mutant that differs only where nothing reaches the head
        b = NASREC_SMALL.mutate(a, rng)
        if b.hash() != a.hash() and functional_hash(b) == functional_hash(a):
            break
        a = b
    with ScoringPool(ScorerSpec(str(sn), str(cache), {**TINY_SCORE, "finetune": "all"}), 1) as pool:
        sa, sb = pool([a, b])
        assert sa == sb and len(pool.cache) == 1
    fresh = ScorerSpec(str(sn), str(cache), {**TINY_SCORE, "finetune": "all"}).build()
    assert fresh.score(b) == sa  # scored on its own, the mutant gets exactly the same loss


@pytest.mark.slow
def test_one_and_two_workers_give_the_same_search(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    sets = dict(population=6, sample=3, children=4, generations=2, **TINY_SCORE)
    one = search(sn, cache, tmp_path / "w1", preset="cpu-quick", overrides=sets, workers=1, progress=False)
    two = search(sn, cache, tmp_path / "w2", preset="cpu-quick", overrides=sets, workers=2, progress=False)
    assert one["best"] == two["best"] and one["pareto"] == two["pareto"] and one["scored"] == 14
    h1 = (tmp_path / "w1" / "history.jsonl").read_text()
    assert h1 == (tmp_path / "w2" / "history.jsonl").read_text()
    assert all(math.isfinite(json.loads(x)["score"]) for x in h1.splitlines())


WORLD = 2
DIST_SETS = dict(population=6, sample=3, children=4, generations=2, **TINY_SCORE)


def _distributed_search(rank: int, store: str, sn: Path, cache: Path, root: Path) -> None:
    faulthandler.enable(all_threads=True)  # a rank aborted by the C++ side leaves its stacks in stderr
    torch.set_num_threads(1)
    # The caller's own group, met through a file (no port to collide on), as in test_distributed.py.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        # Rank 1 is given its own directory: it must stay absent, since only rank 0 writes.
        out = root / ("dist" if rank == 0 else "rank1")
        # --workers is ignored under a process group (scoring is spread over the ranks)
        res = search(sn, cache, out, preset="cpu-quick", overrides=DIST_SETS, workers=2, progress=False)
        # a finished search resumes from rank 0's files alone (broadcast) to the same result
        again = search(sn, cache, out, preset="cpu-quick", overrides=DIST_SETS, resume=True, progress=False)
        errors = []
        for kw in (dict(resume=False), dict(resume=True, retrain=True)):  # both refused on every rank alike
            try:
                search(sn, cache, out, preset="cpu-quick", overrides=DIST_SETS, progress=False, **kw)
            except NasrecError as e:
                errors.append(str(e))
        (root / f"result_{rank}.json").write_text(json.dumps({"first": res, "again": again, "errors": errors}))
        # Neither rank tears its connections down while the other may still be using them (gloo aborts).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_search_equals_single_process(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    root = tmp_path / "runs"
    root.mkdir()
    mp.spawn(_distributed_search, args=(str(tmp_path / "store"), sn, cache, root), nprocs=WORLD, join=True)
    single = search(sn, cache, tmp_path / "single", preset="cpu-quick", overrides=DIST_SETS, progress=False)
    assert single["scored"] == 14
    single = json.loads(json.dumps(single))  # tuples as lists, as the ranks' results went through JSON
    results = [json.loads((root / f"result_{r}.json").read_text()) for r in range(WORLD)]
    for r in results:
        for res in (r["first"], r["again"]):
            assert res["best"] == single["best"] and res["pareto"] == single["pareto"]
            assert res["top"] == single["top"] and res["scored"] == single["scored"]
        assert "already holds a search" in r["errors"][0] and "not supported under torchrun" in r["errors"][1]
    assert (root / "dist" / "history.jsonl").read_text() == (tmp_path / "single" / "history.jsonl").read_text()
    # exactly one writer: rank 1's directory was never made, and rank 0 wrote what one process writes
    assert sorted(p.name for p in root.iterdir()) == ["dist", "result_0.json", "result_1.json"]
    assert sorted(p.name for p in (root / "dist").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    for name in ("best.json", "top.json", "pareto.json", "search.json"):
        assert (root / "dist" / name).read_text() == (tmp_path / "single" / name).read_text().replace(
            str(tmp_path / "single"), str(root / "dist")
        )


def _search_cli(
    sn: Path, cache: Path, out: Path, *extra: str, generations: int = 10, output: int = subprocess.PIPE
) -> subprocess.Popen:
    """`nasrec search` on the tiny supernet in a fresh interpreter, with `extra` options."""
    sets = dict(population=8, sample=4, children=2, generations=generations, **TINY_SCORE)
    cmd = [sys.executable, "-m", "nasrec.cli", "search", "--supernet", str(sn), "--data", str(cache)]
    cmd += ["--out", str(out), "--preset", "cpu-quick", "--no-progress", *extra]
    cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    return subprocess.Popen(cmd, stdout=output, stderr=output, text=True)


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_result(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    ref = _search_cli(
        sn, cache, tmp_path / "ref", "--max-mflops", "0.05"
    )  # runs beside the search that is killed and resumed
    out = tmp_path / "killed"
    proc = _search_cli(sn, cache, out, "--max-mflops", "0.05")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        h = out / "history.jsonl"
        if h.exists() and len(h.read_text().splitlines()) >= 12:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert not (out / "result.json").exists(), "the search finished before it could be killed"
    resumed = _search_cli(sn, cache, out, "--max-mflops", "0.05", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    a, b = (json.loads((d / "result.json").read_text()) for d in (tmp_path / "ref", out))
    assert a["best"] == b["best"] and a["top"] == b["top"] and a["pareto"] == b["pareto"]
    assert (out / "history.jsonl").read_text() == (tmp_path / "ref" / "history.jsonl").read_text()
    for line in (out / "history.jsonl").read_text().splitlines():
        assert json.loads(line)["mflops"] <= 0.05


@pytest.mark.slow
def test_caps_named_after_a_zoo_model(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    c = open_cache(cache)
    dlrm = zoo_cost("dlrm", len(c.dense_fields), tuple(c.table_sizes))
    assert resolve_cap("max_mflops", " DLRM ", cache) == dlrm.mflops
    assert resolve_cap("max_params", "dlrm", cache) == dlrm.dense_params
    assert resolve_cap("max_mflops", "0.5", cache) == 0.5 and resolve_cap("max_params", "1e3", cache) == 1000
    assert resolve_cap("max_mflops", 2, cache) == 2 and resolve_cap("max_params", None, cache) is None
    bad = (
        ("max_mflops", "dcnv3", "neither a number nor a zoo model"),
        ("max_params", True, "neither a number nor"),
        ("lr", "dlrm", "not a constraint"),
    )
    for key, value, match in bad:
        with pytest.raises(NasrecError, match=f"{key}.*{match}"):
            resolve_cap(key, value, cache)
    # the search records and applies the resolved number, so a resume with the same name continues it
    sets = dict(population=6, sample=3, children=2, generations=2, max_mflops="dlrm", **TINY_SCORE)
    out = tmp_path / "s"
    search(sn, cache, out, preset="cpu-quick", overrides=sets, progress=False)
    assert json.loads((out / "search.json").read_text())["search"]["max_mflops"] == dlrm.mflops
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 10 and all(h["mflops"] <= dlrm.mflops for h in history)
    again = search(sn, cache, out, preset="cpu-quick", overrides=sets, resume=True, progress=False)
    assert again["scored"] == 10
    # a supernet trained within a named budget records the number
    sets = dict(batch_size=256, max_steps=2, path_warmup_steps=1, threads=1, path_max_mflops="dlrm")
    train_supernet(cache, tmp_path / "sn", space="small", preset_name="cpu-supernet", overrides=sets, progress=False)
    assert json.loads((tmp_path / "sn" / "config.json").read_text())["train"]["path_max_mflops"] == dlrm.mflops


def test_rank_correlation_values() -> None:
    from nasrec.search.rankcheck import rank_correlation

    r = rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert r["kendall_tau"] == pytest.approx(1) and r["spearman_rho"] == pytest.approx(1)
    r = rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])
    assert r["kendall_tau"] == pytest.approx(-1)
    # one discordant pair of 6: tau = (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15)
    r = rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert r["kendall_tau"] == pytest.approx(4 / 6) and r["spearman_rho"] == pytest.approx(0.8)
    with pytest.raises(NasrecError, match="at least 3"):
        rank_correlation([1, 2], [1, 2])


def test_rankcheck_by_evaluation_ranks_each_evaluation_against_the_end(tmp_path: Path) -> None:
    """How early training from scratch ranks: tau of the k-th evaluation against the final loss, for the k all reached."""
    from nasrec.search.rankcheck import _val_history, by_evaluation

    final = [0.30, 0.20, 0.10, 0.40]
    histories = [
        [(100, 0.5), (200, 0.31)],
        [(100, 0.4), (200, 0.21), (300, 0.2)],
        [(100, 0.6), (200, 0.11)],
        [(100, 0.7), (200, 0.41)],
    ]
    early = by_evaluation(histories, final)
    assert [e["evaluation"] for e in early] == [1, 2, 3] and [e["step"] for e in early] == [100, 200, 300]
    assert early[1]["kendall_tau"] == pytest.approx(1.0) and early[0]["pairs"] == 4
    # evaluation 3: the runs that stopped count with their last evaluation
    assert early[2]["reached"] == 1 and early[2]["pairs"] == 4 and early[2]["kendall_tau"] == pytest.approx(1.0)
    # evaluation 1 ranks 0.4 < 0.5 < 0.6 < 0.7 against 0.20, 0.30, 0.10, 0.40: 4 of 6 pairs concordant
    assert early[0]["kendall_tau"] == pytest.approx((4 - 2) / 6)
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 50, "train_loss": 0.5}, {"step": 157, "eval_split": "val", "eval_logloss": 0.26},
             {"step": 157, "eval_split": "test", "eval_logloss": 0.9}, {"step": 314, "eval_split": "val", "eval_logloss": 0.2}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _val_history(run) == [(157, 0.26), (314, 0.2)]
    assert _val_history(tmp_path / "none") == [] and by_evaluation([[], [(1, 0.1)], [(1, 0.2)]], [0.1, 0.2, 0.3]) == []


def test_rank_correlation_bootstrap_interval() -> None:
    """Tau's percentile-bootstrap interval: holds tau, narrows with more pairs, repeats for a seed."""
    from nasrec.search.rankcheck import rank_correlation

    r = rank_correlation(list(range(10)), [10 * v for v in range(10)])
    assert r["kendall_ci_low"] == pytest.approx(1) and r["kendall_ci_high"] == pytest.approx(1)  # all concordant
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 30, 120):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)  # tau about 0.5
        r = rank_correlation(list(x), list(y), seed=3)
        assert r["kendall_ci_low"] < r["kendall_tau"] < r["kendall_ci_high"] and r["kendall_ci_level"] == 0.95
        assert r == rank_correlation(list(x), list(y), seed=3)
        widths.append(r["kendall_ci_high"] - r["kendall_ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert rank_correlation(list(x), list(y), seed=4) != rank_correlation(list(x), list(y), seed=3)


@pytest.mark.slow
def test_rankcheck_cli(supernet_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nasrec.cli import main

    sn, cache = supernet_run
    c = open_cache(cache)
    shape = (len(c.dense_fields), len(c.table_sizes), tuple(c.table_sizes))
    rng = np.random.default_rng(0)
    drawn = [arch_cost(NASREC_SMALL.sample(rng, "uniform"), *shape).mflops for _ in range(40)]
    cap = float(np.median(drawn))  # half of what uniform sampling draws is over it
    args = [  # in process: the command's output is what is tested, not a fresh interpreter
        "rankcheck",
        "--supernet",
        str(sn),
        "--data",
        str(cache),
        "--out",
        str(tmp_path / "rc"),
        "-k",
        "4",
        *[x for k, v in TINY_SCORE.items() for x in ("--set", f"{k}={v}")],
        "--train-set",
        "max_steps=10",
        "--train-set",
        "batch_size=128",
        "--train-set",
        "threads=1",
        "--train-set",
        "head_calib_batches=2",
        "--max-mflops",
        str(cap),
        "--json",
    ]
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    printed = json.loads(out.out)
    res = json.loads((tmp_path / "rc" / "rankcheck.json").read_text())
    assert printed["pairs"] == res["pairs"] == 4 and -1 <= res["kendall_tau"] <= 1
    assert res["max_mflops"] == cap
    assert all(arch_cost(Architecture.from_dict(a["arch"]), *shape).mflops <= cap for a in res["candidates"])
    assert (tmp_path / "rc" / "rankcheck.png").stat().st_size > 1000
    assert len({c["hash"] for c in res["candidates"]}) == 4
    assert len(list((tmp_path / "rc" / "runs").glob("*/metrics.json"))) == 4
    assert all(isinstance(c["scratch_val_history"], list) for c in res["candidates"]) and "by_evaluation" in res
    # the same check in two training processes, one run copied over: the same architectures, the same losses
    (tmp_path / "rc2" / "runs").mkdir(parents=True)
    first = sorted((tmp_path / "rc" / "runs").iterdir())[0]
    shutil.copytree(first, tmp_path / "rc2" / "runs" / first.name)
    rc2 = [a if a != str(tmp_path / "rc") else str(tmp_path / "rc2") for a in args]
    assert main([*rc2, "--train-workers", "2"]) == 0, capsys.readouterr().err
    res2 = json.loads((tmp_path / "rc2" / "rankcheck.json").read_text())
    pairs = zip(res["candidates"], res2["candidates"], strict=True)
    assert all(a["hash"] == b["hash"] and a["scratch_val_logloss"] == b["scratch_val_logloss"] for a, b in pairs)


@pytest.mark.slow
def test_search_with_top_k_retraining(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    sets = dict(population=6, sample=3, children=3, generations=2, top_k=3, **TINY_SCORE)
    res = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=sets,
        retrain=True,
        train_overrides=dict(max_steps=8, batch_size=256, head_calib_batches=2, threads=1),
        progress=False,
    )
    runs = res["final"]["runs"]
    top = json.loads((tmp_path / "s" / "top.json").read_text())
    assert [r["hash"] for r in runs] == [t["hash"] for t in top] and len(runs) == 3
    chosen = res["final"]["chosen"]
    assert chosen["val_logloss"] == min(r["val_logloss"] for r in runs)
    assert Architecture.load(tmp_path / "s" / "final.json").hash() == chosen["hash"]
    for r in runs:
        assert json.loads((Path(r["run"]) / "metrics.json").read_text())["steps"] == 8
    # the search is complete: a second call with --resume re-reads it and keeps the finished runs
    again = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=sets,
        retrain=True,
        train_overrides=dict(max_steps=8, batch_size=256, head_calib_batches=2, threads=1),
        resume=True,
        progress=False,
    )
    assert again["final"] == res["final"] and again["best"] == res["best"]
    # a larger k later: the same history, the finished runs kept, one more architecture retrained
    more = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=dict(sets, top_k=4),
        retrain=True,
        train_overrides=dict(max_steps=8, batch_size=256, head_calib_batches=2, threads=1),
        resume=True,
        progress=False,
    )
    assert more["scored"] == res["scored"] and more["top"][:3] == res["top"] and len(more["top"]) == 4
    assert more["final"]["runs"][:3] == runs and len(more["final"]["runs"]) == 4
    assert len(json.loads((tmp_path / "s" / "top.json").read_text())) == 4
    with pytest.raises(NasrecError, match="own settings"):
        search(
            sn,
            cache,
            tmp_path / "s",
            preset="cpu-quick",
            overrides=dict(sets, generations=3),
            resume=True,
            progress=False,
        )


@pytest.mark.slow
def test_retraining_with_several_seeds_judges_the_mean(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    sets = dict(population=6, sample=3, children=3, generations=1, top_k=2, **TINY_SCORE)
    res = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=sets,
        retrain=True,
        retrain_seeds=2,
        train_overrides=dict(max_steps=8, batch_size=256, head_calib_batches=2, threads=1, seed=3),
        progress=False,
    )
    runs = res["final"]["runs"]
    assert len(runs) == 2 and res["final"]["seeds"] == 2
    for r in runs:
        assert [s["seed"] for s in r["seeds"]] == [3, 4] and r["run"] == r["seeds"][0]["run"]
        vals = []
        for s in r["seeds"]:
            run = Path(s["run"])
            assert json.loads((run / "config.json").read_text())["train"]["seed"] == s["seed"]
            vals.append(json.loads((run / "metrics.json").read_text())["val"]["logloss"])
        assert vals[0] != vals[1]  # the seeds give different runs
        assert r["val_logloss"] == pytest.approx(sum(vals) / 2)
    assert res["final"]["chosen"]["val_logloss"] == min(r["val_logloss"] for r in runs)
    with pytest.raises(NasrecError, match="seeds must be >= 1"):
        retrain_top(tmp_path / "s", cache, "cpu-quick", dict(max_steps=8), seeds=0)


@pytest.mark.slow
def test_successive_halving_trains_the_best_on_growing_budgets(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    """7 candidates: 2 steps each, the best 4 for 4 steps, the best 2 with the whole recipe (8 steps)."""
    sn, cache = supernet_run
    sets = dict(population=8, sample=3, children=3, generations=1, top_k=7, **TINY_SCORE)
    train_set = dict(max_steps=8, batch_size=256, head_calib_batches=2, threads=1)
    res = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=sets,
        retrain=True,
        train_overrides=train_set,
        halving=Halving(eta=2, min_steps=2),
        progress=False,
    )
    rungs = res["final"]["rungs"]
    assert [(r["rung"], r["max_steps"], len(r["runs"]), len(r["kept"])) for r in rungs] == [
        (0, 2, 7, 4),
        (1, 4, 4, 2),
        (2, None, 2, 0),
    ]
    for r, nxt in itertools.pairwise(rungs):
        best = sorted(r["runs"], key=lambda a: a["val_logloss"])[: len(r["kept"])]
        assert r["kept"] == [a["hash"] for a in best]  # the lowest validation losses go on
        assert sorted(a["hash"] for a in nxt["runs"]) == sorted(r["kept"])
        for a in r["runs"]:
            assert Path(a["run"]).parent.name == f"rung{r['rung']}"
            assert json.loads((Path(a["run"]) / "metrics.json").read_text())["steps"] == r["max_steps"]
    assert res["final"]["runs"] == rungs[-1]["runs"]
    for a in rungs[-1]["runs"]:  # the last rung: the whole recipe, in the runs' usual place
        assert Path(a["run"]).parent.name == "retrain"
        assert json.loads((Path(a["run"]) / "metrics.json").read_text())["steps"] == 8
    assert res["final"]["chosen"]["val_logloss"] == min(a["val_logloss"] for a in rungs[-1]["runs"])
    # Finished runs are read back, not trained again: the same result.
    again = retrain_top(tmp_path / "s", cache, "cpu-quick", train_set, halving=Halving(eta=2, min_steps=2))
    assert again == res["final"]
    with pytest.raises(NasrecError, match="eta must be an integer >= 2"):
        Halving(eta=1)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_the_search_is_killed(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    sn, cache = supernet_run
    proc = _search_cli(sn, cache, tmp_path / "s", "--workers", "2", generations=40, output=subprocess.DEVNULL)
    deadline = time.time() + 120
    h = tmp_path / "s" / "history.jsonl"
    while time.time() < deadline and not (h.exists() and h.read_text().count("\n") >= 4):
        time.sleep(0.05)
    workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


@pytest.mark.slow
def test_a_cap_bounds_the_served_cost_the_report_reads(supernet_run: tuple[Path, Path], tmp_path: Path) -> None:
    """MFLOPs are counted one way: a model found under a cap keeps to it once trained with layer norms."""
    from nasrec.model.cost import ServedCost
    from nasrec.train.api import train

    sn, cache = supernet_run
    c = open_cache(cache)
    with_ln, without = (ServedCost(len(c.dense_fields), tuple(c.table_sizes), ln) for ln in (True, False))
    rng = np.random.default_rng(0)
    drawn = [NASREC_SMALL.sample(rng, "uniform") for _ in range(100)]

    def straddling(cap: float) -> int:  # passed when counted without layer norms, over the cap as served with them
        return sum(without(a)[0] <= cap < with_ln(a)[0] for a in drawn)

    cap = max((without(a)[0] for a in drawn), key=straddling)
    assert straddling(cap) >= 3
    sets = dict(population=6, sample=3, children=3, generations=2, top_k=2, max_mflops=cap, **TINY_SCORE)
    res = search(
        sn,
        cache,
        tmp_path / "s",
        preset="cpu-quick",
        overrides=sets,
        retrain=True,
        train_overrides=dict(max_steps=4, batch_size=256, head_calib_batches=2, threads=1),
        progress=False,
    )
    assert json.loads((tmp_path / "s" / "search.json").read_text())["search"]["count_layernorm"] is True
    history = [json.loads(x) for x in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 12
    for h in history:
        assert h["mflops"] == with_ln(Architecture.from_dict(h["arch"]))[0] <= cap
    for r in res["final"]["runs"]:  # the trained models' own count, which the report and its goal check read
        m = json.loads((Path(r["run"]) / "metrics.json").read_text())
        assert r["mflops"] == m["mflops"] <= cap
    # a zoo model's name stands for the MFLOPs its trained baseline reports: the goal check and the cap agree
    zoo = train(
        cache,
        tmp_path / "dcnv2",
        model="dcnv2",
        preset_name="cpu-quick",
        overrides=dict(max_steps=1, batch_size=256, threads=1),
        progress=False,
    )
    assert resolve_cap("max_mflops", "dcnv2", cache) == zoo["mflops"]
    # the count can be stated the other way (a final recipe without layer norms), and is recorded
    out = tmp_path / "no-ln"
    search(sn, cache, out, preset="cpu-quick", overrides=dict(sets, count_layernorm=False), progress=False)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all(h["mflops"] == without(Architecture.from_dict(h["arch"]))[0] <= cap for h in history)
    # a search written before the count was a setting (it counted without layer norms) still resumes
    saved = json.loads((out / "search.json").read_text())
    del saved["preset"], saved["search"]["count_layernorm"]
    (out / "search.json").write_text(json.dumps(saved))
    state = json.loads((out / "state.json").read_text())
    del state["config"]["count_layernorm"]
    (out / "state.json").write_text(json.dumps(state))
    sets.pop("top_k")
    again = search(sn, cache, out, preset="cpu-quick", overrides=sets, resume=True, progress=False)
    assert again["scored"] == 12
    with pytest.raises(NasrecError, match="own settings"):
        search(
            sn, cache, out, preset="cpu-quick", overrides=dict(sets, count_layernorm=True), resume=True, progress=False
        )


def test_auto_preset_budgets(search_cache: Path) -> None:
    from nasrec.search import auto

    cache = search_cache
    c = open_cache(cache)
    train_rows, val_rows = len(c.split_index("train")), len(c.split_index("val"))
    score, recipe, figures = auto.data_budget(c, {})
    assert figures == {"train_rows": train_rows, "val_rows": val_rows} and recipe == "cpu-quick"
    # at most one pass over the train split (20 steps at least), the whole validation split
    assert score == {"finetune_steps": 20, "warmup_steps": 2, "val_batch_size": 8192, "val_batches": 1}
    assert auto.data_budget(c, {"finetune_steps": 7, "val_batch_size": 100})[0] == {
        "finetune_steps": 7,
        "warmup_steps": 0,
        "val_batch_size": 100,
        "val_batches": math.ceil(val_rows / 100),
    }
    # the candidate count: the largest on the ladder that fits, in the paper's proportions
    shape, n, scale = auto.candidate_budget(0.1, 900, {})
    assert (
        n == 2048
        and scale == 1
        and shape
        == {"population": 128, "sample": 64, "children": 8, "generations": 240, "keep_per_generation": 2, "top_k": 15}
    )
    shape, n, scale = auto.candidate_budget(2.0, 900, {"top_k": 5})
    assert n == 256 and scale == 1 and "top_k" not in shape
    assert shape["population"] + shape["generations"] * shape["children"] == 256
    assert SearchConfig().updated(**shape).budget == 256
    shape, n, scale = auto.candidate_budget(100.0, 900, {})
    assert n == 16 and scale == 9 / 16 and SearchConfig().updated(**shape).budget == 16
    cut = auto.scaled_scoring(
        {"finetune_steps": 500, "warmup_steps": 50, "val_batches": 150, "val_batch_size": 8192}, 0.01, {}
    )
    assert cut == {"finetune_steps": 10, "warmup_steps": 1, "val_batches": 2, "val_batch_size": 8192}
    assert auto.parse_duration("15m") == 900 and auto.parse_duration("90s") == 90 and auto.parse_duration(30) == 30
    assert auto.parse_duration("1.5h") == 5400 and auto.parse_duration(None) is None
    for bad in ("soon", "0", "-5m"):
        with pytest.raises(NasrecError, match="time budget"):
            auto.parse_duration(bad)


@pytest.mark.slow
def test_auto_preset_is_the_default_decided_once_and_reproducible(
    supernet_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nasrec.search import auto

    sn, cache = supernet_run
    timed = auto.seconds_per_candidate

    def measured(seconds: float):  # the calibration runs, and the clock reads `seconds` whatever the machine
        return lambda *a: (timed(*a), seconds)[1]

    def never(*a: object) -> float:
        raise AssertionError("calibrated again")

    monkeypatch.setattr(auto, "seconds_per_candidate", measured(1.0))
    with caplog.at_level("INFO", logger="nasrec.search"):  # a small scoring budget given: the test stays quick
        res = search(sn, cache, tmp_path / "a", overrides=TINY_SCORE, time_budget="20s", progress=False)
    saved = json.loads((tmp_path / "a" / "search.json").read_text())
    assert saved["preset"] == "auto" and saved["train_preset"] == "cpu-quick"
    assert saved["auto"]["seconds_per_candidate"] == 1.0 and saved["auto"]["calibration_candidates"] == 3
    assert saved["auto"]["candidates"] == res["scored"] == 16  # 20 s at 1 s each: 16 on the ladder
    assert saved["search"]["count_layernorm"] is True  # cpu-quick's models have layer norms
    assert all(saved["score"][k] == v for k, v in TINY_SCORE.items())  # given explicitly: kept
    text = caplog.text
    assert "search preset auto (" in text and "time budget 20.0 s" in text and "16 candidates" in text
    assert "search: 4 of 16 candidates scored in" in text and "in all" in text  # the estimate after the first step
    # a resume reuses the recorded settings: no new calibration, whatever the time budget says now
    monkeypatch.setattr(auto, "seconds_per_candidate", never)
    again = search(sn, cache, tmp_path / "a", time_budget="1h", resume=True, progress=False)
    assert again["best"] == res["best"] and json.loads((tmp_path / "a" / "search.json").read_text()) == saved
    # the same settings given explicitly reproduce the search on any machine (no calibration either)
    keys = [*auto.SEARCH_KEYS, *auto.SCORE_KEYS]
    given = {k: v for part in ("search", "score") for k, v in saved[part].items() if k in keys}
    assert "--preset auto " + " ".join(f"--set {k}={'null' if v is None else v}" for k, v in given.items()) in text
    search(sn, cache, tmp_path / "b", preset="auto", overrides=dict(TINY_SCORE, **given), progress=False)
    assert (tmp_path / "b" / "history.jsonl").read_text() == (tmp_path / "a" / "history.jsonl").read_text()
    # too slow for even 16 candidates: the scoring budget is cut, and the estimate said to be over the budget
    monkeypatch.setattr(auto, "seconds_per_candidate", measured(10.0))
    caplog.clear()
    with caplog.at_level("INFO", logger="nasrec.search"):
        search(
            sn,
            cache,
            tmp_path / "c",
            overrides=dict(finetune_batch_size=128, calib_batches=2),
            time_budget="20s",
            progress=False,
        )
    slow = json.loads((tmp_path / "c" / "search.json").read_text())
    assert slow["score"]["finetune_steps"] == 10 and slow["score"]["val_batch_size"] == 2048  # from 37 and 8192
    assert 0 < slow["auto"]["scoring_scale"] < 1 and "over the time budget" in caplog.text
    with pytest.raises(NasrecError, match="auto preset only"):
        search(sn, cache, tmp_path / "d", preset="paper", time_budget="5m", progress=False)
