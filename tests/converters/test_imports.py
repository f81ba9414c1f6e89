"""The converters package imports downwards only: no module imports (at the top or inside a function) one that
imports it back, directly or through others. Parsed with ``ast``, so a cycle broken by a function-level import
counts as the cycle it is."""

from __future__ import annotations

import ast
from pathlib import Path

import converters

PACKAGE = Path(converters.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of its own package it imports anywhere in its body. ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module, else ``pkg`` (its ``__init__``). The packages
    that ``import pkg.mod`` runs on the way to ``mod`` are not counted: they run first, by the language's
    rules, and hold no edge unless their own code imports something."""
    top = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t.split(".")[0] == top and t in modules and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_converters_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "converters.hub" in graph and "converters.tables.maxxvit" in graph  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    """On a made-up package whose cycle is closed only inside a function body (as hub/npz/orbax_io once were)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from pkg.sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from pkg import a\n    return a\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def g():\n    import pkg\n    return pkg\n")  # b -> pkg -> a -> b
    assert find_cycle(import_graph(pkg)) == ["pkg", "pkg.a", "pkg.sub.b", "pkg"]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_vitjax_does_not_import_converters_at_module_level():
    """vitjax -> converters only inside create_model(pretrained=...); converters and train build on vitjax."""
    vitjax_root = PACKAGE.parent / "vitjax"
    for path in vitjax_root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("converters", "train") for n in names), f"{path}: {names}"
