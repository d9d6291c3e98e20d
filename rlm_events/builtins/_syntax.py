"""Small AST helpers shared by the built-ins that read generated code."""

from __future__ import annotations

import ast


def parse(code: str) -> ast.Module | None:
    """The module's tree, or ``None`` when ``code`` is not valid Python."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source with null bytes
        return None


def bound_names(tree: ast.AST) -> set[str]:
    """Names the code binds itself: assignments, definitions, parameters, loop targets, imports."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def class_members(tree: ast.AST) -> dict[str, set[str]]:
    """For each class the code defines: its methods, class attributes and ``self.<name>`` assignments."""
    members: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        names = members.setdefault(node.name, set())
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(inner.name)
            elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                names.add(inner.id)
            elif (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.ctx, ast.Store)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == "self"
            ):
                names.add(inner.attr)
    return members
