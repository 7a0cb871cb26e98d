"""The layers point one way: a lower layer never imports a higher one (not even inside a function), and
the project's modules import each other without cycles.

Pure: every .py file under the project's packages is parsed with `ast`, nothing is imported. Layers,
bottom to top:

    0  chexrl.core
    1  chexrl (the package and its small top-level modules), chexrl.config, chexrl.data, chexrl.models,
       chexrl.traces
    2  rollout_worker, services (the evaluator)
    3  chexrl.evaluation
    4  trainer
    5  chexrl.bench, chexrl.demo, chexrl.pipeline, chexrl.commands, chexrl.cli
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chexrl", "trainer", "rollout_worker", "services")

# Longest prefix wins; "chexrl" alone covers the package and its small top-level modules (run_files, ...).
LAYERS: dict[str, int] = {
    "chexrl.core": 0,
    "chexrl": 1,
    "chexrl.config": 1,
    "chexrl.data": 1,
    "chexrl.models": 1,
    "chexrl.traces": 1,
    "rollout_worker": 2,
    "services": 2,
    "chexrl.evaluation": 3,
    "trainer": 4,
    "chexrl.bench": 5,
    "chexrl.demo": 5,
    "chexrl.pipeline": 5,
    "chexrl.commands": 5,
    "chexrl.cli": 5,
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module
    path: str  # the importing file, relative to the repository root
    line: int


def layer_of(module: str, layers: dict[str, int] = LAYERS) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in layers:
            return layers[prefix]
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for package in PACKAGES
        for p in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(module: str, path: Path, modules: set[str], root: Path = ROOT) -> list[Import]:
    """Every import of a project module in one file: at module level and inside functions, `import x`,
    `from x import y` (y itself when it is a module) and relative imports, resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    found: set[Import] = set()

    def add(target: str, line: int) -> None:
        # the longest project module named by `target` (an attribute import names its module)
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in modules:
                # A module naming itself is no cycle: chexrl.cli run as `python -m` imports the real
                # chexrl.cli from its __main__ copy.
                if candidate != module:
                    found.add(Import(module, candidate, rel, line))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                add(submodule if submodule in modules else origin, node.lineno)
    return sorted(found, key=lambda i: (i.line, i.target))


def import_graph(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    names = set(modules)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, names, root)]


def upward_imports(imports: list[Import], layers: dict[str, int] = LAYERS) -> list[str]:
    """'path:line: module (layer a) imports target (layer b)' for each import into a higher layer."""
    problems = []
    for imp in imports:
        low, high = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if low is None or high is None:
            missing = imp.source if low is None else imp.target
            problems.append(f"{imp.path}:{imp.line}: {missing} has no layer")
        elif high > low:
            problems.append(
                f"{imp.path}:{imp.line}: {imp.source} (layer {low}) imports {imp.target} (layer {high})"
            )
    return problems


def cycles(imports: list[Import]) -> list[list[str]]:
    """One cycle per strongly connected component of the module graph that has one, as
    [m0, m1, ..., m0]; a module importing itself is a cycle too."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())

    # Tarjan's algorithm, iteratively (no recursion limit on a long chain).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)

    found = []
    for component in components:
        members = set(component)
        first = min(component)
        # a shortest way back to `first` inside the component (breadth-first)
        previous: dict[str, str] = {}
        frontier = [first]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for node in frontier:
                for child in sorted(graph[node] & members):
                    if child == first:
                        cycle = [node]
                        break
                    if child not in previous:
                        previous[child] = node
                        nxt.append(child)
                if cycle is not None:
                    break
            frontier = nxt
        path = cycle or [first]
        while path[-1] != first:
            path.append(previous[path[-1]])
        found.append([first, *reversed(path[:-1]), first] if len(path) > 1 else [first, first])
    return found


# -- the project ------------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    assert [m for m in project_modules() if layer_of(m) is None] == []


def test_no_lower_layer_imports_a_higher_one():
    problems = upward_imports(import_graph())
    assert problems == [], "imports against the layer order:\n" + "\n".join(problems)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_graph_sees_imports_inside_functions():
    """The walk is not limited to module-level imports (the ones that hide cycles are inside functions)."""
    targets = {(i.source, i.target) for i in import_graph()}
    assert ("chexrl.commands.grpo", "trainer.loop") in targets  # imported inside run_grpo's command
    assert ("chexrl.evaluation.runner", "chexrl.evaluation.comparison") in targets  # module level


def test_the_evaluator_client_does_not_import_the_service():
    """The trainer imports services.evaluator.client: nothing it reaches imports the app or FastAPI."""
    graph: dict[str, set[str]] = {}
    for imp in import_graph():
        graph.setdefault(imp.source, set()).add(imp.target)
    reached, todo = set(), ["services.evaluator.client"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += sorted(graph.get(module, ()))
    assert "services.evaluator.app" not in reached
    modules = project_modules()
    fastapi = {
        m
        for m in reached
        for node in ast.walk(ast.parse(modules[m].read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            name.split(".")[0] in ("fastapi", "starlette", "uvicorn")
            for name in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
        )
    }
    assert fastapi == set()


# -- the checks themselves, on synthetic graphs -----------------------------------------------------------


def _imports(*edges: tuple[str, str]) -> list[Import]:
    return [Import(a, b, a.replace(".", "/") + ".py", n + 1) for n, (a, b) in enumerate(edges)]


def test_upward_import_is_reported_with_file_line_and_layers():
    layers = {"low": 0, "high": 1}
    problems = upward_imports(_imports(("high.a", "low.b"), ("low.b", "high.c")), layers)
    assert problems == ["low/b.py:2: low.b (layer 0) imports high.c (layer 1)"]
    assert upward_imports(_imports(("high.a", "low.b")), layers) == []
    assert upward_imports(_imports(("other.a", "low.b")), layers) == ["other/a.py:1: other.a has no layer"]


def test_cycle_is_reported():
    assert cycles(_imports(("a", "b"), ("b", "c"), ("c", "d"))) == []
    assert cycles(_imports(("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"))) == [["a", "b", "c", "a"]]
    assert cycles(_imports(("x", "x"))) == [["x", "x"]]
    two = cycles(_imports(("a", "b"), ("b", "a"), ("p", "q"), ("q", "r"), ("r", "p")))
    assert sorted(two) == [["a", "b", "a"], ["p", "q", "r", "p"]]


def test_imports_are_resolved(tmp_path):
    pkg = tmp_path / "chexrl"
    (pkg / "core").mkdir(parents=True)
    (pkg / "evaluation").mkdir()
    for name in ("__init__", "core/__init__", "core/m", "evaluation/__init__", "evaluation/x", "config"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "core" / "m.py").write_text(
        "import os\n"
        "from . import __name__ as n\n"
        "def f():\n"
        "    from ..evaluation import x\n"
        "    from chexrl.config import Thing\n"
        "    import chexrl.evaluation.x as y\n"
    )
    modules = {module_name(p, tmp_path) for p in pkg.rglob("*.py")}
    found = imports_of("chexrl.core.m", pkg / "core" / "m.py", modules, tmp_path)
    assert [(i.target, i.line) for i in found] == [
        ("chexrl.core", 2),
        ("chexrl.evaluation.x", 4),
        ("chexrl.config", 5),
        ("chexrl.evaluation.x", 6),
    ]
    assert upward_imports(found) == [
        "chexrl/core/m.py:4: chexrl.core.m (layer 0) imports chexrl.evaluation.x (layer 3)",
        "chexrl/core/m.py:5: chexrl.core.m (layer 0) imports chexrl.config (layer 1)",
        "chexrl/core/m.py:6: chexrl.core.m (layer 0) imports chexrl.evaluation.x (layer 3)",
    ]
