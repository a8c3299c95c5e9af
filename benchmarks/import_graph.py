"""Import cycles among the modules of a package: every import (module level and inside
functions) is an edge; prints each strongly connected component of more than one module
with its edges, then ``cycles: N``.

    python benchmarks/import_graph.py [PACKAGE_DIR]   (default: selfsup_core)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (``from . import x`` counts as ``x``)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                found = submodules or ([target] if target in modules else [])
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names if alias.name in modules]
            else:
                continue
            graph[name].update(t for t in found if t != name and not name.startswith(t + "."))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "selfsup_core")
    graph = module_graph(root)
    found = cycles(graph)
    for component in found:
        print("cycle:", " ".join(component))
        for node in component:
            print("   ", node, "->", ", ".join(sorted(graph[node] & set(component))))
    print(f"modules: {len(graph)}  imports: {sum(map(len, graph.values()))}  cycles: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
