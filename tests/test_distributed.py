"""Data-parallel training (gloo, 2 CPU processes) equals single-process training with the same global batch."""

from __future__ import annotations

import faulthandler
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import small_synth_cache
from torch import nn

from nasrec import distributed
from nasrec.data.cache import Cache, open_cache
from nasrec.data.loader import BatchLoader
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.rundir import load_checkpoint
from nasrec.space.space import NASREC_SMALL, get_space
from nasrec.train import gradsync
from nasrec.train.api import train, train_supernet
from nasrec.train.config import preset
from nasrec.train.gradsync import GradientSync
from nasrec.train.trainer import Trainer

WORLD = 2
COMMON = dict(
    batch_size=64,
    shuffle=True,
    log_every=1,
    checkpoint_every=1000,
    eval_batch_size=256,
    eval_max_batches=1,
    threads=1,
    seed=3,
)
# adam: dense Adam plus SparseAdam on the embedding rows. Without layer norms: with them the head is centred,
# which cancels the gradient of an embedding row that every example of the batch reads (to float noise), and
# Adam turns noise into whole steps, so split batches diverge in a few such rows. The centred head across
# ranks is checked by the supernet run (Adagrad).
STANDALONE = dict(COMMON, max_steps=10, optimizer="adam", lr=0.01, eps=1e-8, layernorm=False)
# a clip small enough to act on most steps, so it is checked to act on the synchronised gradient
SUPERNET = dict(COMMON, max_steps=12, lr=0.05, clip=0.5, path_warmup_steps=3, supernet_eval_archs=1)
RESUME_AT = 5  # the 2-process supernet run stops here; a 1-process run finishes it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supernet_trainer(cache_dir: Path, out: Path, resume_at: int | None = None) -> Trainer:
    """The trainer `train_supernet` builds, optionally stopping early (an interruption, checkpoint included)."""
    cache = open_cache(cache_dir)
    spec = ModelSpec(
        kind="supernet",
        space=get_space("small").to_dict(),
        num_dense=len(cache.dense_fields),
        table_sizes=tuple(cache.table_sizes),
        layernorm=True,
    )
    # An interrupted run keeps its optimizer state (as a killed run's last periodic checkpoint does); the
    # final checkpoint of a finished run would not.
    trainer = Trainer(spec, cache, preset(None, **SUPERNET, keep_optimizer=resume_at is not None), out)
    if resume_at is not None:
        trainer.total_steps = resume_at  # the schedule keeps the full length, as in a killed run
    return trainer


class _Toy(nn.Module):
    """Parameters that the two ranks use differently: the sync must average them all the same."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3, sparse=True)
        self.a = nn.Parameter(torch.randn(4, 5))
        self.b = nn.Parameter(torch.randn(3))

    def loss(self, r: int) -> torch.Tensor:
        if r == 0:  # embedding rows (one twice), a slice of `a`, not `b`
            x = self.emb(torch.tensor([1, 7, 7])).sum(0)
            return (x[:2] @ self.a[:2, :3]).square().sum()
        # no embedding rows, another slice of `a`, and `b`
        return (self.a[:1, :4].sum(0) * self.b[0]).square().sum() + self.b[1:].sum()


def _sync_edge_cases(rank: int) -> float:
    """Largest difference between the synchronised gradients and the average computed by hand."""
    torch.manual_seed(0)
    toy = _Toy()
    expected: dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in toy.named_parameters()}
    for r in range(WORLD):
        toy.zero_grad(set_to_none=True)
        toy.loss(r).backward()
        for n, p in toy.named_parameters():
            if p.grad is not None:
                expected[n] += (p.grad.to_dense() if p.grad.is_sparse else p.grad) / WORLD
    toy.zero_grad(set_to_none=True)
    loss = toy.loss(rank)
    loss.backward()
    scan, gradsync.SCAN_MIN_NUMEL = gradsync.SCAN_MIN_NUMEL, 0  # send boxes even of these small tensors
    try:
        stats = GradientSync.for_model(toy)(loss, 1)
    finally:
        gradsync.SCAN_MIN_NUMEL = scan
    # the union of the two ranks' slices of `a`, [:2, :3] and [:1, :4]
    assert stats.dense_bytes == 4 * (2 * 4 + 3)
    assert stats.loss == pytest.approx(float(sum(toy.loss(r) for r in range(WORLD))) / WORLD)
    assert toy.emb.weight.grad.is_sparse and toy.emb.weight.grad._nnz() == 2
    return max(float((p.grad.to_dense() - expected[n]).abs().max()) for n, p in toy.named_parameters())


def _worker(rank: int, store: str, cache_dir: Path, arch: Path, root: Path) -> None:
    # A rank that dies on a signal (the C++ side aborting) leaves every thread's Python stack in stderr,
    # which pytest shows with the failure.
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    # The caller's own group: the library must use it as it is (and leave it to the caller). A file
    # store needs no port, so concurrent test runs cannot collide.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        helpers = [
            distributed.rank() == rank,
            distributed.world_size() == WORLD,
            distributed.is_main() == (rank == 0),
            distributed.all_reduce_mean({"x": float(rank)}) == {"x": 0.5},
            distributed.broadcast_object({"from": rank}) == {"from": 0},
        ]
        try:
            distributed.check_same(rank, "the rank")
        except NasrecError as e:
            helpers.append("rank 0: 0; rank 1: 1" in str(e))
        (root / f"helpers_{rank}.json").write_text(json.dumps(helpers))
        (root / f"sync_edge_{rank}.json").write_text(json.dumps(_sync_edge_cases(rank)))
        # Rank 1 is given its own directories: they must stay absent, since only rank 0 writes.
        out = root / ("dist" if rank == 0 else "rank1")
        train(cache_dir, out / "standalone", arch=arch, overrides=STANDALONE, progress=False)
        train_supernet(cache_dir, out / "supernet", space="small", overrides=SUPERNET, progress=False)
        _supernet_trainer(cache_dir, out / "interrupted", resume_at=RESUME_AT).fit()
        try:
            train(cache_dir, out / "odd", arch=arch, overrides=dict(STANDALONE, batch_size=63), progress=False)
        except NasrecError as e:
            (root / f"odd_error_{rank}.txt").write_text(str(e))
        assert distributed.is_initialized()  # not torn down by the library
        # No rank tears its connections down while the other may still be using them.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-process runs (one spawn for all) and their single-process references."""
    root = tmp_path_factory.mktemp("dist")
    cache_dir = small_synth_cache(root / "data", rows=3000, seed=5)[1]
    arch = root / "arch.json"
    NASREC_SMALL.sample(np.random.default_rng(1), "default").save(arch)
    store = tmp_path_factory.mktemp("store") / "rendezvous"
    mp.spawn(_worker, args=(str(store), cache_dir, arch, root), nprocs=WORLD, join=True)
    single = root / "single"
    threads = torch.get_num_threads()  # the runs set 1 (threads=1), as each rank has
    try:
        train(cache_dir, single / "standalone", arch=arch, overrides=STANDALONE, progress=False)
        train_supernet(cache_dir, single / "supernet", space="small", overrides=SUPERNET, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "cache": cache_dir, "dist": root / "dist", "single": single}


def _losses(run: Path) -> tuple[list[int], list[float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "train_loss" in x]
    return [x["step"] for x in train_lines], [x["train_loss"] for x in train_lines]


def _assert_same_run(a: Path, b: Path) -> None:
    steps_a, loss_a = _losses(a)
    steps_b, loss_b = _losses(b)
    assert steps_a == steps_b and len(steps_a) >= 10
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-4)
    wa, wb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert wa["state"]["step"] == wb["state"]["step"]
    assert wa["model"].keys() == wb["model"].keys()
    # Adagrad divides each step by the root of its element's accumulated squares, so an element whose
    # gradients nearly cancel amplifies the float-order difference of a split batch into a share of a
    # step: 5e-4 is 1 % of one step at lr 0.05. The supernet run's largest difference is 2.5e-4 (an EFC
    # weight; 7e-5 in the embeddings), the standalone run's 1.2e-6; with the initial weights drawn before
    # the per-table embedding generators (FieldEmbedding.init_seed) the supernet's was 5e-6.
    for k, v in wa["model"].items():
        torch.testing.assert_close(wb["model"][k], v, rtol=1e-4, atol=5e-4, msg=k)


@pytest.mark.slow
def test_standalone_model_matches_single_process(runs: dict[str, Any]) -> None:
    _assert_same_run(runs["single"] / "standalone", runs["dist"] / "standalone")
    single = json.loads((runs["single"] / "standalone" / "metrics.json").read_text())
    multi = json.loads((runs["dist"] / "standalone" / "metrics.json").read_text())
    assert multi["world_size"] == WORLD and multi["comm_bytes_per_step"] > 0
    assert multi["steps"] == single["steps"] == STANDALONE["max_steps"]
    assert multi["logloss"] == pytest.approx(single["logloss"], rel=1e-4)
    assert multi["auc"] == pytest.approx(single["auc"], abs=1e-3)


@pytest.mark.slow
def test_supernet_matches_single_process(runs: dict[str, Any]) -> None:
    _assert_same_run(runs["single"] / "supernet", runs["dist"] / "supernet")
    lines = [json.loads(x) for x in (runs["dist"] / "supernet" / "metrics.jsonl").read_text().splitlines()]
    comm = [x["comm_bytes_per_step"] for x in lines if "comm_bytes_per_step" in x]
    # sampled paths send different (smaller) parameter sets than the full-path warm-up
    assert len(comm) == SUPERNET["max_steps"] and min(comm) < comm[0]


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(runs["dist"] / "interrupted", out)
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] == RESUME_AT
    threads = torch.get_num_threads()
    try:
        train_supernet(runs["cache"], out, space="small", overrides=SUPERNET, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    _assert_same_run(runs["single"] / "supernet", out)


@pytest.mark.slow
def test_helpers_in_a_group(runs: dict[str, Any]) -> None:
    for r in range(WORLD):
        assert json.loads((runs["root"] / f"helpers_{r}.json").read_text()) == [True] * 6


@pytest.mark.slow
def test_sync_of_parameters_used_differently_by_the_ranks(runs: dict[str, Any]) -> None:
    # one rank without embedding rows, parameters used by one rank only, different slices of one weight
    for r in range(WORLD):
        assert json.loads((runs["root"] / f"sync_edge_{r}.json").read_text()) < 1e-6


@pytest.mark.slow
def test_only_rank_zero_writes(runs: dict[str, Any]) -> None:
    assert not (runs["root"] / "rank1").exists()
    assert {p.name for p in runs["root"].iterdir()} == {"data", "arch.json", "dist", "single"} | {
        f"{kind}_{r}.{ext}"
        for r in range(WORLD)
        for kind, ext in (("sync_edge", "json"), ("odd_error", "txt"), ("helpers", "json"))
    }
    for name in ("standalone", "supernet"):
        files = sorted(p.name for p in (runs["dist"] / name).iterdir())
        assert files == sorted(p.name for p in (runs["single"] / name).iterdir())
    # both ranks refused an indivisible global batch, with the same message
    errors = {(runs["root"] / f"odd_error_{r}.txt").read_text() for r in range(WORLD)}
    assert len(errors) == 1 and "not a multiple of the world size" in errors.pop()
    assert not (runs["dist"] / "odd").exists()


@pytest.mark.slow
def test_torchrun_cli_entry_point(runs: dict[str, Any], tmp_path: Path) -> None:
    # `train` with a small zoo model keeps this quick; `supernet` goes through the same Trainer path
    out = tmp_path / "cli"
    sets = [f"{k}={json.dumps(v)}" for k, v in dict(COMMON, max_steps=3).items()]  # JSON values, as --set reads them
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "nasrec.cli",
        "train",
        "--model",
        "dlrm",
        "--data",
        str(runs["cache"]),
        "--out",
        str(out),
        "--no-progress",
        "--json",
        *[x for s in sets for x in ("--set", s)],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    printed = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(printed) == 1 and printed[0]["steps"] == 3  # rank 0 alone prints the result
    assert json.loads((out / "metrics.json").read_text())["world_size"] == WORLD


# -- the loader's row sharding, in one process --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 4])
def test_row_sharding_splits_every_global_batch(
    runs: dict[str, Any], shuffle: bool, drop_last: bool, world_size: int
) -> None:
    cache: Cache = open_cache(runs["cache"])
    common = dict(batch_size=92, shuffle=shuffle, seed=2, drop_last=drop_last, group_batches=3)
    whole = [b.dense.numpy() for b in BatchLoader(cache, "train", **common).iter_epoch(1)]
    shards = []
    for r in range(world_size):
        loader = BatchLoader(cache, "train", rank=r, world_size=world_size, shard="rows", **common)
        got = [b.dense.numpy() for b in loader.iter_epoch(1)]
        assert len(got) == len(loader) == len(whole)
        assert sum(len(b) for b in got) == loader.num_rows
        shards.append(got)
    for k, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), batch)


@pytest.mark.slow
def test_row_sharding_needs_a_divisible_batch(runs: dict[str, Any]) -> None:
    with pytest.raises(NasrecError, match="not a multiple of the world size 3"):
        BatchLoader(open_cache(runs["cache"]), "train", batch_size=64, world_size=3, shard="rows")
    with pytest.raises(NasrecError, match="shard must be one of"):
        BatchLoader(open_cache(runs["cache"]), "train", shard="cols")


def test_helpers_without_a_group() -> None:
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_reduce_mean({"x": 2.0}) == {"x": 2.0}
    distributed.barrier()
    with distributed.process_group() as active:
        assert not active
