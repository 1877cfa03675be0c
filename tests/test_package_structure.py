"""The package's shape: no import circles (function-level imports included), small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_afr"
MAX_MODULE_LINES = 400


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def imported_modules(path: Path, modules: set[str], root: Path = PACKAGE.parent) -> set[str]:
    """hf_afr modules whose names a module imports, at any depth (function bodies included).

    `from pkg import name` imports `pkg` (its `__init__`) and `pkg.name` where that is a module:
    a submodule that takes names from its own package's `__init__` while that `__init__` imports
    the submodule is a circle.
    """
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in modules}
    return found - {name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package.parent) for p in paths}
    return {
        module_name(p, package.parent): imported_modules(p, modules, package.parent) for p in paths
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_function_level_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n")
    (package / "b.py").write_text("def g():\n    from .c import h\n")
    (package / "c.py").write_text("def h():\n    from pkg.a import g\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n"
    )
    (package / "e.py").write_text("from . import d\n")
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == set()  # TYPE_CHECKING is skipped
    assert graph["pkg.e"] == {"pkg", "pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circles_among_hf_afr_modules():
    graph = import_graph()
    assert len(graph) > 20 and graph["hf_afr.pruner"]  # the graph is real
    assert cycles(graph) == []


def test_modules_stay_small():
    lengths = {p: len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(lengths) > 20
    too_long = {str(p.relative_to(PACKAGE)): n for p, n in lengths.items() if n > MAX_MODULE_LINES}
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def private_imports(path: Path) -> list[str]:
    """`hf_afr` names a file imports that are private (a part or a name starting with `_`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_afr":
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "hf_afr"]
        else:
            continue
        found += [n for n in names if any(part.startswith("_") for part in n.split("."))]
    return found


def test_the_private_import_finder_sees_private_names(tmp_path):
    source = tmp_path / "user.py"
    source.write_text(
        "from hf_afr.masks import _private_name, select_masks\nimport hf_afr._private.x\n"
        "def f():\n    from hf_afr import AFRPruner\n"
    )
    assert private_imports(source) == ["hf_afr.masks._private_name", "hf_afr._private.x"]


def test_scripts_and_benchmarks_import_only_public_names():
    root = PACKAGE.parent
    files = sorted([*(root / "scripts").rglob("*.py"), *(root / "benchmarks").rglob("*.py")])
    offenders = {str(p.relative_to(root)): private_imports(p) for p in files}
    assert len(files) > 10
    assert {path: names for path, names in offenders.items() if names} == {}
