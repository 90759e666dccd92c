"""Predicted serving latency of an architecture: a latency table's per-component costs, added up, plus a fitted overhead.

A latency table (`nasrec.export.latency_table.profile_table`, ``nasrec latency profile``) holds, for one
machine, search space, data shape and serving runtime, the *marginal* cost in milliseconds of each thing
a materialised `Subnet` runs per block, at each batch size and thread count profiled:

- an operator at the sizes its latency depends on: ``fc`` (width of its concatenated dense input, W);
  ``dot`` (tokens in, W; its dense projection to one token, e wide, is added as ``fc`` to e at the dense
  input's width);
  ``flat`` (tokens in, W); ``sum`` / ``gating`` / ``cross`` / ``bilinear`` / ``fuse`` (m = the wider of left
  and right, W; fuse probed with both m wide);
  ``efc`` / ``transformer`` (tokens in, Ws);
- what a block adds around them: the concatenation of several dense inputs (``cat_dense``: input count,
  width) or token inputs (``cat_tokens``: pieces, tokens; a d2s input is two pieces), the sum of several
  dense or sparse operators' outputs (``add_dense`` W, ``add_tokens`` Ws), and the merges ``d2s`` (W) and
  ``fm`` (Ws, W, with the addition to the dense output).

Input widths and token counts vary continuously with the connections, so those axes are measured on a
grid and interpolated linearly between its points (a GEMV's time is close to affine in its input width
at a fixed output width); the other axis (W, Ws, input count) is measured at every value the space
allows. Everything a model pays once (session call, embedding lookup, head, output sigmoid) is the
*overhead*: intercept + a cost per head input feature, fitted by least squares on calibration
architectures measured end to end and stored in the table (``calibration``). Two small learned
corrections are the other fit forms: ``scaled`` fits a scale on the components' sum as well (probes
timed in isolation may be systematically off), ``params`` a cost per million non-embedding parameters
(a whole model streams more weights per call than any probe, so more of them come from farther caches).

`LatencyModel.predict` is pure Python arithmetic (a walk over the blocks and dictionary look-ups):
microseconds per architecture, so a search can call it for every candidate. A table is only valid for
the machine, space, data shape, runtime, batch size and thread count it was measured at: `load_latency_model`
refuses any other, naming what differs, unless ``force`` (then `LatencyModel.warnings` says why the
figures may not hold).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasrec.errors import NasrecError
from nasrec.model.ops import registry
from nasrec.space.arch import Architecture
from nasrec.space.liveness import live_outputs
from nasrec.space.space import SearchSpace

TABLE_FORMAT = "nasrec-latency-table"
TABLE_VERSION = 1
D2S_TOKENS = 8
TOKEN_DIM = 16  # the tokens' width (e) of a table whose space does not set embedding_dim
FIT_FORMS = ("overhead", "scaled", "params")
# "auto": the form of least leave-one-out error on the calibration points (`choose_fit`)
FIT_CHOICES = (*FIT_FORMS, "auto")
DOT_PROBE_DIN = 64  # dot is profiled with a dense input this wide; its projection at other widths is fc(din -> e)


def setting_key(batch: int, threads: int) -> str:
    """The table's key of one (batch size, thread count) setting."""
    return f"batch {batch}, threads {threads}"


def entry_key(component: str, a: int, b: int = 0) -> str:
    """The key of one component at interpolated size `a` and exact size `b`: ``fc|256|512`` (input 256, W 512)."""
    return f"{component}|{a}|{b}"


def op_axes(op: str) -> tuple[str, str]:
    """(interpolated axis, exact axis) of an operator's latency: din / tin / m against W / Ws."""
    reads = registry.get(op).reads
    kind = registry.get(op).kind
    if op == "dot":
        return "tin", "W"  # plus its dense projection, counted as fc(din -> e)
    if kind == "sparse" and reads == {"sparse_in"}:
        return "tin", "Ws"
    if kind == "dense" and reads == {"dense_in"}:
        return "din", "W"
    if kind == "dense" and reads == {"sparse_in"}:
        return "tin", "W"
    if kind == "dense" and reads == {"left", "right"}:
        return "m", "W"
    raise NasrecError(f"latency table: no latency probe for operator {op!r} (it reads {', '.join(sorted(reads))})")


def _geometric(lo: int, hi: int, points: int) -> list[int]:
    """About `points` integers from lo to hi, evenly spaced on a log scale (both ends included)."""
    if hi <= lo:
        return [lo]
    return sorted({round(lo * (hi / lo) ** (k / (points - 1))) for k in range(points)})


def grids(space: SearchSpace, num_dense: int, num_sparse: int) -> dict[str, list[int]]:
    """The measured points of each axis for `space` at a data shape (what `profile_table` measures)."""
    k = space.max_inputs
    dense_sizes = sorted([num_dense, *space.dense_widths])
    token_sizes = sorted([num_sparse, *(w + D2S_TOKENS for w in space.sparse_widths)])
    # inputs are distinct blocks, but blocks may share a width: k inputs of the widest
    max_din = k * max(dense_sizes)
    max_tin = k * max(token_sizes)
    min_din = min(num_dense, *space.dense_widths)
    min_tin = min(num_sparse, *space.sparse_widths)
    # every single-input width exactly (the commonest case), then a geometric grid up to the widest concatenation
    din = sorted({*dense_sizes, *_geometric(max(dense_sizes), max_din, 3), min_din, DOT_PROBE_DIN})
    tin = sorted({min_tin, num_sparse, *_geometric(max(min_tin, 16), max_tin, 6)})
    return {
        "din": din,
        "tin": tin,
        "m": sorted({num_dense, *space.dense_widths}),
        "W": list(space.dense_widths),
        "Ws": list(space.sparse_widths),
        "cat_n": list(range(2, k + 1)),
        "cat_pieces": list(range(2, 2 * k + 1)),
        "cat_din": sorted({min(128, max_din), max_din}),
        "cat_tin": sorted({min(64, max_tin), max_tin}),
    }


def component_keys(space: SearchSpace, g: dict[str, list[int]]) -> list[str]:
    """Every entry a table of `space` holds per setting, in the order `profile_table` measures them."""
    keys = []
    ops = [*space.dense_ops, *space.sparse_ops]
    for op in ops:
        axis, exact = op_axes(op)
        keys += [entry_key(op, a, b) for b in g[exact] for a in g[axis]]
    if "dot" in ops:  # its dense projection, whether or not the space has fc to e
        keys += [entry_key("fc", a, space.embedding_dim) for a in g["din"]]
    keys += [entry_key("cat_dense", d, n) for n in g["cat_n"] for d in g["cat_din"]]
    keys += [entry_key("cat_tokens", t, n) for n in g["cat_pieces"] for t in g["cat_tin"]]
    keys += [entry_key("add_dense", w) for w in g["W"]] + [entry_key("add_tokens", w) for w in g["Ws"]]
    keys += [entry_key("d2s", w) for w in g["W"]]
    keys += [entry_key("fm", ws, w) for ws in g["Ws"] for w in g["W"]]
    return list(dict.fromkeys(keys))


def parse_key(key: str) -> tuple[str, int, int]:
    """(component, a, b) of an entry key."""
    name, a, b = key.split("|")
    return name, int(a), int(b)


def _interp(points: Sequence[tuple[int, float]], x: float) -> float:
    """Piecewise-linear interpolation of sorted (x, y) points at x; linear extrapolation off the ends."""
    if len(points) == 1:
        return points[0][1]
    k = 1
    while k < len(points) - 1 and x > points[k][0]:
        k += 1
    (x0, y0), (x1, y1) = points[k - 1], points[k]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class LatencyModel:
    """An architecture's predicted latency at one (batch, threads) setting of a latency table."""

    entries: dict[str, float]  # component key -> marginal milliseconds
    num_dense: int
    num_sparse: int
    batch: int
    threads: int
    fit: dict[str, float] = field(default_factory=dict)  # intercept_ms, head_ms_per_input, scale, ...
    layernorm: bool = False
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    embedding_dim: int = TOKEN_DIM  # the tokens' width the table was measured at (its space's)

    def __post_init__(self) -> None:
        # per (component, exact value): the sorted points of the interpolated axis, for `_cost`
        self._curves: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for key, ms in self.entries.items():
            name, a, b = parse_key(key)
            self._curves.setdefault((name, b), []).append((a, ms))
        for pts in self._curves.values():
            pts.sort()

    def _cost(self, name: str, a: float, b: int) -> float:
        """A component's milliseconds at interpolated size `a` and exact size `b`."""
        curve = self._curves.get((name, b))
        if curve is None:
            raise NasrecError(f"latency table{' ' + self.source if self.source else ''}: no entries for {name} at {b}")
        return _interp(curve, a)

    def components(self, arch: Architecture) -> list[tuple[str, float]]:
        """(what, milliseconds) of every component the materialised `Subnet` of `arch` runs, block by block."""
        if arch.first_order:  # no search space offers it, so no table profiles it
            raise NasrecError(
                f"latency table{' ' + self.source if self.source else ''}: no entries for a first-order term (first_order)"
            )
        out: list[tuple[str, float]] = []
        widths = [self.num_dense] + [b.dense_width for b in arch.blocks]
        tokens = [self.num_sparse] + [b.sparse_width for b in arch.blocks]
        has_d2s = [False] + [b.d2s for b in arch.blocks]
        # Mirrors `Cell.forward` on a standalone model: a block runs only the sides whose outputs reach the head.
        for i, (b, (dense_live, sparse_live)) in enumerate(zip(arch.blocks, live_outputs(arch), strict=True)):
            if not (dense_live or sparse_live):
                continue
            dense_on = dense_live or (b.d2s and sparse_live)
            sparse_on = sparse_live or (b.fm and dense_live)
            dense_ops = list(b.dense_ops) if dense_on else []
            sparse_ops = list(b.sparse_ops) if sparse_on else []
            reads = set().union(*(registry.get(op).reads for op in (*dense_ops, *sparse_ops)))
            W, Ws = b.dense_width, b.sparse_width
            din = sum(widths[j] for j in b.dense_in)
            tin = sum(tokens[j] + (D2S_TOKENS if has_d2s[j] else 0) for j in b.sparse_in)
            pieces = sum(2 if has_d2s[j] else 1 for j in b.sparse_in)
            where = f"block {i}"
            if "dense_in" in reads and len(b.dense_in) > 1:
                out.append((f"{where} cat_dense", self._cost("cat_dense", din, len(b.dense_in))))
            if "sparse_in" in reads and pieces > 1:
                out.append((f"{where} cat_tokens", self._cost("cat_tokens", tin, pieces)))
            for op in (*dense_ops, *sparse_ops):
                axis, exact = op_axes(op)
                a = {"din": din, "tin": tin, "m": max(widths[b.left], widths[b.right])}[axis]
                ms = self._cost(op, a, W if exact == "W" else Ws)
                if op == "dot":  # its dense projection din -> e, measured as the probe's (at din 64) replaced
                    e = self.embedding_dim
                    proj = 0.0 if din == e else self._cost("fc", din, e)
                    ms += proj - self._cost("fc", DOT_PROBE_DIN, e)
                out.append((f"{where} {op}", ms))
            if len(dense_ops) > 1:
                out.append((f"{where} add_dense", (len(dense_ops) - 1) * self._cost("add_dense", W, 0)))
            if len(sparse_ops) > 1:
                out.append((f"{where} add_tokens", (len(sparse_ops) - 1) * self._cost("add_tokens", Ws, 0)))
            if b.d2s and sparse_live:
                out.append((f"{where} d2s", self._cost("d2s", W, 0)))
            if b.fm and dense_live:
                out.append((f"{where} fm", self._cost("fm", Ws, W)))
        return out

    def head_inputs(self, arch: Architecture) -> int:
        """Features the head reads: the last block's dense width plus e per token (with its d2s tokens)."""
        last = arch.blocks[-1]
        return last.dense_width + self.embedding_dim * (last.sparse_width + (D2S_TOKENS if last.d2s else 0))

    def component_sum(self, arch: Architecture) -> float:
        """Milliseconds of the table's components for `arch`, without the overhead."""
        return sum(ms for _, ms in self.components(arch))

    def params_m(self, arch: Architecture) -> float:
        """The model's non-embedding parameters in millions (what it streams from memory per call)."""
        from nasrec.model.cost import arch_cost

        return arch_cost(arch, self.num_dense, self.num_sparse, use_layernorm=self.layernorm).dense_params / 1e6

    def predict(self, arch: Architecture) -> float:
        """Predicted p50 latency in milliseconds of `arch`'s exported model at this setting."""
        if arch.embedding_dim != self.embedding_dim:
            raise NasrecError(
                f"latency table {self.source}: measured at {self.embedding_dim}-wide tokens; the architecture's "
                f"embedding_dim is {arch.embedding_dim} (profile a table for a space of that embedding_dim)"
            )
        if not self.fit:
            raise NasrecError(
                f"latency table {self.source}: not calibrated (no overhead fit); run the profile to the end"
            )
        point = {"head_inputs": self.head_inputs(arch), "components_ms": self.component_sum(arch)}
        if "ms_per_million_params" in self.fit:  # form params: weights beyond what the probes held in cache
            point["params_m"] = self.params_m(arch)
        return predict_point(self.fit, point)


def fit_overhead(points: Sequence[dict[str, float]], form: str = "overhead") -> dict[str, Any]:
    """Least-squares overhead of a form (`FIT_CHOICES`) on calibration points; see the module docstring.

    Each point holds measured_ms, components_ms (the table's sum), head_inputs and (forms ``params`` and
    ``auto``) params_m, the model's non-embedding parameters in millions, of one calibration architecture.
    """
    import numpy as np

    if form == "auto":
        return choose_fit(points)
    if form not in FIT_FORMS:
        raise NasrecError(f"latency fit form must be one of {', '.join(FIT_CHOICES)}, not {form!r}")
    if len(points) < 3:
        raise NasrecError(f"latency fit needs at least 3 calibration architectures, got {len(points)}")
    y = np.array([p["measured_ms"] for p in points])
    s = np.array([p["components_ms"] for p in points])
    cols = [np.ones_like(y), np.array([p["head_inputs"] for p in points], dtype=float)]
    if form == "scaled":
        cols.append(s)
    if form == "params":
        cols.append(np.array([p["params_m"] for p in points], dtype=float))
    X = np.stack(cols, axis=1)
    target = y if form == "scaled" else y - s
    # relative errors are what the model is judged on: weight each point by 1 / measured
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(X * w[:, None], target * w, rcond=None)
    fit = {"form": form, "intercept_ms": float(coef[0]), "head_ms_per_input": float(coef[1]), "scale": 1.0}
    if form == "scaled":
        fit["scale"] = float(coef[2])
    if form == "params":
        fit["ms_per_million_params"] = float(coef[2])
    return fit


def predict_point(fit: dict[str, Any], point: dict[str, float]) -> float:
    """A fit's prediction in milliseconds from a model's head inputs, table sum and (form params) params_m."""
    ms = fit["intercept_ms"] + fit["head_ms_per_input"] * point["head_inputs"]
    ms += fit.get("scale", 1.0) * point["components_ms"]
    if "ms_per_million_params" in fit:
        ms += fit["ms_per_million_params"] * point["params_m"]
    return ms


def loo_errors(points: Sequence[dict[str, float]], form: str) -> list[float]:
    """Relative errors |predicted / measured - 1| of each point under a fit of `form` to all the others."""
    errors = []
    for i, point in enumerate(points):
        fit = fit_overhead([*points[:i], *points[i + 1 :]], form)
        errors.append(abs(predict_point(fit, point) / point["measured_ms"] - 1.0))
    return errors


def choose_fit(points: Sequence[dict[str, float]]) -> dict[str, Any]:
    """The fit form whose leave-one-out errors are least (90th percentile, then median), fitted on every point.

    Which correction a table needs depends on the machine and the data shape: at Criteo's shape the plain
    overhead met the targets, at Frappe's (10 fields, no dense) the large models needed ``params``
    (BENCHMARKS.md, "Latency tables"). Each form is judged on the points it was not fitted on, so a form
    with one more coefficient wins only where it predicts better, not because it fits more closely. With
    fewer than 5 points (4 for the fit of a 3-coefficient form) it is ``overhead``. The fit records each
    form's leave-one-out median and 90th percentile (``loo``).
    """
    import numpy as np

    if len(points) < 5:
        return fit_overhead(points, "overhead")
    loo = {}
    for form in FIT_FORMS:
        e = np.array(loo_errors(points, form))
        loo[form] = {"median": round(float(np.median(e)), 4), "p90": round(float(np.quantile(e, 0.9)), 4)}
    # ties (within rounding) go to the earlier, simpler form
    best = min(FIT_FORMS, key=lambda f: (loo[f]["p90"], loo[f]["median"], FIT_FORMS.index(f)))
    return {**fit_overhead(points, best), "chosen": "auto", "loo": loo}


# -- table files -----------------------------------------------------------------------------------------
_REQUIRED = {
    "format": str,
    "machine": dict,
    "space": dict,
    "shape": dict,
    "runtime": str,
    "layernorm": bool,
    "batches": list,
    "threads": list,
    "warmup": int,
    "reps": int,
    "grids": dict,
    "settings": dict,
}


def read_table(path: str | Path) -> dict[str, Any]:
    """A latency table file, its structure checked: a malformed file is a one-line error naming the key."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise NasrecError(f"{path}: no such latency table") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NasrecError(f"{path}: not a JSON latency table ({str(e).splitlines()[0]})") from None
    if not isinstance(table, dict):
        raise NasrecError(f"{path}: a latency table is a JSON object, got {type(table).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in table:
            raise NasrecError(f"{path}: latency table has no key {key!r}")
        if not isinstance(table[key], kind) or (kind is int and isinstance(table[key], bool)):
            raise NasrecError(f"{path}: latency table key {key!r} must be a {kind.__name__}")
    if table["format"] != TABLE_FORMAT:
        raise NasrecError(f"{path}: key 'format' is {table['format']!r}, not {TABLE_FORMAT!r}")
    for key in ("num_dense", "num_sparse"):
        if not isinstance(table["shape"].get(key), int):
            raise NasrecError(f"{path}: latency table key 'shape.{key}' must be an integer")
    for name, setting in table["settings"].items():
        where = f"settings.{name}"
        if not isinstance(setting, dict) or not isinstance(setting.get("entries"), dict):
            raise NasrecError(f"{path}: latency table key '{where}.entries' must be a mapping")
        for key, ms in setting["entries"].items():
            try:
                parse_key(key)
            except ValueError:
                raise NasrecError(f"{path}: latency table key '{where}.entries.{key}' is not component|a|b") from None
            if not isinstance(ms, int | float) or isinstance(ms, bool):
                raise NasrecError(f"{path}: latency table key '{where}.entries.{key}' must be a number")
        for k, point in enumerate(setting.get("calibration", [])):
            ok = isinstance(point, dict) and isinstance(point.get("seed"), int) and isinstance(point.get("arch"), dict)
            if not (ok and isinstance(point.get("measured_ms"), int | float)):
                raise NasrecError(
                    f"{path}: latency table key '{where}.calibration[{k}]' needs seed, measured_ms and arch"
                )
        fit = setting.get("fit")
        if fit is not None:
            for key in ("intercept_ms", "head_ms_per_input"):
                if not isinstance(fit, dict) or not isinstance(fit.get(key), int | float):
                    raise NasrecError(f"{path}: latency table key '{where}.fit.{key}' must be a number")
    return table


def table_mismatches(
    table: dict[str, Any],
    *,
    space: SearchSpace | None = None,
    num_dense: int | None = None,
    num_sparse: int | None = None,
    runtime: str | None = None,
    layernorm: bool | None = None,
    machine: dict[str, Any] | None = None,
) -> list[str]:
    """What differs between a table and the requested use (empty when the table applies)."""
    out = []
    if machine is not None:
        mine = f"{machine.get('cpu')} ({machine.get('cpu_capability')})"
        theirs = f"{table['machine'].get('cpu')} ({table['machine'].get('cpu_capability')})"
        if mine != theirs:
            out.append(f"measured on {theirs}, this machine is {mine}")
    if space is not None and table["space"] != space.to_dict():
        name = table["space"].get("name")
        what = "" if name != space.name else " (same name, other choices)"
        out.append(f"measured for space {name!r}{what}, not {space.name!r}")
    shape = table["shape"]
    if num_dense is not None and (shape["num_dense"], shape["num_sparse"]) != (num_dense, num_sparse):
        out.append(
            f"measured at {shape['num_dense']} dense / {shape['num_sparse']} sparse fields, "
            f"the data has {num_dense} / {num_sparse}"
        )
    if runtime is not None and table["runtime"] != runtime:
        out.append(f"measured in {table['runtime']}, not {runtime}")
    if layernorm is not None and table["layernorm"] != layernorm:
        out.append(f"measured {'with' if table['layernorm'] else 'without'} layer norms, the models have them "
                   f"{'on' if layernorm else 'off'}")  # fmt: skip
    return out


def load_latency_model(
    path: str | Path,
    space: SearchSpace,
    num_dense: int,
    num_sparse: int,
    *,
    runtime: str = "onnxruntime",
    batch: int = 1,
    threads: int = 1,
    layernorm: bool = False,
    force: bool = False,
    machine: dict[str, Any] | None = None,
) -> LatencyModel:
    """The latency model of a table file at (batch, threads); a table for another use is refused unless `force`."""
    from nasrec.machine import machine_identity

    table = read_table(path)
    problems = table_mismatches(
        table,
        space=space,
        num_dense=num_dense,
        num_sparse=num_sparse,
        runtime=runtime,
        layernorm=layernorm,
        machine=machine if machine is not None else machine_identity(),
    )
    setting = table["settings"].get(setting_key(batch, threads))
    if setting is None or not setting.get("fit"):
        have = ", ".join(k for k, v in table["settings"].items() if v.get("fit")) or "none calibrated"
        # a setting that was never measured cannot be forced: there is nothing to predict from
        raise NasrecError(f"{path}: latency table has no calibrated setting batch {batch}, threads {threads} ({have})")
    if problems and not force:
        raise NasrecError(f"{path}: latency table {problems[0]}" + (" (and more)" if len(problems) > 1 else "")
                          + "; --force uses it anyway")  # fmt: skip
    warnings = [f"latency table {path} {p}: its predictions may not hold here" for p in problems]
    shape = table["shape"]
    return LatencyModel(
        entries={k: float(v) for k, v in setting["entries"].items()},
        num_dense=shape["num_dense"],
        num_sparse=shape["num_sparse"],
        batch=batch,
        threads=threads,
        fit=dict(setting["fit"]),
        layernorm=table["layernorm"],
        warnings=warnings,
        source=str(path),
        embedding_dim=table_embedding_dim(table),
    )


def table_embedding_dim(table: dict[str, Any]) -> int:
    """The tokens' width a table was measured at: its space's embedding_dim (written only when not 16)."""
    return int(table["space"].get("embedding_dim", TOKEN_DIM))
