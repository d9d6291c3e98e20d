"""How the guard's run-time layer ([`rlm_events.guard._runtime`][rlm_events.guard._runtime]) sees the code's
attribute accesses and class patterns: the code is compiled from a tree in which each one goes through a lookup
([`rewrite()`][rlm_events.guard._runtime_rewrite.rewrite], see
[`GuardedLookups`][rlm_events.guard._runtime_rewrite.GuardedLookups]). The lookups are globals whose names no code can
spell (`<guard:attribute>` …), which the guarded built-ins of a
[`RuntimeGuard`][rlm_events.guard._runtime.RuntimeGuard] hold.

Standard library only, importing nothing else of this package: the sandbox's worker loads the layer's modules from
their source (see [`rlm_events.guard._runtime`][rlm_events.guard._runtime]).
"""

from __future__ import annotations

import ast
from typing import Any

FORMAT_LOOKUP = "<guard:format>"  # the global the format-method lookups are compiled into; no code can spell it
# The globals other attribute reads, and the receivers of attribute writes and deletes, are compiled into.
ATTRIBUTE_LOOKUP = "<guard:attribute>"
ATTRIBUTE_OWNER = "<guard:owner>"
BUILTINS_REFUSED = "<guard:builtins>"  # what reading `__builtins__` is compiled into: a refusal
PATTERN_CLASS = "<guard:pattern>"  # the class patterns' classes (their attribute reads are checked on the subject)
FORMAT_METHODS = frozenset({"format", "format_map", "vformat"})


def _no_arguments() -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


class GuardedLookups(ast.NodeTransformer):
    """Compiles the code's attribute accesses into the guard's checks (the names are the globals above, which no code
    can spell):

    * a read `x.name` into `<guard:attribute>(x, "name")`, a read of `format`, `format_map` or `vformat` into
      `<guard:format>(x, "name")` (a format string's fields are checked when it is used);
    * a write or delete `x.name = v` / `del x.name` into `<guard:owner>(x, "name").name = v`;
    * the class of a class pattern `case C(a=p)` into `<guard:pattern:N>.cls`, with `<guard:pattern:N>` bound just
      before the `match` to `<guard:pattern>(lambda: C, ("a",), 0)`, since CPython reads the pattern's attributes in
      C: `C` is evaluated when the case is tried, as Python evaluates it (after the subject, only for the cases
      tried).

    Attribute names are mangled as Python mangles them (`self.__x` in class `A` is `_A__x`): the string the lookup
    receives is the name Python would read. Under `from __future__ import annotations` the annotations stay as
    written: they are strings then, never evaluated by Python (a library that evaluates them is checked when it
    compiles them), and `dataclasses` reads `ClassVar` in them."""

    def __init__(self, lazy_annotations: bool = False) -> None:
        self.classes: list[str] = []
        self.patterns = 0
        self.lazy_annotations = lazy_annotations

    def visit_arg(self, node: ast.arg) -> ast.AST:
        return node if self.lazy_annotations else self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if not self.lazy_annotations:
            return self.generic_visit(node)
        node.target = self.visit(node.target)
        node.value = self.visit(node.value) if node.value is not None else None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        returns, node.returns = node.returns, None
        self.generic_visit(node)
        node.returns = returns if self.lazy_annotations or returns is None else self.visit(returns)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def _mangled(self, name: str) -> str:
        if name.startswith("__") and not name.endswith("__") and self.classes:
            owner = self.classes[-1].lstrip("_")
            if owner:
                return f"_{owner}{name}"
        return name

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        # Everything but the body (decorators, bases, keywords, and type parameters' bounds from Python 3.12) is
        # outside the class's name mangling.
        body, node.body = node.body, []
        self.generic_visit(node)
        self.classes.append(node.name)
        try:
            node.body = self._statements(body)
        finally:
            self.classes.pop()
        return node

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in body:
            result = self.visit(statement)
            out.extend(result if isinstance(result, list) else [result])
        return out

    def visit_Name(self, node: ast.Name) -> ast.AST:
        # `__builtins__` is the guarded table, holding the lookups above: the code does not get to read or change it.
        if node.id == "__builtins__" and isinstance(node.ctx, ast.Load):
            return ast.copy_location(ast.Call(ast.Name(BUILTINS_REFUSED, ast.Load()), [], []), node)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        name = ast.Constant(self._mangled(node.attr))
        if isinstance(node.ctx, ast.Load):
            lookup = FORMAT_LOOKUP if node.attr in FORMAT_METHODS else ATTRIBUTE_LOOKUP
            return ast.copy_location(ast.Call(ast.Name(lookup, ast.Load()), [node.value, name], []), node)
        owner = ast.Call(ast.Name(ATTRIBUTE_OWNER, ast.Load()), [node.value, name], [])
        node.value = ast.copy_location(owner, node.value)
        return node

    def visit_Match(self, node: ast.Match) -> Any:
        node.subject = self.visit(node.subject)
        bound: list[ast.stmt] = []
        for case in node.cases:
            for pattern in ast.walk(case.pattern):
                if isinstance(pattern, ast.MatchClass):
                    self.patterns += 1
                    alias = f"<guard:pattern:{self.patterns}>"
                    names = ast.Tuple([ast.Constant(n) for n in pattern.kwd_attrs], ast.Load())
                    resolve = ast.Lambda(_no_arguments(), self.visit(pattern.cls))
                    call = ast.Call(
                        ast.Name(PATTERN_CLASS, ast.Load()), [resolve, names, ast.Constant(len(pattern.patterns))], []
                    )
                    bound.append(ast.copy_location(ast.Assign([ast.Name(alias, ast.Store())], call), node))
                    site = ast.Attribute(ast.Name(alias, ast.Load()), "cls", ast.Load())
                    pattern.cls = ast.copy_location(site, pattern.cls)  # type: ignore[assignment]
            if case.guard is not None:
                case.guard = self.visit(case.guard)
            case.body = self._statements(case.body)
        # Value patterns (`case Color.RED:`) stay dotted names, as patterns must: they compare, binding nothing.
        return [*bound, node]

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, self._statements(value))
            elif isinstance(value, list):
                setattr(node, field, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node


def rewrite(tree: ast.Module) -> ast.Module:
    """`tree` with its attribute accesses and class patterns routed through the guard (see `GuardedLookups`)."""
    lazy = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    return ast.fix_missing_locations(GuardedLookups(lazy_annotations=lazy).visit(tree))


__all__ = [
    "ATTRIBUTE_LOOKUP",
    "ATTRIBUTE_OWNER",
    "BUILTINS_REFUSED",
    "FORMAT_LOOKUP",
    "FORMAT_METHODS",
    "PATTERN_CLASS",
    "GuardedLookups",
    "rewrite",
]
