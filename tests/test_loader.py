"""Tests for nasrec.data.loader: order, shuffling, drop_last, sharding, prefetch and argument checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nasrec.data.cache import AppendableArray, Cache, CacheWriter, open_cache
from nasrec.data.loader import PREFETCH_THREAD_NAME, Batch, BatchLoader
from nasrec.errors import NasrecError

N_ROWS = 1000
N_DENSE = 3
N_SPARSE = 4


def _splits() -> dict[str, np.ndarray]:
    i = np.arange(N_ROWS, dtype=np.int64)
    return {
        "train": i[i % 10 < 8],  # 800 rows with gaps: gathered, never sliced
        "val": i[i % 10 == 8],
        "test": i[i % 10 == 9],
        "all": i,  # contiguous: file order reads slices
        "tail": i[600:],  # contiguous but not starting at row 0
        "empty": i[:0],
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    # Every value encodes its row id, so a batch's rows can be identified from any of its arrays.
    out = tmp_path_factory.mktemp("loader") / "cache"
    rows = np.arange(N_ROWS, dtype=np.int64)
    with CacheWriter(out) as w:
        dense = AppendableArray(w.path("dense.npy"), np.float32, (N_DENSE,))
        sparse = AppendableArray(w.path("sparse.npy"), np.int32, (N_SPARSE,))
        label = AppendableArray(w.path("label.npy"), np.float32)
        for block in np.array_split(rows, 3):
            dense.append(block[:, None] * 10.0 + np.arange(N_DENSE))
            sparse.append(block[:, None] * 100 + np.arange(N_SPARSE))
            label.append(block % 2)
        for a in (dense, sparse, label):
            a.close()
        splits = _splits()
        for name, ids in splits.items():
            np.save(w.path(f"splits/{name}.npy"), ids)
        w.commit(
            {
                "dense_fields": [f"d{j}" for j in range(N_DENSE)],
                "sparse_fields": [f"s{j}" for j in range(N_SPARSE)],
                "table_sizes": [100 * N_ROWS] * N_SPARSE,
                "split": {"rows": {name: len(ids) for name, ids in splits.items()}},
            }
        )
    return open_cache(out)


def _row_ids(batch: Batch) -> np.ndarray:
    """Row ids of a batch, checked for consistency across its three tensors."""
    ids = batch.sparse[:, 0].numpy() // 100
    np.testing.assert_array_equal(batch.dense[:, 0].numpy(), ids * 10.0)
    np.testing.assert_array_equal(batch.label.numpy(), ids % 2)
    return ids


def _run(loader: BatchLoader, epoch: int | None = None) -> list[np.ndarray]:
    it = loader if epoch is None else loader.iter_epoch(epoch)
    return [_row_ids(b) for b in it]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD_NAME]


@pytest.mark.parametrize("split", ["train", "all", "tail", "val"])
@pytest.mark.parametrize("group_batches", [1, 3, 64])
def test_file_order_exact_contents(cache: Cache, split: str, group_batches: int) -> None:
    expected = _splits()[split]
    loader = BatchLoader(cache, split, batch_size=64, group_batches=group_batches)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(expected) // 64)
    for k, b in enumerate(batches):
        want = expected[k * 64 : (k + 1) * 64]
        np.testing.assert_array_equal(b.dense.numpy(), want[:, None] * 10.0 + np.arange(N_DENSE))
        np.testing.assert_array_equal(b.sparse.numpy(), want[:, None] * 100 + np.arange(N_SPARSE))
        np.testing.assert_array_equal(b.label.numpy(), want % 2)
    assert sum(len(b.label) for b in batches) == len(expected) == loader.num_rows


def test_batch_shapes_and_dtypes(cache: Cache) -> None:
    loader = BatchLoader(cache, "train", batch_size=96, shuffle=True)
    batches = list(loader)
    assert [len(b.label) for b in batches] == [96] * 8 + [32]
    for b in batches:
        assert isinstance(b, Batch)
        n = b.label.shape[0]
        assert b.dense.dtype == torch.float32 and b.dense.shape == (n, N_DENSE)
        assert b.sparse.dtype == torch.int64 and b.sparse.shape == (n, N_SPARSE)
        assert b.label.dtype == torch.float32 and b.label.shape == (n,)
        assert b.dense.is_contiguous() and b.sparse.is_contiguous() and b.label.is_contiguous()


def test_batches_survive_later_iteration(cache: Cache) -> None:
    # Tensors from an earlier group or epoch must not be overwritten by later ones.
    loader = BatchLoader(cache, "all", batch_size=50, shuffle=True, group_batches=2)
    first = list(loader.iter_epoch(0))
    snapshot = [b.sparse.clone() for b in first]
    list(loader.iter_epoch(1))
    for b, s in zip(first, snapshot, strict=True):
        assert torch.equal(b.sparse, s)


def test_shuffle_covers_each_row_once_and_is_deterministic(cache: Cache) -> None:
    expected = _splits()["train"]
    loader = BatchLoader(cache, "train", batch_size=64, shuffle=True, seed=7)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        order = np.concatenate(_run(loader))
        np.testing.assert_array_equal(np.sort(order), expected)
        orders.append(order)
    assert not np.array_equal(orders[0], expected), "shuffle left file order unchanged"
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])

    # Same (seed, epoch) gives the same batches, whatever the grouping or how the epoch is chosen.
    again = BatchLoader(cache, "train", batch_size=64, shuffle=True, seed=7, group_batches=2)
    np.testing.assert_array_equal(np.concatenate(_run(again, epoch=1)), orders[1])
    again.set_epoch(2)
    np.testing.assert_array_equal(np.concatenate(_run(again)), orders[2])
    np.testing.assert_array_equal(np.concatenate(_run(loader, epoch=0)), orders[0])

    other_seed = BatchLoader(cache, "train", batch_size=64, shuffle=True, seed=8)
    assert not np.array_equal(np.concatenate(_run(other_seed)), orders[0])


def test_drop_last(cache: Cache) -> None:
    for shuffle in (False, True):
        full = np.concatenate(_run(BatchLoader(cache, "train", batch_size=96, shuffle=shuffle, seed=3)))
        loader = BatchLoader(cache, "train", batch_size=96, shuffle=shuffle, seed=3, drop_last=True)
        batches = _run(loader)
        assert len(batches) == len(loader) == 800 // 96
        assert all(len(b) == 96 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), full[: 8 * 96])
        assert loader.num_rows == 8 * 96
    exact = BatchLoader(cache, "train", batch_size=100, drop_last=True)
    assert len(exact) == 8 and exact.num_rows == 800


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("batch_size", [64, 90, 100])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding(cache: Cache, world_size: int, batch_size: int, shuffle: bool, drop_last: bool) -> None:
    common = dict(batch_size=batch_size, shuffle=shuffle, seed=5, drop_last=drop_last, group_batches=2)
    whole = _run(BatchLoader(cache, "train", **common), epoch=4)
    per_rank = len(whole) // world_size
    shards = []
    for rank in range(world_size):
        loader = BatchLoader(cache, "train", rank=rank, world_size=world_size, **common)
        batches = _run(loader, epoch=4)
        assert len(batches) == len(loader) == per_rank
        assert sum(len(b) for b in batches) == loader.num_rows
        # Round-robin: global batch k goes to rank k % world_size.
        for j, b in enumerate(batches):
            np.testing.assert_array_equal(b, whole[rank + j * world_size])
        shards.append(np.concatenate(batches))
    everything = np.concatenate(shards)
    assert len(np.unique(everything)) == len(everything), "ranks overlap"
    kept = np.concatenate(whole[: per_rank * world_size])
    np.testing.assert_array_equal(np.sort(everything), np.sort(kept))
    if len(whole) % world_size == 0:
        expected = _splits()["train"]
        covered = expected if not drop_last else np.sort(np.concatenate(whole))
        np.testing.assert_array_equal(np.sort(everything), covered)


def test_sharding_keeps_partial_batch_on_last_rank(cache: Cache) -> None:
    # 800 rows / 90 = 8 full batches + one of 80; 9 batches deal evenly over 3 ranks.
    sizes = [[len(b) for b in _run(BatchLoader(cache, "train", batch_size=90, rank=r, world_size=3))] for r in range(3)]
    assert sizes == [[90, 90, 90], [90, 90, 90], [90, 90, 80]]


def test_sharding_too_few_batches_gives_none(cache: Cache) -> None:
    loader = BatchLoader(cache, "val", batch_size=512, rank=1, world_size=2)
    assert len(loader) == 0 and list(loader) == [] and loader.num_rows == 0


@pytest.mark.parametrize("prefetch", [1, 2, 5])
def test_prefetch_is_equivalent(cache: Cache, prefetch: int) -> None:
    for split, shuffle, rank, world_size in [
        ("train", True, 1, 2),
        ("all", False, 0, 1),
        ("train", False, 2, 3),
    ]:
        common = dict(batch_size=40, shuffle=shuffle, seed=1, rank=rank, world_size=world_size, group_batches=3)
        plain = list(BatchLoader(cache, split, **common).iter_epoch(2))
        ahead = list(BatchLoader(cache, split, prefetch=prefetch, **common).iter_epoch(2))
        assert len(plain) == len(ahead) > 0
        for a, b in zip(plain, ahead, strict=True):
            assert torch.equal(a.dense, b.dense) and torch.equal(a.sparse, b.sparse)
            assert torch.equal(a.label, b.label)
    assert _prefetch_threads() == []


def test_prefetch_thread_stops_on_early_break(cache: Cache) -> None:
    loader = BatchLoader(cache, "all", batch_size=10, shuffle=True, prefetch=2, group_batches=1)
    for i, _ in enumerate(loader):
        assert len(_prefetch_threads()) == 1
        if i == 3:
            break
    assert _prefetch_threads() == []

    # An iterator kept alive after the loop, then closed explicitly.
    it = iter(loader)
    next(it)
    assert len(_prefetch_threads()) == 1
    it.close()
    assert _prefetch_threads() == []

    # An iterator that was never advanced starts no thread.
    it = iter(loader)
    assert _prefetch_threads() == []
    del it


def test_prefetch_thread_stops_when_loop_body_raises(cache: Cache) -> None:
    loader = BatchLoader(cache, "all", batch_size=10, prefetch=1, group_batches=1)

    def consume() -> None:
        for i, _ in enumerate(loader):
            if i == 5:
                raise RuntimeError("training step failed")

    with pytest.raises(RuntimeError, match="training step failed"):
        consume()
    assert _prefetch_threads() == []


def test_prefetch_propagates_producer_errors(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = BatchLoader(cache, "all", batch_size=10, prefetch=2, group_batches=1)
    calls = []
    real_gather = BatchLoader._gather

    def flaky(self: BatchLoader, rows: np.ndarray) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real_gather(self, rows)

    monkeypatch.setattr(BatchLoader, "_gather", flaky)
    got = []
    with pytest.raises(OSError, match="disk went away"):
        for b in loader:
            got.append(b)
    assert len(got) == 2
    assert _prefetch_threads() == []


@pytest.mark.parametrize("prefetch", [0, 2])
def test_empty_split(cache: Cache, prefetch: int) -> None:
    for drop_last in (False, True):
        loader = BatchLoader(cache, "empty", shuffle=True, drop_last=drop_last, prefetch=prefetch)
        assert len(loader) == 0 and loader.num_rows == 0
        assert list(loader) == []
    assert _prefetch_threads() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "nope"}, "no split named 'nope'"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"world_size": 0}, "world_size must be >= 1"),
        ({"rank": -1}, "rank must be >= 0"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size=2\)"),
        ({"prefetch": -1}, "prefetch must be >= 0"),
        ({"seed": -3}, "seed must be >= 0"),
        ({"group_batches": 0}, "group_batches must be >= 1"),
    ],
)
def test_argument_errors(cache: Cache, kwargs: dict, message: str) -> None:
    with pytest.raises(NasrecError, match=message):
        BatchLoader(cache, **kwargs)


def test_epoch_errors(cache: Cache) -> None:
    loader = BatchLoader(cache, "train", shuffle=True)
    with pytest.raises(NasrecError, match="epoch must be >= 0"):
        loader.set_epoch(-1)
    with pytest.raises(NasrecError, match="epoch must be an integer"):
        loader.iter_epoch("1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ids", "message"),
    [([1, 2, 9], "row ids outside"), ([-1, 2], "row ids outside"), ([0, 2, 1, 3], "not strictly ascending")],
)
def test_rejects_bad_split_ids(tmp_path: Path, ids: list[int], message: str) -> None:
    out = tmp_path / "bad"
    (out / "splits").mkdir(parents=True)
    np.save(out / "dense.npy", np.zeros((4, 1), np.float32))
    np.save(out / "sparse.npy", np.zeros((4, 1), np.int32))
    np.save(out / "label.npy", np.zeros(4, np.float32))
    np.save(out / "splits" / "train.npy", np.array(ids, np.int64))
    meta = '{"format_version": 1, "dense_fields": ["d"], "sparse_fields": ["s"], "table_sizes": [1],'
    (out / "meta.json").write_text(meta + f' "split": {{"rows": {{"train": {len(ids)}}}}}}}')
    with pytest.raises(NasrecError, match=message):
        BatchLoader(open_cache(out))
