"""The package layout: imports follow the pipeline downward and no module imports itself back.

Every ``import automq.x`` of every module under ``automq/`` is read from its syntax tree, including imports inside
functions and under ``TYPE_CHECKING`` (a circle that only type checkers see is still a circle a reader must untangle).
"""

import ast
from pathlib import Path

import automq

PACKAGE = Path(automq.__file__).parent

# The pipeline, bottom to top: a module may import its own stage and the stages below it, never one above.
STAGES = ["errors", "io", "device", "ray_cluster", "numerics", "data", "space", "model", "cost", "latency", "oneshot",
          "search", "report", "cli"]
# The strategy registry imports the built-in strategies (the plugin folder installed as automq.strategies) to
# register them; that folder is outside automq/ and imports automq, so this is the one sanctioned upward edge.
PLUGINS = "automq.strategies"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The automq modules ``path`` imports: ``from automq.x import y`` counts ``automq.x.y`` when that is a module,
    else ``automq.x`` (a parent package's ``__init__`` always runs first, so it is not counted as an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules
            if len(submodules) < len(node.names):  # some names come from the module (or facade) itself
                found.add(node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[1])


def test_every_module_belongs_to_a_stage_and_imports_only_its_own_stage_or_below():
    graph = import_graph()
    assert "automq.search.trial" in graph and "automq.numerics.formats" in graph  # the walk found the tree
    upward = [(src, dst) for src, targets in graph.items() if src != "automq"
              for dst in targets if dst != "automq" and stage(dst) > stage(src)]
    assert upward == []


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(PLUGINS):
                continue
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_graph_sees_a_planted_circle(tmp_path):
    """The walker is not blind: an import under TYPE_CHECKING inside a function body is still found."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "def f():\n    if TYPE_CHECKING:\n        from automq.search.strategy import Strategy\n")
    assert imported_modules(source, {"automq.search.strategy", "automq.search"}) == {"automq.search.strategy"}


def test_each_subpackage_states_what_it_holds_and_exports_names_that_exist():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        package = __import__(module_name(init), fromlist=["__all__"])
        assert package.__all__ and all(hasattr(package, name) for name in package.__all__), init
