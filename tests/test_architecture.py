"""The architecture as tests: the import graph has no loop but the algorithm registry's (the
layers themselves are import-linter's contracts in pyproject.toml, run by `make test`), and the
size limits docs/ARCHITECTURE.md keeps hold."""

import ast
from pathlib import Path

import grimp

REGISTRY = "trustvision.federated.algorithm"  # the registry and the algorithms it loads
ROOT = Path(__file__).parents[1]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def loops(graph: grimp.ImportGraph) -> list[set[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_only_import_loop_is_the_algorithm_registry():
    found = loops(grimp.build_graph("trustvision"))
    assert len(found) == 1, [sorted(c) for c in found]
    (registry,) = found
    assert REGISTRY in registry
    assert all(m == REGISTRY or m.startswith("trustvision.federated.algorithms") for m in registry)


def test_the_loop_finder_sees_a_loop():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert loops(graph) == [{"pkg.a", "pkg.b"}]


def oversized(files: list[Path]) -> list[str]:
    """Every module over MAX_MODULE_LINES lines and every function over MAX_FUNCTION_LINES (from
    its `def` to its last line, as ast counts them), one line each."""
    found = []
    for path in files:
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_is_over_400_lines_and_no_function_over_60():
    files = [p for folder in ("src", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 100
    assert oversized(files) == []


def test_the_size_check_sees_a_long_module_and_a_long_function(tmp_path):
    long_function = tmp_path / "long_function.py"
    long_function.write_text("def f():\n" + "    x = 1\n" * 60)
    long_module = tmp_path / "long_module.py"
    long_module.write_text("x = 1\n" * 401)
    fine = tmp_path / "fine.py"
    fine.write_text("def f():\n" + "    x = 1\n" * 59 + "x = 1\n" * 340)
    assert oversized([long_function, long_module, fine]) == [
        f"{long_function}:1 f: 61 lines",
        f"{long_module}: 401 lines",
    ]
