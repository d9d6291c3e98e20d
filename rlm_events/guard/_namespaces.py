"""Which names each scope of the code binds, read off the syntax tree: the answers the guard needs from Python's
`symtable` (is a name local to a function, free there, bound in a class body or the module), without compiling
the code a second time, which costs as much as parsing it.

The tree gives the same answers as `symtable` for ordinary code; for the constructs where CPython's own analysis
does more (`global`/`nonlocal`, assignment expressions in comprehensions, `from __future__` imports, star imports,
type parameters, `__class__`, `yield`/`await` in comprehensions, duplicate parameters, and comprehensions on
Pythons that inline them), `Namespaces.needs_symtable` says so and the guard asks `symtable` itself (which also
reports the code that compiles to a `SyntaxError` only there).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from typing import Any

FUNCTION_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Python 3.12+ inlines list/set/dict comprehensions (PEP 709): `symtable` then shows their names in the enclosing
# scope as well, which the tree alone does not reproduce.
_INLINED = (ast.ListComp, ast.SetComp, ast.DictComp) if sys.version_info >= (3, 12) else ()
SPECIAL_NAMES = frozenset({"__class__", "__debug__"})  # implicit cells, a name Python refuses to bind


class Namespaces:
    """The names bound in each scope node (the module is the tree), filled in by the walk over the tree
    (`Scopes`): `bind_name()` for each name stored or deleted, `HANDLERS` for the other nodes that bind a name or
    need `symtable`."""

    def __init__(self) -> None:
        self.bound: dict[ast.AST, set[str]] = {}
        self.deleted: set[str] = set()  # names some `del` removes
        self.needs_symtable = False
        self._walruses: list[ast.NamedExpr] = []

    def settle(self, parents: dict[ast.AST, ast.AST]) -> None:
        """Once the walk is done: an assignment expression anywhere in a comprehension (which binds in an
        enclosing scope, or is refused) needs `symtable`; elsewhere its target is an ordinary binding."""
        for node in self._walruses:
            parent = parents.get(node)
            while parent is not None and not self.needs_symtable:
                if isinstance(parent, (*COMPREHENSIONS, ast.comprehension)):
                    self.needs_symtable = True
                parent = parents.get(parent)

    def bind_name(self, node: ast.Name, scope: ast.AST) -> None:
        """Record the name `node` stores or deletes in `scope` (the caller skips the names that are only read, and
        sends those in `SPECIAL_NAMES` to `symtable`)."""
        self._add(scope, node.id)
        if type(node.ctx) is ast.Del:
            self.deleted.add(node.id)

    def _add(self, scope: ast.AST, name: str) -> None:
        names = self.bound.get(scope)
        if names is None:
            self.bound[scope] = {name}
        else:
            names.add(name)

    def _needs(self, node: ast.AST, scope: ast.AST) -> None:
        self.needs_symtable = True

    def _arg(self, node: ast.arg, scope: ast.AST) -> None:
        self._add(scope, node.arg)

    def _definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, scope: ast.AST) -> None:
        self._add(scope, node.name)
        if getattr(node, "type_params", None):  # PEP 695 (3.12+): scopes of their own in `symtable`
            self.needs_symtable = True
        if not isinstance(node, ast.ClassDef):
            self._parameters(node, scope)

    def _parameters(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, scope: ast.AST) -> None:
        arguments = node.args
        names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
        names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
        if len(set(names)) != len(names):  # a duplicate parameter: `symtable` refuses it
            self.needs_symtable = True

    def _import(self, node: ast.Import | ast.ImportFrom, scope: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            self.needs_symtable = True  # `annotations` moves annotations into scopes of their own
        for alias in node.names:
            if alias.name == "*":
                self.needs_symtable = True
            else:
                self._add(scope, alias.asname or alias.name.split(".")[0])

    def _named(self, node: ast.ExceptHandler | ast.MatchAs | ast.MatchStar, scope: ast.AST) -> None:
        if node.name:
            self._add(scope, node.name)

    def _mapping(self, node: ast.MatchMapping, scope: ast.AST) -> None:
        if node.rest:
            self._add(scope, node.rest)

    def _walrus(self, node: ast.NamedExpr, scope: ast.AST) -> None:
        self._walruses.append(node)

    def _suspension(self, node: ast.AST, scope: ast.AST) -> None:
        if isinstance(scope, COMPREHENSIONS):  # `yield`/`await` in a comprehension: `symtable` decides
            self.needs_symtable = True

    def _comprehension(self, node: ast.comprehension, scope: ast.AST) -> None:
        if node.is_async:
            self.needs_symtable = True

    def _inlined(self, node: ast.AST, scope: ast.AST) -> None:
        self.needs_symtable = True


HANDLERS: dict[type, Callable[[Namespaces, Any, ast.AST], None]] = {
    ast.arg: Namespaces._arg,
    ast.FunctionDef: Namespaces._definition,
    ast.AsyncFunctionDef: Namespaces._definition,
    ast.ClassDef: Namespaces._definition,
    ast.Lambda: Namespaces._parameters,
    ast.Import: Namespaces._import,
    ast.ImportFrom: Namespaces._import,
    ast.ExceptHandler: Namespaces._named,
    ast.MatchAs: Namespaces._named,
    ast.MatchStar: Namespaces._named,
    ast.MatchMapping: Namespaces._mapping,
    ast.Yield: Namespaces._suspension,
    ast.YieldFrom: Namespaces._suspension,
    ast.Await: Namespaces._suspension,
    ast.comprehension: Namespaces._comprehension,
    ast.Global: Namespaces._needs,
    ast.Nonlocal: Namespaces._needs,
    ast.NamedExpr: Namespaces._walrus,
    **{kind: Namespaces._inlined for kind in _INLINED},
    **{
        getattr(ast, kind): Namespaces._needs
        for kind in ("TypeAlias", "TypeVar", "ParamSpec", "TypeVarTuple")
        if hasattr(ast, kind)
    },
}


def mangled(name: str, class_name: str | None) -> bool:
    """Whether `name`, used inside the class `class_name`, is a private name Python mangles (`__x` → `_C__x`)."""
    return (
        class_name is not None
        and name.startswith("__")
        and not name.endswith("__")
        and bool(class_name.lstrip("_"))
        and "." not in name
    )


__all__ = ["COMPREHENSIONS", "FUNCTION_SCOPES", "HANDLERS", "SPECIAL_NAMES", "Namespaces", "mangled"]
