"""Checkpoints of a run whose tables are sharded: one file per process beside the run's own checkpoint.

Rank 0's `checkpoint.pt` (and `best.pt`) hold everything but the sharded tables, plus a `shards` entry
(world size, step, the sharded modules' shapes). Each process writes its own shards of the weights and of
the fused optimizer state to `shards/NAME.stepS.rankR-of-W.pt`, before rank 0 writes NAME.pt; the files of
older steps are removed only after it, so a run killed at any moment has a NAME.pt whose step's shard
files are all there. A run resumes on the same number of processes. `unshard` merges the shards of a
finished run into an ordinary run directory that `evaluate`, `predict` and `export` take.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasrec import rundir
from nasrec.backend.fused import TorchRecEmbedding
from nasrec.errors import NasrecError

SHARDS_DIR = "shards"


def sharded_modules(model: nn.Module) -> dict[str, TorchRecEmbedding]:
    """The model's sharded `TorchRecEmbedding`s by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TorchRecEmbedding) and m.sharding}


def shard_meta(model: nn.Module, step: int, world: int) -> dict[str, Any]:
    """The `shards` entry of rank 0's checkpoint: what the shard files of `step` hold."""
    modules = {n: {"table_sizes": list(m.table_sizes), "dim": m.dim} for n, m in sharded_modules(model).items()}
    return {"world": world, "step": step, "modules": modules}


def shard_path(run: Path, name: str, step: int, rank: int, world: int) -> Path:
    """Where process `rank` of `world` keeps its shards of checkpoint `name` ("checkpoint", "best") at `step`."""
    return Path(run) / SHARDS_DIR / f"{name}.step{step}.rank{rank}-of-{world}.pt"


def save_shards(run: Path, name: str, step: int, rank: int, world: int, model: nn.Module, optimizer: bool) -> None:
    """Write this process's shards of the tables (and of their optimizer state, if `optimizer`)."""
    # The live shards go to torch.save as they are (it writes each storage once, synchronously): no copy
    payload: dict[str, Any] = {"step": step, "rank": rank, "world": world, "modules": {}}
    for qual, m in sharded_modules(model).items():
        payload["modules"][qual] = {
            "weights": [(i, r, c, t.detach()) for i, r, c, t in m.local_shards()],
            "optimizer": (
                {k: [(r, c, t.detach()) for r, c, t in v] for k, v in m.local_optimizer_shards().items()}
                if optimizer
                else None
            ),
        }
    path = shard_path(run, name, step, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.save_checkpoint(path, payload)


def drop_older_shards(run: Path, name: str, step: int, rank: int, world: int) -> None:
    """Remove this process's shard files of checkpoint `name` other than the one of `step` (once NAME.pt is written)."""
    keep = shard_path(run, name, step, rank, world).name
    for path in (Path(run) / SHARDS_DIR).glob(f"{name}.step*.rank{rank}-of-{world}.pt"):
        if path.name != keep:
            path.unlink(missing_ok=True)


def check_world(run: Path, meta: dict[str, Any] | None, world: int, sharded: bool) -> None:
    """Refuse a checkpoint written by another number of processes than this run's (or not sharded as it is)."""
    saved = None if meta is None else int(meta["world"])
    if saved is None and not sharded:
        return
    if saved is None:
        raise NasrecError(f"{run}: its checkpoint holds whole tables, this run shards them over {world} processes")
    if not sharded or saved != world:
        now = f"{world} processes" if sharded else "one process"
        raise NasrecError(
            f"{run}: its tables are sharded over {saved} processes and this run has {now}: resume with "
            f"torchrun --nproc_per_node {saved} (the same world size)"
        )


@torch.no_grad()
def load_shards(run: Path, name: str, step: int, rank: int, world: int, model: nn.Module, optimizer: bool) -> None:
    """Copy this process's shards of checkpoint `name` at `step` back into the model's sharded tables."""
    path = shard_path(run, name, step, rank, world)
    if not path.is_file():
        raise NasrecError(f"{path}: missing (the shards of {name}.pt, step {step}); the run cannot continue")
    saved = rundir.load_checkpoint(path)["modules"]
    for qual, m in sharded_modules(model).items():
        if qual not in saved:
            raise NasrecError(f"{path}: no shards of {qual}")
        pieces = {(i, r, c): t for i, r, c, t in saved[qual]["weights"]}
        for i, r, c, t in m.local_shards():
            _copy(t, pieces.get((i, r, c)), path, f"{qual} table {i} at row {r}, column {c}")
        if optimizer:
            state = saved[qual]["optimizer"]
            if state is None:
                raise NasrecError(f"{path}: holds no optimizer state (a finished run's); the run cannot continue")
            for key, live in m.local_optimizer_shards().items():
                got = {(r, c): t for r, c, t in state.get(key, [])}
                for r, c, t in live:
                    _copy(t, got.get((r, c)), path, f"{qual} {key} at row {r}, column {c}")


def _copy(dst: torch.Tensor, src: torch.Tensor | None, path: Path, what: str) -> None:
    if src is None or src.shape != dst.shape:
        raise NasrecError(f"{path}: no shard of {what} of shape {tuple(dst.shape)}: the sharding plan has changed")
    dst.copy_(src)


def merged_tables(run: Path, name: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The whole tables of checkpoint `name`, merged from every process's shard file: state-dict key -> weight."""
    world, step = int(meta["world"]), int(meta["step"])
    out: dict[str, torch.Tensor] = {}
    filled: dict[str, int] = {}
    starts: dict[str, list[int]] = {}
    for qual, shape in meta["modules"].items():
        sizes = [int(n) for n in shape["table_sizes"]]
        out[qual] = torch.zeros(sum(sizes), int(shape["dim"]))
        filled[qual] = 0
        starts[qual] = [sum(sizes[:i]) for i in range(len(sizes))]
    for rank in range(world):
        path = shard_path(run, name, step, rank, world)
        if not path.is_file():
            raise NasrecError(f"{path}: missing; the shards of {name}.pt (step {step}) need all {world} files")
        for qual, piece in rundir.load_checkpoint(path)["modules"].items():
            for i, r, c, t in piece["weights"]:
                r0 = starts[qual][i] + r
                out[qual][r0 : r0 + t.shape[0], c : c + t.shape[1]] = t
                filled[qual] += t.numel()
    for qual, table in out.items():
        if filled[qual] != table.numel():
            raise NasrecError(f"{run}: the shards of {qual} cover {filled[qual]:,} of {table.numel():,} weights")
    return {(f"{qual}." if qual else "") + "table.weight": t for qual, t in out.items()}


def unshard(run: Path | str, out: Path | str) -> list[str]:
    """Write `out`: run directory `run` with whole tables in its checkpoints (no optimizer state); the files written."""
    run, out = Path(run), Path(out)
    ck_path = run / rundir.CHECKPOINT_PT
    ck = rundir.load_checkpoint(ck_path)
    if not ck.get("shards"):
        raise NasrecError(f"{ck_path}: its tables are not sharded; evaluate, predict and export take it as it is")
    if out.exists() and any(out.iterdir()):
        raise NasrecError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (rundir.CHECKPOINT_PT, rundir.BEST_PT):
        if not (run / name).is_file():
            continue
        ck = rundir.load_checkpoint(run / name)
        meta = ck.pop("shards")
        ck["model"].update(merged_tables(run, Path(name).stem, meta))
        for key in ("optimizer", "schedule"):  # the fused state stays with the shards: this copy is for serving
            if key in ck:
                ck[key] = None
        rundir.save_checkpoint(out / name, ck)
        written.append(name)
    for name in (rundir.CONFIG_JSON, rundir.MODEL_JSON, rundir.METRICS_JSON, rundir.METRICS_JSONL):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
            written.append(name)
    return written
