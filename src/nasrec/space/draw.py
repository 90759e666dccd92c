"""Human views of an architecture: a one-screen text summary, Graphviz DOT and Mermaid flowcharts.

All three are deterministic functions of the architecture (same architecture, same text), so they can
be committed next to results and diffed. Inputs are named ``in`` (the raw input) and ``B0``..``B6``.
"""

from __future__ import annotations

from typing import Any

from nasrec.space.arch import D2S_TOKENS, Architecture, Block, op_reads

_DEAD_COLOR = "#9a9a9a"


def input_name(j: int) -> str:
    """Display name of input index `j` of a block: ``in`` for the raw input, ``B{j-1}`` for a block output."""
    return "in" if j == 0 else f"B{j - 1}"


def head_width(arch: Architecture) -> int:
    """Input width of the head: the last block's dense width plus its flattened sparse tokens."""
    last = arch.blocks[-1]
    return last.dense_width + arch.embedding_dim * last.sparse_tokens


def _names(idx: tuple[int, ...]) -> str:
    return ",".join(input_name(j) for j in idx)


def _dense_op_text(b: Block, op: str) -> str:
    reads = op_reads(op)
    if "dense_in" in reads:  # fc(B0,B2), dot(B0; sparse B1)
        sparse = f"; sparse {_names(b.sparse_in)}" if "sparse_in" in reads else ""
        return f"{op}({_names(b.dense_in)}{sparse})"
    sides = [f"{s[0].upper()}={input_name(getattr(b, s))}" for s in ("left", "right") if s in reads]
    if "sparse_in" in reads:
        sides.append(f"sparse {_names(b.sparse_in)}")
    return f"{op}({', '.join(sides)})"  # sum(L=in, R=B1)


def _dense_text(b: Block) -> str:
    return " + ".join(_dense_op_text(b, op) for op in b.dense_ops) + f" W{b.dense_width}"


def _sparse_text(b: Block) -> str:
    return f"{'+'.join(b.sparse_ops)}({_names(b.sparse_in)}) {b.sparse_width} tok"


def _flags_text(b: Block) -> str:
    return " ".join(name for name, on in (("d2s", b.d2s), ("fm", b.fm)) if on) or "-"


def _head_text(arch: Architecture) -> str:
    last = arch.blocks[-1]
    tokens = f"({last.sparse_width}+{D2S_TOKENS} d2s)" if last.d2s else str(last.sparse_width)
    return (
        f"B{arch.num_blocks - 1} dense {last.dense_width} + {tokens} tokens x {arch.embedding_dim}"
        f" = {head_width(arch)} inputs -> 1 logit"
        + (", plus the first-order term of the raw input" if arch.first_order else "")
    )


def summary(arch: Architecture, cost: Any = None) -> str:
    """A one-screen text summary: one line per block, the head, and the cost when one is given.

    `cost` is anything with `mflops`, `dense_params` and `embedding_params` attributes (an
    `nasrec.model.cost.ArchCost`).
    """
    dead = arch.dead_blocks()
    dead_text = f"{len(dead)} dead ({', '.join(f'B{i}' for i in dead)})" if dead else "no dead blocks"
    lines = [f"architecture {arch.hash()}: {arch.num_blocks} blocks, {dead_text}"]
    dense = [_dense_text(b) for b in arch.blocks]
    sparse = [_sparse_text(b) for b in arch.blocks]
    dw, sw = max(map(len, dense)), max(map(len, sparse))
    tag_w = len(f"B{arch.num_blocks - 1}")
    for i, b in enumerate(arch.blocks):
        line = f"{f'B{i}':<{tag_w}}  {dense[i]:<{dw}} | {sparse[i]:<{sw}} | {_flags_text(b):<6}"
        lines.append((line + ("  DEAD" if i in dead else "")).rstrip())
    lines.append(f"head: {_head_text(arch)}")
    if cost is not None:
        lines.append(
            f"cost: {cost.mflops:.3f} MFLOPs/example, {cost.dense_params / 1e6:.3f} M dense parameters, "
            f"{cost.embedding_params / 1e6:.1f} M embedding parameters"
        )
    return "\n".join(lines)


def _edges(arch: Architecture) -> list[tuple[str, str, str, bool]]:
    """(source id, target id, label, live) for every input a block reads, in a fixed order."""
    live = arch.live_blocks()
    out = []
    for i, b in enumerate(arch.blocks):
        roles: dict[int, list[str]] = {}
        if b.uses_dense_in:
            for j in b.dense_in:
                roles.setdefault(j, []).append("dense")
        if b.reads("sparse_in"):
            for j in b.sparse_in:
                roles.setdefault(j, []).append("sparse")
        for side in ("left", "right"):
            if b.reads(side):
                roles.setdefault(getattr(b, side), []).append(side)
        for j in sorted(roles):
            out.append((_node_id(j), f"b{i}", ", ".join(roles[j]), live[i]))
    out.append((f"b{arch.num_blocks - 1}", "head", "", True))
    return out


def _node_id(j: int) -> str:
    return "input" if j == 0 else f"b{j - 1}"


def _block_label_lines(i: int, b: Block, dead: bool) -> list[str]:
    lines = [f"B{i}" + (" (dead)" if dead else "")]
    lines.append(" + ".join(b.dense_ops) + f" W{b.dense_width}")
    lines.append("+".join(b.sparse_ops) + f" {b.sparse_width} tok")
    flags = _flags_text(b)
    if flags != "-":
        lines.append(flags)
    return lines


def _dot_quote(*lines: str) -> str:
    """A DOT string literal; lines are joined with Graphviz's own line-break escape."""
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def to_dot(arch: Architecture) -> str:
    """Graphviz DOT text: raw input, one node per block (dead ones grey and dashed), the head."""
    live = arch.live_blocks()
    lines = [
        "digraph nasrec {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
        f"  input [label={_dot_quote('raw input')}, shape=ellipse];",
    ]
    for i, b in enumerate(arch.blocks):
        label = _dot_quote(*_block_label_lines(i, b, not live[i]))
        style = "" if live[i] else f', style="rounded,dashed", color="{_DEAD_COLOR}", fontcolor="{_DEAD_COLOR}"'
        lines.append(f"  b{i} [label={label}{style}];")
    head_label = _dot_quote("head", f"{head_width(arch)} -> 1")
    lines.append(f"  head [label={head_label}, shape=ellipse];")
    for src, dst, label, is_live in _edges(arch):
        attrs = [f"label={_dot_quote(label)}"] if label else []
        if not is_live:
            attrs += ["style=dashed", f'color="{_DEAD_COLOR}"', f'fontcolor="{_DEAD_COLOR}"']
        lines.append(f"  {src} -> {dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(arch: Architecture) -> str:
    """Mermaid flowchart text: the same graph as `to_dot`, dead blocks in a dashed grey class."""
    live = arch.live_blocks()
    lines = ["flowchart TB", '  input(["raw input"])']
    for i, b in enumerate(arch.blocks):
        lines.append(f'  b{i}["{"<br/>".join(_block_label_lines(i, b, not live[i]))}"]')
    lines.append(f'  head(["head<br/>{head_width(arch)} -> 1"])')
    for src, dst, label, is_live in _edges(arch):
        arrow = "-->" if is_live else "-.->"
        lines.append(f"  {src} {arrow}" + (f"|{label}|" if label else "") + f" {dst}")
    dead = [f"b{i}" for i, alive in enumerate(live) if not alive]
    if dead:
        lines.append(f"  classDef dead stroke-dasharray: 5 5, stroke:{_DEAD_COLOR}, color:{_DEAD_COLOR}")
        lines.append(f"  class {','.join(dead)} dead")
    return "\n".join(lines) + "\n"
