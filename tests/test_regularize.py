"""The embedding L2 penalty (`TrainConfig.embedding_l2`): exact gradients, still sparse, rows outside the batch
untouched, checked settings, and a training run it regularises."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import small_synth_cache
from torch import nn

from nasrec.configfile import ConfigError
from nasrec.errors import NasrecError
from nasrec.model.embedding import FieldEmbedding
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.rundir import load_checkpoint, save_checkpoint
from nasrec.space.space import NASREC_SMALL
from nasrec.train.api import train
from nasrec.train.clip import clip_grad_norm
from nasrec.train.config import TrainConfig, preset
from nasrec.train.gradsync import GradientSync
from nasrec.train.optim import build_optimizer, sparse_parameters
from nasrec.train.regularize import L2_FORMS, EmbeddingL2, effective_l2
from nasrec.train.resume import same_run
from nasrec.zoo.registry import build_zoo_model

TABLES = (7, 5, 9, 4)
DENSE = 3
LAM = 0.3


class _Tiny(nn.Module):
    """FieldEmbedding and a head: the smallest model with a sparse and a dense gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = FieldEmbedding(TABLES, 4)
        self.head = nn.Linear(DENSE + 4 * len(TABLES), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([dense, self.emb(sparse).flatten(1)], 1)).squeeze(1)


def _batch(size: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids from a prefix of each table: rows repeat within the batch, and the last rows are never looked up."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, max(n - 2, 1), (size,), generator=g) for n in TABLES], 1)
    return torch.randn(size, DENSE, generator=g), ids, (torch.rand(size, generator=g) < 0.4).float()


def _supernet() -> tuple[nn.Module, object]:
    arch = NASREC_SMALL.sample(np.random.default_rng(3), "default")
    net = Supernet(NASREC_SMALL, DENSE, TABLES, layernorm=False)
    return net, arch


MODELS = {
    "tiny": lambda: (_Tiny(), None),
    "deepfm": lambda: (build_zoo_model("deepfm", DENSE, TABLES), None),  # a linear part: a second, 1-dim table
    "subnet": lambda: (Subnet(NASREC_SMALL.sample(np.random.default_rng(2), "default"), DENSE, TABLES), None),
    "supernet": _supernet,
}


def _forward(model: nn.Module, arch: object, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return model(dense, ids) if arch is None else model(dense, ids, arch)


def _loss(model: nn.Module, arch: object, batch: tuple) -> torch.Tensor:
    dense, ids, y = batch
    return nn.functional.binary_cross_entropy_with_logits(_forward(model, arch, dense, ids), y)


@pytest.mark.parametrize("name", list(MODELS))
def test_sparse_gradient_equals_the_dense_gradient_of_the_penalised_loss(name: str) -> None:
    torch.manual_seed(0)
    model, arch = MODELS[name]()
    model.eval()  # no dropout draws, batch norms on running stats: the two copies compute the same
    dense_model = copy.deepcopy(model)
    tables = [m for m in dense_model.modules() if isinstance(m, nn.Embedding)]
    assert tables and all(m.sparse for m in tables)
    outputs: list[torch.Tensor] = []
    for m in tables:
        m.sparse = False
        m.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    batch = _batch()
    B = batch[0].shape[0]

    _loss(model, arch, batch).backward()
    EmbeddingL2.for_model(model, LAM)(B)
    # the definition: the mean loss plus LAM x the mean over examples of their looked-up vectors' squares
    loss = _loss(dense_model, arch, batch)
    (loss + LAM * sum(o.square().sum() for o in outputs) / B).backward()

    got = dict(model.named_parameters())
    sparse_ids = {id(p) for p in sparse_parameters(model)}
    for n, p in dense_model.named_parameters():
        g = got[n].grad
        if p.grad is None:
            assert g is None or not g.to_dense().any(), n
            continue
        if id(got[n]) in sparse_ids:
            assert g.layout == torch.sparse_coo, n  # (c) still sparse
            g = g.coalesce().to_dense()
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["tiny", "deepfm", "supernet"])
def test_per_row_form_is_fuxictrs_penalty_on_the_touched_rows(name: str) -> None:
    torch.manual_seed(0)
    model, arch = MODELS[name]()
    model.eval()
    dense_model = copy.deepcopy(model)
    tables = [m for m in dense_model.modules() if isinstance(m, nn.Embedding)]
    for m in tables:
        m.sparse = False
    batch = _batch()
    _loss(model, arch, batch).backward()
    EmbeddingL2.for_model(model, LAM, per="row")(batch[0].shape[0])
    # the definition: (LAM / 2) x the squared norm of every row the batch touched, each row once
    loss = _loss(dense_model, arch, batch)
    loss.backward(retain_graph=True)
    touched = [m.weight.grad.abs().sum(1) > 0 for m in tables]  # a touched row has a loss gradient here
    for m, rows in zip(tables, touched, strict=True):
        (LAM / 2 * m.weight[rows].square().sum()).backward()
    got = dict(model.named_parameters())
    for n, p in dense_model.named_parameters():
        if p.grad is None:
            continue
        g = got[n].grad
        if g.layout == torch.sparse_coo:
            assert g.is_coalesced()
            g = g.to_dense()
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_per_row_form_counts_a_row_once_whatever_the_batch() -> None:
    emb = nn.Embedding(6, 2, sparse=True)
    emb(torch.tensor([1, 1, 1, 4])).sum().backward()
    EmbeddingL2([emb.weight], 0.5, per="row")(count=4)
    w = emb.weight.detach()
    expected = torch.zeros_like(w)
    expected[1] = 3 + 0.5 * w[1]
    expected[4] = 1 + 0.5 * w[4]
    torch.testing.assert_close(emb.weight.grad.to_dense(), expected)
    with pytest.raises(NasrecError, match="embedding_l2_per"):
        EmbeddingL2([emb.weight], 0.5, per="nosuch")


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_table_form_is_fuxictrs_penalty_on_whole_tables(optimizer: str) -> None:
    torch.manual_seed(0)
    model = _Tiny()
    ref = copy.deepcopy(model)
    ref.emb.table.sparse = False
    opt = build_optimizer(model, optimizer, lr=0.1, table_l2=LAM)
    assert not model.emb.table.sparse and not sparse_parameters(model)  # whole tables: dense gradients
    assert not EmbeddingL2.for_model(model, LAM, per="table").params  # the optimizer holds the penalty
    make = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    ref_opt = make(ref.parameters(), lr=0.1, **({"eps": 1e-2} if optimizer == "adagrad" else {}))
    before = model.emb.table.weight.detach().clone()
    for seed in (1, 2):
        batch = _batch(seed=seed)
        opt.zero_grad()
        _loss(model, None, batch).backward()
        opt.step()
        ref_opt.zero_grad()
        # the definition: the logloss plus (LAM / 2) x the squared norm of every table, every step
        (_loss(ref, None, batch) + LAM / 2 * ref.emb.table.weight.square().sum()).backward()
        ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    never = sum(TABLES) - 1  # the last row of the last table is never looked up, and still decays
    assert (model.emb.table.weight[never].abs() < before[never].abs()).all()


def test_auto_form_is_the_table_form_on_small_tables_and_the_row_form_on_large(monkeypatch) -> None:
    from nasrec.train import regularize

    cfg = TrainConfig(optimizer="adam", embedding_l2=LAM, embedding_l2_per="auto")
    assert regularize.resolve_form(_Tiny(), "auto") == "table" and regularize.table_l2(_Tiny(), cfg) == LAM
    monkeypatch.setattr(regularize, "TABLE_AUTO_PARAMS", 4 * sum(TABLES) - 1)  # one weight over
    model = _Tiny()
    assert regularize.resolve_form(model, "auto") == "row" and regularize.table_l2(model, cfg) == 0.0
    assert EmbeddingL2.for_model(model, LAM, "auto").per == "row"
    with pytest.raises(NasrecError, match="for_model"):
        EmbeddingL2([model.emb.table.weight], LAM, per="auto")


def test_a_row_looked_up_k_times_is_penalised_k_times() -> None:
    emb = nn.Embedding(6, 2, sparse=True)
    ids = torch.tensor([1, 1, 1, 4])
    emb(ids).sum().backward()  # an expanded output gradient (stride 0): changed out of place
    EmbeddingL2([emb.weight], 0.5)(count=4)
    g = emb.weight.grad.coalesce().to_dense()
    w = emb.weight.detach()
    expected = torch.zeros_like(w)
    expected[1] = 3 + 2 * 0.5 * 3 / 4 * w[1]
    expected[4] = 1 + 2 * 0.5 * 1 / 4 * w[4]
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_rows_outside_the_batch_keep_their_value_and_optimizer_state(optimizer: str) -> None:
    torch.manual_seed(0)
    model = _Tiny()
    opt = build_optimizer(model, optimizer, lr=0.1)
    l2 = EmbeddingL2.for_model(model, 0.5)
    table = model.emb.table.weight
    # two steps on batches whose rows differ: the second must leave the first's other rows alone
    first, second = _batch(size=6, seed=1), _batch(size=3, seed=2)
    for i, batch in enumerate((first, second)):
        if i == 1:
            before = table.detach().clone()
            state = {
                k: v.clone()
                for k, v in opt.optimizers["embedding"].state[table].items()
                if torch.is_tensor(v) and v.dim() == 2
            }
            assert bool(state) == (optimizer != "sgd")  # per-row state: Adagrad's sum, Adam's moments
        opt.zero_grad(set_to_none=True)
        _loss(model, None, batch).backward()
        l2(batch[0].shape[0])
        assert table.grad.layout == torch.sparse_coo
        clip_grad_norm(model.parameters(), 1.0)
        assert table.grad.layout == torch.sparse_coo
        opt.step()
    rows = torch.zeros(table.shape[0], dtype=torch.bool)
    rows[(second[1] + model.emb.offsets).unique()] = True
    assert (table[~rows] == before[~rows]).all()
    assert (table[rows] != before[rows]).all(dim=1).any()
    for k, v in state.items():
        after = opt.optimizers["embedding"].state[table][k]
        assert (after[~rows] == v[~rows]).all(), k


def test_zero_is_a_no_op_and_misuse_is_refused() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    batch = _batch()
    _loss(model, None, batch).backward()
    g = model.emb.table.weight.grad
    EmbeddingL2.for_model(model, 0.0)(8)
    assert model.emb.table.weight.grad is g
    model.emb.table.weight.grad = g.coalesce()  # the lookup counts are gone
    with pytest.raises(NasrecError, match="right after backward"):
        EmbeddingL2.for_model(model, LAM)(8)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(NasrecError, match="embedding_l2"):
            EmbeddingL2([], bad)


ONE_LINE = re.compile(r"^training config embedding_l2: expected a number >= 0 and <= 1 \(.*\), got \S+$")


@pytest.mark.parametrize("value", [-0.1, float("nan"), "nan", 2.0, "abc"])
def test_a_bad_setting_is_one_line_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        preset(None, embedding_l2=value)
    assert info.value.key == "embedding_l2" and ONE_LINE.match(str(info.value)), str(info.value)


def test_an_older_config_without_the_setting_still_loads() -> None:
    old = TrainConfig(lr=0.05).to_dict()
    del old["embedding_l2"]
    cfg = TrainConfig.from_dict(old)
    assert cfg.embedding_l2 == 0.0 and same_run(cfg, TrainConfig(lr=0.05))
    assert not same_run(cfg, TrainConfig(lr=0.05, embedding_l2=1e-4))


# -- training runs -----------------------------------------------------------------------------------
RUN = dict(batch_size=128, max_steps=12, lr=0.1, eval_every=0, log_every=4, checkpoint_every=6, shuffle=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_synth_cache(tmp_path_factory.mktemp("data"), rows=2_000, seed=4)[1]


def _embedding_norm(run: Path) -> float:
    weights = load_checkpoint(run / "checkpoint.pt")["model"]
    return float(weights["embedding.table.weight"].norm())


@pytest.mark.slow
@pytest.mark.parametrize("per", ["lookup", "table"])
def test_a_large_penalty_shrinks_the_embeddings(cache_dir: Path, tmp_path: Path, per: str) -> None:
    plain = train(cache_dir, tmp_path / "plain", model="fm", overrides=RUN, progress=False)
    l2 = dict(RUN, embedding_l2=0.5, embedding_l2_per=per)
    strong = train(cache_dir, tmp_path / "l2", model="fm", overrides=l2, progress=False)
    assert plain["steps"] == strong["steps"] == 12
    assert _embedding_norm(tmp_path / "l2") < 0.8 * _embedding_norm(tmp_path / "plain")
    saved = json.loads((tmp_path / "l2" / "config.json").read_text())["train"]
    assert saved["embedding_l2"] == 0.5
    # the logged loss stays the logloss (comparable between runs), not the penalised objective
    assert all("train_loss" in x for x in _train_lines(tmp_path / "l2"))


def _train_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "train_loss" in x]


@pytest.mark.slow
def test_a_run_saved_before_the_setting_existed_resumes(cache_dir: Path, tmp_path: Path) -> None:
    cfg = dict(RUN, max_steps=6)
    first = train(cache_dir, tmp_path / "old", model="lr", overrides=cfg, progress=False)
    ck = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    old = json.loads(ck["config_json"])
    del old["embedding_l2"]  # as written by an earlier nasrec
    ck["config_json"] = json.dumps(old)
    save_checkpoint(tmp_path / "old" / "checkpoint.pt", ck)
    run_cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del run_cfg["train"]["embedding_l2"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(run_cfg))
    again = train(cache_dir, tmp_path / "old", model="lr", resume=True, progress=False)
    assert again["steps"] == first["steps"] == 6 and again["logloss"] == pytest.approx(first["logloss"], abs=1e-7)
    with pytest.raises(NasrecError, match="own configuration"):  # turning it on is another run
        train(cache_dir, tmp_path / "old", model="lr", overrides=dict(cfg, embedding_l2=0.1), resume=True)


# -- data parallelism -------------------------------------------------------------------------------
WORLD = 2


def _dist_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        grads = {}
        for per in L2_FORMS:  # as the trainer calls it: after backward, and again after the sync
            torch.manual_seed(0)
            model = _Tiny()
            dense, ids, y = _batch(size=8)
            half = slice(rank * 4, rank * 4 + 4)  # each rank's own examples, as BatchLoader(shard="rows")
            loss = nn.functional.binary_cross_entropy_with_logits(model(dense[half], ids[half]), y[half])
            loss.backward()
            l2 = EmbeddingL2.for_model(model, LAM, per)
            l2(4)
            GradientSync.for_model(model)(loss, 4)
            l2(4, synced=True)
            grads[per] = {n: p.grad.to_dense() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_with_data_parallelism_the_synchronised_gradient_is_the_global_batchs(tmp_path: Path) -> None:
    out = tmp_path / "grads.pt"
    mp.spawn(_dist_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD, join=True)
    synced = torch.load(out)
    for per in L2_FORMS:
        torch.manual_seed(0)
        model = _Tiny()
        batch = _batch(size=8)
        _loss(model, None, batch).backward()
        EmbeddingL2.for_model(model, LAM, per)(8)
        for n, p in model.named_parameters():
            torch.testing.assert_close(synced[per][n], p.grad.to_dense(), rtol=1e-5, atol=1e-6, msg=f"{per} {n}")


def test_effective_l2_shrinks_with_the_label_variance_below_the_reference() -> None:
    """`embedding_l2_ref_var`: λ as given at balanced click rates, x p(1 - p) / ref below the reference."""
    cfg = TrainConfig(embedding_l2=0.1, embedding_l2_ref_var=0.1)
    assert effective_l2(cfg, 1 / 3) == 0.1  # Frappe's rate: p(1 - p) = 0.22, above the reference
    assert effective_l2(cfg, 0.003) == pytest.approx(0.1 * 0.003 * 0.997 / 0.1)
    assert effective_l2(cfg, 0.997) == pytest.approx(effective_l2(cfg, 0.003))  # symmetric in p
    assert effective_l2(TrainConfig(embedding_l2=0.1), 0.003) == 0.1  # no reference: never scaled
    assert effective_l2(TrainConfig(embedding_l2=0.0, embedding_l2_ref_var=0.1), 0.003) == 0.0
    with pytest.raises(NasrecError, match="embedding_l2_ref_var"):
        TrainConfig(embedding_l2_ref_var=0.3)
