"""Define functions read out of another project's source file (verl, TRL) without importing that project:
the parity scripts run the incumbents' own math on the same inputs as npu_rl's. Decorators are dropped;
the caller supplies the names the functions use (torch, helpers, stand-ins)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any


def source_functions(
    path: Path, keep: Callable[[str], bool], namespace: dict[str, Any], within_class: str | None = None
) -> dict[str, Any]:
    """Define in `namespace` the functions of `path` whose name `keep` accepts, with its top-level
    UPPER_CASE constants: top-level functions, or the (static) methods of class `within_class`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = tree.body
    if within_class is not None:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == within_class]
        if not found:
            raise SystemExit(f"{path}: no class {within_class}")
        constants = [n for n in body if _is_constant(n)]
        body = constants + [n for n in found[0].body if isinstance(n, ast.FunctionDef)]

    wanted = [n for n in body if (isinstance(n, ast.FunctionDef) and keep(n.name)) or _is_constant(n)]
    for node in wanted:
        if isinstance(node, ast.FunctionDef):
            node.decorator_list = []
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def _is_constant(node: ast.stmt) -> bool:
    target = (
        node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
    )
    return isinstance(target, ast.Name) and target.id.isupper()
