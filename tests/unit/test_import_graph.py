"""The package's import graph: no module-level cycles (import-linter's layer contract sees only
package-to-package edges), and no function-local import without a stated reason."""

from __future__ import annotations

import ast

import grimp

from support.paths import REPO

PKG = REPO / "ipsecemu"


def _cycles(adj: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(adj[nxt]))))
                elif nxt in on_stack:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_import_cycles() -> None:
    # grimp reads every import statement, function-local ones included, so a cycle hidden by a
    # local import shows up here too.
    graph = grimp.build_graph("ipsecemu", cache_dir=None)
    mods = set(graph.modules)
    adj = {m: set(graph.find_modules_directly_imported_by(m)) & mods for m in mods}
    assert _cycles(adj) == []


def _local_imports(tree: ast.AST) -> list[ast.stmt]:
    out: list[ast.stmt] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only imports are never executed
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                out.append(child)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(tree, False)
    return out


def test_every_function_local_import_says_why() -> None:
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in _local_imports(ast.parse("\n".join(lines))):
            # the reason sits on the import's own lines or in a comment above its run of imports
            start = node.lineno - 1
            while start > 0 and lines[start - 1].strip().startswith(("#", "from ", "import ")):
                start -= 1
            block = lines[start: node.end_lineno or node.lineno]
            if not any("# lazy:" in line for line in block):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert missing == []
