"""Imports point one way: data -> space -> model -> zoo -> train -> search -> pipeline -> cli.

Every module under src/nasrec is parsed (no import runs), and each import it holds is checked against
the layer of its target: imports inside functions and classes count, `from . import x` and `from .. import
y` are resolved against the module's package, and `importlib.import_module("nasrec....")` with a literal
name counts too. A module may import its own layer and the layers below; one that reaches up fails the
test with its file, line and the import. The packages (and the top-level modules, each its own unit) must
also form no cycle among themselves, even within one layer.

The base layer may be imported from anywhere and imports nothing above itself: the errors, the config-file
checks, the run directory (file names, atomic writes, checkpoints, typed results), the console helpers,
background prefetch, device choice and the torch.distributed helpers. The root package `nasrec` counts as
base for what it defines (`__version__`); its lazy convenience exports of the data layer (PEP 562
`__getattr__`, run on attribute access only) are the one import allowed to reach up (`ALLOWED`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "nasrec"

# Unit (a package or a top-level module) -> layer; a module belongs to the longest unit its name starts with.
LAYERS: dict[str, int] = {
    # 0 base
    "nasrec": 0,
    "nasrec.errors": 0,
    "nasrec.configfile": 0,
    "nasrec.rundir": 0,
    "nasrec.console": 0,
    "nasrec.prefetch": 0,
    "nasrec.device": 0,
    "nasrec.machine": 0,
    "nasrec.distributed": 0,
    # 1 data
    "nasrec.data": 1,
    # 2 search spaces and architectures, and the operators they are written with: an operator module
    # (nasrec.model.ops) says what it reads, for liveness, and is built from the elastic layers
    # (nasrec.model.layers); neither imports nasrec.space nor the rest of nasrec.model
    "nasrec.space": 2,
    "nasrec.model.ops": 2,
    "nasrec.model.layers": 2,
    # 3 nasrec's models (operators, supernet, subnets, cost, path sampling) and the model spec
    "nasrec.model": 3,
    # serving latency predicted from a latency table: arithmetic on architectures (the timing is export's)
    "nasrec.latency": 3,
    # 4 the baseline zoo: built from model's embedding, registered with model's spec
    "nasrec.zoo": 4,
    "nasrec.backend": 4,  # the embedding tables' engines (TorchRec): model's tables in, train's optimizer out
    # 5 training, and what serves a trained run
    "nasrec.train": 5,
    "nasrec.predict": 5,
    "nasrec.export": 5,
    # 6 search, and the tuning of a training recipe (beside search: it trains many recipes)
    "nasrec.search": 6,
    "nasrec.tune": 6,
    # 7 the multi-stage pipeline and the run report
    "nasrec.pipeline": 7,
    "nasrec.report": 7,
    # 8 the command line
    "nasrec.cli": 8,
    "nasrec.clicheck": 8,
}
LAYER_NAMES = ("base", "data", "space", "model", "zoo", "train", "search", "pipeline", "cli")

# (importing unit, imported unit): the root package's lazy re-exports of the data layer (see module docstring)
ALLOWED = {("nasrec", "nasrec.data")}


@dataclass(frozen=True)
class Import:
    """One import of a nasrec module: who imports what, where."""

    module: str  # the importing module, dotted
    file: str
    line: int
    target: str  # dotted name imported (a module, or a module's attribute: `nasrec.__version__`)
    text: str  # the statement as written

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def unit_of(name: str) -> str | None:
    """The unit (a key of LAYERS) `name` belongs to: the longest key it equals or starts with."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    # the root itself, or what it defines (`__version__`); `nasrec.X` for any other X names an unmapped module
    # or one of the root's lazy re-exports, which are to be imported from their own module
    if parts[0] == ROOT and (len(parts) == 1 or parts[1].startswith("__")):
        return ROOT
    return None


def module_name(path: Path, src: Path = SRC) -> str:
    """`nasrec.train.trainer` for src/nasrec/train/trainer.py, `nasrec.train` for its __init__.py."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, file: str, is_package: bool = False) -> Iterator[Import]:
    """Every nasrec import in `source` (a module's text), at any depth: functions, classes, branches."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=file)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                # level 1 is the package itself, each further dot one package up
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from nasrec import data` imports the module nasrec.data, `from nasrec import __version__` an
            # attribute of the root: naming the attribute lets unit_of tell them apart
            targets = [f"{stem}.{alias.name}" if alias.name != "*" else stem for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                targets = [arg.value]
        text = ast.get_source_segment(source, node) if targets else None
        for target in targets:
            if target == ROOT or target.startswith(ROOT + "."):
                yield Import(module, file, node.lineno, target, " ".join((text or target).split()))


def _is_dynamic_import(func: ast.expr) -> bool:
    """`importlib.import_module(...)`, `import_module(...)` or `__import__(...)`."""
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def upward(imports: Iterable[Import]) -> list[str]:
    """One line per import that points from a lower layer to a higher one (or to a module without a layer)."""
    bad = []
    for imp in imports:
        src, dst = unit_of(imp.module), unit_of(imp.target)
        if src is None or dst is None:
            bad.append(f"{imp}  ({imp.module if src is None else imp.target} has no layer: add it to LAYERS)")
        elif LAYERS[dst] > LAYERS[src] and (src, dst) not in ALLOWED:
            bad.append(f"{imp}  ({LAYER_NAMES[LAYERS[src]]} {src} imports {LAYER_NAMES[LAYERS[dst]]} {dst})")
    return bad


def unit_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The cycles of the graph of units (an edge: one unit imports another), each as a closed path."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = unit_of(imp.module), unit_of(imp.target)
        if src and dst and src != dst and (src, dst) not in ALLOWED:
            edges.setdefault(src, set()).add(dst)
    cycles, done = [], set()
    for start in sorted(edges):
        # depth-first from each unit; a path that comes back to a unit on it is a cycle
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == path[0] and frozenset(path) not in done:
                    done.add(frozenset(path))
                    cycles.append([*path, nxt])
                elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest unit
                    stack.append((nxt, [*path, nxt]))
    return cycles


def all_imports() -> list[Import]:
    """The imports of every module under src/nasrec."""
    out = []
    for path in sorted((SRC / ROOT).rglob("*.py")):
        rel = str(path.relative_to(SRC.parent))
        out.extend(imports_of(path.read_text(), module_name(path), rel, path.name == "__init__.py"))
    return out


def test_every_module_has_a_layer() -> None:
    missing = [
        str(p.relative_to(SRC.parent))
        for p in sorted((SRC / ROOT).rglob("*.py"))
        if unit_of(module_name(p)) in (None, ROOT) and module_name(p) != ROOT
    ]
    assert not missing, "modules without a layer (add their package to LAYERS):\n" + "\n".join(missing)


def test_no_import_reaches_up() -> None:
    imports = all_imports()
    assert len(imports) > 200  # the parse found the package's imports
    bad = upward(imports)
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    cycles = unit_cycles(all_imports())
    assert not cycles, "import cycles between packages:\n" + "\n".join(" -> ".join(c) for c in cycles)


# -- the checks themselves, on synthetic sources --------------------------------------------------------


def test_an_import_reaching_up_is_named_with_file_and_line() -> None:
    source = (
        "from nasrec.errors import NasrecError\n"
        "from nasrec import __version__\n"
        "from . import budget\n"  # nasrec.train.budget: its own layer
        "\n"
        "def build():\n"
        "    from ..search import api\n"  # inside a function, relative, two levels up
        "    import nasrec.pipeline.runner\n"
        "    return api\n"
    )
    bad = upward(imports_of(source, "nasrec.train.example", "src/nasrec/train/example.py"))
    assert bad == [
        "src/nasrec/train/example.py:6: from ..search import api  (train nasrec.train imports search nasrec.search)",
        "src/nasrec/train/example.py:7: import nasrec.pipeline.runner  (train nasrec.train imports pipeline "
        "nasrec.pipeline)",
    ]


def test_relative_imports_of_a_package_and_dynamic_imports_resolve() -> None:
    source = "from . import names\nfrom .. import model\nimport importlib\nimportlib.import_module('nasrec.cli')\n"
    imports = list(imports_of(source, "nasrec.rundir", "src/nasrec/rundir/__init__.py", is_package=True))
    assert [i.target for i in imports] == ["nasrec.rundir.names", "nasrec.model", "nasrec.cli"]
    assert [line.split(":")[1] for line in upward(imports)] == ["2", "4"]
    # the root's own attribute is base; an unmapped module (or a lazy re-export of the root) has no layer
    assert upward(imports_of("from nasrec import __version__\n", "nasrec.data.a", "a.py")) == []
    assert (
        "nasrec.newpackage has no layer" in upward(imports_of("import nasrec.newpackage\n", "nasrec.data.a", "a.py"))[0]
    )
    assert (
        "nasrec.BatchLoader has no layer"
        in upward(imports_of("from nasrec import BatchLoader\n", "nasrec.space.a", "a.py"))[0]
    )


def test_a_cycle_within_one_layer_is_found() -> None:
    a = imports_of("from nasrec.zoo.registry import build\n", "nasrec.model.spec", "src/nasrec/model/spec.py")
    b = imports_of("from nasrec.model.embedding import E\n", "nasrec.zoo.base", "src/nasrec/zoo/base.py")
    c = imports_of("from nasrec.zoo.base import Z\n", "nasrec.zoo.registry", "src/nasrec/zoo/registry.py")
    assert unit_cycles([*a, *b, *c]) == [["nasrec.model", "nasrec.zoo", "nasrec.model"]]
    assert unit_cycles([*b, *c]) == []


@pytest.mark.parametrize("module", ["nasrec.errors", "nasrec.rundir.io", "nasrec.device"])
def test_the_base_layer_may_not_import_the_layers_above(module: str) -> None:
    bad = upward(imports_of("from nasrec.data.cache import open_cache\n", module, "x.py"))
    assert len(bad) == 1 and "base" in bad[0] and "data nasrec.data" in bad[0]
