"""Every function of the product is at most 60 lines (decorators excluded, docstring included): a longer
one is split into named steps. Tests are held to their own, looser rule by review, not by this check."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("chexrl", "trainer", "rollout_worker", "services", "scripts", "docker")
MAX_LINES = 60


def long_functions(root: Path = ROOT, folders=PRODUCT, limit: int = MAX_LINES) -> list[str]:
    """'path:line name (N lines)' for every function or method longer than `limit` lines."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_product_function_is_longer_than_60_lines():
    found = long_functions()
    assert found == [], "functions over 60 lines (split them into named steps):\n" + "\n".join(found)


def test_the_check_counts_lines_from_def_to_last_statement(tmp_path):
    (tmp_path / "pkg").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    method_body = "\n".join(f"        x{i} = {i}" for i in range(61))
    (tmp_path / "pkg" / "m.py").write_text(
        f"def short():\n{body}\n\n\nclass C:\n    def long(self):\n{method_body}\n"
    )
    assert long_functions(tmp_path, ("pkg",)) == ["pkg/m.py:64 long (62 lines)"]
