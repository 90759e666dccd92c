"""Search spaces (NASRec-Small, NASRec-Full, user spaces), seeded sampling strategies and mutation.

A `SearchSpace` says which operators, widths and connections a block may choose. Sampling draws an
`Architecture` from it with an explicit `numpy.random.Generator`, so a seed fixes the result; the order
of the draws (per block: dense inputs, sparse inputs, left, right, dense ops, sparse ops, dense width,
sparse width, d2s, fm) is part of that contract: reordering them would change every seeded sample.

Strategies (spec sections 3 and 4):

- ``default`` (single-operator any-connection, the supernet's training strategy): one dense and one
  sparse operator per block; each input list has 1 + Binomial(min(i+1, max_inputs) - 1, 0.5) distinct
  inputs out of the i+1 candidates (for max_inputs 4 that is NASRec's 1 + Binomial(min(i, 3), 0.5));
  left and right one uniform index each; widths uniform; d2s and fm Bernoulli(0.5).
- ``single-path``: as default with exactly one input per list.
- ``any-path``: as default with 1 + Binomial(min(k-1, 3), 0.5) distinct operators per type (k = the
  space's operators of that type).
- ``full-path``: `SearchSpace.full_path`.
- ``uniform`` (the EA's initial population and mutation): as default with 1 + U{0..min(i+1, max_inputs)-1}
  inputs per list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from nasrec.configfile import read_config_file
from nasrec.errors import NasrecError
from nasrec.space.arch import (
    EMBEDDING_DIM,
    MAX_DENSE_WIDTH,
    MAX_INPUTS,
    MAX_SPARSE_WIDTH,
    Architecture,
    Block,
    dense_op_names,
    embedding_dim_problem,
    sparse_op_names,
)

NASREC_DENSE_WIDTHS = (16, 32, 64, 128, 256, 512, 768, 1024)
NASREC_SPARSE_WIDTHS = (16, 32, 48, 64)
STRATEGIES = ("default", "single-path", "any-path", "full-path", "uniform")
MACRO_KEYS = ("dense_in", "sparse_in", "left", "right")
MICRO_KEYS = ("dense_ops", "sparse_ops", "dense_width", "sparse_width", "d2s", "fm")
MAX_OPS_DRAW = 3  # any-path draws 1 + Binomial(min(k - 1, 3), 0.5) operators, as the reference does

# How many inputs (per list) and operators (per type) each sampling strategy draws.
_STRATEGY_RULES = {
    "default": ("binomial", "one"),
    "single-path": ("single", "one"),
    "any-path": ("binomial", "binomial"),
    "uniform": ("uniform", "one"),
}


@dataclass(frozen=True)
class SearchSpace:
    """The choices of every block: operators, widths, at most `max_inputs` inputs per list; validated."""

    name: str
    num_blocks: int
    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_widths: tuple[int, ...]
    sparse_widths: tuple[int, ...]
    max_inputs: int = MAX_INPUTS
    embedding_dim: int = EMBEDDING_DIM  # every architecture's token width (`Architecture.embedding_dim`)

    def __post_init__(self) -> None:
        def fail(fieldname: str, msg: str) -> None:
            raise NasrecError(f"search space {self.name!r}, field {fieldname}: {msg}")

        if not isinstance(self.name, str) or not self.name:
            raise NasrecError(f"search space, field name: {self.name!r} must be a non-empty string")
        for name in ("num_blocks", "max_inputs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                fail(name, f"{v!r} must be a positive integer")
        problem = embedding_dim_problem(self.embedding_dim)
        if problem:
            fail("embedding_dim", problem)
        if self.max_inputs > MAX_INPUTS:
            fail("max_inputs", f"{self.max_inputs} is more than an architecture allows ({MAX_INPUTS})")
        # Operators are kept in the canonical order (the operator registry's), widths ascending,
        # so that equal spaces compare equal and sample identically however a file lists them.
        for name, known in (("dense_ops", dense_op_names()), ("sparse_ops", sparse_op_names())):
            ops = getattr(self, name)
            if not isinstance(ops, list | tuple) or not ops:
                fail(name, f"{ops!r} must be a non-empty list of operator names from {', '.join(known)}")
            bad = [op for op in ops if op not in known]
            if bad:
                fail(name, f"unknown operator {bad[0]!r} (expected some of {', '.join(known)})")
            if len(set(ops)) != len(ops):
                fail(name, f"{list(ops)!r} lists an operator twice")
            object.__setattr__(self, name, tuple(op for op in known if op in ops))
        for name, most in (("dense_widths", MAX_DENSE_WIDTH), ("sparse_widths", MAX_SPARSE_WIDTH)):
            ws = getattr(self, name)
            if not isinstance(ws, list | tuple) or not ws:
                fail(name, f"{ws!r} must be a non-empty list of positive integers")
            if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in ws):
                fail(name, f"{list(ws)!r} must be positive integers")
            if max(ws) > most:
                fail(name, f"{max(ws):,} is more than nasrec builds ({most:,})")
            if len(set(ws)) != len(ws):
                fail(name, f"{list(ws)!r} lists a width twice")
            object.__setattr__(self, name, tuple(sorted(ws)))

    # -- membership ----------------------------------------------------------------------------
    def check(self, arch: Architecture) -> None:
        """Raise NasrecError naming the block and field where `arch` leaves this space."""
        where = f"architecture not in search space {self.name!r}"
        if arch.num_blocks != self.num_blocks:
            raise NasrecError(f"{where}: it has {arch.num_blocks} blocks, the space {self.num_blocks}")
        if arch.embedding_dim != self.embedding_dim:
            raise NasrecError(f"{where}: its embedding_dim is {arch.embedding_dim}, the space's {self.embedding_dim}")
        if arch.first_order:
            raise NasrecError(f"{where}: it has a first-order term (first_order), which no search space offers")
        for i, b in enumerate(arch.blocks):
            problem = self._block_problem(b)
            if problem:
                raise NasrecError(f"{where}: block {i}, field {problem[0]}: {problem[1]}")

    def _block_problem(self, b: Block) -> tuple[str, str] | None:
        """(field, reason) of the first choice of `b` this space does not offer, or None."""
        for name, allowed in (("dense_ops", self.dense_ops), ("sparse_ops", self.sparse_ops)):
            for op in getattr(b, name):
                if op not in allowed:
                    return name, f"operator {op!r} is not one of {', '.join(allowed)}"
        for name, widths in (("dense_width", self.dense_widths), ("sparse_width", self.sparse_widths)):
            if getattr(b, name) not in widths:
                return name, f"{getattr(b, name)} is not one of {', '.join(map(str, widths))}"
        for name in ("dense_in", "sparse_in"):
            if len(getattr(b, name)) > self.max_inputs:
                return name, f"{len(getattr(b, name))} inputs, the space allows at most {self.max_inputs}"
        return None

    def contains(self, arch: Architecture) -> bool:
        """Whether `arch` is an architecture of this space."""
        try:
            self.check(arch)
        except NasrecError:
            return False
        return True

    def log10_size(self) -> float:
        """log10 of the number of single-operator architectures (spec 2.1: Small ~39.7, Full ~43.9)."""
        total = 0.0
        micro = len(self.dense_ops) * len(self.sparse_ops) * len(self.dense_widths) * len(self.sparse_widths) * 4
        for i in range(self.num_blocks):
            n = i + 1
            subsets = sum(math.comb(n, k) for k in range(1, min(n, self.max_inputs) + 1))
            total += 2 * math.log10(subsets) + 2 * math.log10(n) + math.log10(micro)
        return total

    # -- sampling ------------------------------------------------------------------------------
    def full_path(self) -> Architecture:
        """Every operator, the widest widths, d2s and fm on, and the most inputs a block can read.

        An architecture reads at most `max_inputs` inputs per list, so block i reads the most recent
        ones, indices max(0, i+1-max_inputs)..i (all i+1 candidates while i < max_inputs); left and
        right are both i. Every block is therefore live, and each block's newest input is always on.
        """
        blocks = tuple(Block(**self._full_macro(i), **self._full_micro()) for i in range(self.num_blocks))
        return Architecture(blocks, self.embedding_dim)

    def smallest_path(self, cost: Callable[[Architecture], float]) -> Architecture:
        """The narrowest widths, no merges, each block reading only its predecessor, and the operator pair of
        least `cost` (every block the same pair): the small end of the sandwich rule (BigNAS)."""
        pairs = [(d, s) for d in self.dense_ops for s in self.sparse_ops]

        def chain(dense_op: str, sparse_op: str) -> Architecture:
            w, ws = self.dense_widths[0], self.sparse_widths[0]
            return Architecture(
                tuple(Block((dense_op,), (sparse_op,), (i,), (i,), i, i, w, ws) for i in range(self.num_blocks)),
                self.embedding_dim,
            )

        return min((chain(*p) for p in pairs), key=cost)

    def sample(self, rng: np.random.Generator, strategy: str = "default", full_path_prob: float = 0.0) -> Architecture:
        """A random architecture of this space drawn with `strategy` (see the module docstring).

        `full_path_prob` > 0 implements the supernet's full-path warm-up: with that probability the
        macro choice (every block's connections) is the full path's, and, drawn separately per block,
        so is the block's micro choice (operators, widths, flags). These coins are drawn first (the
        macro one, then one per block before its own draws); with 0 none is drawn.
        """
        if strategy not in STRATEGIES:
            raise NasrecError(f"unknown sampling strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if not 0.0 <= full_path_prob <= 1.0:
            raise NasrecError(f"full_path_prob {full_path_prob!r} must be between 0 and 1")
        if strategy == "full-path":
            return self.full_path()
        conn_rule, ops_rule = _STRATEGY_RULES[strategy]
        macro_full = full_path_prob > 0 and bool(rng.random() < full_path_prob)
        blocks = []
        for i in range(self.num_blocks):
            micro_full = full_path_prob > 0 and bool(rng.random() < full_path_prob)
            if macro_full:
                macro = self._full_macro(i)
            else:
                macro = {
                    "dense_in": self._draw_inputs(rng, i, conn_rule),
                    "sparse_in": self._draw_inputs(rng, i, conn_rule),
                    "left": int(rng.integers(i + 1)),
                    "right": int(rng.integers(i + 1)),
                }
            if micro_full:
                micro = self._full_micro()
            else:
                micro = {
                    "dense_ops": self._draw_ops(rng, self.dense_ops, ops_rule),
                    "sparse_ops": self._draw_ops(rng, self.sparse_ops, ops_rule),
                    "dense_width": self.dense_widths[int(rng.integers(len(self.dense_widths)))],
                    "sparse_width": self.sparse_widths[int(rng.integers(len(self.sparse_widths)))],
                    "d2s": bool(rng.integers(2)),
                    "fm": bool(rng.integers(2)),
                }
            blocks.append(Block(**macro, **micro))
        return Architecture(tuple(blocks), self.embedding_dim)

    def mutate(self, arch: Architecture, rng: np.random.Generator) -> Architecture:
        """`arch` with one key of one block resampled (spec 4); the result is always in this space.

        A block is drawn uniformly, then macro or micro with probability 1/2 each, then one key uniformly:
        macro keys dense_in, sparse_in, left, right; micro keys dense_ops, sparse_ops, dense_width,
        sparse_width, d2s, fm. The key is redrawn as the ``uniform`` strategy draws it (an input list gets
        1 + U{0..min(i+1, max_inputs)-1} distinct inputs; an operator key becomes one operator). The new
        value may equal the old one, and a resampled input that the block's operators do not read (say,
        left of an fc block) changes the encoding but not the model: callers that need a different
        architecture retry, as the EA does on duplicate hashes. Unlike the reference, which resamples the
        operator pair as one key, the dense and the sparse operator are separate keys here.
        """
        self.check(arch)
        i = int(rng.integers(arch.num_blocks))
        if rng.random() < 0.5:
            key = MACRO_KEYS[int(rng.integers(len(MACRO_KEYS)))]
            if key in ("dense_in", "sparse_in"):
                value: Any = self._draw_inputs(rng, i, "uniform")
            else:
                value = int(rng.integers(i + 1))
        else:
            key = MICRO_KEYS[int(rng.integers(len(MICRO_KEYS)))]
            if key == "dense_ops":
                value = self._draw_ops(rng, self.dense_ops, "one")
            elif key == "sparse_ops":
                value = self._draw_ops(rng, self.sparse_ops, "one")
            elif key == "dense_width":
                value = self.dense_widths[int(rng.integers(len(self.dense_widths)))]
            elif key == "sparse_width":
                value = self.sparse_widths[int(rng.integers(len(self.sparse_widths)))]
            else:
                value = bool(rng.integers(2))
        blocks = list(arch.blocks)
        blocks[i] = replace(blocks[i], **{key: value})
        return arch.with_blocks(blocks)

    def _draw_inputs(self, rng: np.random.Generator, i: int, rule: str) -> tuple[int, ...]:
        n = i + 1
        cap = min(n, self.max_inputs)
        if rule == "binomial":
            k = 1 + int(rng.binomial(cap - 1, 0.5))
        elif rule == "uniform":
            k = 1 + int(rng.integers(cap))
        else:
            k = 1
        return tuple(sorted(int(j) for j in rng.choice(n, size=k, replace=False)))

    @staticmethod
    def _draw_ops(rng: np.random.Generator, ops: tuple[str, ...], rule: str) -> tuple[str, ...]:
        if rule == "one":
            return (ops[int(rng.integers(len(ops)))],)
        k = 1 + int(rng.binomial(min(len(ops) - 1, MAX_OPS_DRAW), 0.5))
        picked = sorted(int(j) for j in rng.choice(len(ops), size=k, replace=False))
        return tuple(ops[j] for j in picked)  # canonical order: outputs are summed, order is irrelevant

    def _full_micro(self) -> dict[str, Any]:
        return {
            "dense_ops": self.dense_ops,
            "sparse_ops": self.sparse_ops,
            "dense_width": self.dense_widths[-1],
            "sparse_width": self.sparse_widths[-1],
            "d2s": True,
            "fm": True,
        }

    def _full_macro(self, i: int) -> dict[str, Any]:
        inputs = tuple(range(max(0, i + 1 - self.max_inputs), i + 1))
        return {"dense_in": inputs, "sparse_in": inputs, "left": i, "right": i}

    # -- serialisation -------------------------------------------------------------------------
    def at_embedding_dim(self, embedding_dim: int | None) -> SearchSpace:
        """This space with its tokens `embedding_dim` wide (itself for None), as `--embedding-dim` gives it."""
        return self if embedding_dim is None else replace(self, embedding_dim=embedding_dim)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the keys a space file may hold)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "embedding_dim" and v == EMBEDDING_DIM:
                continue  # as saved before the field existed: resumed runs compare these dicts
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "search space") -> SearchSpace:
        """A space from a mapping; dense_ops and sparse_ops are required, the rest default to NASRec-Full's."""
        if not isinstance(d, dict):
            raise NasrecError(f"{source}: expected a mapping of search-space keys")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known), key=str)
        if unknown:
            raise NasrecError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        for key in ("dense_ops", "sparse_ops"):
            if key not in d:
                raise NasrecError(f"{source}: missing key {key!r}")
        values = {
            "name": Path(source).stem,
            "num_blocks": NASREC_FULL.num_blocks,
            "dense_widths": NASREC_DENSE_WIDTHS,
            "sparse_widths": NASREC_SPARSE_WIDTHS,
            "max_inputs": MAX_INPUTS,
            **d,
        }
        try:
            return cls(**values)
        except NasrecError as e:
            raise NasrecError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a user space from a YAML (.yaml/.yml) or JSON file."""
        data = read_config_file(path, "search space")
        return cls.from_dict(data, source=str(path))


NASREC_SMALL = SearchSpace(
    name="small",
    num_blocks=7,
    dense_ops=("fc", "dot"),
    sparse_ops=("efc",),
    dense_widths=NASREC_DENSE_WIDTHS,
    sparse_widths=NASREC_SPARSE_WIDTHS,
)
NASREC_FULL = SearchSpace(
    name="full",
    num_blocks=7,
    dense_ops=("fc", "dot", "gating", "sum"),
    sparse_ops=("efc", "transformer"),
    dense_widths=NASREC_DENSE_WIDTHS,
    sparse_widths=NASREC_SPARSE_WIDTHS,
)
# NASRec-Full and the operators strong hand-designed baselines are made of: so far DCNv2's cross layer
# (`cross`, reading left = x0 and right = x_l), the MLP on the flattened embeddings (`flat`, then fc)
# of DNN, DeepFM, DCNv2 and FinalMLP, FinalMLP's bilinear fusion of two streams (`bilinear`, low rank;
# `fuse`, its multi-head form exactly), its feature-gated stream input (`gflat`), and the parameter-free
# `cat` (dense inputs side by side) and `tflat` (the embeddings as a dense vector) that DCNv2's x0 and its
# logit over two streams need. Not the paper's: its results are the "full" space's.
NASREC_FULL_PLUS = SearchSpace(
    name="full+",
    num_blocks=7,
    dense_ops=("fc", "dot", "gating", "sum", "cross", "flat", "bilinear", "gflat", "fuse", "cat", "tflat"),
    sparse_ops=("efc", "transformer"),
    dense_widths=NASREC_DENSE_WIDTHS,
    sparse_widths=NASREC_SPARSE_WIDTHS,
)
# The reference's names for the two spaces ("config" in its JSON) are accepted as aliases.
BUILTIN_SPACES = {
    "small": NASREC_SMALL,
    "autoctr": NASREC_SMALL,
    "full": NASREC_FULL,
    "xlarge": NASREC_FULL,
    "full+": NASREC_FULL_PLUS,
}


def get_space(space: str | Path | SearchSpace) -> SearchSpace:
    """A built-in space by name (small/autoctr, full/xlarge), a space file (YAML/JSON), or `space` itself."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, str) and space in BUILTIN_SPACES:
        return BUILTIN_SPACES[space]
    if Path(space).is_file():
        return SearchSpace.load(space)
    raise NasrecError(
        f"unknown search space {str(space)!r} (expected small, full, autoctr, xlarge or a YAML/JSON file)"
    )


def sample_architecture(space: str | Path | SearchSpace, seed: int, strategy: str = "default") -> Architecture:
    """One architecture of `space` drawn with `strategy` from a generator seeded with `seed`."""
    return get_space(space).sample(np.random.default_rng(seed), strategy)


def mutation_count(generation: int, generations: int = 240) -> int:
    """Mutations per child at `generation` (0-based) of the EA: (G - g) // max(20, G // 5) + 1 (spec 4)."""
    if generations < 1:
        raise NasrecError(f"generations {generations} must be at least 1")
    if not 0 <= generation < generations:
        raise NasrecError(f"generation {generation} is outside 0..{generations - 1}")
    return (generations - generation) // max(20, generations // 5) + 1
