"""What the code binds, as far as its syntax shows: every place a name is bound and with what
(`bindings_of()`), the names its imports bind (`imported_names()`), and how its methods are decorated."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Binding:
    """One place a name is bound: to an assignment's `value`, to the `element` of a loop over `expr`, or to
    something else the guard does not follow (`other`: a parameter, a definition, an import …)."""

    kind: Literal["value", "element", "other"]
    expr: ast.expr | None = None


BINDING_NODES = frozenset(
    {
        *(ast.Name, ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.For, ast.AsyncFor, ast.comprehension, ast.AugAssign),
        *(ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.arg, ast.Import, ast.ImportFrom, ast.withitem),
        *(ast.ExceptHandler, ast.Global, ast.Nonlocal, ast.MatchAs, ast.MatchStar, ast.MatchMapping),
    }
)


def bindings_of(nodes: Iterable[ast.AST]) -> dict[str, list[Binding]]:
    """Every place each name is bound, and with what (`value` of an assignment, `element` of a loop)."""
    found: dict[str, list[Binding]] = {}

    def add(name: str, binding: Binding) -> None:
        found.setdefault(name, []).append(binding)

    def targets(target: ast.expr, binding: Binding) -> None:
        if isinstance(target, ast.Name):
            add(target.id, binding)
        else:
            for node in ast.walk(target):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    add(node.id, Binding("other"))

    for node in nodes:
        kind = type(node)
        if kind not in BINDING_NODES:  # most nodes bind nothing: one set test
            continue
        if kind is ast.Name:
            if isinstance(node.ctx, ast.Del):  # type: ignore[attr-defined]
                add(node.id, Binding("other"))  # type: ignore[attr-defined]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets(target, Binding("value", node.value))
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            targets(node.target, Binding("value", node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            targets(node.target, Binding("element", node.iter))
        elif isinstance(node, ast.AugAssign):
            targets(node.target, Binding("other"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name, Binding("other"))
        elif isinstance(node, ast.arg):
            add(node.arg, Binding("other"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                add((alias.asname or alias.name).split(".")[0], Binding("other"))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets(node.optional_vars, Binding("value", node.context_expr))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            add(node.name, Binding("other"))
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name, Binding("other"))
        elif (isinstance(node, ast.MatchAs) and node.name) or (isinstance(node, ast.MatchStar) and node.name):
            add(node.name, Binding("other"))
        elif isinstance(node, ast.MatchMapping) and node.rest:
            add(node.rest, Binding("other"))
    return found


def imported_names(tree: ast.Module) -> dict[str, str]:
    """The names `tree`'s imports bind, and the dotted paths they are bound to."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(import_bindings(node))
    return names


def import_bindings(node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    """The names one import statement binds, and the dotted paths they are bound to."""
    names: dict[str, str] = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            names[local] = alias.name if alias.asname else local
    elif node.module and not node.level:
        for alias in node.names:
            if alias.name != "*":
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def decorated(node: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    """Whether `node` has the decorator `name` (`@name` or `@x.name`)."""
    return any(
        (isinstance(d, ast.Name) and d.id == name) or (isinstance(d, ast.Attribute) and d.attr == name)
        for d in node.decorator_list
    )


def is_classmethod_call(nodes: Iterable[ast.AST], cls: str, method: str) -> bool:
    """Whether `cls.method` is a classmethod of a class `cls` among `nodes`."""
    for node in nodes:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == method:
                    return decorated(f, "classmethod")
    return False


__all__ = [
    "BINDING_NODES",
    "Binding",
    "bindings_of",
    "decorated",
    "import_bindings",
    "imported_names",
    "is_classmethod_call",
]


def annotations_of(node: ast.AST) -> list[ast.expr]:
    """The annotations `node` itself carries: a parameter's, a function's return annotation, an annotated
    assignment's (not those of nodes below it)."""
    if isinstance(node, (ast.arg, ast.AnnAssign)):
        found = node.annotation
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        found = node.returns
    else:
        return []
    return [found] if found is not None else []
