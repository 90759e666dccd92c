"""Profiling a latency table on this machine: each component a space's models run, timed in the serving runtime.

What a table holds and how a prediction adds it up is `nasrec.latency.model`'s docstring. Here:

- **Marginal costs.** A component timed alone in its own session would include the fixed cost of a
  call (feeding inputs, the session's own work, fetching the output), which a whole model pays once.
  So each component is built from nasrec's own layers (a standalone `Cell` with that one operator, or
  the merge's code) and exported as a *probe*: K copies with their own weights, reading the same graph
  inputs, their outputs concatenated into the one output. A *base* probe with the same inputs and no
  copy is timed too, and the entry is (p50(probe) - p50(base)) / K: what one more copy adds to a graph.
  K is 4, or 1 where a copy holds over a million weights (four such copies would not stay in cache as
  one model's layers do, and cost enough to time alone).
- **Protocol.** Probes are exported with a static batch axis (the TorchScript-based ONNX exporter: about
  0.2 s a probe, against seconds for the dynamo exporter that `nasrec export` uses), at each batch size,
  and timed as `nasrec.export.latency.time_calls` times models: `warmup` untimed calls, then `reps`
  timed ones, p50. A full profile of NASRec-Full at batch 1 and 1 thread is about 400 entries.
- **Resumable.** The table file is rewritten atomically after every entry and every calibration
  architecture; a rerun with the same `out` keeps what is there and measures only what is missing.
- **Calibration.** After the entries, `calibration` architectures of the space (seeds from
  `CALIBRATION_SEED`, the ``uniform`` strategy) are exported as `nasrec latency measure` exports them and
  timed end to end; the overhead (`nasrec.latency.model.fit_overhead`) is fitted on them and stored per setting.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasrec.errors import NasrecError
from nasrec.export.backends import ONNX_OPSET, _import_onnx, _quiet
from nasrec.export.latency import DEFAULT_REPS, DEFAULT_WARMUP, _check, measure_model_latency, time_calls
from nasrec.latency.model import (
    DOT_PROBE_DIN,
    FIT_CHOICES,
    TABLE_FORMAT,
    TABLE_VERSION,
    TOKEN_DIM,
    LatencyModel,
    component_keys,
    fit_overhead,
    grids,
    op_axes,
    parse_key,
    read_table,
    setting_key,
    table_embedding_dim,
    table_mismatches,
)
from nasrec.machine import machine_identity
from nasrec.model.cell import Cell, CellSpec, Output
from nasrec.model.cost import arch_cost
from nasrec.model.layers import Seg
from nasrec.model.ops import registry
from nasrec.model.ops.base import OpInput
from nasrec.model.ops.dot import dot_tokens
from nasrec.model.ops.merge import D2S, FM
from nasrec.model.subnet import Subnet
from nasrec.rundir import atomic_write_json
from nasrec.space.arch import Architecture, Block
from nasrec.space.space import SearchSpace

log = logging.getLogger(__name__)

CALIBRATION_SEED = 1_000_000  # calibration architectures: seeds from here, apart from anyone's seeds 0, 1, ...
SMALL_CALIBRATION_SEED = 1_100_000  # the small calibration architectures' seeds
DEFAULT_CALIBRATION = 10
COPIES = 4
BIG_COPY = 1_000_000  # weights of a copy above which a probe holds one copy


# -- probes --------------------------------------------------------------------------------------------
class _CellUnit(nn.Module):
    """One operator in a standalone cell, run on graph inputs laid out as block outputs."""

    def __init__(
        self, block: Block, spec: CellSpec, layout: Sequence[tuple[int | None, int | None]], live: tuple
    ) -> None:
        super().__init__()
        self.cell, self.block, self.layout, self.live = Cell(spec), block, list(layout), live

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        it, inputs = iter(xs), []
        for dense, tokens in self.layout:
            inputs.append(Output(next(it) if dense else None, next(it) if tokens else None))
        out = self.cell(inputs, self.block, self.live)
        return out.dense if self.live[0] else out.tokens


class _FnUnit(nn.Module):
    """A parameter-free component (a concatenation, an addition) as a module."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)


class _MergeUnit(nn.Module):
    """The d2s or fm merge of a block of dense width W and Ws tokens, with its own layers."""

    def __init__(self, merge: str, W: int, Ws: int, ln: bool, e: int) -> None:
        super().__init__()
        self.merge = merge
        self.block = _block((), (), W, Ws, d2s=merge == "d2s", fm=merge == "fm")
        self.spec = spec = _spec((), (), (), (), 1, W, Ws, ln, e, fm=merge == "fm", d2s=merge == "d2s")
        (FM if merge == "fm" else D2S).build(self, spec)  # the merges read a cell's spec, as this one's
        self.W, self.Ws = W, Ws

    def forward(self, dense: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        x = OpInput([], self.block, self.W, self.Ws)
        if self.merge == "d2s":
            return D2S.tokens(self, dense, x)
        return dense + FM.term(self, tokens, x)  # the cell adds the term to the block's dense output


class _Probe(nn.Module):
    """`units` on the same inputs; the output concatenates a sliver of each input and every unit's output."""

    def __init__(self, units: Sequence[nn.Module]) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        b = xs[0].shape[0]
        outs = [x.reshape(b, -1)[:, :1] for x in xs]  # every input is used, so none is pruned
        outs += [u(*xs).reshape(b, -1) for u in self.units]
        return torch.cat(outs, 1)


def _block(
    dense_ops: tuple, sparse_ops: tuple, W: int, Ws: int, n_dense: int = 1, n_tokens: int = 1, **kw: Any
) -> Block:
    return Block(
        dense_ops, sparse_ops, tuple(range(n_dense)), tuple(range(n_tokens)), 0, kw.pop("right", 0), W, Ws, **kw
    )


def _spec(dense_ops: tuple, sparse_ops: tuple, dsegs: tuple, tsegs: tuple, pad: int, W: int, Ws: int, ln: bool,
          e: int, fm: bool = False, d2s: bool = False) -> CellSpec:  # fmt: skip
    return CellSpec(dense_ops, sparse_ops, dsegs, tsegs, pad, W, Ws, fm, d2s, ln, exact=True, embedding_dim=e)


def _component(key: str, ln: bool, E: int = TOKEN_DIM) -> tuple[Callable[[], nn.Module], list[tuple[int, ...]], str]:
    """(a maker of one copy, the graph inputs' shapes without the batch axis, the inputs' signature) of `key`.

    `E` is the tokens' width (the space's embedding_dim)."""
    name, a, b = parse_key(key)
    if name in ("cat_dense", "cat_tokens"):
        # a (width or tokens) split into b pieces as evenly as integers allow
        sizes = [a // b + (1 if k < a % b else 0) for k in range(b)]
        shapes = [(s,) for s in sizes] if name == "cat_dense" else [(s, E) for s in sizes]
        return (lambda: _FnUnit(lambda *xs: torch.cat(xs, 1))), shapes, f"{name}{sizes}"
    if name in ("add_dense", "add_tokens"):
        shape = (a,) if name == "add_dense" else (a, E)
        return (lambda: _FnUnit(lambda x, y: x + y)), [shape, shape], f"two {shape}"
    if name == "d2s":
        return (lambda: _MergeUnit("d2s", a, E, ln, E)), [(a,)], f"dense {a}"
    if name == "fm":
        return (lambda: _MergeUnit("fm", b, a, ln, E)), [(b,), (a, E)], f"dense {b}, tokens {a}"
    axis, exact = op_axes(name)
    kind = registry.get(name).kind
    W, Ws = (b, E) if exact == "W" else (E, b)
    dense_ops, sparse_ops = ((name,), ()) if kind == "dense" else ((), (name,))
    live = (True, False) if kind == "dense" else (False, True)
    if axis == "din":
        layout, shapes = [(1, None)], [(a,)]
        block, spec = (
            _block(dense_ops, sparse_ops, W, Ws),
            _spec(dense_ops, sparse_ops, (Seg(0, a),), (), 1, W, Ws, ln, E),
        )
    elif axis == "m":  # left and right two inputs m wide: both padded by 0, as sum/gating/cross pad the narrower
        layout, shapes = [(1, None), (1, None)], [(a,), (a,)]
        block = _block(dense_ops, sparse_ops, W, Ws, n_dense=2, n_tokens=2, right=1)
        spec = replace(_spec(dense_ops, sparse_ops, (), (), a, W, Ws, ln, E), pair_widths=(a, a))  # fuse's chunks
    elif name == "dot":
        # dot leaves out its token projection when the input already has p tokens, a case rare enough to
        # price as the projection's neighbour: a grid point at p is measured at p + 1
        t = a + 1 if a == dot_tokens(W) else a
        layout, shapes = [(1, 1)], [(DOT_PROBE_DIN,), (t, E)]
        block = _block(dense_ops, sparse_ops, W, Ws)
        spec = _spec(dense_ops, sparse_ops, (Seg(0, DOT_PROBE_DIN),), (Seg(0, t),), 1, W, Ws, ln, E)
    else:  # tokens in
        layout, shapes = [(None, 1)], [(a, E)]
        block, spec = (
            _block(dense_ops, sparse_ops, W, Ws),
            _spec(dense_ops, sparse_ops, (), (Seg(0, a),), 1, W, Ws, ln, E),
        )
    return (lambda: _CellUnit(block, spec, layout, live)), shapes, f"{layout} {shapes}"


class _Timer:
    """Exports probes and times them in one runtime at one batch size, on fixed random inputs."""

    def __init__(self, runtime: str, warmup: int, reps: int, tmp: Path) -> None:
        self.runtime, self.warmup, self.reps, self.tmp = runtime, warmup, reps, tmp
        self.rng = np.random.default_rng(0)

    def p50(self, probe: nn.Module, shapes: list[tuple[int, ...]], batch: int, threads: Sequence[int]) -> list[float]:
        """p50 milliseconds of `probe` at each thread count."""
        probe.eval()
        xs = [torch.from_numpy(self.rng.standard_normal((batch, *s)).astype(np.float32)) for s in shapes]
        names = [f"x{k}" for k in range(len(xs))]
        path = self.tmp / ("probe.onnx" if self.runtime == "onnxruntime" else "probe.pt")
        with _quiet(), torch.no_grad():
            if self.runtime == "onnxruntime":
                # static shapes: the table is per batch size, and this exporter is ~10x faster than dynamo
                torch.onnx.export(probe, tuple(xs), str(path), dynamo=False, opset_version=min(ONNX_OPSET, 18),
                                  input_names=names, output_names=["y"])  # fmt: skip
            else:
                torch.jit.save(torch.jit.trace(probe, tuple(xs), check_trace=False), str(path))
        out = []
        for n in threads:
            run = self._runner(path, n, names, xs)
            out.append(time_calls(run, self.warmup, self.reps)["p50_ms"])
        return out

    def _runner(self, path: Path, threads: int, names: list[str], xs: list[torch.Tensor]) -> Callable[[], Any]:
        if self.runtime == "onnxruntime":
            ort = _import_onnx()["onnxruntime"]
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {n: x.numpy() for n, x in zip(names, xs, strict=True)}
            return lambda: session.run(["y"], feed)
        torch.set_num_threads(threads)
        scripted = torch.jit.load(str(path))

        def run() -> Any:
            with torch.inference_mode():
                return scripted(*xs)

        return run


# -- the table -----------------------------------------------------------------------------------------
def _identity(space: SearchSpace, num_dense: int, num_sparse: int, runtime: str, layernorm: bool) -> dict[str, Any]:
    return {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "machine": machine_identity(),
        "space": space.to_dict(),
        "shape": {"num_dense": num_dense, "num_sparse": num_sparse},
        "runtime": runtime,
        "layernorm": layernorm,
    }


def _start(out: Path, ident: dict[str, Any], batches: Sequence[int], threads: Sequence[int], warmup: int, reps: int,
           grid: dict[str, list[int]], force: bool) -> dict[str, Any]:  # fmt: skip
    """The table to fill: the one in `out` (resumed) when it is for the same use, else a new one."""
    if not out.exists():
        table = {**ident, "batches": [], "threads": [], "warmup": warmup, "reps": reps, "grids": grid, "settings": {}}
    else:
        table = read_table(out)
        space = SearchSpace.from_dict(ident["space"])
        shape = ident["shape"]
        problems = table_mismatches(table, space=space, num_dense=shape["num_dense"], num_sparse=shape["num_sparse"],
                                    runtime=ident["runtime"], layernorm=ident["layernorm"], machine=ident["machine"])  # fmt: skip
        if (table["warmup"], table["reps"]) != (warmup, reps):
            problems.append(f"timed with warmup {table['warmup']} / reps {table['reps']}, not {warmup} / {reps}")
        if problems and not force:
            raise NasrecError(
                f"{out}: holds a latency table {problems[0]}; resume it as it was made or pick another --out"
            )
        if problems:
            log.warning("%s: resuming a latency table %s (--force)", out, "; ".join(problems))
            table.setdefault("warnings", []).extend(problems)
        log.info("%s: resuming (%d settings present)", out, len(table["settings"]))
    table["batches"] = sorted({*table["batches"], *batches})
    table["threads"] = sorted({*table["threads"], *threads})
    for b in batches:
        for t in threads:
            table["settings"].setdefault(
                setting_key(b, t), {"batch": b, "threads": t, "entries": {}, "calibration": []}
            )
    return table


def profile_table(
    space: SearchSpace,
    num_dense: int,
    table_sizes: Sequence[int],
    out: str | Path,
    *,
    runtime: str = "onnxruntime",
    batches: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    warmup: int = DEFAULT_WARMUP,
    reps: int = DEFAULT_REPS,
    layernorm: bool = False,
    calibration: int = DEFAULT_CALIBRATION,
    fit_form: str = "auto",
    force: bool = False,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure (or finish) the latency table of `space` at a data shape into `out`; returns the table.

    `keys` limits the entries to those (tests); `calibration` architectures are then timed end to end
    and the overhead fitted (`fit_form`, see `nasrec.latency.model.fit_overhead`) per setting.
    """
    _check(runtime, batches, threads, warmup, reps)
    if fit_form not in FIT_CHOICES:
        raise NasrecError(f"latency fit form must be one of {', '.join(FIT_CHOICES)}, not {fit_form!r}")
    if calibration < 3:
        raise NasrecError(f"a latency profile needs at least 3 calibration architectures, got {calibration}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    num_sparse = len(table_sizes)
    grid = grids(space, num_dense, num_sparse)
    wanted = list(keys) if keys is not None else component_keys(space, grid)
    table = _start(out, _identity(space, num_dense, num_sparse, runtime, layernorm), batches, threads, warmup, reps,
                   grid, force)  # fmt: skip
    table["grids"] = grid
    atomic_write_json(out, table)
    before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="nasrec-latency-table-") as tmp:
            timer = _Timer(runtime, warmup, reps, Path(tmp))
            for batch in batches:
                _profile_batch(table, out, timer, wanted, batch, threads, layernorm, space.embedding_dim)
        _calibrate(table, out, space, num_dense, table_sizes, runtime, batches, threads, warmup, reps, layernorm,
                   calibration, fit_form)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return table


def _profile_batch(table: dict, out: Path, timer: _Timer, wanted: list[str], batch: int, threads: Sequence[int],
                   ln: bool, e: int) -> None:  # fmt: skip
    """Measure the entries missing at `batch` for any of `threads` (all thread counts share an export)."""
    settings = [table["settings"][setting_key(batch, t)] for t in threads]
    todo = [k for k in wanted if any(k not in s["entries"] for s in settings)]
    bases: dict[str, list[float]] = {}
    torch.manual_seed(0)
    for n, key in enumerate(todo, 1):
        make, shapes, signature = _component(key, ln, e)
        if signature not in bases:
            bases[signature] = timer.p50(_Probe([]), shapes, batch, threads)
        one = make()
        k = 1 if sum(p.numel() for p in one.parameters()) > BIG_COPY else COPIES
        probe = _Probe([one, *(make() for _ in range(k - 1))])
        p50s = timer.p50(probe, shapes, batch, threads)
        for s, p, base in zip(settings, p50s, bases[signature], strict=True):
            # noise can make a tiny component's difference negative: it costs at least nothing
            s["entries"][key] = round(max(0.0, (p - base) / k), 6)
        atomic_write_json(out, table)
        log.info("latency profile, batch %d: %d/%d %s = %s ms", batch, n, len(todo), key,
                 ", ".join(f"{s['entries'][key]:.4f}" for s in settings))  # fmt: skip


def calibration_archs(
    space: SearchSpace, count: int, cost: Callable[[Architecture], float] | None = None
) -> list[tuple[int, Architecture]]:
    """(seed, architecture) of the calibration architectures of `space`: half drawn uniformly, half small.

    Uniform draws keep most blocks live at middling widths (0.1-0.7 ms on 10-40 fields), so an overhead
    fitted on them alone extrapolates badly to the small models a tight cap lets through (on Frappe's 10
    fields its intercept came out at -0.033 ms and the smallest models' predictions negative). The small
    half (`small_arch`) has one to all blocks live at the narrowest widths, and pins the fit there; with
    `cost` (e.g. FLOPs at the data's shape) the first of them is the cheapest model of the space: one live
    block, the narrowest widths and the operator pair of least cost.
    """
    big = (count + 1) // 2
    archs = [(CALIBRATION_SEED + k, space.sample(np.random.default_rng(CALIBRATION_SEED + k), "uniform"))
             for k in range(big)]  # fmt: skip
    n, last = count - big, space.num_blocks - 1
    # the last block reads output j, spread from the raw inputs (one live block) to its predecessor
    reads = [round(k * last / max(1, n - 1)) for k in range(n)]
    small = [small_arch(space, np.random.default_rng(SMALL_CALIBRATION_SEED + k), reads[k]) for k in range(n)]
    if cost is not None and small:
        chain = space.smallest_path(cost).blocks[-1]  # its last block reading the raw inputs: one live block
        small[0] = small[0].with_blocks(
            (*small[0].blocks[:-1], replace(chain, dense_in=(0,), sparse_in=(0,), left=0, right=0))
        )
    return archs + [(SMALL_CALIBRATION_SEED + k, a) for k, a in enumerate(small)]


def small_arch(space: SearchSpace, rng: np.random.Generator, j: int) -> Architecture:
    """A uniform draw made small: every block at one of the space's narrowest widths, and the last block reading
    output `j` only (0: the raw inputs; j: block j-1's), so that only it and block j-1's ancestors are live."""
    arch = space.sample(rng, "uniform")
    dense, sparse = space.dense_widths[:3], space.sparse_widths[:2]
    blocks = [replace(b, dense_width=int(rng.choice(dense)), sparse_width=int(rng.choice(sparse))) for b in arch.blocks]
    blocks[-1] = replace(blocks[-1], dense_in=(j,), sparse_in=(j,), left=j, right=j)
    return arch.with_blocks(blocks)


def _calibrate(table: dict, out: Path, space: SearchSpace, num_dense: int, table_sizes: Sequence[int], runtime: str,
               batches: Sequence[int], threads: Sequence[int], warmup: int, reps: int, ln: bool, count: int,
               form: str) -> None:  # fmt: skip
    """Time the calibration architectures end to end (those not yet in the table) and fit each setting's overhead."""
    names = [setting_key(b, t) for b in batches for t in threads]

    def flops(a: Architecture) -> float:
        return arch_cost(a, num_dense, len(table_sizes), table_sizes, use_layernorm=ln).flops

    for seed, arch in calibration_archs(space, count, flops):
        if all(any(p["seed"] == seed for p in table["settings"][n]["calibration"]) for n in names):
            continue
        model = Subnet(arch, num_dense, table_sizes, layernorm=ln)
        res = measure_model_latency(model, num_dense, table_sizes, runtime=runtime, batches=batches, threads=threads,
                                    warmup=warmup, reps=reps)  # fmt: skip
        for r in res["results"]:
            points = table["settings"][setting_key(r["batch"], r["threads"])]["calibration"]
            points[:] = [p for p in points if p["seed"] != seed]
            points.append({"seed": seed, "measured_ms": r["p50_ms"], "arch": arch.to_dict()})
        atomic_write_json(out, table)
        log.info(
            "latency calibration: seed %d measured %s ms", seed, ", ".join(str(r["p50_ms"]) for r in res["results"])
        )
    for name in names:
        setting = table["settings"][name]
        setting["fit"] = fit_setting(table, setting, form)
        log.info("latency fit, %s: %s", name, setting["fit"])
    atomic_write_json(out, table)


def fit_setting(table: dict[str, Any], setting: dict[str, Any], form: str = "auto") -> dict[str, Any]:
    """The overhead fit of one setting from its calibration points (`nasrec.latency.model.fit_overhead`)."""
    model = model_of(table, setting)
    points = []
    for p in setting["calibration"]:
        arch = Architecture.from_dict(p["arch"])
        point = {"measured_ms": p["measured_ms"], "components_ms": model.component_sum(arch),
                 "head_inputs": model.head_inputs(arch)}  # fmt: skip
        if form in ("params", "auto"):
            point["params_m"] = model.params_m(arch)
        points.append(point)
    return fit_overhead(points, form)


def model_of(table: dict[str, Any], setting: dict[str, Any]) -> LatencyModel:
    """The latency model of one setting of a table as it stands (fit or none), without any checks."""
    return LatencyModel(
        entries={k: float(v) for k, v in setting["entries"].items()},
        num_dense=table["shape"]["num_dense"],
        num_sparse=table["shape"]["num_sparse"],
        batch=setting["batch"],
        threads=setting["threads"],
        fit=dict(setting.get("fit") or {}),
        layernorm=table["layernorm"],
        embedding_dim=table_embedding_dim(table),
    )
