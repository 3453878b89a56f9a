"""The store is the only place that writes SQL, and the packages' imports point one way.

Read from the sources (AST), not from what happens to be imported at run time:
a second SQL dialect (issue 16) plugs into ``indexer/store/`` alone only if no
other module builds SQL text or SQLAlchemy expressions on the tables.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repository directory -> installed package name (pyproject's package-dir mapping).
PACKAGES = {"indexer": "mitsuke.indexer", "search": "mitsuke.search", "mitsuke": "mitsuke"}
STORE = REPO / "indexer" / "store"
TABLES = {"documents", "chunks", "state", "deleted_chunks", "metadata", "chunk_terms"}
# Statement shapes, upper case as SQL is written here (prose says "select", not "SELECT ... FROM").
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bDELETE\s+FROM\b|\bUPDATE\s+\w+\s+SET\b"
                 r"|\bCREATE\s+(VIRTUAL\s+|TEMP\s+)?(TABLE|INDEX)\b|\bPRAGMA\b|\bDROP\s+TABLE\b|\bMATCH\s+:")
SQL_CALLS = {"text", "select", "exec_driver_sql", "insert", "update", "delete", "bindparam", "literal_column"}


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGES for p in (REPO / d).rglob("*.py"))


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _nodes(tree: ast.AST, typing: bool):
    """Every node; without ``typing``, skipping ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if (not typing and isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(path: Path, typing: bool = True) -> set[str]:
    """Modules ``path`` imports (at module level or lazily; without ``typing``, outside TYPE_CHECKING blocks)."""
    out: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), typing):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


OUTSIDE_STORE = [p for p in _sources() if STORE not in p.parents]


def test_the_scan_sees_the_packages():
    names = {_module(p) for p in _sources()}
    assert {"mitsuke.indexer.store.sqlite", "mitsuke.search.searcher", "mitsuke.search.dense"} <= names
    assert len(OUTSIDE_STORE) > 10


@pytest.mark.parametrize("path", OUTSIDE_STORE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_sql_outside_the_store(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = _imports(path, typing=False)
    assert not {m for m in imports if m.split(".")[0] == "sqlalchemy"}, "only the store imports SQLAlchemy"
    store_names = {m.rsplit(".", 1)[1] for m in imports if m.startswith("mitsuke.indexer.store")}
    assert not store_names & TABLES, "the tables are the store's own"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not SQL.search(node.value), f"SQL text at line {node.lineno}: {node.value[:80]!r}"
        if isinstance(node, ast.Attribute) and node.attr == "c" and isinstance(node.value, ast.Name):
            assert node.value.id not in TABLES, f"table columns used at line {node.lineno}"
        if isinstance(node, ast.Attribute) and node.attr in ("engine", "exec_driver_sql"):
            pytest.fail(f"{node.attr} used at line {node.lineno}: go through the store's methods")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SQL_CALLS:
            pytest.fail(f"{node.func.id}() called at line {node.lineno}")


def test_the_store_holds_the_sql_the_scan_looks_for():
    # The checks above can fail: the same scan finds SQL in the store itself.
    text = "\n".join(p.read_text(encoding="utf-8") for p in STORE.glob("*.py"))
    assert SQL.search(text) and "exec_driver_sql" in text and "from sqlalchemy import" in text


def test_one_bind_parameter_batch_size():
    # The SQLite parameter cap was retyped as 500 or 900 in five modules; now the store decides it once.
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in (500, 900, 999) and type(node.value) is int:
                assert path == STORE / "schema.py", f"{path.relative_to(REPO)}:{node.lineno}: use MAX_BIND_PARAMS"


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, annotation-only imports included (they are arrows too)."""
    modules = {_module(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {m for m in _imports(path) if m in modules and m != name}
        # A package's __init__ re-exporting its own submodules is not an arrow back up.
        graph[name] = {m for m in deps if not (path.name == "__init__.py" and m.startswith(name + "."))}
    return graph


def test_the_write_side_never_imports_the_read_side():
    for name, deps in _graph().items():
        if name.startswith("mitsuke.indexer"):
            assert not {d for d in deps if d.startswith("mitsuke.search")}, name


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
