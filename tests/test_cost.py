"""Analytic FLOPs and parameter counts (nasrec.model.cost), checked against measurements and the paper.

The measurements come from tiny PyTorch reference implementations of the operators written here, from
docs/design.md's operator semantics, independently of the code under test. They are counted with
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate, so halved; attention
forced onto SDPA's math path so that its matrix products are visible) plus 5 FLOPs per LayerNorm output
element, which FlopCounterMode does not count. Whole models are checked twice: with dead blocks pruned
(every operator executed) and, like fvcore's traced count, after torch.fx dead-code elimination.
"""

from __future__ import annotations

import math
from dataclasses import astuple
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nasrec.data.formats import AVAZU_TABLE_SIZES, CRITEO_TABLE_SIZES, KDD12_TABLE_SIZES
from nasrec.errors import NasrecError
from nasrec.model import cost as C
from nasrec.space.arch import Architecture, Block
from nasrec.space.liveness import live_outputs

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
E = 16
BATCH = 2
LN_FLOPS = 5  # fvcore's count per element of an affine LayerNorm

# dataset: (dense features, sparse features, table sizes)
DATASETS = {
    "criteo": (13, 26, CRITEO_TABLE_SIZES),
    "avazu": (1, 23, AVAZU_TABLE_SIZES),
    "kdd": (3, 10, KDD12_TABLE_SIZES),
}
# config: (MFLOPs of SOURCE.md, fvcore MFLOPs of spec 2.7, non-embedding M params with dead blocks, LN off)
PUBLISHED = {
    "criteo_autoctr": (2.20, 2.208, 1.78),
    "criteo_xlarge": (1.45, 1.466, 2.22),
    "avazu_autoctr": (3.08, 3.086, 2.84),
    "avazu_xlarge": (1.87, 1.877, 3.18),
    "kdd_autoctr": (3.48, 3.483, 2.61),
    "kdd_xlarge": (1.09, 1.100, 0.44),
}
PUBLISHED_NO_ATTENTION = {"criteo_xlarge": 1.26, "avazu_xlarge": 1.80, "kdd_xlarge": 0.89}
PUBLISHED_EMBEDDING_M = {"criteo": 540, "avazu": 151, "kdd": 811}


# -- measurement -------------------------------------------------------------------------------------
def measure(module: nn.Module, *inputs: Tensor) -> tuple[int, int]:
    """(FLOPs per example in the paper's convention, parameter count) of one forward pass."""
    ln_elements = 0

    def count_ln(_m: nn.Module, _i: object, out: Tensor) -> None:
        nonlocal ln_elements
        ln_elements += out.numel()

    hooks = [m.register_forward_hook(count_ln) for m in module.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    total = counter.get_total_flops() // 2 + LN_FLOPS * ln_elements
    assert total % BATCH == 0
    return total // BATCH, sum(p.numel() for p in module.parameters())


def dense(width: int) -> Tensor:
    """A random dense batch."""
    return torch.randn(BATCH, width)


def sparse(tokens: int) -> Tensor:
    """A random batch of `tokens` embedded tokens."""
    return torch.randn(BATCH, tokens, E)


# -- reference operators (docs/design.md, "Operator semantics") --------------------------------------
def maybe_ln(ln: bool, n: int) -> nn.Module:
    """LN?(n): a LayerNorm when layer norms are on, else the identity."""
    return nn.LayerNorm(n) if ln else nn.Identity()


class TokenLinear(nn.Module):
    """Linear over the token axis of [B, T, E], then LN? over the token axis."""

    def __init__(self, tin: int, tout: int, ln: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(tin, tout, bias=not ln)
        self.norm = maybe_ln(ln, tout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x.transpose(1, 2))).transpose(1, 2)


class LinearLN(nn.Module):
    """Linear(din → dout) + LN?(dout), or the identity when din = dout."""

    def __init__(self, din: int, dout: int, ln: bool, always_ln: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(din, dout, bias=not ln) if din != dout else nn.Identity()
        self.norm = maybe_ln(ln and (din != dout or always_ln), dout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))


class RefFC(nn.Module):
    """fc: Linear, LN?, ReLU."""

    def __init__(self, din: int, w: int, ln: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(din, w, bias=not ln)  # always, even when din = w
        self.norm = maybe_ln(ln, w)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.linear(x)))


def pad_to(x: Tensor, m: int) -> Tensor:
    """Right-pad the features of x with zeros to width m."""
    return F.pad(x, (0, m - x.shape[1]))


class RefSum(nn.Module):
    """sum: pad, add, Linear(m → W) if m ≠ W, LN?."""

    def __init__(self, dl: int, dr: int, w: int, ln: bool) -> None:
        super().__init__()
        self.m = max(dl, dr)
        self.out = LinearLN(self.m, w, ln, always_ln=True)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return self.out(pad_to(left, self.m) + pad_to(right, self.m))


class RefGating(nn.Module):
    """gating: pad, sigmoid(square Linear(left)) ⊙ right, Linear(m → W) if m ≠ W, LN?."""

    def __init__(self, dl: int, dr: int, w: int, ln: bool) -> None:
        super().__init__()
        self.m = max(dl, dr)
        self.square = nn.Linear(self.m, self.m)
        self.proj = nn.Linear(self.m, w) if self.m != w else nn.Identity()
        self.norm = maybe_ln(ln, w)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        gate = torch.sigmoid(self.square(pad_to(left, self.m)))
        return self.norm(self.proj(gate * pad_to(right, self.m)))


class RefDot(nn.Module):
    """dot: dense and token projections, Gram matrix, strictly lower triangle, Linear, LN?."""

    def __init__(self, din: int, tin: int, w: int, ln: bool) -> None:
        super().__init__()
        p = round(math.sqrt(2 * w))
        self.dense_proj = LinearLN(din, E, ln)
        self.token_proj = TokenLinear(tin, p, ln) if tin != p else nn.Identity()
        rows, cols = torch.tril_indices(p + 1, p + 1, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.out = LinearLN((p + 1) * p // 2, w, ln, always_ln=True)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        z = torch.cat([self.dense_proj(x).unsqueeze(1), self.token_proj(s)], dim=1)
        gram = torch.bmm(z, z.transpose(1, 2))
        return self.out(gram[:, self.rows, self.cols])


class RefEFC(nn.Module):
    """efc: token-axis Linear, LN?, ReLU."""

    def __init__(self, tin: int, ws: int, ln: bool) -> None:
        super().__init__()
        self.proj = TokenLinear(tin, ws, ln)

    def forward(self, s: Tensor) -> Tensor:
        return F.relu(self.proj(s))


class RefTransformer(nn.Module):
    """transformer: token-axis Linear + LN?, self-attention, LN, FFN, LN."""

    def __init__(self, tin: int, ws: int, ln: bool) -> None:
        super().__init__()
        self.proj = TokenLinear(tin, ws, ln)
        self.mha = nn.MultiheadAttention(E, 8, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.fc1, self.fc2 = nn.Linear(E, E), nn.Linear(E, E)

    def forward(self, s: Tensor) -> Tensor:
        x = self.proj(s)
        x = self.ln1(x + self.mha(x, x, x, need_weights=False)[0])
        return self.ln2(x + self.fc2(F.relu(self.fc1(x))))


class RefFM(nn.Module):
    """fm: (Σe)² − Σe², then Linear unless W = E, and LN? (nasrec normalises at W = E too)."""

    def __init__(self, w: int, ln: bool) -> None:
        super().__init__()
        self.proj = LinearLN(E, w, ln, always_ln=True)

    def forward(self, s: Tensor) -> Tensor:
        return self.proj(s.sum(dim=1) ** 2 - (s**2).sum(dim=1))


class RefD2S(nn.Module):
    """d2s: Linear + LN? unless W = 8E, reshaped to 8 tokens."""

    def __init__(self, w: int, ln: bool) -> None:
        super().__init__()
        self.proj = LinearLN(w, 8 * E, ln)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).reshape(-1, 8, E)


class RefBlock(nn.Module):
    """One block: concatenated inputs, summed operator outputs, d2s from the pre-fm dense output, fm."""

    def __init__(self, b: Block, widths: list[int], tokens: list[int], ln: bool) -> None:
        super().__init__()
        self.b = b
        din, tin = sum(widths[j] for j in b.dense_in), sum(tokens[j] for j in b.sparse_in)
        dl, dr, w, ws = widths[b.left], widths[b.right], b.dense_width, b.sparse_width
        makers = {
            "fc": lambda: RefFC(din, w, ln),
            "dot": lambda: RefDot(din, tin, w, ln),
            "sum": lambda: RefSum(dl, dr, w, ln),
            "gating": lambda: RefGating(dl, dr, w, ln),
            "efc": lambda: RefEFC(tin, ws, ln),
            "transformer": lambda: RefTransformer(tin, ws, ln),
        }
        self.ops = nn.ModuleDict({op: makers[op]() for op in (*b.dense_ops, *b.sparse_ops)})
        self.d2s = RefD2S(w, ln) if b.d2s else None
        self.fm = RefFM(w, ln) if b.fm else None

    def forward(self, dense_outs: list[Tensor], sparse_outs: list[Tensor]) -> tuple[Tensor, Tensor]:
        b = self.b
        x = torch.cat([dense_outs[j] for j in b.dense_in], dim=1)
        s = torch.cat([sparse_outs[j] for j in b.sparse_in], dim=1)
        left, right = dense_outs[b.left], dense_outs[b.right]
        args = {"fc": (x,), "dot": (x, s), "sum": (left, right), "gating": (left, right)}
        d = sum(self.ops[op](*args[op]) for op in b.dense_ops)
        t = sum(self.ops[op](s) for op in b.sparse_ops)
        d_out = d + self.fm(t) if self.fm is not None else d
        t_out = torch.cat([t, self.d2s(d)], dim=1) if self.d2s is not None else t
        return d_out, t_out


class RefModel(nn.Module):
    """Standalone model on embedded inputs; dead blocks are left out when `prune` (else computed, unused)."""

    def __init__(self, arch: Architecture, num_dense: int, num_sparse: int, ln: bool, prune: bool) -> None:
        super().__init__()
        widths = [num_dense] + [b.dense_width for b in arch.blocks]
        tokens = [num_sparse] + [b.sparse_tokens for b in arch.blocks]
        live = arch.live_blocks()
        self.blocks = nn.ModuleList(
            RefBlock(b, widths, tokens, ln) if live[i] or not prune else nn.Identity()
            for i, b in enumerate(arch.blocks)
        )
        self.head = nn.Linear(widths[-1] + E * tokens[-1], 1)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        dense_outs, sparse_outs = [x], [s]
        for block in self.blocks:
            if isinstance(block, RefBlock):
                d, t = block(dense_outs, sparse_outs)
            else:  # a pruned dead block: nobody reads its outputs
                d, t = x, s
            dense_outs.append(d)
            sparse_outs.append(t)
        return self.head(torch.cat([dense_outs[-1], sparse_outs[-1].flatten(1)], dim=1))


def measure_traced(model: RefModel, *inputs: Tensor) -> tuple[int, int]:
    """Measure after torch.fx dead-code elimination: like fvcore, only what reaches the output counts."""
    traced = fx.symbolic_trace(model)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    flops, _ = measure(traced, *inputs)
    return flops, sum(p.numel() for p in model.parameters())


# -- operators ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize(("din", "w"), [(13, 256), (16, 16), (1037, 128)])
def test_fc(din: int, w: int, ln: bool) -> None:
    assert measure(RefFC(din, w, ln), dense(din)) == astuple(C.fc_cost(din, w, ln))


@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize(("dl", "dr", "w"), [(13, 128, 64), (256, 3, 256), (64, 64, 64), (3, 128, 768)])
def test_sum_and_gating(dl: int, dr: int, w: int, ln: bool) -> None:
    assert measure(RefSum(dl, dr, w, ln), dense(dl), dense(dr)) == astuple(C.sum_cost(dl, dr, w, ln))
    assert measure(RefGating(dl, dr, w, ln), dense(dl), dense(dr)) == astuple(C.gating_cost(dl, dr, w, ln))


@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize(
    ("din", "tin", "w"),
    [(13, 26, 1024), (16, 82, 32), (256, 16, 16), (1, 39, 768), (1, 16, 128), (33, 48, 21)],
    ids=["plain", "dense-identity", "w16", "tokens-match", "tokens-match-128", "pairs-match"],
)
def test_dot(din: int, tin: int, w: int, ln: bool) -> None:
    assert measure(RefDot(din, tin, w, ln), dense(din), sparse(tin)) == astuple(C.dot_cost(din, tin, w, ln))


def test_dot_tokens() -> None:
    widths = [16, 32, 64, 128, 256, 512, 768, 1024]
    assert [C.dot_tokens(w) for w in widths] == [6, 8, 11, 16, 23, 32, 39, 45]


@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize(("tin", "ws"), [(26, 64), (48, 48), (202, 16)])
def test_efc_and_transformer(tin: int, ws: int, ln: bool) -> None:
    assert measure(RefEFC(tin, ws, ln), sparse(tin)) == astuple(C.efc_cost(tin, ws, ln))
    assert measure(RefTransformer(tin, ws, ln), sparse(tin)) == astuple(C.transformer_cost(tin, ws, ln))


@pytest.mark.parametrize("tokens", [16, 48, 64])
def test_mha(tokens: int) -> None:
    mha = nn.MultiheadAttention(E, 8, batch_first=True)
    x = sparse(tokens)
    flops, params = measure(mha, x, x, x)
    assert (flops, params) == astuple(C.mha_cost(tokens))
    assert C.attention_matmul_flops(tokens) == 2 * 16 * tokens * tokens


@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("w", [16, 128, 768])
def test_fm_d2s_head(w: int, ln: bool) -> None:
    assert measure(RefFM(w, ln), sparse(40)) == astuple(C.fm_cost(w, ln))
    assert measure(RefD2S(w, ln), dense(w)) == astuple(C.d2s_cost(w, ln))
    assert measure(nn.Linear(w, 1), dense(w)) == astuple(C.head_cost(w))


def test_layernorm_and_linear() -> None:
    assert measure(nn.LayerNorm(48), torch.randn(BATCH, 1, 48)) == (240, 96)
    assert C.layernorm_cost(48) == C.Cost(240, 96)
    assert C.linear_cost(10, 4, bias=False, rows=16) == C.Cost(640, 40)
    assert C.linear_cost(10, 4, bias=True) == C.Cost(40, 44)


def test_unknown_op() -> None:
    b = Block(("fc",), ("efc",), (0,), (0,), 0, 0, 16, 16)
    with pytest.raises(NasrecError, match="unknown operator"):
        C.op_cost("conv", b, 13, 26, 13, 13, ln=False)


# -- whole architectures -----------------------------------------------------------------------------
def blk(
    dense_ops: tuple[str, ...],
    sparse_ops: tuple[str, ...],
    dense_in: tuple[int, ...],
    sparse_in: tuple[int, ...],
    left: int,
    right: int,
    w: int,
    ws: int,
    d2s: bool = False,
    fm: bool = False,
) -> Block:
    """A Block from positional fields."""
    return Block(dense_ops, sparse_ops, dense_in, sparse_in, left, right, w, ws, d2s, fm)


# Multi-op blocks, width-matching identities (dot with p input tokens, sum/gating with m = W, d2s at 128,
# fm at 16), an input list no operator uses (block 2's dense_in), a dead block (3), and live blocks whose
# dense output nobody reads (1 and 4: their dense operators and fm are dead code).
SYNTHETIC = Architecture(
    (
        blk(("fc", "dot", "sum", "gating"), ("efc", "transformer"), (0,), (0,), 0, 0, 128, 16, d2s=True, fm=True),
        blk(("dot",), ("efc",), (1,), (1,), 0, 1, 128, 32, fm=True),
        blk(("gating", "sum"), ("transformer",), (0, 2), (0, 1, 2), 1, 1, 128, 48, d2s=True),
        blk(("fc",), ("efc",), (3,), (3,), 0, 0, 16, 16, fm=True),
        blk(("dot", "fc"), ("efc",), (1,), (2, 3), 2, 3, 64, 16),
        blk(("sum",), ("efc", "transformer"), (0,), (5,), 1, 3, 16, 64, d2s=True, fm=True),
    )
)


def check_against_reference(arch: Architecture, num_dense: int, num_sparse: int, ln: bool) -> None:
    """The analytic counts equal the reference model's measurements, pruned and traced."""
    cost = C.arch_cost(arch, num_dense, num_sparse, use_layernorm=ln)
    x, s = dense(num_dense), sparse(num_sparse)
    torch.manual_seed(0)
    assert measure(RefModel(arch, num_dense, num_sparse, ln, prune=True), x, s) == (
        cost.flops_live_blocks,
        cost.dense_params_live_blocks,
    )
    assert measure_traced(RefModel(arch, num_dense, num_sparse, ln, prune=False), x, s) == (
        cost.flops,
        cost.dense_params_with_dead,
    )


@pytest.mark.parametrize("ln", [False, True])
def test_synthetic_matches_reference_model(ln: bool) -> None:
    cost = C.arch_cost(SYNTHETIC, 13, 26, use_layernorm=ln)
    assert cost.dead_blocks == [3]
    dead_ops = [(bc.index, o.name) for bc in cost.per_block if bc.live for o in bc.ops if not o.live]
    assert sorted(dead_ops) == [(1, "dot"), (1, "fm"), (4, "dot"), (4, "fc")]
    assert cost.flops < cost.flops_live_blocks
    check_against_reference(SYNTHETIC, 13, 26, ln)


def test_arch_cost_fields() -> None:
    cost = C.arch_cost(SYNTHETIC, 13, 26, table_sizes=[10] * 26, embedding_dim=16)
    assert cost.mflops == cost.flops / 1e6
    assert cost.embedding_params == 260 * 16
    assert cost.params == cost.dense_params + cost.embedding_params
    assert cost.head_input == 16 + 16 * (64 + 8)
    assert len(cost.per_block) == SYNTHETIC.num_blocks
    assert cost.per_block[0].dense_in == 13 and cost.per_block[2].sparse_in == 26 + 24 + 32
    assert cost.dense_params < cost.dense_params_live_blocks < cost.dense_params_with_dead
    assert C.arch_cost(SYNTHETIC).embedding_params == 0
    with pytest.raises(NasrecError, match="table sizes"):
        C.arch_cost(SYNTHETIC, 13, 26, table_sizes=[10] * 3)
    with pytest.raises(NasrecError, match="num_sparse"):
        C.arch_cost(SYNTHETIC, 13, 0)


def test_live_outputs() -> None:
    outputs = live_outputs(SYNTHETIC)
    assert outputs[-1] == (True, True)
    assert outputs[0] == (True, True)
    assert outputs[1] == (False, True)  # only block 2's sparse_in reads block 1
    assert outputs[3] == (False, False)  # the dead block
    assert outputs[4] == (False, True)


# -- the published architectures ---------------------------------------------------------------------
@pytest.fixture
def configs() -> Path:
    if not CONFIGS.is_dir():
        pytest.skip("../shared/configs is not available")
    return CONFIGS


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_flops_and_params(configs: Path, name: str) -> None:
    num_dense, num_sparse, tables = DATASETS[name.split("_")[0]]
    arch = Architecture.load(configs / f"{name}_best.json")
    cost = C.arch_cost(arch, num_dense, num_sparse, tables)
    readme_mflops, fvcore_mflops, params_m = PUBLISHED[name]
    assert cost.mflops == pytest.approx(readme_mflops, rel=0.03)
    # The spec's fvcore measurements have 3 decimals: the analytic count must round to them.
    assert abs(cost.mflops - fvcore_mflops) <= 0.0005
    if name in PUBLISHED_NO_ATTENTION:
        assert abs((cost.flops - cost.attention_flops) / 1e6 - PUBLISHED_NO_ATTENTION[name]) <= 0.005
    else:
        assert cost.attention_flops == 0
    # Published parameter counts are rounded to 0.01 M: the exact count must round to them.
    assert abs(cost.dense_params_with_dead / 1e6 - params_m) <= 0.005
    assert abs(cost.embedding_params / 1e6 - PUBLISHED_EMBEDDING_M[name.split("_")[0]]) <= 0.5
    # Layer norms only add work; the published figures are those of the final, LN-off models.
    assert C.arch_cost(arch, num_dense, num_sparse, use_layernorm=True).flops > cost.flops


@pytest.mark.parametrize("name", ["criteo_xlarge", "avazu_autoctr", "kdd_xlarge"])
def test_published_match_reference_model(configs: Path, name: str) -> None:
    num_dense, num_sparse, _ = DATASETS[name.split("_")[0]]
    check_against_reference(Architecture.load(configs / f"{name}_best.json"), num_dense, num_sparse, ln=False)


def test_served_cost_is_the_one_count_and_states_its_layer_norms() -> None:
    """Caps, the search's history and a trained model's metrics count alike: with the served recipe's layer norms."""
    import numpy as np

    from nasrec.model.spec import ModelSpec
    from nasrec.space.space import NASREC_SMALL

    tables = (5, 12, 30, 60, 8, 20)
    arch = NASREC_SMALL.sample(np.random.default_rng(4), "uniform")
    for ln in (False, True):
        served = C.ServedCost(4, tables, ln)
        expected = C.arch_cost(arch, 4, 6, tables, use_layernorm=ln)
        assert served(arch) == (expected.mflops, expected.dense_params) and served.of(arch) == expected
        trained = ModelSpec(kind="nasrec", num_dense=4, table_sizes=tables, arch=arch.to_dict(), layernorm=ln).cost()
        assert (trained["mflops"], trained["dense_params"]) == served(arch)
    # layer norms cost FLOPs: a count without them is lower than the served model's with them
    assert C.ServedCost(4, tables, True)(arch)[0] > C.ServedCost(4, tables, False)(arch)[0]
    with pytest.raises(TypeError):
        C.ServedCost(4, tables)  # type: ignore[call-arg]  # the layer norms must be stated
