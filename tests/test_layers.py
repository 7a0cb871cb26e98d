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
    5  chexrl.bench, chexrl.demo, chexrl.pipeline, chexrl.commands, chexrl.cli, and the Python files in scripts/ and docker/

Dynamic imports count too: `importlib.import_module("x")` and `__import__("x")` with a literal name (or an
f-string whose literal head names a package) are imports of x; one whose name cannot be read from the
source is reported, since the check could not place it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chexrl", "trainer", "rollout_worker", "services")
# Folders of scripts (no __init__.py): their files are modules "scripts.x" and "docker.x" of the top layer.
SCRIPT_DIRS = ("scripts", "docker")
# Top-level folders that hold Python but are not part of the layered product.
NOT_LAYERED = {"tests"}

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
    "scripts": 5,
    "docker": 5,
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
        for package in (*PACKAGES, *SCRIPT_DIRS)
        for p in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def top_level_python_folders(root: Path = ROOT) -> set[str]:
    """Every folder at the repository root that holds Python files (a package or scripts), hidden and
    virtual-environment folders aside."""
    return {
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in {"build", "dist", "runs", "artifacts"}
        and not (d / "pyvenv.cfg").exists()
        and any(p for p in d.rglob("*.py") if "__pycache__" not in p.parts)
    }


def imports_of(module: str, path: Path, modules: set[str], root: Path = ROOT) -> list[Import]:
    """Every import of a project module in one file: at module level and inside functions, `import x`,
    `from x import y` (y itself when it is a module) and relative imports, resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    found: set[Import] = set()

    def add(target: str, line: int) -> None:
        if target == DYNAMIC:
            found.add(Import(module, DYNAMIC, rel, line))
            return
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
        if isinstance(node, ast.Call) and _is_dynamic_import(node):
            add(_dynamic_import_name(node) or DYNAMIC, node.lineno)
        elif isinstance(node, ast.Import):
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


DYNAMIC = "<a dynamic import whose module name is not in the source>"


def _is_dynamic_import(call: ast.Call) -> bool:
    """`importlib.import_module(...)`, `import_module(...)` or `__import__(...)`."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def _dynamic_import_name(call: ast.Call) -> str | None:
    """The module a dynamic import names: a literal, or the package an f-string's literal head names
    (f"chexrl.commands.{name}" imports a module of chexrl.commands); None when the source does not say."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        return head.rstrip(".") if head.endswith(".") else None
    return None


def import_graph(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    names = set(modules)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, names, root)]


def upward_imports(imports: list[Import], layers: dict[str, int] = LAYERS) -> list[str]:
    """'path:line: module (layer a) imports target (layer b)' for each import into a higher layer."""
    problems = []
    for imp in imports:
        if imp.target == DYNAMIC:
            problems.append(f"{imp.path}:{imp.line}: {imp.source} makes {DYNAMIC}")
            continue
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


def test_every_top_level_python_folder_is_placed():
    """A new top-level package (or folder of scripts) must be given a layer before it can land."""
    placed = set(PACKAGES) | set(SCRIPT_DIRS) | NOT_LAYERED
    assert top_level_python_folders() - placed == set()


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
    assert ("chexrl.cli", "chexrl.commands") in targets  # importlib.import_module(f"chexrl.commands.{...}")


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


def test_dynamic_imports_are_resolved_or_reported(tmp_path):
    pkg = tmp_path / "chexrl"
    (pkg / "core").mkdir(parents=True)
    (pkg / "evaluation").mkdir()
    for name in ("__init__", "core/__init__", "evaluation/__init__", "evaluation/x"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "core" / "d.py").write_text(
        "import importlib\n"
        "def f(name):\n"
        "    importlib.import_module('chexrl.evaluation.x')\n"
        "    __import__('chexrl.evaluation')\n"
        "    importlib.import_module(f'chexrl.evaluation.{name}')\n"
        "    importlib.import_module(name)\n"
    )
    modules = {module_name(p, tmp_path) for p in pkg.rglob("*.py")}
    found = imports_of("chexrl.core.d", pkg / "core" / "d.py", modules, tmp_path)
    assert [(i.target, i.line) for i in found] == [
        ("chexrl.evaluation.x", 3),
        ("chexrl.evaluation", 4),
        ("chexrl.evaluation", 5),
        (DYNAMIC, 6),
    ]
    problems = upward_imports(found)
    assert problems[:3] == [
        "chexrl/core/d.py:3: chexrl.core.d (layer 0) imports chexrl.evaluation.x (layer 3)",
        "chexrl/core/d.py:4: chexrl.core.d (layer 0) imports chexrl.evaluation (layer 3)",
        "chexrl/core/d.py:5: chexrl.core.d (layer 0) imports chexrl.evaluation (layer 3)",
    ]
    assert problems[3] == f"chexrl/core/d.py:6: chexrl.core.d makes {DYNAMIC}"


def test_an_unplaced_top_level_package_is_found(tmp_path):
    for folder in ("chexrl", "newpkg", "scripts", ".hidden", "docs"):
        (tmp_path / folder).mkdir()
    (tmp_path / "chexrl" / "__init__.py").write_text("")
    (tmp_path / "newpkg" / "__init__.py").write_text("")
    (tmp_path / "scripts" / "tool.py").write_text("")
    (tmp_path / ".hidden" / "x.py").write_text("")
    (tmp_path / "docs" / "page.md").write_text("")
    assert top_level_python_folders(tmp_path) == {"chexrl", "newpkg", "scripts"}
    placed = set(PACKAGES) | set(SCRIPT_DIRS) | NOT_LAYERED
    assert top_level_python_folders(tmp_path) - placed == {"newpkg"}


def test_scripts_and_docker_files_are_in_the_graph(tmp_path):
    assert {"docker.grpo_job", "docker.healthcheck"} <= set(project_modules())
    (tmp_path / "chexrl" / "core").mkdir(parents=True)
    (tmp_path / "chexrl" / "__init__.py").write_text("")
    (tmp_path / "chexrl" / "core" / "__init__.py").write_text("import scripts.tool\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "tool.py").write_text("from chexrl.core import x\n")
    graph = import_graph(tmp_path)
    assert {(i.source, i.target) for i in graph} == {
        ("scripts.tool", "chexrl.core"),
        ("chexrl.core", "scripts.tool"),
    }
    assert upward_imports(graph) == [
        "chexrl/core/__init__.py:1: chexrl.core (layer 0) imports scripts.tool (layer 5)"
    ]
