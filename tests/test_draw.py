"""Architecture renderings (text summary, Graphviz DOT, Mermaid) and the `nasrec arch` commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nasrec.cli import main
from nasrec.data.formats import AVAZU_TABLE_SIZES, CRITEO_TABLE_SIZES
from nasrec.errors import NasrecError
from nasrec.space.arch import Architecture, Block
from nasrec.space.draw import head_width, input_name, summary, to_dot, to_mermaid
from nasrec.space.space import NASREC_FULL, NASREC_SMALL, STRATEGIES, sample_architecture

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
CONFIG_NAMES = [f"{d}_{s}_best.json" for d in ("criteo", "avazu", "kdd") for s in ("xlarge", "autoctr")]


def config_path(name: str) -> Path:
    if not CONFIGS.is_dir():
        pytest.skip("../shared/configs is not available")
    return CONFIGS / name


def some_architectures() -> list[Architecture]:
    """Random architectures of every strategy, plus the published ones when available."""
    archs = [
        sample_architecture(space, seed, s)
        for space in (NASREC_SMALL, NASREC_FULL)
        for s in STRATEGIES
        for seed in (0, 1)
    ]
    if CONFIGS.is_dir():
        archs += [Architecture.load(CONFIGS / n) for n in CONFIG_NAMES]
    return archs


def chain_with_dead_block() -> Architecture:
    """B1 is dead: B2 is fc reading B0 only, and its left/right (B1) are not read."""
    b0 = Block(("fc",), ("efc",), (0,), (0,), 0, 0, 32, 16, d2s=True)
    b1 = Block(("sum",), ("transformer",), (0,), (1,), 0, 1, 64, 32)
    b2 = Block(("fc",), ("efc",), (1,), (0, 1), 2, 2, 16, 48, fm=True)
    return Architecture((b0, b1, b2))


# -- text summary --------------------------------------------------------------------------------------
def test_summary_of_a_small_architecture() -> None:
    a = chain_with_dead_block()
    lines = summary(a).splitlines()
    assert lines[0] == f"architecture {a.hash()}: 3 blocks, 1 dead (B1)"
    assert len(lines) == 5
    assert lines[1].split() == ["B0", "fc(in)", "W32", "|", "efc(in)", "16", "tok", "|", "d2s"]
    assert lines[2].split()[:4] == ["B1", "sum(L=in,", "R=B0)", "W64"] and lines[2].endswith("DEAD")
    assert "transformer(B0) 32 tok" in lines[2]
    assert lines[3].split()[:3] == ["B2", "fc(B0)", "W16"] and "efc(in,B0) 48 tok" in lines[3]
    assert lines[3].split()[-1] == "fm"
    assert lines[4] == "head: B2 dense 16 + 48 tokens x 16 = 784 inputs -> 1 logit"
    assert head_width(a) == 784 and input_name(0) == "in" and input_name(3) == "B2"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_summary_of_published_architectures(name: str) -> None:
    a = Architecture.load(config_path(name))
    text = summary(a)
    lines = text.splitlines()
    assert len(lines) == 1 + 7 + 1
    assert [i for i in range(7) if lines[1 + i].endswith("DEAD")] == a.dead_blocks()
    assert f"= {head_width(a)} inputs" in lines[-1]
    assert max(map(len, lines)) <= 120  # one screen wide
    cost = SimpleNamespace(mflops=1.4662, dense_params=749_764, embedding_params=540_201_616)
    with_cost = summary(a, cost).splitlines()
    assert with_cost[:-1] == lines
    assert with_cost[-1] == "cost: 1.466 MFLOPs/example, 0.750 M dense parameters, 540.2 M embedding parameters"


def test_summary_names_the_inputs_of_each_operator() -> None:
    a = Architecture.load(config_path("criteo_xlarge_best.json"))
    lines = summary(a).splitlines()
    assert "gating(L=in, R=in) W128" in lines[1] and "transformer(in) 64 tok" in lines[1]
    assert "dot(B0,B1; sparse in,B0,B1) W768" in lines[3] and "efc(in,B0,B1) 32 tok" in lines[3]
    assert lines[-1] == "head: B6 dense 128 + 48 tokens x 16 = 896 inputs -> 1 logit"
    avazu = summary(Architecture.load(config_path("avazu_xlarge_best.json"))).splitlines()[-1]
    assert avazu == "head: B6 dense 768 + (16+8 d2s) tokens x 16 = 1152 inputs -> 1 logit"


# -- DOT and Mermaid -----------------------------------------------------------------------------------
DOT_NODE = re.compile(r"^  (\w+) \[label=")
DOT_EDGE = re.compile(r"^  (\w+) -> (\w+)( \[.*\])?;$")


def dot_graph(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """Declared nodes and (source, target, attributes) edges of `to_dot` output, checking its syntax."""
    assert text.startswith("digraph nasrec {\n") and text.endswith("}\n")
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")
    assert text.count('"') % 2 == 0
    nodes, edges = set(), []
    for line in text.splitlines()[1:-1]:
        if m := DOT_EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3) or ""))
        elif m := DOT_NODE.match(line):
            nodes.add(m.group(1))
        else:
            assert re.match(r"^  (rankdir=TB|node \[.*\]|edge \[.*\]);$", line), line
    return nodes, edges


def test_dot_structure() -> None:
    a = chain_with_dead_block()
    nodes, edges = dot_graph(to_dot(a))
    assert nodes == {"input", "b0", "b1", "b2", "head"}
    assert [(s, t) for s, t, _ in edges] == [
        ("input", "b0"),
        ("input", "b1"),
        ("b0", "b1"),
        ("input", "b2"),
        ("b0", "b2"),
        ("b2", "head"),
    ]
    labels = {(s, t): attrs for s, t, attrs in edges}
    assert 'label="dense, sparse"' in labels["input", "b0"]
    assert 'label="left"' in labels["input", "b1"] and "dashed" in labels["input", "b1"]
    assert 'label="sparse, right"' in labels["b0", "b1"]
    assert 'label="dense, sparse"' in labels["b0", "b2"] and "dashed" not in labels["b0", "b2"]
    assert ("b1", "b2") not in labels  # B2 is fc: its left/right (B1) draw no edge
    dead_line = next(line for line in to_dot(a).splitlines() if line.startswith("  b1 ["))
    assert "dashed" in dead_line and "(dead)" in dead_line


@pytest.mark.parametrize("render", [to_dot, to_mermaid])
def test_renderings_are_deterministic(render) -> None:
    for a in some_architectures():
        assert render(a) == render(Architecture.from_dict(json.loads(a.to_json())))


def test_dot_of_many_architectures() -> None:
    for a in some_architectures():
        text = to_dot(a)
        nodes, edges = dot_graph(text)
        assert nodes == {"input", "head", *(f"b{i}" for i in range(a.num_blocks))}
        assert all(s in nodes and t in nodes for s, t, _ in edges)
        assert sum(t == "head" for _, t, _ in edges) == 1
        for i, b in enumerate(a.blocks):
            sources = {s for s, t, _ in edges if t == f"b{i}"}
            assert sources == {"input" if j == 0 else f"b{j - 1}" for j in b.dependencies()}
        dashed = {line.split()[0] for line in text.splitlines() if DOT_NODE.match(line) and "dashed" in line}
        assert dashed == {f"b{i}" for i in a.dead_blocks()}


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_graphviz_accepts_the_dot_text() -> None:
    archs = some_architectures()
    for a in (archs[0], archs[-1], NASREC_FULL.full_path(), chain_with_dead_block()):
        r = subprocess.run(["dot", "-Tsvg"], input=to_dot(a), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "<svg" in r.stdout and not r.stderr.strip()


def test_mermaid_structure() -> None:
    for a in [chain_with_dead_block(), *some_architectures()]:
        text = to_mermaid(a)
        lines = text.splitlines()
        assert lines[0] == "flowchart TB"
        nodes = {m.group(1) for line in lines if (m := re.match(r'^  (\w+)\(?\["[^"]*"\]\)?$', line))}
        assert nodes == {"input", "head", *(f"b{i}" for i in range(a.num_blocks))}
        edges = [re.match(r"^  (\w+) (-->|-\.->)(\|[a-z, ]+\|)? (\w+)$", line) for line in lines if "->" in line]
        edges = [m for m in edges if m is not None]
        assert all(m.group(1) in nodes and m.group(4) in nodes for m in edges)
        assert len(edges) == sum(len(b.dependencies()) for b in a.blocks) + 1
        dead = a.dead_blocks()
        if dead:
            assert lines[-1] == "  class " + ",".join(f"b{i}" for i in dead) + " dead"
            assert all(m.group(2) == "-.->" for m in edges if m.group(4) in {f"b{i}" for i in dead})
        else:
            assert "classDef" not in text


# -- the `nasrec arch` commands ------------------------------------------------------------------------
def test_cli_sample(tmp_path: Path, capsys) -> None:
    assert main(["arch", "sample", "--space", "full", "--seed", "5", "--strategy", "any-path"]) == 0
    a = Architecture.from_dict(json.loads(capsys.readouterr().out))
    assert a == sample_architecture("full", 5, "any-path")
    out = tmp_path / "a.json"
    assert main(["arch", "sample", "--space", "small", "--seed", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert Architecture.load(out) == sample_architecture(NASREC_SMALL, 2)
    space_file = tmp_path / "mine.yaml"
    space_file.write_text("num_blocks: 3\ndense_ops: [sum]\nsparse_ops: [transformer]\n")
    assert main(["arch", "sample", "--space", str(space_file), "--seed", "1", "--strategy", "uniform"]) == 0
    a = Architecture.from_dict(json.loads(capsys.readouterr().out))
    assert a.num_blocks == 3 and {b.dense_ops for b in a.blocks} == {("sum",)}


def test_cli_strategy_choices_match_the_space_module() -> None:
    from nasrec.cli import build_parser

    arch = build_parser()._subparsers._group_actions[0].choices["arch"]  # type: ignore[union-attr]
    sample = arch._subparsers._group_actions[0].choices["sample"]
    strategy = next(act for act in sample._actions if act.dest == "strategy")
    assert tuple(strategy.choices) == STRATEGIES


@pytest.mark.parametrize("fmt", ["text", "dot", "mermaid"])
def test_cli_draw(tmp_path: Path, capsys, fmt: str) -> None:
    path = config_path("kdd_xlarge_best.json")  # the NASRec reference format
    a = Architecture.load(path)
    assert main(["arch", "draw", str(path), "--format", fmt]) == 0
    expected = {"text": summary(a) + "\n", "dot": to_dot(a), "mermaid": to_mermaid(a)}[fmt]
    assert capsys.readouterr().out == expected
    canonical = tmp_path / "a.json"
    a.save(canonical)
    out = tmp_path / f"a.{fmt}"
    assert main(["arch", "draw", str(canonical), "--format", fmt, "--out", str(out)]) == 0
    assert out.read_text() == expected


def test_cli_info(tmp_path: Path, capsys) -> None:
    pytest.importorskip("nasrec.model.cost")
    path = config_path("criteo_xlarge_best.json")
    assert main(["arch", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["blocks"] == 7 and info["dead_blocks"] == [3, 4, 5] and info["head_input"] == 896
    assert info["hash"] == Architecture.load(path).hash() and info["spaces"] == ["full", "full+"]
    assert (info["num_dense"], info["num_sparse"]) == (13, 26)
    assert info["params"] == info["dense_params"] + info["embedding_params"]
    assert info["embedding_params"] == 16 * sum(CRITEO_TABLE_SIZES)
    assert 0 < info["mflops"] == pytest.approx(info["flops"] / 1e6)
    assert info["summary"] == summary(Architecture.load(path)).splitlines()
    assert main(["arch", "info", str(path), "--dataset", "avazu", "--layernorm", "--json"]) == 0
    avazu = json.loads(capsys.readouterr().out)
    assert (avazu["num_dense"], avazu["num_sparse"], avazu["use_layernorm"]) == (1, 23, True)
    assert avazu["embedding_params"] == 16 * sum(AVAZU_TABLE_SIZES)
    assert main(["arch", "info", str(path), "--dataset", "kdd12", "--json"]) == 0
    assert (lambda d: (d["num_dense"], d["num_sparse"]))(json.loads(capsys.readouterr().out)) == (3, 10)


def test_cli_info_from_a_cache(tmp_path: Path, capsys) -> None:
    pytest.importorskip("nasrec.model.cost")
    raw = tmp_path / "s.tsv"
    assert main(["synth", "--rows", "300", "--out", str(raw), "--num-dense", "2", "--num-sparse", "3"]) == 0
    cache = tmp_path / "c"
    assert (
        main(
            [
                "prepare",
                "--format",
                "schema",
                "--schema",
                f"{raw}.schema.json",
                "--input",
                str(raw),
                "--out",
                str(cache),
                "--split",
                "random",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    arch = tmp_path / "a.json"
    sample_architecture("full", 3).save(arch)
    assert main(["arch", "info", str(arch), "--cache", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    sizes = json.loads((cache / "meta.json").read_text())["table_sizes"]
    assert (info["num_dense"], info["num_sparse"]) == (2, 3)
    assert info["embedding_params"] == 16 * sum(np.asarray(sizes, dtype=np.int64).tolist())


def test_cli_errors(tmp_path: Path, capsys) -> None:
    assert main(["arch", "draw", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "format": "nasrec-architecture",
                "version": 1,
                "blocks": [
                    {
                        "dense_ops": ["fc"],
                        "sparse_ops": ["efc"],
                        "dense_in": [1],
                        "sparse_in": [0],
                        "left": 0,
                        "right": 0,
                        "dense_width": 16,
                        "sparse_width": 16,
                    }
                ],
            }
        )
    )
    assert main(["arch", "draw", str(bad)]) == 2
    assert "block 0, field dense_in" in capsys.readouterr().err
    assert main(["arch", "sample", "--space", "medium", "--seed", "1"]) == 2
    assert "unknown search space 'medium'" in capsys.readouterr().err
    with pytest.raises(NasrecError):
        sample_architecture("medium", 1)


@pytest.mark.slow
def test_cli_error_is_one_line_in_a_subprocess(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "nasrec.cli", "arch", "draw", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("nasrec arch: error:") and "none.json: no such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "nasrec.cli", "arch"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
