"""Which names a piece of code binds: the walkers every reader of generated code shares.

* `bound_names()`: every name the code binds anywhere (nested bodies included): assignments, definitions,
  parameters, loop targets, imports, `except ... as`. What a "did you mean" hint may offer.
* `assigned_names()`: the names a block may rebind *or mutate* when it runs (stores, bases of subscript and
  attribute stores, method-call receivers, definitions, imports), not descending into nested function, lambda or
  class bodies, which do not run with it. What an evaluator must forget after a block it could not follow.
* `class_members()`: for each class the code defines, the names its instances may have.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_STORES = (ast.Store, ast.Del)


def walk_local(node: ast.AST) -> Iterator[ast.AST]:
    """`ast.walk` without descending into nested function, lambda or class bodies."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(child for child in ast.iter_child_nodes(current) if not isinstance(child, _NESTED))


def base_name(node: ast.AST) -> str | None:
    """The name at the root of `a.b[c].d` (`a`), or `None` when the root is not a name."""
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [(alias.asname or alias.name).split(".")[0] for alias in node.names]


def assigned_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Names these nodes may rebind or mutate: stored names, bases of subscript/attribute stores, method-call
    receivers, and names defined by `def`/`class`/`import`."""
    names: set[str] = set()
    for top in nodes:
        for node in walk_local(top):
            if isinstance(node, ast.Name) and isinstance(node.ctx, _STORES):
                names.add(node.id)
            elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, _STORES):
                base = base_name(node)
                if base:
                    names.add(base)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = base_name(node.func.value)
                if base:
                    names.add(base)
            elif isinstance(node, _DEFINITIONS):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(_imported(node))
    return names


def escapes(stmts: Iterable[ast.stmt]) -> bool:
    """Whether these statements may leave their block early: `break`, `continue`, `return`, `raise` or a
    call of the REPL's `SUBMIT`."""
    for stmt in stmts:
        for node in walk_local(stmt):
            if isinstance(node, (ast.Break, ast.Continue, ast.Return, ast.Raise)):
                return True
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SUBMIT":
                return True
    return False


def bound_names(tree: ast.AST) -> set[str]:
    """Names the code binds itself: assignments, definitions, parameters, loop targets, imports."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, _STORES):
            bound.add(node.id)
        elif isinstance(node, _DEFINITIONS):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update(_imported(node))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def class_members(tree: ast.AST) -> dict[str, set[str]]:
    """For each class the code defines: its methods, class attributes and `self.<name>` assignments."""
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


__all__ = ["assigned_names", "base_name", "bound_names", "class_members", "escapes", "walk_local"]
