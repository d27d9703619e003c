"""The architecture as tests: the import graph has no loop but the algorithm registry's (the
layers themselves are import-linter's contracts in pyproject.toml, run by `make test`)."""

import grimp

REGISTRY = "trustvision.federated.algorithm"  # the registry and the algorithms it loads


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
