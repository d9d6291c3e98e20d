"""Whether a name is certainly bound before a use of it (`certainly_bound()`), from the statements before the use
in its blocks and the loops, `with`s and `except`s around it; and which names may be unbound behind the code's back
(`unstable_names()`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._namespaces import COMPREHENSIONS, FUNCTION_SCOPES

if TYPE_CHECKING:
    from ._scopes import Scopes

_OWN_NAMESPACES = frozenset({*FUNCTION_SCOPES, *COMPREHENSIONS})  # scopes that do not see a class body's names
_LOOPS = frozenset({ast.For, ast.AsyncFor})
_BINDING_BLOCKS = _LOOPS | {ast.With, ast.AsyncWith}  # whose body sees what they bind

BINDING_STATEMENTS = frozenset(  # the statements `bound_names()` finds names in
    {ast.Assign, ast.AugAssign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef}
    | {ast.Import, ast.ImportFrom, ast.With, ast.AsyncWith}
)


def bound_names(statement: ast.AST) -> Iterator[str]:
    """The names `statement`, once it has run without an error, has certainly bound in its namespace."""
    if isinstance(statement, ast.Assign):
        for target in statement.targets:
            yield from _target_names(target)
    elif isinstance(statement, ast.AugAssign) or (isinstance(statement, ast.AnnAssign) and statement.value):
        yield from _target_names(statement.target)
    elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield statement.name
    elif isinstance(statement, (ast.Import, ast.ImportFrom)):
        yield from ((a.asname or a.name.split(".")[0]) for a in statement.names)
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        for item in statement.items:
            if item.optional_vars is not None:
                yield from _target_names(item.optional_vars)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def certainly_bound(use: ast.Name, scopes: Scopes, unstable: set[str]) -> bool:
    """Whether the code has certainly bound the name of `use` (looked up in a class body or the module's namespace)
    by the time `use` runs: a statement before it in the same block (or an enclosing one) binds it, or the loop,
    `with` or `except` whose body holds it does. Names in `unstable` (deleted, or rebound through `global`) never
    are."""
    name = use.id
    if name in unstable:
        return False
    first = scopes.first_binders(name)
    parents, position = scopes.parents, scopes.index_blocks()  # (position: statements only)
    child: ast.AST = use
    parent = parents.get(use)
    in_function = False
    while parent is not None:
        kind = type(parent)
        if kind in _OWN_NAMESPACES:
            in_function = True
        elif kind in _BINDING_BLOCKS and child in parent.body:  # type: ignore[attr-defined]
            bound = _target_names(parent.target) if kind in _LOOPS else bound_names(parent)  # type: ignore[attr-defined]
            if name in bound:
                return True
        elif kind is ast.ExceptHandler and parent.name == name and child in parent.body:  # type: ignore[attr-defined]
            return True
        where = position.get(child)  # type: ignore[call-overload]
        if where is not None and not (kind is ast.ClassDef and in_function):
            # a method does not see its class's names
            _, block, index = where
            if first.get(id(block), index) < index:
                return True
        child, parent = parent, parents.get(parent)
    return False


def unstable_names(nodes: list[ast.AST]) -> set[str]:
    """Names whose binding in the module's namespace may go away or change behind the code's back: deleted
    (`del x`), or declared `global`/`nonlocal` somewhere (among `nodes`: those of types Name, Global, Nonlocal
    suffice)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
            found.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            found.update(node.names)
    return found


__all__ = ["BINDING_STATEMENTS", "bound_names", "certainly_bound", "unstable_names"]
