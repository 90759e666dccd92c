"""Supernet and standalone models: a materialised subnet computes exactly what the supernet computes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nasrec.errors import NasrecError
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space.arch import Architecture
from nasrec.space.space import NASREC_FULL, NASREC_SMALL

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
TABLES = [7, 30, 3, 50, 11, 5, 19, 40, 2, 9, 13, 21, 8]  # 13 sparse fields, tiny tables
NUM_DENSE = 5


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    sparse = torch.stack([torch.randint(0, t, (n,), generator=g) for t in TABLES], 1)
    return dense, sparse


@pytest.fixture(scope="module", params=["small", "full"])
def supernet(request: pytest.FixtureRequest) -> Supernet:
    torch.manual_seed(0)
    space = NASREC_SMALL if request.param == "small" else NASREC_FULL
    return Supernet(space, NUM_DENSE, TABLES, layernorm=True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["default", "any-path", "single-path"])
def test_materialised_subnet_equals_supernet_path(supernet: Supernet, strategy: str) -> None:
    rng = np.random.default_rng(1)
    dense, sparse = _batch()
    n_archs = 50 if strategy == "default" else 10
    worst = 0.0
    for _ in range(n_archs):
        arch = supernet.space.sample(rng, strategy)
        sub = Subnet.from_supernet(supernet, arch)
        for train in (True, False):
            supernet.train(train)
            sub.train(train)
            with torch.no_grad():
                diff = (supernet(dense, sparse, arch) - sub(dense, sparse)).abs().max().item()
            worst = max(worst, diff)
    assert worst <= 1e-5


def test_full_path_and_published_configs(supernet: Supernet) -> None:
    dense, sparse = _batch()
    archs = [supernet.space.full_path()]
    if CONFIGS.is_dir():
        tag = "autoctr" if len(supernet.space.dense_ops) == 2 else "xlarge"
        archs += [Architecture.load(p) for p in sorted(CONFIGS.glob(f"*_{tag}_best.json"))]
    supernet.eval()
    for arch in archs:
        sub = Subnet.from_supernet(supernet, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(dense, sparse), supernet(dense, sparse, arch), atol=1e-5, rtol=0)


def test_dead_blocks_are_pruned_and_unused_weights_get_no_gradient() -> None:
    torch.manual_seed(0)
    sup = Supernet(NASREC_FULL, NUM_DENSE, TABLES)
    if not CONFIGS.is_dir():
        pytest.skip("../shared/configs is not available")
    arch = Architecture.load(CONFIGS / "criteo_xlarge_best.json")  # blocks 3, 4, 5 are dead
    sub = Subnet(arch, NUM_DENSE, TABLES)
    assert sorted(sub.cells.keys()) == ["0", "1", "2", "6"]
    dense, sparse = _batch()
    sup.zero_grad(set_to_none=True)
    sup(dense, sparse, arch).sum().backward()
    for i in (3, 4, 5):
        assert all(p.grad is None for p in sup.cells[i].parameters())
    # block 0 uses gating + transformer only: fc, dot, sum and efc weights get no gradient
    cell0 = sup.cells[0]
    for name in ("fc", "dot_out", "sum_proj", "efc"):
        assert all(p.grad is None for p in getattr(cell0, name).parameters()), name
    assert cell0.gate.weight.grad is not None
    # only the used slice of a shared weight has a non-zero gradient (gating's square layer: 13 x 13)
    g = cell0.gate.weight.grad
    assert g[:NUM_DENSE, :NUM_DENSE].abs().sum() > 0 and g[NUM_DENSE:].abs().sum() == 0
    # embeddings: a sparse gradient touching only the looked-up rows
    eg = sup.embedding.table.weight.grad
    assert eg.is_sparse
    rows = set(eg.coalesce().indices()[0].tolist())
    expected = set((sparse + sup.embedding.offsets).flatten().tolist())
    assert rows == expected


@pytest.mark.slow
def test_fresh_subnet_trains_and_has_only_its_weights() -> None:
    torch.manual_seed(0)
    arch = NASREC_FULL.sample(np.random.default_rng(5), "default")
    sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=True)
    sup = Supernet(NASREC_FULL, NUM_DENSE, TABLES)
    n_sub = sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
    n_sup = sum(p.numel() for n, p in sup.named_parameters() if not n.startswith("embedding"))
    assert 0 < n_sub < n_sup / 10
    dense, sparse = _batch(64)
    y = (dense[:, 0] > 0).float()
    opt = torch.optim.Adagrad(sub.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(sub(dense, sparse), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_layernorm_free_standalone_differs_from_supernet_semantics() -> None:
    # final training uses no LN: the standalone model then has no LN layers except the transformer's
    arch = NASREC_FULL.full_path()
    sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=False)
    lns = [n for n, _ in sub.named_modules() if n.endswith("_ln")]
    assert lns and all(n.endswith(("attn_ln", "ffn_ln")) for n in lns)


@pytest.mark.parametrize("layernorm", [False, True])
def test_standalone_parameters_equal_the_cost_model(layernorm: bool) -> None:
    from nasrec.model.cost import arch_cost

    rng = np.random.default_rng(3)
    pruned = 0
    for space in (NASREC_SMALL, NASREC_FULL):
        for _ in range(15):
            arch = space.sample(rng, "default")
            sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=layernorm)
            n = sum(p.numel() for name, p in sub.named_parameters() if not name.startswith("embedding"))
            cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES, use_layernorm=layernorm)
            assert n == cost.dense_params
            assert sub.embedding.table.weight.numel() == cost.embedding_params
            pruned += cost.dense_params < cost.dense_params_live_blocks
    assert pruned >= 3  # some architectures have operators whose results nobody reads: those are not built


def test_checkpoint_holding_unread_operators_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import nasrec.model.subnet as subnet_mod
    from nasrec.model.cost import arch_cost

    rng = np.random.default_rng(5)
    dense, sparse = _batch()
    archs = [NASREC_FULL.sample(rng, "default") for _ in range(40)]
    archs = [
        a
        for a in archs
        if arch_cost(a, NUM_DENSE, len(TABLES)).dense_params
        < arch_cost(a, NUM_DENSE, len(TABLES)).dense_params_live_blocks
    ][:4]
    assert archs
    for arch in archs:
        torch.manual_seed(0)
        with monkeypatch.context() as m:  # the older layout: every operator of a live block built and run
            m.setattr(subnet_mod, "live_outputs", lambda a: tuple((b, b) for b in a.live_blocks()))
            old = Subnet(arch, NUM_DENSE, TABLES, layernorm=True).eval()
        new = Subnet(arch, NUM_DENSE, TABLES, layernorm=True).eval()
        state = old.state_dict()
        assert len(state) > len(new.state_dict())
        new.load_state_dict(state)  # strict
        with torch.no_grad():
            torch.testing.assert_close(new(dense, sparse), old(dense, sparse), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="Unexpected"):  # anything else unknown is still refused
            new.load_state_dict({**state, "cells.99.fc.weight": torch.zeros(1)})


def test_measured_flops_equal_the_cost_model() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from nasrec.model.cost import arch_cost

    rng = np.random.default_rng(4)
    dense, sparse = _batch(1)
    pruned = 0
    for _ in range(15):  # NASRec-Small has no attention and, without LN, only linears and the Gram bmm
        arch = NASREC_SMALL.sample(rng, "default")
        sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=False)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            sub(dense, sparse)
        measured = counter.get_total_flops() // 2  # the counter counts a multiply-accumulate as 2
        cost = arch_cost(arch, NUM_DENSE, len(TABLES))
        # operators of live blocks whose results cannot reach the head are not executed either
        assert measured == cost.flops
        pruned += cost.flops < cost.flops_live_blocks
    assert pruned >= 3


def test_models_shaped_by_a_prepared_cache(tmp_path: Path) -> None:
    from nasrec.data.cache import open_cache
    from nasrec.data.loader import BatchLoader
    from nasrec.data.prepare import PrepareConfig, prepare
    from nasrec.data.synthetic import SynthConfig, generate_synthetic

    raw = tmp_path / "s.tsv"
    generate_synthetic(raw, rows=600, seed=1, config=SynthConfig(cardinalities=tuple([5, 20, 60] * 8 + [9, 9])))
    prepare(PrepareConfig(inputs=(str(raw),), out=str(tmp_path / "c"), format="criteo", encoding="vocab"))
    cache = open_cache(tmp_path / "c")
    sup = Supernet.for_cache(NASREC_SMALL, cache)
    arch = NASREC_SMALL.sample(np.random.default_rng(0))
    sub = Subnet.for_cache(arch, cache, layernorm=True)
    assert sup.embedding.table_sizes == tuple(cache.table_sizes) == sub.embedding.table_sizes
    batch = next(iter(BatchLoader(cache, "train", batch_size=32)))
    assert sup(batch.dense, batch.sparse, arch).shape == (32,)
    assert sub(batch.dense, batch.sparse).shape == (32,)


def _centred_head_inputs(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # features with large, batch-constant offsets: what made the plain head's logits swing
    return (
        torch.randn(n, 32, generator=g) + 5.0,
        torch.randn(n, 6, 16, generator=g) - 3.0,
        torch.randn(n, 8, 16, generator=g),
    )


def test_centred_head_batch_mean_logit_is_the_bias_and_no_weight_moves_it() -> None:
    from nasrec.model.layers import HeadLinear

    torch.manual_seed(0)
    head = HeadLinear(64, 10, d2s_slot=True, centre=True).train()
    dense, tokens, d2s = _centred_head_inputs(1)
    z = head(dense, tokens, d2s)
    assert z.mean().item() == pytest.approx(head.bias.item(), abs=1e-5)
    z.mean().backward()  # the batch-mean logit has no gradient but the bias's
    assert head.dense.grad.abs().max().item() < 1e-5 and head.tokens.grad.abs().max().item() < 1e-5
    plain = HeadLinear(64, 10, d2s_slot=True, centre=False)
    plain(dense, tokens, d2s).mean().backward()
    assert plain.dense.grad.abs().max().item() > 1.0  # the offsets reach the plain head's weights


def test_centred_head_evaluates_with_its_running_or_calibrated_mean() -> None:
    from nasrec.model.layers import HeadLinear

    torch.manual_seed(0)
    head = HeadLinear(64, 10, d2s_slot=True, centre=True)
    batches = [_centred_head_inputs(s) for s in range(3)]
    for b in batches:  # the first batches are averaged plainly, not with momentum from zero
        head.train()(*b)
    exact = torch.cat([torch.cat([d, t.flatten(1), s.flatten(1)], 1) for d, t, s in batches]).mean(0)
    used = torch.cat([head.mean[0, :32], head.mean[0, 64 : 64 + 96], head.mean[0, 64 + 160 :]])
    torch.testing.assert_close(used, exact, atol=1e-5, rtol=0)
    head.mean.zero_()
    head.calibrate(batches)
    torch.testing.assert_close(
        torch.cat([head.mean[0, :32], head.mean[0, 64 : 64 + 96]]), exact[:128], atol=1e-5, rtol=0
    )
    d, t, s = batches[0]
    x = torch.cat([d, t.flatten(1), s.flatten(1)], 1) - exact
    w = torch.cat([head.dense[:, :32], head.tokens[:, :6].flatten(1), head.tokens[:, 10:].flatten(1)], 1)
    torch.testing.assert_close(head.eval()(d, t, s), (x @ w.T).squeeze(1) + head.bias, atol=1e-4, rtol=0)


def test_training_starts_a_centred_head_at_the_click_rate_log_odds() -> None:
    from nasrec.model.layers import init_head_bias

    arch = NASREC_SMALL.sample(np.random.default_rng(3), "default")
    with_ln, without = Subnet(arch, NUM_DENSE, TABLES, layernorm=True), Subnet(arch, NUM_DENSE, TABLES)
    init_head_bias(with_ln, 0.2)
    init_head_bias(without, 0.2)
    assert with_ln.head.bias.item() == pytest.approx(np.log(0.25)) and without.head.bias.item() == 0.0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("batchnorm", True, "it needs layernorm"), ("head_centre", False, "head_centre=False needs layernorm")],
)
def test_standalone_options_of_layer_normed_models_need_layernorm(option: str, value: bool, message: str) -> None:
    """`Subnet(batchnorm=True)` and `Subnet(head_centre=False)` (training settings arch_batchnorm and
    arch_head_centre) change what the layer norms give: without them each is refused, naming the setting."""
    from nasrec.train.config import TrainConfig

    arch = NASREC_SMALL.sample(np.random.default_rng(3), "default")
    with pytest.raises(NasrecError, match=message):
        Subnet(arch, NUM_DENSE, TABLES, **{option: value})
    with pytest.raises(NasrecError, match=rf"training config arch_{option}: .*set layernorm: true"):
        TrainConfig(**{f"arch_{option}": value})
    assert TrainConfig(**{f"arch_{option}": value}, layernorm=True).arch_model_options()[option] is value


def test_uncentred_head_of_a_layer_normed_model_is_plain_linear_from_the_log_odds() -> None:
    """head_centre=False: no mean buffers, the logit is the linear map of the head's inputs in training and in
    evaluation alike, and the bias still starts at the log-odds."""
    from nasrec.model.layers import init_head_bias

    arch = NASREC_SMALL.sample(np.random.default_rng(3), "default")
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=True, head_centre=False)
    assert not sub.head.centre and "head.mean" not in sub.state_dict()
    init_head_bias(sub, 0.2)
    assert sub.head.bias.item() == pytest.approx(np.log(0.25))
    dense, sparse = _batch(32)
    f = sub.features(dense, sparse)
    x, w, _ = sub.head._inputs(f.dense, f.tokens, f.d2s)
    expected = (x @ w.T).squeeze(1) + sub.head.bias
    for mode in (sub.train, sub.eval):
        mode()
        torch.testing.assert_close(sub.head(f.dense, f.tokens, f.d2s), expected)


def test_data_without_dense_fields_materialises_every_operator() -> None:
    """num_dense=0 (Frappe-like data): an operator on the empty raw dense input builds and matches the supernet.

    Gating of the raw input with itself has a 0 x 0 gate; building it used to divide by zero in the init.
    """
    torch.manual_seed(0)
    supernet = Supernet(NASREC_FULL, 0, TABLES, layernorm=True)
    g = torch.Generator().manual_seed(3)
    dense = torch.zeros(8, 0)
    sparse = torch.stack([torch.randint(0, t, (8,), generator=g) for t in TABLES], 1)
    rng = np.random.default_rng(5)
    archs = [supernet.space.sample(rng, "default") for _ in range(4)]
    for op in NASREC_FULL.dense_ops:  # block 0 reads only the raw (empty) dense input
        first = replace(archs[0].blocks[0], dense_ops=(op,), dense_in=(0,), left=0, right=0)
        archs.append(Architecture((first, *archs[0].blocks[1:])))
    supernet.eval()
    for arch in archs:
        sub = Subnet.from_supernet(supernet, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(dense, sparse), supernet(dense, sparse, arch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch,tokens", [(3, 16), (300, 64), (700, 48)])
def test_chunked_attention_equals_torch_attention(batch: int, tokens: int) -> None:
    import torch.nn.functional as F

    from nasrec.model import cell

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, 3, cell.HEADS, 2, generator=g)
    grads = torch.randn(batch, cell.HEADS, tokens, 2, generator=g)
    results = []
    for fn in (cell.attention, F.scaled_dot_product_attention):
        q, k, v = (t.detach().requires_grad_() for t in x.permute(2, 0, 3, 1, 4))  # as the cell's strides
        out = fn(q, k, v)
        out.backward(grads)
        results.append((out.detach(), q.grad, k.grad, v.grad))
    # 300 rows of 64 tokens and 700 of 48 are split into chunks; 3 rows of 16 are not
    assert (max(1, cell.ATTENTION_CHUNK // (cell.HEADS * tokens * tokens)) < batch) == (batch > 3)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_small_head_attention_gradients_over_uneven_chunks() -> None:
    """Chunks of 3 rows over 7 (the last one short): gradcheck in float64, and no probabilities kept without grad."""
    from nasrec.model.ops.small_heads import SmallHeadAttention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(7, 5, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: SmallHeadAttention.apply(a, b, c, 3), (q, k, v))
    with torch.no_grad():
        out = SmallHeadAttention.apply(q, k, v, 3, False)
    want = torch.softmax(q @ k.transpose(1, 2) / 2**0.5, -1) @ v
    torch.testing.assert_close(out, want.detach())
    assert out.grad_fn is None
    kept = SmallHeadAttention.apply(q, k, v, 3, True)
    assert len(kept.grad_fn.saved_tensors) == 3 + 3  # q, k, v and one probability tensor per chunk


def test_standalone_dropout_on_block_outputs_only_while_training() -> None:
    """`dropout`: eval outputs and the state dict are the dropout-free model's; training zeroes block outputs."""
    torch.manual_seed(0)
    arch = NASREC_FULL.sample(np.random.default_rng(5), "default")
    plain = Subnet(arch, NUM_DENSE, TABLES, layernorm=True)
    dropped = Subnet(arch, NUM_DENSE, TABLES, layernorm=True, dropout=0.5)
    assert list(dropped.state_dict()) == list(plain.state_dict())  # no parameters of its own
    dropped.load_state_dict(plain.state_dict())
    dense, sparse = _batch(64)
    plain.eval()
    dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(dense, sparse), plain(dense, sparse))
    dropped.train()
    with torch.no_grad():
        last = dropped.features(dense, sparse).dense
    zero = float((last == 0).float().mean())
    assert 0.35 < zero < 0.65  # about half of the last block's dense output, scaled x2 where kept
    with pytest.raises(NasrecError, match="dropout must lie in"):
        Subnet(arch, NUM_DENSE, TABLES, dropout=1.0)


def test_embedding_std_cap_scales_only_tables_above_it() -> None:
    """`max_embedding_std`: a table whose xavier std exceeds the cap starts at exactly the cap; others as they were."""
    arch = NASREC_SMALL.sample(np.random.default_rng(1), "default")
    tables = (7, 5_000, 200_000)  # xavier stds 0.29, 0.020, 0.0032
    torch.manual_seed(0)
    plain = Subnet(arch, NUM_DENSE, tables).embedding.table.weight
    torch.manual_seed(0)
    capped = Subnet(arch, NUM_DENSE, tables, max_embedding_std=0.01).embedding.table.weight
    torch.testing.assert_close(capped[:7], plain[:7] * (0.01 / (2 / 23) ** 0.5))
    torch.testing.assert_close(capped[7:5007], plain[7:5007] * (0.01 / (2 / 5016) ** 0.5))
    torch.testing.assert_close(capped[5007:], plain[5007:], rtol=0, atol=0)
    with pytest.raises(NasrecError, match="max_embedding_std must be positive"):
        Subnet(arch, NUM_DENSE, tables, max_embedding_std=0.0)


def test_supernet_embedding_std_cap_reaches_its_spec_and_materialised_subnets(tmp_path: Path) -> None:
    """`arch_max_embedding_std` starts a supernet's tables at the cap too; a materialised subnet copies them."""
    import json

    from conftest import small_synth_cache

    from nasrec.model.spec import ModelSpec
    from nasrec.model.supernet import Supernet
    from nasrec.train.api import train_supernet

    tables = (7, 5_000)
    torch.manual_seed(0)
    plain = Supernet(NASREC_SMALL, NUM_DENSE, tables).embedding.table.weight
    torch.manual_seed(0)
    capped = Supernet(NASREC_SMALL, NUM_DENSE, tables, max_embedding_std=0.01)
    torch.testing.assert_close(capped.embedding.table.weight[:7], plain[:7] * (0.01 / (2 / 23) ** 0.5))
    arch = NASREC_SMALL.sample(np.random.default_rng(1), "default")
    sub = Subnet.from_supernet(capped, arch)
    torch.testing.assert_close(sub.embedding.table.weight, capped.embedding.table.weight, rtol=0, atol=0)
    _, cache = small_synth_cache(tmp_path, rows=3_000, seed=2)
    over = {"max_steps": 2, "batch_size": 128, "threads": 1, "arch_max_embedding_std": 1e-3}
    train_supernet(cache, tmp_path / "sn", space="small", preset_name="cpu-supernet", overrides=over, progress=False)
    spec = ModelSpec.from_dict(json.loads((tmp_path / "sn" / "model.json").read_text()))
    assert spec.kind == "supernet" and spec.max_embedding_std == 1e-3
    assert float(spec.build().embedding.table.weight.detach().abs().max()) < 0.01


def test_arch_dropout_reaches_the_trained_model_and_only_architectures(tmp_path: Path) -> None:
    """`--set arch_dropout=p` is recorded in the run's model spec; a zoo run is told to use its hyper-parameter."""
    import json

    from conftest import small_synth_cache

    from nasrec.configfile import ConfigError
    from nasrec.model.spec import ModelSpec
    from nasrec.train.api import train

    _, cache = small_synth_cache(tmp_path, rows=3_000, seed=2)
    arch = NASREC_SMALL.sample(np.random.default_rng(1), "default")
    over = {"max_steps": 3, "batch_size": 128, "threads": 1, "arch_dropout": 0.2, "arch_max_embedding_std": 1e-3}
    over |= {"layernorm": True, "arch_head_centre": False}
    train(cache, tmp_path / "a", arch=arch, preset_name="cpu-quick", overrides=over, progress=False)
    spec = ModelSpec.from_dict(json.loads((tmp_path / "a" / "model.json").read_text()))
    assert spec.dropout == 0.2 and spec.build().dropout.p == 0.2
    assert spec.max_embedding_std == 1e-3 and float(spec.build().embedding.table.weight.detach().abs().max()) < 0.01
    assert spec.head_centre is False and not spec.build().head.centre
    for key in ("arch_dropout", "arch_max_embedding_std", "arch_head_centre"):
        with pytest.raises(ConfigError, match=key):
            only = {k: v for k, v in over.items() if not k.startswith("arch_") or k == key}
            train(cache, tmp_path / "b", model="lr", preset_name="cpu-quick", overrides=only, progress=False)
