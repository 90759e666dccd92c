"""Optimizers with sparse embedding gradients, learning-rate schedules, and exact resumption."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding
from nasrec.train.clip import clip_grad_norm
from nasrec.train.optim import SplitOptimizer, build_optimizer, sparse_parameters
from nasrec.train.schedule import build_schedule

TABLES = (7, 5, 9)
DIM = 4


class _Tiny(nn.Module):
    """FieldEmbedding + a dense layer: the smallest model with both kinds of gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = FieldEmbedding(TABLES, DIM)
        self.dense = nn.Linear(2, DIM)
        self.head = nn.Linear(DIM * (len(TABLES) + 1), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.dense(dense)[:, None], self.emb(sparse)], dim=1)
        return self.head(tokens.flatten(1)).squeeze(1)


def _model(seed: int = 0, sparse: bool = True) -> _Tiny:
    torch.manual_seed(seed)
    model = _Tiny()
    model.emb.table.sparse = sparse
    return model


def _batches(n: int, seed: int = 1, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        # Ids from a prefix of each table: some rows repeat within a batch, others are never looked up.
        ids = torch.stack([torch.randint(0, n_rows - 2, (size,), generator=gen) for n_rows in TABLES], dim=1)
        out.append((torch.randn(size, 2, generator=gen), ids, (torch.rand(size, generator=gen) < 0.4).float()))
    return out


def _train(model: nn.Module, opt: SplitOptimizer, batches: list, clip: float | None = None, sched=None) -> None:
    for dense, ids, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(model(dense, ids), y)
        (loss * 20).backward()  # large gradients, so that clipping is active
        if clip is not None:
            clip_grad_norm(opt.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("embedding_lr", [None, 0.05])
def test_sparse_adagrad_equals_dense_adagrad(clip: float | None, embedding_lr: float | None) -> None:
    sparse_model, dense_model = _model(sparse=True), _model(sparse=False)
    start = copy.deepcopy(sparse_model.state_dict())
    sparse_opt = build_optimizer(sparse_model, "adagrad", lr=0.12, embedding_lr=embedding_lr)
    dense_opt = build_optimizer(dense_model, "adagrad", lr=0.12)
    # The dense twin has no sparse embedding, so give its table the embedding lr by hand.
    assert [g["name"] for g in dense_opt.param_groups] == ["dense"]
    assert [g["name"] for g in sparse_opt.param_groups] == ["dense", "embedding"]
    if embedding_lr is not None:
        dense_opt = SplitOptimizer(
            "adagrad",
            {
                "dense": torch.optim.Adagrad(
                    [
                        {"params": [p for n, p in dense_model.named_parameters() if not n.startswith("emb.")]},
                        {"params": [dense_model.emb.table.weight], "lr": embedding_lr},
                    ],
                    lr=0.12,
                    eps=1e-2,
                )
            },
        )
    batches = _batches(8)
    _train(sparse_model, sparse_opt, batches, clip)
    _train(dense_model, dense_opt, batches, clip)
    assert sparse_model.emb.table.weight.grad.is_sparse and not dense_model.emb.table.weight.grad.is_sparse
    for (name, a), b in zip(sparse_model.named_parameters(), dense_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
        assert not torch.equal(a, start[name]), f"{name} did not train"
    # Rows no batch looked up (the last two of every table) are untouched.
    unused = torch.tensor([0, *TABLES[:-1]]).cumsum(0)[:, None] + torch.tensor(TABLES)[:, None] - torch.tensor([1, 2])
    torch.testing.assert_close(
        sparse_model.emb.table.weight[unused.flatten()], start["emb.table.weight"][unused.flatten()]
    )


def test_param_groups_and_detection() -> None:
    model = _model()
    assert sparse_parameters(model) == [model.emb.table.weight]
    opt = build_optimizer(model, "adagrad", lr=0.2, embedding_lr=0.05)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["dense"]["lr"] == 0.2 and groups["embedding"]["lr"] == 0.05
    assert groups["dense"]["eps"] == groups["embedding"]["eps"] == 1e-2
    assert groups["embedding"]["params"] == [model.emb.table.weight]
    assert len(groups["dense"]["params"]) == 4
    assert isinstance(opt.optimizers["embedding"], torch.optim.Adagrad)
    # Frozen parameters are left out: here only the head trains, as in the search's fine-tuning.
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.requires_grad_(True)
    head_only = build_optimizer(model, "adagrad", lr=0.04)
    assert [g["name"] for g in head_only.param_groups] == ["dense"]
    assert head_only.param_groups[0]["params"] == list(model.head.parameters())
    model.head.requires_grad_(False)
    with pytest.raises(NasrecError):
        build_optimizer(model)
    with pytest.raises(NasrecError):
        build_optimizer(_model(), "rmsprop")


def test_weight_decay_reaches_dense_parameters_only() -> None:
    model = _model()
    opt = build_optimizer(model, "adagrad", weight_decay=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["dense"]["weight_decay"] == 0.1 and groups["embedding"]["weight_decay"] == 0.0
    _train(model, opt, _batches(2))  # torch's Adagrad would raise on a sparse gradient with decay


def test_sparse_adam_is_lazy() -> None:
    model = _model()
    opt = build_optimizer(model, "adam", lr=0.01)
    assert isinstance(opt.optimizers["dense"], torch.optim.Adam)
    assert isinstance(opt.optimizers["embedding"], torch.optim.SparseAdam)
    assert opt.param_groups[0]["eps"] == 1e-8
    dense, ids, y = _batches(1)[0]
    _train(model, opt, [(dense, ids, y)])
    after_first = model.emb.table.weight.detach().clone()
    # The second batch looks up other rows (the last of each table): rows of the first batch keep their
    # values (dense Adam would move them again on their momentum).
    other = torch.tensor([[n - 1 for n in TABLES]] * len(y))
    _train(model, opt, [(dense, other, y)])
    weight = model.emb.table.weight.detach()
    looked_up_first = (ids + model.emb.offsets).unique()
    torch.testing.assert_close(weight[looked_up_first], after_first[looked_up_first], atol=0, rtol=0)
    last_rows = torch.tensor(TABLES).cumsum(0) - 1
    assert not torch.equal(weight[last_rows], after_first[last_rows])


def test_sparse_sgd_equals_dense_sgd() -> None:
    sparse_model, dense_model = _model(sparse=True), _model(sparse=False)
    batches = _batches(4)
    _train(sparse_model, build_optimizer(sparse_model, "sgd", lr=0.3), batches, clip=1.0)
    _train(dense_model, build_optimizer(dense_model, "sgd", lr=0.3), batches, clip=1.0)
    for a, b in zip(sparse_model.parameters(), dense_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def _save(*objs) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("name", ["adagrad", "adam", "sgd"])
def test_resume_is_bit_for_bit(name: str) -> None:
    batches = _batches(10, seed=5)
    model = _model(seed=0)
    opt = build_optimizer(model, name, lr=0.05, embedding_lr=0.02)
    sched = build_schedule(opt, "warmup-cosine", total_steps=10, warmup_fraction=0.3)
    _train(model, opt, batches[:5], clip=1.0, sched=sched)
    saved = _save(model, opt, sched)
    lr_at_save = sched.get_last_lr()
    _train(model, opt, batches[5:], clip=1.0, sched=sched)

    # A fresh process: different initial weights, optimizer and schedule built anew, then the checkpoint.
    resumed = _model(seed=123)
    resumed_opt = build_optimizer(resumed, name, lr=0.05, embedding_lr=0.02)
    resumed_sched = build_schedule(resumed_opt, "warmup-cosine", total_steps=10, warmup_fraction=0.3)
    model_state, opt_state, sched_state = torch.load(saved, weights_only=True)
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    resumed_sched.load_state_dict(sched_state)
    assert resumed_sched.get_last_lr() == lr_at_save
    _train(resumed, resumed_opt, batches[5:], clip=1.0, sched=resumed_sched)
    for (pname, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), pname
    assert resumed_sched.get_last_lr() == sched.get_last_lr()


def test_load_state_rejects_a_different_optimizer() -> None:
    adagrad = build_optimizer(_model(), "adagrad")
    with pytest.raises(NasrecError):
        build_optimizer(_model(), "adam").load_state_dict(adagrad.state_dict())
    head_only = _model()
    head_only.emb.requires_grad_(False)
    with pytest.raises(NasrecError):
        build_optimizer(head_only, "adagrad").load_state_dict(adagrad.state_dict())


# ---- schedules ---------------------------------------------------------------------------------


def _two_groups(lr: float = 0.12, embedding_lr: float = 0.04) -> SplitOptimizer:
    return build_optimizer(_model(), "adagrad", lr=lr, embedding_lr=embedding_lr)


def _lrs_over(sched, steps: int) -> list[list[float]]:
    out = [sched.get_last_lr()]
    for _ in range(steps):
        sched.step()
        out.append(sched.get_last_lr())
    return out


def test_warmup_cosine_values_at_key_steps() -> None:
    opt = _two_groups()
    sched = build_schedule(opt, "warmup-cosine", total_steps=100)
    lrs = _lrs_over(sched, 120)
    start = end = 1e-8
    for g, peak in enumerate((0.12, 0.04)):
        assert lrs[0][g] == start  # step 0
        assert lrs[5][g] == pytest.approx(start + (peak - start) * 0.5, rel=1e-12)  # halfway through warm-up
        assert lrs[10][g] == pytest.approx(peak, rel=1e-12)  # end of warm-up: the peak
        assert lrs[55][g] == pytest.approx((peak + end) / 2, rel=1e-12)  # halfway through the cosine
        last = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * 89 / 90))
        assert lrs[99][g] == pytest.approx(last, rel=1e-12)  # the last step of the run
        assert lrs[100][g] == pytest.approx(end, rel=1e-9) and lrs[120][g] == pytest.approx(end, rel=1e-9)
    assert sched.lr == lrs[-1][0]
    # Monotone up during the warm-up, down after it.
    dense = [row[0] for row in lrs[:101]]
    assert all(a < b for a, b in itertools.pairwise(dense[:11]))
    assert all(a > b for a, b in itertools.pairwise(dense[10:101]))


def test_warmup_steps_override_and_constant() -> None:
    sched = build_schedule(_two_groups(), "warmup-cosine", total_steps=500, warmup_steps=50)
    assert sched.warmup_steps == 50 and sched.lrs_at(50) == pytest.approx([0.12, 0.04])
    assert build_schedule(_two_groups(), "warmup-cosine", total_steps=71625).warmup_steps == 7162
    assert build_schedule(_two_groups(), "constant", total_steps=100, warmup_fraction=0.57).warmup_steps == 57
    flat = build_schedule(_two_groups(), "constant", total_steps=10, warmup_fraction=0.0)
    assert _lrs_over(flat, 12) == [[0.12, 0.04]] * 13
    warm = _lrs_over(build_schedule(_two_groups(), "constant", total_steps=10, warmup_fraction=0.2), 4)
    assert warm[0] == [1e-8, 1e-8] and warm[1][0] == pytest.approx(0.06, rel=1e-6) and warm[2:] == [[0.12, 0.04]] * 3
    with pytest.raises(NasrecError):
        build_schedule(_two_groups(), "warmup-cosine", total_steps=10, warmup_fraction=1.0)
    with pytest.raises(NasrecError):
        build_schedule(_two_groups(), "step-decay", total_steps=10)


def test_plateau_reduces_after_patience_bad_evaluations() -> None:
    opt = _two_groups(0.1, 0.02)
    sched = build_schedule(
        opt, "plateau", total_steps=100, warmup_fraction=0.0, patience=2, threshold=0.01, min_lr=0.02
    )
    assert sched.get_last_lr() == [0.1, 0.02]
    assert not sched.report(0.50)  # first: the best so far
    assert not sched.report(0.45)  # improves by more than the threshold
    assert not sched.report(0.445)  # within the threshold: bad 1
    assert sched.report(float("nan"))  # bad 2 (a diverged evaluation) -> halve
    assert sched.get_last_lr() == pytest.approx([0.05, 0.02])  # the embedding group was at min_lr already
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.05, 0.02])
    assert not sched.report(0.30)  # improvement resets the count
    assert not sched.report(0.31)
    assert sched.report(0.32)
    assert sched.get_last_lr() == pytest.approx([0.025, 0.02])
    assert not sched.report(0.33)
    assert sched.report(0.34)
    assert sched.get_last_lr() == pytest.approx([0.02, 0.02])  # floored at min_lr
    assert sched.best == 0.30

    higher_is_better = build_schedule(
        _two_groups(), "plateau", total_steps=10, warmup_fraction=0.0, patience=1, mode="max"
    )
    assert not higher_is_better.report(0.70) and not higher_is_better.report(0.80)
    assert higher_is_better.report(0.79) and higher_is_better.lr == pytest.approx(0.06)
    # The warm-up/cosine schedules ignore reports.
    assert not build_schedule(_two_groups(), "warmup-cosine", total_steps=10).report(1.0)


@pytest.mark.parametrize("name", ["warmup-cosine", "constant", "plateau"])
def test_schedule_state_round_trip(name: str) -> None:
    opt = _two_groups()
    sched = build_schedule(opt, name, total_steps=40, patience=1)
    for step in range(17):
        sched.step()
        if step % 5 == 4:
            sched.report(1.0 / (step + 1) if step < 10 else 1.0)
    saved = io.BytesIO()
    torch.save([opt.state_dict(), sched.state_dict()], saved)
    saved.seek(0)
    expected = _lrs_over(sched, 30)

    fresh_opt = _two_groups(lr=0.5, embedding_lr=0.5)  # base lrs come back from the state, not from here
    fresh = build_schedule(fresh_opt, name, total_steps=40, patience=1)
    opt_state, sched_state = torch.load(saved, weights_only=True)
    fresh_opt.load_state_dict(opt_state)
    fresh.load_state_dict(sched_state)
    assert _lrs_over(fresh, 30) == expected
    # A schedule built after loading the optimizer's state finds the original base lrs in the groups.
    again_opt = _two_groups(lr=0.5, embedding_lr=0.5)
    again_opt.load_state_dict(opt_state)
    assert build_schedule(again_opt, name, total_steps=40).base_lrs == [0.12, 0.04]
    with pytest.raises(NasrecError):
        build_schedule(_two_groups(), "constant" if name != "constant" else "plateau", total_steps=40).load_state_dict(
            sched_state
        )


@pytest.mark.slow
def test_box_adagrad_on_a_supernet_equals_adagrad() -> None:
    import numpy as np

    from nasrec.model.supernet import Supernet
    from nasrec.space.space import NASREC_SMALL
    from nasrec.train.optim import BoxAdagrad

    tables = [7, 30, 3, 50, 11]

    def run(sliced: bool, steps: int, state: dict | None = None) -> tuple[Supernet, SplitOptimizer]:
        torch.manual_seed(0)
        model = Supernet(NASREC_SMALL, 4, tables, layernorm=True)
        opt = build_optimizer(model, "adagrad", lr=0.1, sliced=sliced)
        assert isinstance(opt.optimizers["dense"], BoxAdagrad) == sliced
        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        for step in range(steps):
            arch = NASREC_SMALL.sample(rng, "default")
            dense = torch.randn(32, 4, generator=gen)
            ids = torch.stack([torch.randint(0, t, (32,), generator=gen) for t in tables], 1)
            y = (torch.rand(32, generator=gen) < 0.3).float()
            if state is not None and step == steps // 2:  # a plain Adagrad state resumes in the box optimizer
                opt.load_state_dict(state)
            opt.zero_grad(set_to_none=True)
            nn.functional.binary_cross_entropy_with_logits(model(dense, ids, arch), y).backward()
            clip_grad_norm(opt.parameters(), 5.0)
            opt.step()
            if state is None and not sliced and step == steps // 2 - 1:
                run.saved = copy.deepcopy(opt.state_dict())  # type: ignore[attr-defined]
        return model, opt

    plain, plain_opt = run(False, 8)
    boxed, boxed_opt = run(True, 8)
    big = [p for p in plain.parameters() if p.numel() >= 1 << 14]
    assert big  # the box path is exercised
    for a, b in zip(plain.parameters(), boxed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(
        plain_opt.optimizers["dense"].state.values(), boxed_opt.optimizers["dense"].state.values(), strict=True
    ):
        assert a["step"] == b["step"]
        torch.testing.assert_close(a["sum"], b["sum"], rtol=1e-6, atol=1e-7)
    resumed, _ = run(True, 8, state=run.saved)  # type: ignore[attr-defined]
    for a, b in zip(plain.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(
        build_optimizer(plain, "adagrad", sliced=True, weight_decay=1e-4).optimizers["dense"], torch.optim.Adagrad
    )


def test_nonzero_extents() -> None:
    from nasrec.train.extents import nonzero_extents

    g = torch.zeros(40, 30)
    assert nonzero_extents(g) == (0, 0)
    g[5, 2] = -1.0
    g[1, 17] = 2.0
    assert nonzero_extents(g) == (6, 18)
    g[39, 0] = float("nan")
    assert nonzero_extents(g) == (40, 18)
    assert nonzero_extents(torch.zeros(3, 4), min_numel=100) == (3, 4)  # small: not scanned
    assert nonzero_extents(torch.tensor([0.0, 1.0, 0.0])) == (2,)
    assert nonzero_extents(torch.tensor([0.0, float("nan")])) == (2,)
    assert nonzero_extents(torch.zeros(0, 4)) == (0, 4)


def test_nonzero_extents_matches_a_direct_search_of_the_nonzeros() -> None:
    from nasrec.train.extents import nonzero_extents

    gen = torch.Generator().manual_seed(0)
    for shape in ((7,), (9, 6), (5, 4, 3), (6, 1)):
        for trial in range(40):
            g = torch.zeros(shape)
            box = tuple(int(torch.randint(0, n + 1, (1,), generator=gen)) for n in shape)
            region = g[tuple(slice(0, e) for e in box)]
            region.copy_(torch.randn(region.shape, generator=gen) * (torch.rand(region.shape, generator=gen) < 0.3))
            if trial % 3 == 0 and region.numel():  # corners and edges of the box, where the last-slice test looks
                region[tuple(-1 for _ in shape)] = float("nan") if trial % 2 else 1.0
            nz = (g != 0).nonzero()
            want = tuple(int(nz[:, d].max()) + 1 for d in range(g.dim())) if len(nz) else (0,) * g.dim()
            assert nonzero_extents(g) == want, (shape, trial)


@pytest.mark.parametrize("name", ["adagrad", "adam", "sgd"])
def test_first_order_lr_moves_only_the_lr_part_faster(name: str) -> None:
    """`first_order_lr` gives a zoo model's LR part (scalars and dense weights) groups and an lr of its own."""
    from nasrec.zoo.linear import FM

    torch.manual_seed(0)
    model = FM(3, [5, 7], embedding_dim=4)
    opt = build_optimizer(model, name, lr=0.01, first_order_lr=0.1)
    first = {id(p) for p in model.linear.parameters()}
    by_name = {}
    for group in opt.param_groups:
        by_name.setdefault(group["name"], []).append(group)
        owned = {id(p) in first for p in group["params"]}
        assert owned == {group["name"] == "first_order"}
    assert [g["lr"] for g in by_name["first_order"]] == [0.1, 0.1]  # a dense and an embedding group
    assert {g["lr"] for g in by_name["dense"] + by_name["embedding"]} == {0.01}
    # The schedule scales every group from its own lr: a plateau keeps the ratio
    sched = build_schedule(opt, "plateau", total_steps=10, warmup_fraction=0.0, factor=0.5, patience=1)
    assert not sched.report(1.0) and sched.report(2.0)
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [0.005, 0.05]
    # Without it, one group per part, as before (the saved state of earlier runs loads)
    plain = build_optimizer(model, name, lr=0.01)
    assert [g["name"] for g in plain.param_groups] == ["dense", "embedding"]
    with pytest.raises(NasrecError, match="first_order_lr"):
        build_optimizer(model, name, lr=0.01, first_order_lr=0.0)


def test_at_lr_floor_only_once_a_plateau_has_lowered_every_lr_to_its_floor() -> None:
    """Early stopping ends a run whose plateau schedule has nothing left to lower (`at_lr_floor`)."""
    from nasrec.train.schedule import at_lr_floor

    opt = _two_groups(1e-6, 1e-7)
    sched = build_schedule(opt, "plateau", total_steps=100, warmup_fraction=0.0, patience=1, factor=0.1)
    assert not at_lr_floor(sched)  # no reduction yet (the embedding group's 1e-7 alone is not the floor)
    sched.report(1.0)
    assert sched.report(2.0) and sched.get_last_lr() == pytest.approx([1e-7, 1e-8])
    assert not at_lr_floor(sched)  # the dense group can still go lower
    assert sched.report(2.0) and sched.get_last_lr() == pytest.approx([1e-8, 1e-8])
    assert at_lr_floor(sched)
    assert not at_lr_floor(build_schedule(_two_groups(), "constant", total_steps=10))
