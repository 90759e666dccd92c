"""TorchRec tables sharded over 2 gloo processes: one process's curve, exact resume, unsharding, errors."""

from __future__ import annotations

import faulthandler
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import small_synth_cache

from nasrec.backend import torchrec_available
from nasrec.backend.shardfiles import check_world, unshard
from nasrec.errors import NasrecError
from nasrec.rundir import load_checkpoint
from nasrec.train.api import evaluate_run, train
from nasrec.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torchrec_available(), reason="needs the torchrec extra (README.md, TorchRec)")

WORLD = 2
# exact Adagrad on both sides and no clipping (a sharded run clips its dense part only); evaluations and
# restore_best so that the best checkpoint's shards and the lockstep evaluation are exercised
RUN = dict(
    embeddings="torchrec",
    optimizer="adagrad",
    lr=0.05,
    batch_size=64,
    max_steps=24,
    eval_every=8,
    eval_max_batches=2,
    restore_best=True,
    log_every=2,
    checkpoint_every=8,
    clip=None,
    seed=3,
    threads=1,
)
KILL_AT = 13  # after the checkpoint of step 8: steps 9-13 are trained again on resume


def _worker(rank: int, store: str, cache_dir: Path, root: Path) -> None:
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        sharded = dict(RUN, sharding="table-wise")
        train(cache_dir, root / "whole", model="dlrm", overrides=sharded, progress=False)
        columns = dict(RUN, sharding="column-wise", restore_best=False, eval_every=0)
        train(cache_dir, root / "columns", model="dlrm", overrides=columns, progress=False)
        after = Trainer._after_step

        def killed(self: Trainer) -> None:
            after(self)
            if self.state.step == KILL_AT:  # both processes stop at the same step, as a killed job would
                raise KeyboardInterrupt

        Trainer._after_step = killed  # type: ignore[method-assign]
        try:
            train(cache_dir, root / "cut", model="dlrm", overrides=sharded, progress=False)
        except KeyboardInterrupt:
            (root / f"cut_{rank}.txt").write_text("interrupted")
        finally:
            Trainer._after_step = after  # type: ignore[method-assign]
        dist.barrier()
        train(cache_dir, root / "cut", model="dlrm", overrides=sharded, resume=True, progress=False)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sharded")
    cache_dir = small_synth_cache(root / "data", rows=3000, seed=5)[1]
    store = tmp_path_factory.mktemp("store") / "rendezvous"
    mp.spawn(_worker, args=(str(store), cache_dir, root), nprocs=WORLD, join=True)
    threads = torch.get_num_threads()
    try:
        train(cache_dir, root / "single", model="dlrm", overrides=RUN, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "cache": cache_dir}


def _losses(run: Path) -> list[float]:
    lines = (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
    return [x["train_loss"] for x in lines if "train_loss" in x]


@pytest.mark.slow
def test_two_processes_follow_one_and_resume_exactly(runs: dict[str, Any]) -> None:
    root = runs["root"]
    single, whole, cut = _losses(root / "single"), _losses(root / "whole"), _losses(root / "cut")
    assert len(single) == 12
    # the global batch split over 2 processes: one process's curve to float rounding, which Adagrad's
    # per-element steps amplify over the run (3e-4 of the loss by step 24 here)
    assert whole == pytest.approx(single, rel=1e-3)
    # column-wise: each process holds half of every table's columns
    assert _losses(root / "columns") == pytest.approx(single, rel=1e-3)
    assert (root / "cut_0.txt").exists() and (root / "cut_1.txt").exists()
    assert cut == pytest.approx(whole, rel=1e-6)  # the shards' weights and Adagrad state came back
    a = json.loads((root / "whole" / "metrics.json").read_text())
    b = json.loads((root / "single" / "metrics.json").read_text())
    assert a["test"]["logloss"] == pytest.approx(b["test"]["logloss"], rel=1e-3)
    assert a["best_step"] == b["best_step"]
    c = json.loads((root / "cut" / "metrics.json").read_text())
    assert c["test"]["logloss"] == pytest.approx(a["test"]["logloss"], rel=1e-6)
    # each process wrote its own shards; rank 0's checkpoint names them and holds no table
    ck = load_checkpoint(root / "whole" / "checkpoint.pt")
    assert ck["shards"]["world"] == WORLD and ck["shards"]["step"] == 24
    assert not any(k.startswith("embedding.") for k in ck["model"])
    shards = sorted(p.name for p in (root / "whole" / "shards").iterdir())
    assert shards == [
        f"{n}.step{s}.rank{r}-of-2.pt" for n, s in (("best", a["best_step"]), ("checkpoint", 24)) for r in (0, 1)
    ]


@pytest.mark.slow
def test_a_sharded_run_unshards_for_evaluation(runs: dict[str, Any], tmp_path: Path) -> None:
    root, cache = runs["root"], runs["cache"]
    with pytest.raises(NasrecError, match="sharded over 2 processes; `nasrec unshard"):
        evaluate_run(root / "whole", cache)
    written = unshard(root / "whole", tmp_path / "whole")
    assert {"checkpoint.pt", "best.pt", "model.json", "metrics.json"} <= set(written)
    got = evaluate_run(tmp_path / "whole", cache, split="test")
    expected = json.loads((root / "whole" / "metrics.json").read_text())["test"]
    assert got["logloss"] == pytest.approx(expected["logloss"], rel=1e-6)
    assert got["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    with pytest.raises(NasrecError, match="not empty"):
        unshard(root / "whole", tmp_path / "whole")


@pytest.mark.slow
def test_a_sharded_run_resumes_on_its_own_world_size_only(runs: dict[str, Any]) -> None:
    root, cache = runs["root"], runs["cache"]
    with pytest.raises(
        NasrecError,
        match="sharded over 2 processes and this run has one process: resume with torchrun --nproc_per_node 2",
    ):
        train(cache, root / "whole", model="dlrm", resume=True, progress=False)
    meta = load_checkpoint(root / "whole" / "checkpoint.pt")["shards"]
    with pytest.raises(NasrecError, match="sharded over 2 processes and this run has 3 processes"):
        check_world(root / "whole", meta, 3, True)
    with pytest.raises(NasrecError, match="holds whole tables, this run shards them over 2 processes"):
        check_world(root / "single", None, 2, True)


def test_sharding_needs_torchrun_and_a_plan_that_fits(tmp_path: Path) -> None:
    from torchrec import EmbeddingBagConfig

    from nasrec.backend.sharding import plan_tables

    cache = small_synth_cache(tmp_path, rows=500, seed=1)[1]
    with pytest.raises(NasrecError, match=r"torchrun --nproc_per_node N -m nasrec\.cli train"):
        train(cache, tmp_path / "r", model="dlrm", overrides=dict(RUN, sharding="table-wise"), progress=False)
    tables = [
        EmbeddingBagConfig(name="t0", embedding_dim=64, num_embeddings=1000, feature_names=["f0"]),
        EmbeddingBagConfig(name="t1", embedding_dim=64, num_embeddings=1_000_000_000, feature_names=["f1"]),
    ]
    with pytest.raises(NasrecError, match=r"t1 \(1,000,000,000 rows x 64\), needs 238.4 GiB"):
        plan_tables(tables, "table-wise", 2, memory=8 * 2**30)
    with pytest.raises(NasrecError, match="TorchRec shards rows on GPUs only"):
        plan_tables(tables, "row-wise", 2)
