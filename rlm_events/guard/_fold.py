"""What strings an expression can hold, when the code shows them all: a bounded evaluator over literals.

`StringValues.fold()` computes a str/int/bytes expression built only from literals (`'__glo' + 'bals__'`,
`chr(95) * 2`, `'.'.join([...])`), following names bound once to such an expression;
`StringValues.known_strings()` widens that to every value a name can hold (conditional expressions, loops over
literal collections). Limits: nesting depth 12, strings and bytes of at most 10,000 items, repetition counts up to
1,000; beyond them, or on any error, the value is unknown (`None`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from ._bindings import Binding

_STR_METHODS = frozenset(
    {"upper", "lower", "strip", "lstrip", "rstrip", "replace", "title", "capitalize", "swapcase", "casefold"}
)
_SEQUENCE_WRAPPERS = frozenset({"sorted", "reversed", "list", "tuple", "set", "frozenset"})


class StringValues:
    """The values of string expressions in one piece of code, given where its names are bound."""

    def __init__(self, bindings: dict[str, list[Binding]]) -> None:
        self.bindings = bindings

    def fold(self, node: ast.AST, depth: int = 0) -> Any:
        """The value of a str/int/bytes expression built only from literals (`'__glo' + 'bals__'`), else `None`."""
        if depth > 12:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, bytes)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.fold(node.operand, depth + 1)
            return -operand if isinstance(operand, int) else None
        if isinstance(node, ast.BinOp):
            left, right = self.fold(node.left, depth + 1), self.fold(node.right, depth + 1)
            if left is None or right is None:
                if isinstance(node.op, ast.Mod) and isinstance(left, str) and isinstance(node.right, ast.Tuple):
                    items = [self.fold(e, depth + 1) for e in node.right.elts]
                    if all(i is not None for i in items):
                        return _safe(lambda: left % tuple(items))
                return None
            if isinstance(node.op, ast.Mult) and (
                (isinstance(left, int) and left > 1000) or (isinstance(right, int) and right > 1000)
            ):
                return None
            op = {ast.Add: lambda a, b: a + b, ast.Mult: lambda a, b: a * b, ast.Mod: lambda a, b: a % b}.get(
                type(node.op)
            )
            return _safe(lambda: op(left, right)) if op else None
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    if value.conversion != -1 or value.format_spec is not None:
                        return None
                    inner = self.fold(value.value, depth + 1)
                    if inner is None:
                        return None
                    parts.append(str(inner))
                else:
                    parts.append(self.fold(value, depth + 1))
            return "".join(p for p in parts if isinstance(p, str)) if all(isinstance(p, str) for p in parts) else None
        if isinstance(node, ast.Subscript):
            value = self.fold(node.value, depth + 1)
            if not isinstance(value, (str, bytes)):
                return None
            index = node.slice
            if isinstance(index, ast.Slice):
                bounds = [
                    None if b is None else self.fold(b, depth + 1) for b in (index.lower, index.upper, index.step)
                ]
                if any(b is not None and not isinstance(b, int) for b in bounds) or any(
                    b is None and e is not None
                    for b, e in zip(bounds, (index.lower, index.upper, index.step), strict=False)
                ):
                    return None
                return _safe(lambda: value[slice(*bounds)])
            at = self.fold(index, depth + 1)
            return _safe(lambda: value[at]) if isinstance(at, int) else None
        if isinstance(node, ast.Name):
            bound = self._only_value(node.id)
            return None if bound is None else self.fold(bound, depth + 1)
        if isinstance(node, ast.Call) and not node.keywords:
            return self._fold_call(node, depth)
        return None

    def _fold_call(self, node: ast.Call, depth: int) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            code = self.fold(node.args[0], depth + 1)
            return _safe(lambda: chr(code)) if isinstance(code, int) else None
        if isinstance(func, ast.Name) and func.id == "bytes" and len(node.args) == 1:
            items = self._fold_items(node.args[0], depth)
            return _safe(lambda: bytes(items)) if items is not None else None
        if not isinstance(func, ast.Attribute):
            return None
        receiver = self.fold(func.value, depth + 1)
        if func.attr == "join" and isinstance(receiver, str) and len(node.args) == 1:
            items = self._fold_items(node.args[0], depth)
            return _safe(lambda: receiver.join(items)) if items is not None else None
        args = [self.fold(a, depth + 1) for a in node.args]
        if any(a is None for a in args):
            return None
        if isinstance(receiver, str) and func.attr in _STR_METHODS:
            return _safe(lambda: getattr(receiver, func.attr)(*args))
        if isinstance(receiver, bytes) and func.attr == "decode":
            return _safe(lambda: receiver.decode(*args))
        if isinstance(func.value, ast.Name) and func.value.id == "bytes" and func.attr == "fromhex" and args:
            return _safe(lambda: bytes.fromhex(args[0]))
        return None

    def _fold_items(self, node: ast.AST, depth: int) -> list[Any] | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.fold(e, depth + 1) for e in node.elts]
            return items if all(i is not None for i in items) else None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "map"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in ("chr", "str")
        ):
            inner = self._fold_items(node.args[1], depth + 1)
            fn = chr if node.args[0].id == "chr" else str
            return _safe(lambda: [fn(i) for i in inner]) if inner is not None else None
        if isinstance(node, ast.Name):
            bound = self._only_value(node.id)
            return None if bound is None else self._fold_items(bound, depth + 1)
        return None

    def _only_value(self, name: str) -> ast.expr | None:
        """The expression `name` is bound to, when the code binds it once, by an assignment."""
        sites = self.bindings.get(name, [])
        return sites[0].expr if len(sites) == 1 and sites[0].kind == "value" else None

    def known_strings(self, node: ast.AST, depth: int = 0, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """Every string `node` can hold, when the code shows them all (literals, names bound only to literals,
        loops over literal collections), else `None`."""
        if depth > 12:
            return None
        value = self.fold(node)
        if isinstance(value, str):
            return {value}
        if isinstance(node, ast.IfExp):
            body, other = (
                self.known_strings(node.body, depth + 1, seen),
                self.known_strings(node.orelse, depth + 1, seen),
            )
            return body | other if body is not None and other is not None else None
        if isinstance(node, ast.Name) and node.id not in seen:
            bound = self.bindings.get(node.id, [])
            sites = [(s.kind, s.expr) for s in bound if s.kind != "other" and s.expr is not None]
            if not bound or len(sites) != len(bound):
                return None
            inner = seen | {node.id}
            return _union(
                self.known_strings(expr, depth + 1, inner)
                if kind == "value"
                else self.known_elements(expr, depth + 1, inner)
                for kind, expr in sites
            )
        return None

    def known_elements(self, node: ast.AST, depth: int = 0, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """Every string an iteration over `node` can yield, when the code shows them all."""
        if depth > 12:
            return None
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return _union(self.known_strings(element, depth + 1, seen) for element in node.elts)
        if isinstance(node, ast.Dict):
            return (
                self.known_elements(ast.List(elts=[k for k in node.keys if k is not None]), depth + 1, seen)
                if all(k is not None for k in node.keys)
                else None
            )
        if isinstance(node, ast.Name) and node.id not in seen:
            sites = self.bindings.get(node.id, [])
            values = [s.expr for s in sites if s.kind == "value" and s.expr is not None]
            if not sites or len(values) != len(sites):
                return None
            return _union(self.known_elements(value, depth + 1, seen | {node.id}) for value in values)
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            func = node.func
            if isinstance(func, ast.Name) and func.id in _SEQUENCE_WRAPPERS:
                return self.known_elements(node.args[0], depth + 1, seen)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.keywords:
            if node.func.attr == "split":
                text = self.fold(node.func.value)
                sep = [self.fold(a) for a in node.args]
                if isinstance(text, str) and all(isinstance(s, str) for s in sep):
                    return set(text.split(*sep))
            if node.func.attr == "keys" and not node.args:
                return self.known_elements(node.func.value, depth + 1, seen)
        return None


def _union(results: Iterable[set[str] | None]) -> set[str] | None:
    """All the strings of `results`, or `None` as soon as one of them is unknown."""
    found: set[str] = set()
    for more in results:
        if more is None:
            return None
        found |= more
    return found


def _safe(compute: Any) -> Any:
    try:
        value = compute()
    except Exception:
        return None
    if isinstance(value, (str, bytes)) and len(value) > 10_000:
        return None
    return value


__all__ = ["StringValues"]
