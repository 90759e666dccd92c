"""The operator registry: an operator is one module plus one registry line.

Two toy operators defined here only (a dense "scale" and a sparse "tscale") are registered for a while
and go through everything an operator takes part in: architecture and search-space validation, the
supernet forward, a materialised subnet (same outputs), the cost model (its count against the
operator's own and against the model built) and liveness. The built-in operators' layout is pinned:
state_dict keys and parameter order are what checkpoints and same-seed initial weights rely on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasrec.errors import NasrecError
from nasrec.model.cell import Cell, CellSpec
from nasrec.model.cost import arch_cost
from nasrec.model.layers import Seg, SegLinear, SliceLayerNorm
from nasrec.model.ops import registry, transformer
from nasrec.model.ops.base import Cost, DenseOperator, OpInput, SparseOperator, linear_cost, norm, token_linear_cost
from nasrec.model.spec import ModelSpec
from nasrec.model.subnet import Subnet
from nasrec.model.supernet import Supernet
from nasrec.space import arch as arch_module
from nasrec.space.arch import Architecture, Block
from nasrec.space.draw import summary
from nasrec.space.liveness import functional_form, live_outputs, op_inputs, op_live
from nasrec.space.space import NASREC_FULL, SearchSpace

TABLES = [7, 30, 3, 50, 11, 5]
# the dense operators of the registry, in its canonical order
BUILTIN_DENSE = ("fc", "dot", "gating", "sum", "cross", "flat", "bilinear", "gflat", "fuse", "cat", "tflat")
NUM_DENSE = 5


# -- two toy operators -----------------------------------------------------------------------------------
class Gain(nn.Module):
    """A per-feature gain vector at a capacity, used on its first n entries (an operator's own layer kind)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, cap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[: x.shape[-1]]

    @torch.no_grad()
    def copy_from(self, other: Gain) -> None:
        self.weight.copy_(other.weight[: self.cap])


class Scale(DenseOperator):
    """Linear(dense_in → W) with a bias, times a learned gain per feature, LN?(W)."""

    name = "scale"
    reads = frozenset({"dense_in"})
    layers = ("scale_proj", "scale_gain", "scale_ln")

    @classmethod
    def build(cls, cell, spec) -> None:
        cell.scale_proj = SegLinear(spec.dense_segs, spec.width, bias=True)
        cell.scale_gain = Gain(spec.width)
        cell.scale_ln = SliceLayerNorm(spec.width) if spec.layernorm else None

    @classmethod
    def forward(cls, cell, x: OpInput) -> torch.Tensor:
        return norm(cell.scale_ln, cell.scale_gain(cell.scale_proj(x.dense, x.dense_used, x.width)))

    @classmethod
    def cost(cls, b: Block, din: int, tin: int, left: int, right: int, ln: bool, e: int = 16) -> Cost:
        w = b.dense_width
        c = linear_cost(din, w, bias=True) + Cost(0, w)  # the gain is element-wise: parameters, no FLOPs
        return c + (Cost(5 * w, 2 * w) if ln else Cost())


class TScale(SparseOperator):
    """Token-axis Linear(sparse_in tokens → Ws) + LN?(Ws), tanh."""

    name = "tscale"
    reads = frozenset({"sparse_in"})
    layers = ("tscale", "tscale_ln")

    @classmethod
    def build(cls, cell, spec) -> None:
        cell.tscale = SegLinear(spec.token_segs, spec.tokens, bias=not spec.layernorm)
        cell.tscale_ln = SliceLayerNorm(spec.tokens) if spec.layernorm else None

    @classmethod
    def forward(cls, cell, x: OpInput) -> torch.Tensor:
        t = torch.tanh(norm(cell.tscale_ln, cell.tscale(x.tokens_t, x.token_used, x.tokens)))
        return t[:, :, : x.block.sparse_width].transpose(1, 2)

    @classmethod
    def cost(cls, b: Block, din: int, tin: int, left: int, right: int, ln: bool, e: int = 16) -> Cost:
        return token_linear_cost(tin, b.sparse_width, ln, e)


@pytest.fixture
def toy_ops() -> Iterator[None]:
    with registry.registered(Scale, TScale):
        yield


def _space() -> SearchSpace:
    return SearchSpace(
        name="toy",
        num_blocks=4,
        dense_ops=("fc", "scale", "sum"),
        sparse_ops=("tscale", "efc"),
        dense_widths=(8, 16, 24),
        sparse_widths=(4, 8),
    )


def _batch(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    return dense, torch.stack([torch.randint(0, t, (n,), generator=g) for t in TABLES], 1)


def _archs(space: SearchSpace, n: int, seed: int) -> list[Architecture]:
    rng = np.random.default_rng(seed)
    archs = [space.full_path()] + [space.sample(rng, s) for s in ("any-path", "default") for _ in range(n)]
    assert any("scale" in b.dense_ops for a in archs for b in a.blocks)
    assert any("tscale" in b.sparse_ops for a in archs for b in a.blocks)
    return archs


# -- registering --------------------------------------------------------------------------------------------
def test_builtin_registry_order() -> None:
    assert registry.names("dense") == BUILTIN_DENSE
    assert registry.names("sparse") == ("efc", "transformer", "tcat")
    # cells have always created sum's layers before gating's: the same seed gives the same weights; the
    # operators added after the paper's come last, so the paper's spaces keep their layouts
    assert registry.build_order() == (
        "fc",
        "dot",
        "sum",
        "gating",
        "efc",
        "transformer",
        "cross",
        "flat",
        "bilinear",
        "gflat",
        "fuse",
        "cat",
        "tflat",
        "tcat",
    )


def test_registered_for_a_while() -> None:
    block = Block(("fc", "scale"), ("tscale",), (0,), (0,), 0, 0, 16, 8)
    with pytest.raises(NasrecError, match="field dense_ops"):
        Architecture((block,))
    with pytest.raises(NasrecError, match="unknown operator 'scale'"):
        _space()
    with registry.registered(Scale, TScale):
        assert registry.names("dense")[-1] == "scale" and registry.names("sparse")[-1] == "tscale"
        dense_ops = arch_module.DENSE_OPS  # read at each access
        assert dense_ops == (*BUILTIN_DENSE, "scale")
        arch = Architecture((replace(block, dense_ops=("scale", "fc")),))
        assert arch.blocks[0].dense_ops == ("fc", "scale")  # canonical order: the registry's
        assert _space().dense_ops == ("fc", "sum", "scale")
        with pytest.raises(NasrecError, match="already registered"):
            registry.register(Scale)
    assert "scale" not in registry.names("dense") and "tscale" not in registry.names("sparse")
    with pytest.raises(NasrecError, match="field dense_ops"):
        Architecture((block,))


def test_register_refuses_bad_operators() -> None:
    class Clash(Scale):
        name = "clash"
        layers = ("fc",)  # fc's layer

    class NoKind(Scale):
        name = "nokind"
        kind = "other"

    class BadReads(Scale):
        name = "badreads"
        reads = frozenset({"dense"})

    for op, message in (
        (Clash, "layer 'fc' is already operator 'fc'"),
        (NoKind, "kind must be"),
        (BadReads, "reads"),
        (type("Fm", (Scale,), {"name": "fm"}), "already registered"),
    ):
        with pytest.raises(NasrecError, match=message):
            registry.register(op)
    with pytest.raises(NasrecError, match="not registered"):
        registry.unregister("scale")
    assert registry.names("dense") == BUILTIN_DENSE


# -- models ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layernorm", [True, False])
def test_supernet_and_materialised_subnet(toy_ops: None, layernorm: bool) -> None:
    torch.manual_seed(0)
    space = _space()
    supernet = Supernet(space, NUM_DENSE, TABLES, layernorm=layernorm)
    assert {"scale_proj", "scale_gain", "tscale"} <= {n for n, _ in supernet.cells[2].named_children()}
    dense, sparse = _batch()
    for arch in _archs(space, 8, seed=1):
        supernet.train()
        y = supernet(dense, sparse, arch)
        y.sum().backward()  # gradients reach the toy operators' layers
        sub = Subnet.from_supernet(supernet, arch)
        for train in (True, False):
            supernet.train(train)
            sub.train(train)
            with torch.no_grad():
                torch.testing.assert_close(sub(dense, sparse), supernet(dense, sparse, arch), atol=1e-5, rtol=0)
    assert supernet.cells[0].scale_proj.blocks[0].grad.abs().sum() > 0
    assert supernet.cells[0].tscale.blocks[0].grad.abs().sum() > 0
    masking = Supernet(space, NUM_DENSE, TABLES, layernorm=layernorm, masking=True)  # the reference's semantics
    assert masking(dense, sparse, space.full_path()).isfinite().all()


@pytest.mark.parametrize("layernorm", [False, True])
def test_cost_of_toy_operators(toy_ops: None, layernorm: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    space = _space()
    dense, sparse = _batch(1)
    for arch in _archs(space, 6, seed=2):
        cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES, use_layernorm=layernorm)
        sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=layernorm)
        held = sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
        assert held == cost.dense_params  # the model built holds what the operators count
        widths = [NUM_DENSE] + [b.dense_width for b in arch.blocks]
        tokens = [len(TABLES)] + [b.sparse_tokens for b in arch.blocks]
        for bc in cost.per_block:
            b = arch.blocks[bc.index]
            for o in bc.ops:
                op = registry.get(o.name)
                own = op.cost(b, bc.dense_in, bc.sparse_in, widths[b.left], widths[b.right], layernorm)
                assert (o.flops, o.params) == (own.flops, own.params)
                if o.name in ("scale", "tscale") and o.live:  # its layers in the model hold what it counts
                    cell = sub.cells[str(bc.index)]
                    layers = [getattr(cell, n) for n in op.layers if getattr(cell, n, None) is not None]
                    assert sum(p.numel() for m in layers for p in m.parameters()) == own.params
            assert bc.sparse_in == sum(tokens[j] for j in b.sparse_in)
        if not layernorm:  # linears only: the counter measures what the cost model counts
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                sub(dense, sparse)
            assert counter.get_total_flops() // 2 == cost.flops


def test_liveness_asks_the_operator(toy_ops: None) -> None:
    b0 = Block(("scale",), ("tscale",), (0,), (0,), 0, 0, 16, 8)
    b1 = Block(("scale",), ("efc",), (0, 1), (0,), 1, 1, 16, 8)  # left/right name block 0: scale does not read them
    b2 = Block(("sum",), ("tscale",), (0,), (0,), 2, 0, 8, 4)
    arch = Architecture((b0, b1, b2))
    assert op_inputs("scale", b1) == ((0, 1), ()) and op_inputs("tscale", b0) == ((), (0,))
    assert b1.dependencies() == {0, 1} and not b1.uses_left_right and b1.uses_dense_in
    # block 2 reads block 1's dense output through sum; block 1 reads block 0's dense output
    assert live_outputs(arch) == ((True, False), (True, False), (True, True))
    assert arch.live_blocks() == (True, True, True)
    assert op_live("scale", b0, True, False) and not op_live("tscale", b0, True, False)
    assert op_live("tscale", replace(b0, fm=True), True, False)  # its tokens feed fm
    form = functional_form(arch)
    assert (form.blocks[1].left, form.blocks[1].right) == (0, 0)  # unread inputs are left out
    assert form.blocks[0].sparse_ops == ("efc",) and form.blocks[0].sparse_width == 1  # tokens unread
    cost = arch_cost(arch, NUM_DENSE, len(TABLES))
    assert [o.live for o in cost.per_block[0].ops] == [True, False]
    sub = Subnet(arch, NUM_DENSE, TABLES)
    assert not hasattr(sub.cells["0"], "tscale")  # an unread operator is not built
    assert "scale(in,B0)" in summary(arch)


# -- the built-in operators' layout ---------------------------------------------------------------------
# state_dict keys of a Full supernet cell reading two inputs, in order: checkpoints load by these keys,
# optimizer states by the order of the parameters, and the order of creation fixes initial weights
CELL_KEYS_LN = [
    "fc.blocks.0",
    "fc.blocks.1",
    "fc_ln.weight",
    "fc_ln.bias",
    "dot_dense.blocks.0",
    "dot_dense.blocks.1",
    "dot_dense_ln.weight",
    "dot_dense_ln.bias",
    "dot_tokens.blocks.0",
    "dot_tokens.blocks.1",
    "dot_tokens_ln.weight",
    "dot_tokens_ln.bias",
    "dot_out.weight",
    "dot_out_ln.weight",
    "dot_out_ln.bias",
    "sum_proj.weight",
    "sum_ln.weight",
    "sum_ln.bias",
    "gate.weight",
    "gate.bias",
    "gate_proj.weight",
    "gate_proj.bias",
    "gate_ln.weight",
    "gate_ln.bias",
    "efc.blocks.0",
    "efc.blocks.1",
    "efc_ln.weight",
    "efc_ln.bias",
    "tr_proj.blocks.0",
    "tr_proj.blocks.1",
    "tr_proj_ln.weight",
    "tr_proj_ln.bias",
    "attn_in.weight",
    "attn_in.bias",
    "attn_out.weight",
    "attn_out.bias",
    "attn_ln.weight",
    "attn_ln.bias",
    "ffn1.weight",
    "ffn1.bias",
    "ffn2.weight",
    "ffn2.bias",
    "ffn_ln.weight",
    "ffn_ln.bias",
    "fm_proj.weight",
    "fm_ln.weight",
    "fm_ln.bias",
    "d2s_proj.weight",
    "d2s_ln.weight",
    "d2s_ln.bias",
]
CELL_KEYS = [
    "fc.bias",
    "fc.blocks.0",
    "fc.blocks.1",
    "dot_dense.bias",
    "dot_dense.blocks.0",
    "dot_dense.blocks.1",
    "dot_tokens.bias",
    "dot_tokens.blocks.0",
    "dot_tokens.blocks.1",
    "dot_out.weight",
    "dot_out.bias",
    "sum_proj.weight",
    "sum_proj.bias",
    "gate.weight",
    "gate.bias",
    "gate_proj.weight",
    "gate_proj.bias",
    "efc.bias",
    "efc.blocks.0",
    "efc.blocks.1",
    "tr_proj.bias",
    "tr_proj.blocks.0",
    "tr_proj.blocks.1",
    "attn_in.weight",
    "attn_in.bias",
    "attn_out.weight",
    "attn_out.bias",
    "attn_ln.weight",
    "attn_ln.bias",
    "ffn1.weight",
    "ffn1.bias",
    "ffn2.weight",
    "ffn2.bias",
    "ffn_ln.weight",
    "ffn_ln.bias",
    "fm_proj.weight",
    "fm_proj.bias",
    "d2s_proj.weight",
    "d2s_proj.bias",
]


@pytest.mark.parametrize("layernorm", [True, False])
def test_builtin_layout_is_pinned(layernorm: bool) -> None:
    space = replace(NASREC_FULL, name="t", num_blocks=2, dense_widths=(16, 32), sparse_widths=(4, 8))
    cell = Supernet(space, 3, [5, 6], layernorm=layernorm).cells[1]
    assert list(cell.state_dict()) == (CELL_KEYS_LN if layernorm else CELL_KEYS)
    assert [n for n, _ in cell.named_parameters()] == [k for k in cell.state_dict() if "." in k]
    # every layer of a cell is declared by exactly one operator, which materialises it (`copy_from`)
    declared = [layer for op in (*registry.build_order(), "fm", "d2s") for layer in registry.get(op).layers]
    assert len(set(declared)) == len(declared)
    assert {n for n, _ in cell.named_children()} <= set(declared)


def test_attention_is_swapped_where_the_operator_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    from nasrec.model import cell as cell_module

    assert cell_module.attention is transformer.attention and cell_module.HEADS == transformer.HEADS
    torch.manual_seed(0)
    space = replace(NASREC_FULL, name="t", num_blocks=2, dense_widths=(16,), sparse_widths=(8,))
    supernet = Supernet(space, NUM_DENSE, TABLES).eval()
    dense, sparse = _batch()
    arch = space.full_path()
    with torch.no_grad():
        before = supernet(dense, sparse, arch)
        monkeypatch.setattr(transformer, "attention", lambda q, k, v: torch.zeros_like(v))
        assert not torch.equal(supernet(dense, sparse, arch), before)
        monkeypatch.setattr(transformer, "attention", F.scaled_dot_product_attention)
        torch.testing.assert_close(supernet(dense, sparse, arch), before, atol=1e-5, rtol=0)


def test_cell_refuses_an_unknown_operator() -> None:
    spec = CellSpec(
        dense_ops=("scale",),
        sparse_ops=("efc",),
        dense_segs=(Seg(0, 3),),
        token_segs=(Seg(0, 2),),
        pad_cap=3,
        width=8,
        tokens=4,
        fm=False,
        d2s=False,
        layernorm=False,
    )
    with pytest.raises(NasrecError, match="unknown operator 'scale'"):
        Cell(spec)
    with registry.registered(Scale):
        # an operator registered later creates its layers after the built-in ones: their order does not move
        assert [n for n, _ in Cell(spec).named_children()] == ["efc", "scale_proj", "scale_gain"]


def test_names_inputs_and_costs_need_no_torch() -> None:
    code = """
import json, sys
from nasrec.model.cost import arch_cost
from nasrec.space.draw import summary
from nasrec.space.liveness import functional_hash
from nasrec.space.space import NASREC_FULL, sample_architecture
arch = sample_architecture("full", 3)
NASREC_FULL.check(arch)
print(json.dumps([arch_cost(arch).flops, functional_hash(arch), len(summary(arch)), "torch" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    flops, _, _, torch_loaded = json.loads(out.stdout)
    assert flops > 0 and not torch_loaded


# -- cross (DCNv2's cross layer) ---------------------------------------------------------------------------
def _cross_chain(layers: int, width: int) -> Architecture:
    """Blocks whose dense output is cross(left = raw input, right = the block before): DCNv2's cross network."""
    return Architecture(tuple(Block(("cross",), ("efc",), (0,), (0,), 0, i, width, 4) for i in range(layers)))


def test_a_chain_of_cross_blocks_is_dcnv2s_cross_network() -> None:
    """With dense width = the input's, the blocks' cross layers equal the zoo's DCNv2 `CrossLayer`s, weights shared."""
    from nasrec.zoo.dcn import CrossLayer

    torch.manual_seed(0)
    sub = Subnet(_cross_chain(3, NUM_DENSE), NUM_DENSE, TABLES)
    zoo = [CrossLayer(NUM_DENSE) for _ in range(3)]
    for i, layer in enumerate(zoo):
        cell = sub.cells[str(i)]
        assert getattr(cell, "cross_proj", None) is None  # m = W: no projection in the standalone model
        with torch.no_grad():
            layer.proj.weight.copy_(cell.cross.weight)
            layer.proj.bias.copy_(torch.randn(NUM_DENSE))
            cell.cross.bias.copy_(layer.proj.bias)
    dense, sparse = _batch()
    x = dense
    for layer in zoo:
        x = layer(dense, x)
    with torch.no_grad():
        torch.testing.assert_close(sub.features(dense, sparse).dense, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layernorm", [False, True])
def test_the_operators_of_the_full_plus_space(layernorm: bool) -> None:
    """full+: supernet paths through cross, flat, bilinear, gflat and fuse equal their materialised models, costed as
    they are built."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasrec.space.space import get_space

    full_plus = get_space("full+")
    assert full_plus.dense_ops == (*NASREC_FULL.dense_ops, "cross", "flat", "bilinear", "gflat", "fuse", "cat", "tflat")
    assert full_plus.sparse_ops == NASREC_FULL.sparse_ops
    dense, sparse = _batch()
    # the whole space (attention included): paths through cross equal their materialised models
    # and (without layer norms) linears and products only: the FLOP counter measures what the cost model counts
    for space, check_flops in (
        (full_plus, False),
        (
            replace(
                full_plus,
                dense_ops=("fc", "gating", "cross", "flat", "bilinear", "gflat", "fuse", "cat", "tflat"),
                sparse_ops=("efc",),
            ),
            True,
        ),
    ):
        space = replace(space, num_blocks=4, dense_widths=(8, 16, 24), sparse_widths=(4, 8))
        torch.manual_seed(0)
        supernet = Supernet(space, NUM_DENSE, TABLES, layernorm=layernorm)
        rng = np.random.default_rng(0)
        drawn = (space.sample(rng, "single-path") for _ in range(300))
        new_ops = {"cross", "bilinear", "gflat", "fuse"}
        archs = [a for a in drawn if len(new_ops & {op for b in a.blocks for op in b.dense_ops}) >= 3][:8]
        assert len(archs) == 8 and new_ops <= {op for a in archs for b in a.blocks for op in b.dense_ops}
        for arch in archs:
            supernet.train()
            supernet(dense, sparse, arch).sum().backward()
            sub = Subnet.from_supernet(supernet, arch)
            supernet.eval()
            sub.eval()
            with torch.no_grad():
                torch.testing.assert_close(sub(dense, sparse), supernet(dense, sparse, arch), atol=1e-5, rtol=0)
            cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES, use_layernorm=layernorm)
            held = sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
            assert held == cost.dense_params
            if check_flops and not layernorm:
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    sub(dense[:1], sparse[:1])
                assert counter.get_total_flops() // 2 == cost.flops
        for layer in ("cross", "bil_u", "bil_v", "gflat_g1", "gflat_g2", "gflat", "fuse"):
            grads = [p.grad for c in supernet.cells for p in getattr(c, layer).parameters()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_flat_then_fc_is_an_mlp_on_the_flattened_embeddings() -> None:
    """Block 0 flat(raw tokens) and block 1 fc(block 0): ReLU(W2 ReLU(W1 [e_1; ...; e_F] + b1) + b2), the
    deep part of DNN, DeepFM and DCNv2, with the blocks' weights."""
    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("fc",), ("efc",), (1,), (0,), 1, 1, 16, 4),
        )
    )
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES)
    dense, sparse = _batch()
    e = sub.embedding(sparse).flatten(1)  # [B, F x 16], field by field
    c0, c1 = sub.cells["0"], sub.cells["1"]
    h = torch.relu(e @ c0.flat.blocks[0].T + c0.flat.bias)
    want = torch.relu(h @ c1.fc.blocks[0].T + c1.fc.bias)
    with torch.no_grad():
        torch.testing.assert_close(sub.features(dense, sparse).dense, want, atol=1e-5, rtol=0)
    cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES)
    assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))


def test_bilinear_fuses_two_streams_as_finalmlp() -> None:
    """Two flat streams of different widths and bilinear over them: u ⊙ v + u + v with u, v linear in the
    streams (the narrower one padded), one Linear each with bias, in the blocks' weights."""
    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 8, 4),
            Block(("bilinear",), ("efc",), (0,), (0,), 1, 2, 16, 4),
        )
    )
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES)
    dense, sparse = _batch()
    e = sub.embedding(sparse).flatten(1)
    c0, c1, c2 = sub.cells["0"], sub.cells["1"], sub.cells["2"]
    s1 = torch.relu(e @ c0.flat.blocks[0].T + c0.flat.bias)
    s2 = torch.relu(e @ c1.flat.blocks[0].T + c1.flat.bias)
    u = s1 @ c2.bil_u.weight.T + c2.bil_u.bias
    v = s2 @ c2.bil_v.weight[:, :8].T + c2.bil_v.bias  # the 8-wide stream padded to 24 by zeros
    with torch.no_grad():
        torch.testing.assert_close(sub.features(dense, sparse).dense, u * v + u + v, atol=1e-5, rtol=0)
    cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES)
    assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
    assert c2.bil_u.weight.shape == c2.bil_v.weight.shape == (16, 24)


def _finalmlp_weights(sub: Subnet, zoo: nn.Module, batchnorm: bool) -> None:
    """A zoo FinalMLP's weights (no gates) into blocks flat, flat, fuse: the head sums fuse's heads, reads no
    token; with batch norms each Linear's bias moves into its running mean and fuse's norm is the identity."""
    sub.embedding.table.weight.copy_(zoo.embedding.table.weight)
    for cell, mlp in ((sub.cells["0"], zoo.mlp1), (sub.cells["1"], zoo.mlp2)):
        linear = mlp.layers[0]
        cell.flat.blocks[0].copy_(linear.weight)
        if batchnorm:
            cell.flat_ln.load_state_dict(mlp.layers[1].state_dict())
            cell.flat_ln.running_mean.sub_(linear.bias)  # BN(Wx + b) = BN'(Wx), the mean shifted by b
        else:
            cell.flat.bias.copy_(linear.bias)
    fuse = sub.cells["2"].fuse
    fuse.m.copy_(zoo.fusion.bilinear)
    fuse.u.copy_(zoo.fusion.linear1.weight[0])
    fuse.v.copy_(zoo.fusion.linear2.weight[0])
    if batchnorm:  # the fusion's own norm at the identity in evaluation: (x - 0) / sqrt(1 - eps + eps)
        ln = sub.cells["2"].fuse_ln
        ln.running_var.fill_(1.0 - ln.eps)
    sub.head.dense.fill_(1.0)
    sub.head.tokens.zero_()
    sub.head.bias.copy_(zoo.fusion.linear1.bias)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_fuse_of_two_flat_streams_is_finalmlp_without_gates(batchnorm: bool) -> None:
    """flat 24 and flat 8 over the raw tokens, fused by `fuse` with 4 heads, the head's weights 1 on the heads and
    0 on the tokens: the zoo's FinalMLP without feature gates (data without dense features), given its weights;
    with batch norms, its Linear's bias moved into the running mean and fuse's own norm at the identity.
    Costed as the zoo costs it."""
    from nasrec.zoo.registry import build_zoo_model

    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 8, 4),
            Block(("fuse",), ("efc",), (0,), (0,), 1, 2, 4, 4),
        )
    )
    torch.manual_seed(0)
    zoo = build_zoo_model(
        "finalmlp", 0, TABLES, embedding_dim=16, use_fs=False, mlp1_dims=[24], mlp2_dims=[8], num_heads=4,
        mlp1_batchnorm=batchnorm, mlp2_batchnorm=batchnorm,
    )  # fmt: skip
    sub = Subnet(arch, 0, TABLES, layernorm=batchnorm, batchnorm=batchnorm)
    zoo.train()
    _, sparse = _batch(64)
    with torch.no_grad():
        zoo(torch.zeros(64, 0), sparse)  # running statistics away from (0, 1)
        assert sub.cells["2"].fuse.m.shape == zoo.fusion.bilinear.shape == (4, 6, 2)
        _finalmlp_weights(sub, zoo, batchnorm)
    zoo.eval()
    sub.eval()
    dense, sparse = torch.zeros(12, 0), _batch()[1]
    with torch.no_grad():
        torch.testing.assert_close(sub(dense, sparse), zoo(dense, sparse), atol=1e-5, rtol=1e-5)
    cost = arch_cost(arch, 0, len(TABLES), TABLES, use_layernorm=batchnorm)
    assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
    if not batchnorm:  # the same FLOPs as the zoo counts, plus the space's last efc and its head's linear
        from nasrec.zoo.registry import zoo_cost

        extra = token_linear_cost(len(TABLES), 4, False) + linear_cost(4 + 4 * 16, 1, bias=True)
        assert cost.flops == zoo_cost(zoo, 0, TABLES).flops + extra.flops


def test_batchnorm_replaces_the_dense_layer_norms_of_a_standalone_model() -> None:
    """Subnet(batchnorm=True): flat then fc is Linear → BatchNorm → ReLU twice (the zoo's MLP, in eval mode
    with its running statistics); token layer norms stay; parameters as costed; batch statistics in training."""
    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("fc",), ("efc",), (1,), (1,), 1, 1, 16, 4),
        )
    )
    # refused without layer norms: tests/test_model.py, test_standalone_options_of_layer_normed_models_need_layernorm
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=True, batchnorm=True)
    c0, c1 = sub.cells["0"], sub.cells["1"]
    assert isinstance(c0.flat_ln, nn.BatchNorm1d) and isinstance(c1.fc_ln, nn.BatchNorm1d)
    assert not isinstance(c0.efc_ln, nn.BatchNorm1d)  # tokens keep layer norms
    dense, sparse = _batch()
    sub.train()
    for _ in range(3):  # running statistics away from (0, 1)
        sub(dense, sparse)
    sub.eval()

    def bn(layer: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        return (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * layer.weight + layer.bias

    e = sub.embedding(sparse).flatten(1)
    h = torch.relu(bn(c0.flat_ln, e @ c0.flat.blocks[0].T))
    want = torch.relu(bn(c1.fc_ln, h @ c1.fc.blocks[0].T))
    with torch.no_grad():
        torch.testing.assert_close(sub.features(dense, sparse).dense, want, atol=1e-5, rtol=0)
        sub.train()
        assert not torch.allclose(sub.features(dense, sparse).dense, want, atol=1e-3)
    cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES, use_layernorm=True)
    assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
    spec = ModelSpec(kind="nasrec", num_dense=NUM_DENSE, table_sizes=TABLES, arch=arch.to_dict(), layernorm=True,
                     batchnorm=True)  # fmt: skip
    assert isinstance(ModelSpec.from_dict(spec.to_dict()).build().cells["1"].fc_ln, nn.BatchNorm1d)


def test_exact_batchnorm_statistics_make_evaluation_match_training() -> None:
    """Running statistics lag the weights (a near-constant channel divides the lag by sqrt(eps)); measured for
    the current weights before an evaluation, evaluation gives what training gives on those batches. The
    trainer's hook does it once per step for nasrec architectures; zoo models keep their running statistics."""
    from nasrec.data.loader import Batch
    from nasrec.train.evaluation import HeadCalibration, exact_batchnorm
    from nasrec.zoo.registry import build_zoo_model

    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("fc",), ("efc",), (1,), (1,), 1, 1, 16, 4),
        )
    )
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES, layernorm=True, batchnorm=True)
    dense, sparse = _batch(256)
    batch = Batch(dense, sparse, torch.zeros(256))
    sub.train()
    with torch.no_grad():
        for _ in range(5):
            sub(dense, sparse)
        sub.cells["0"].flat.blocks[0].mul_(3.0)  # the weights move on; the statistics are of the old ones

    def outputs(training: bool) -> torch.Tensor:
        sub.train(training)
        with torch.no_grad():
            return sub.features(dense, sparse).dense

    trained = outputs(True)
    assert not torch.allclose(outputs(False), trained, atol=0.1)
    exact_batchnorm(sub, [batch])
    assert not sub.training and sub.cells["0"].flat_ln.momentum == 0.1  # evaluation mode, momentum restored
    torch.testing.assert_close(outputs(False), trained, atol=2e-2, rtol=2e-2)
    with torch.no_grad():
        sub.cells["0"].flat.blocks[0].mul_(0.5)
    trained = outputs(True)
    calib = HeadCalibration(sub, None, 256, 1, torch.device("cpu"))  # type: ignore[arg-type]
    calib._batches = [batch]
    calib.whole_model(step=5)
    torch.testing.assert_close(outputs(False), trained, atol=2e-2, rtol=2e-2)
    zoo = build_zoo_model("dnn", NUM_DENSE, TABLES, batchnorm=True)
    before = {k: v.clone() for k, v in zoo.state_dict().items()}
    zcalib = HeadCalibration(zoo, None, 256, 1, torch.device("cpu"))  # type: ignore[arg-type]
    zcalib._batches = [batch]
    zcalib.whole_model(step=5)
    assert all(torch.equal(v, before[k]) for k, v in zoo.state_dict().items())


def test_gflat_gates_the_flattened_embeddings_as_finalmlp() -> None:
    """gflat over the raw tokens: ReLU(W (x ⊙ 2σ(G2 ReLU(G1 x + c1) + c2)) + b) with x the flattened embeddings."""
    arch = Architecture((Block(("gflat",), ("efc",), (0,), (0,), 0, 0, 24, 4),))
    torch.manual_seed(0)
    sub = Subnet(arch, NUM_DENSE, TABLES)
    cell = sub.cells["0"]
    with torch.no_grad():
        cell.gflat_g2.biases[0].normal_()  # a gate that is not 1 everywhere from the start
    dense, sparse = _batch()
    e = sub.embedding(sparse).flatten(1)
    h = torch.relu(e @ cell.gflat_g1.blocks[0].T + cell.gflat_g1.bias)
    gate = 2 * torch.sigmoid(h @ cell.gflat_g2.blocks[0].T + cell.gflat_g2.biases[0])
    want = torch.relu((e * gate) @ cell.gflat.blocks[0].T + cell.gflat.bias)
    with torch.no_grad():
        torch.testing.assert_close(sub.features(dense, sparse).dense, want, atol=1e-5, rtol=0)
    cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES)
    assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))


# -- the embedding dimension ---------------------------------------------------------------------------------
def test_an_embedding_dimension_other_than_16_runs_costs_and_materialises_every_operator() -> None:
    """A full+ space at 20-wide tokens (attention with 5 heads): supernet paths equal their materialised models,
    every parameter as costed and FLOPs as counted; the tables, d2s tokens and head are 20 wide; the 16-wide
    encoding of the same blocks is not in the space, and its JSON keeps the old form (and hash)."""
    from torch.utils.flop_counter import FlopCounterMode

    from nasrec.model.ops.transformer import heads
    from nasrec.space.space import get_space

    assert (heads(16), heads(20), heads(12), heads(7)) == (8, 5, 6, 7)
    space = replace(get_space("full+"), num_blocks=4, dense_widths=(8, 16, 24), sparse_widths=(4, 8), embedding_dim=20)
    torch.manual_seed(0)
    supernet = Supernet(space, NUM_DENSE, TABLES, layernorm=True)
    assert supernet.embedding.table.weight.shape[1] == 20 and supernet.head.tokens.shape[2] == 20
    dense, sparse = _batch()
    rng = np.random.default_rng(1)
    archs = [space.sample(rng, "any-path") for _ in range(6)]
    assert {op for a in archs for b in a.blocks for op in (*b.dense_ops, *b.sparse_ops)} >= {"dot", "transformer"}
    assert any(b.d2s for a in archs for b in a.blocks) and any(b.fm for a in archs for b in a.blocks)
    for arch in archs:
        assert arch.embedding_dim == 20 and space.contains(arch)
        assert not space.contains(replace(arch, embedding_dim=16))
        sub = Subnet.from_supernet(supernet, arch)
        supernet.eval()
        sub.eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(dense, sparse), supernet(dense, sparse, arch), atol=1e-5, rtol=0)
        cost = arch_cost(arch, NUM_DENSE, len(TABLES), TABLES, use_layernorm=True)
        assert cost.dense_params == sum(p.numel() for n, p in sub.named_parameters() if not n.startswith("embedding"))
        assert cost.embedding_params == sum(TABLES) * 20
        assert Architecture.from_dict(arch.to_dict()) == arch
    # without attention and norms, the operators are linears and products only: the counter sees what is costed
    flop_space = replace(
        space,
        dense_ops=("fc", "gating", "cross", "flat", "bilinear", "gflat", "fuse", "cat", "tflat"),
        sparse_ops=("efc",),
    )
    for arch in (flop_space.sample(rng, "any-path") for _ in range(3)):
        plain = Subnet(arch, NUM_DENSE, TABLES)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            plain(dense[:1], sparse[:1])
        assert counter.get_total_flops() // 2 == arch_cost(arch, NUM_DENSE, len(TABLES), TABLES).flops
    at16 = replace(archs[0], embedding_dim=16)
    assert "embedding_dim" not in at16.to_dict() and archs[0].to_dict()["embedding_dim"] == 20
    assert at16.hash() != archs[0].hash()
    with pytest.raises(NasrecError, match="embedding_dim 20 from a supernet of 16"):
        Subnet.from_supernet(Supernet(replace(space, embedding_dim=16), NUM_DENSE, TABLES), archs[0])
    with pytest.raises(NasrecError, match="embedding_dim must be an integer from 1 to 1024"):
        replace(archs[0], embedding_dim=0)
    with pytest.raises(NasrecError, match="field embedding_dim: expected an integer"):
        Architecture.from_dict({**archs[0].to_dict(), "embedding_dim": "20"})


def test_fuse_of_two_flat_streams_is_finalmlp_at_its_embedding_dimension() -> None:
    """The zoo's FinalMLP without gates at embedding dim 20 is the 20-wide nasrec encoding, FLOPs included."""
    from nasrec.zoo.registry import build_zoo_model, zoo_cost

    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 30, 4),
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 10, 4),
            Block(("fuse",), ("efc",), (0,), (0,), 1, 2, 5, 4),
        ),
        embedding_dim=20,
    )
    torch.manual_seed(0)
    zoo = build_zoo_model(
        "finalmlp", 0, TABLES, embedding_dim=20, use_fs=False, mlp1_dims=[30], mlp2_dims=[10], num_heads=5
    )
    sub = Subnet(arch, 0, TABLES)
    with torch.no_grad():
        _finalmlp_weights(sub, zoo, batchnorm=False)
    zoo.eval()
    sub.eval()
    dense, sparse = torch.zeros(12, 0), _batch()[1]
    with torch.no_grad():
        torch.testing.assert_close(sub(dense, sparse), zoo(dense, sparse), atol=1e-5, rtol=1e-5)
    extra = token_linear_cost(len(TABLES), 4, False, 20) + linear_cost(5 + 4 * 20, 1, bias=True)
    assert arch_cost(arch, 0, len(TABLES), TABLES).flops == zoo_cost(zoo, 0, TABLES).flops + extra.flops


def test_dcnv2_is_an_architecture_of_the_space() -> None:
    """DCNv2 (parallel, 2 cross layers, MLP 24 -> 16) at embedding dim 20 as blocks: tflat (x0, the embeddings),
    cross(x0, x_l) twice, flat then fc, and cat of the two streams read by the head: the zoo's model given its
    weights, and costed as the zoo costs it (plus the head's token weights and the last block's efc)."""
    from nasrec.zoo.registry import build_zoo_model, zoo_cost

    d = 20 * len(TABLES)
    arch = Architecture(
        (
            Block(("tflat",), ("efc",), (0,), (0,), 0, 0, d, 4),
            Block(("cross",), ("efc",), (0,), (0,), 1, 1, d, 4),
            Block(("cross",), ("efc",), (0,), (0,), 1, 2, d, 4),
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("fc",), ("efc",), (4,), (0,), 0, 0, 16, 4),
            Block(("cat",), ("efc",), (3, 5), (0,), 0, 0, d + 16, 4),
        ),
        embedding_dim=20,
    )
    torch.manual_seed(0)
    zoo = build_zoo_model("dcnv2", 0, TABLES, embedding_dim=20, cross_layers=2, mlp_dims=[24, 16])
    sub = Subnet(arch, 0, TABLES)
    with torch.no_grad():
        sub.embedding.table.weight.copy_(zoo.embedding.table.weight)
        for i, layer in enumerate(zoo.cross.layers, start=1):
            sub.cells[str(i)].cross.weight.copy_(layer.proj.weight)
            sub.cells[str(i)].cross.bias.copy_(layer.proj.bias)
        linears = [m for m in zoo.mlp.layers if isinstance(m, nn.Linear)]
        sub.cells["3"].flat.blocks[0].copy_(linears[0].weight)
        sub.cells["3"].flat.bias.copy_(linears[0].bias)
        sub.cells["4"].fc.blocks[0].copy_(linears[1].weight)
        sub.cells["4"].fc.bias.copy_(linears[1].bias)
        sub.head.dense.copy_(zoo.head.weight)
        sub.head.tokens.zero_()
        sub.head.bias.copy_(zoo.head.bias)
    zoo.eval()
    sub.eval()
    dense, sparse = torch.zeros(12, 0), _batch()[1]
    with torch.no_grad():
        torch.testing.assert_close(sub(dense, sparse), zoo(dense, sparse), atol=1e-5, rtol=1e-5)
    extra = token_linear_cost(len(TABLES), 4, False, 20) + linear_cost(4 * 20, 1, bias=False)
    assert arch_cost(arch, 0, len(TABLES), TABLES).flops == zoo_cost(zoo, 0, TABLES).flops + extra.flops


def test_deepfm_is_an_architecture_with_a_first_order_term() -> None:
    """DeepFM (MLP 24 -> 16 -> 12) at embedding dim 20 as blocks: flat then fc twice, the last block's tokens the
    raw embeddings (tcat) with its fm term on, and the first-order term: the zoo's model given its weights, and
    costed as the zoo costs it (plus the fm term's projection, which the head turns into FM's sum, and the head's
    token weights). The encoding's JSON round-trips, and no search space holds it."""
    from nasrec.space.space import get_space
    from nasrec.zoo.registry import build_zoo_model, zoo_cost

    n, e = len(TABLES), 20
    arch = Architecture(
        (
            Block(("flat",), ("efc",), (0,), (0,), 0, 0, 24, 4),
            Block(("fc",), ("efc",), (1,), (0,), 0, 0, 16, 4),
            Block(("fc",), ("tcat",), (2,), (0,), 0, 0, 12, n, fm=True),
        ),
        embedding_dim=e,
        first_order=True,
    )
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    assert '"first_order":true' in arch.to_json()
    assert "first_order" not in replace(arch, first_order=False).to_json()  # hashes without it are as they were
    with pytest.raises(NasrecError, match="first-order term"):
        replace(get_space("full+"), num_blocks=3, embedding_dim=e).check(arch)
    torch.manual_seed(0)
    zoo = build_zoo_model("deepfm", 0, TABLES, embedding_dim=e, mlp_dims=[24, 16, 12])
    sub = Subnet(arch, 0, TABLES)
    with torch.no_grad():
        sub.embedding.table.weight.copy_(zoo.embedding.table.weight)
        sub.first_order.weights.table.weight.normal_()  # the zoo's start at zero: give them a part in the logit
        zoo.linear.weights.table.weight.copy_(sub.first_order.weights.table.weight)
        sub.first_order.bias.fill_(0.3)
        zoo.linear.bias.fill_(0.3)
        linears = [m for m in zoo.mlp.layers if isinstance(m, nn.Linear)]
        sub.cells["0"].flat.blocks[0].copy_(linears[0].weight)
        sub.cells["0"].flat.bias.copy_(linears[0].bias)
        for i in (1, 2):
            sub.cells[str(i)].fc.blocks[0].copy_(linears[i].weight)
            sub.cells[str(i)].fc.bias.copy_(linears[i].bias)
        w = linears[3].weight  # [1, 12]
        sub.head.dense.copy_(w)
        sub.head.tokens.zero_()
        sub.head.bias.copy_(linears[3].bias)
        # the fm term v (e wide) enters the head as w · P v: P = wᵀ (½ 1ᵀ) / |w|² makes it FM's ½ Σ v
        sub.cells["2"].fm_proj.weight.copy_(w.t() @ torch.full((1, e), 0.5) / (w * w).sum())
        sub.cells["2"].fm_proj.bias.zero_()
    zoo.eval()
    sub.eval()
    dense, sparse = torch.zeros(12, 0), _batch()[1]
    with torch.no_grad():
        torch.testing.assert_close(sub(dense, sparse), zoo(dense, sparse), atol=1e-4, rtol=1e-5)
        without = sub(dense, sparse) - sub.first_order(dense, sparse)
        assert (without - zoo(dense, sparse)).abs().max() > 0.1  # the first-order term is a part of the logit
    extra = linear_cost(e, 12, bias=True) + token_linear_cost(n, 1, False, e)
    cost = arch_cost(arch, 0, n, TABLES)
    assert cost.flops == zoo_cost(zoo, 0, TABLES).flops + extra.flops
    assert cost.embedding_params == zoo_cost(zoo, 0, TABLES).embedding_params == sum(TABLES) * (e + 1)
