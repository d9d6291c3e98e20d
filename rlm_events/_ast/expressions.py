"""Evaluating expressions over plain data: names, literals, operators, comprehensions, formatting, subscripts,
calls and methods; and binding values to assignment targets."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from .limits import Break, Continue, Stop, TooBig, Uncertain
from .names import base_name
from .operations import COMPARISONS, DICT_READ, DICT_WRITE, LIST_READ, LIST_WRITE, STR_METHODS, UNARY, Operations
from .values import SCALARS, UNKNOWN, Opaque, Ref, Unknown, hashable, needs_of, unknown_of


class Expressions(Operations):
    """Evaluates expressions to plain data or `Unknown`; never raises for an
    operation it cannot follow (the result is unknown), only the signals of `rlm_events._ast.limits`."""

    def ev(self, node: ast.AST) -> Any:
        self.tick()
        try:
            return self._ev(node)
        except (Stop, Break, Continue, Uncertain):
            raise
        except (TooBig, ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError):
            return UNKNOWN

    def _ev(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value if type(node.value) in SCALARS else UNKNOWN
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = self.spread(node.elts)
            if items is None:
                return UNKNOWN
            self.grew(items)
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            result: dict[Any, Any] = {}
            for key_node, value_node in zip(node.keys, node.values, strict=True):
                if key_node is None:
                    merged = self.ev(value_node)
                    if type(merged) is not dict:
                        return unknown_of(merged)
                    result.update(merged)
                    continue
                key = self.ev(key_node)
                if needs_of(key) is not None or not hashable(key):
                    return unknown_of(key)
                result[key] = self.ev(value_node)
            return self.grew(result)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for part in node.values:
                value = self.ev(part)
                if type(value) is not str:
                    return unknown_of(value)
                parts.append(value)
            return self.grew("".join(parts))
        if isinstance(node, ast.FormattedValue):
            return self.formatted(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.ev(node.left), self.ev(node.right))
        if isinstance(node, ast.UnaryOp):
            operand = self.ev(node.operand)
            if isinstance(node.op, ast.Not):
                truth = self.truth(operand)
                return unknown_of(operand) if truth is None else not truth
            if needs_of(operand) is not None or type(operand) not in (int, float, bool):
                return unknown_of(operand)
            unary = UNARY[type(node.op)]
            return unary(operand)
        if isinstance(node, ast.BoolOp):
            last: Any = None
            for value_node in node.values:
                last = self.ev(value_node)
                truth = self.truth(last)
                if truth is None:
                    return unknown_of(last)
                if truth is isinstance(node.op, ast.Or):
                    return last
            return last
        if isinstance(node, ast.Compare):
            left = self.ev(node.left)
            for cmp, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.ev(right_node)
                if needs_of(left) is not None or needs_of(right) is not None:
                    return unknown_of(left, right)
                if isinstance(cmp, (ast.Is, ast.IsNot)) and not (left is None or right is None):
                    return UNKNOWN  # identity of anything but None is an implementation detail
                if not COMPARISONS[type(cmp)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            test = self.truth(self.ev(node.test))
            if test is None:
                return UNKNOWN
            return self.ev(node.body if test else node.orelse)
        if isinstance(node, ast.Subscript):
            return self.subscript(self.ev(node.value), node.slice)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            if isinstance(node, ast.SetComp):
                self.comprehension(node.generators, lambda: self.ev(node.elt))
                return UNKNOWN
            return self.grew(self.comprehension(node.generators, lambda: self.ev(node.elt)))
        if isinstance(node, ast.DictComp):
            pairs = self.comprehension(node.generators, lambda: (self.ev(node.key), self.ev(node.value)))
            result = {}
            for key, value in pairs:
                if needs_of(key) is not None or not hashable(key):
                    return unknown_of(key)
                result[key] = value
            return self.grew(result)
        if isinstance(node, ast.NamedExpr):
            value = self.ev(node.value)
            self.scopes[0][node.target.id] = value
            return value
        if isinstance(node, ast.Attribute):
            return unknown_of(self.ev(node.value))
        if isinstance(node, ast.Lambda):
            return Opaque()
        return UNKNOWN

    def comprehension(self, generators: list[ast.comprehension], element: Callable[[], Any]) -> list[Any]:
        out: list[Any] = []
        self.scopes.append({})
        try:
            self._generate(generators, 0, element, out)
        finally:
            self.scopes.pop()
        return out

    def _generate(self, generators: list[ast.comprehension], i: int, element: Callable[[], Any], out: list) -> None:
        if i == len(generators):
            out.append(element())
            self.grew(out)
            return
        generator = generators[i]
        items = self.iterated(generator.iter)
        if items is None:
            raise TooBig  # the whole comprehension is unknown
        for item in items:
            self.tick()
            self.bind(generator.target, item)
            keep = True
            for condition in generator.ifs:
                truth = self.truth(self.ev(condition))
                if truth is None:
                    raise TooBig
                if not truth:
                    keep = False
                    break
            if keep:
                self._generate(generators, i + 1, element, out)

    def iterated(self, node: ast.AST) -> list[Any] | None:
        """The elements iterating the value of `node` yields; `None` when that is not known (what would make
        it known is added to `needs`)."""
        iterable = self.ev(node)
        items = self.items(iterable)
        if items is None:
            needs = needs_of(iterable)
            if needs:
                self.needs.update(needs)
        return items

    def truth(self, value: Any) -> bool | None:
        kind = type(value)
        if kind in SCALARS or kind is range:
            return bool(value)
        if kind is list or kind is tuple or kind is dict:
            return len(value) > 0  # known even when elements are not
        return None

    def formatted(self, node: ast.FormattedValue) -> Any:
        value = self.ev(node.value)
        if needs_of(value) is not None:
            return unknown_of(value)
        spec = ""
        if node.format_spec is not None:
            spec = self.ev(node.format_spec)
            if type(spec) is not str:
                return unknown_of(spec)
            self.check_spec(spec)
        self.check_size(value)
        if node.conversion == ord("r"):
            value = self.grew(repr(value))
        elif node.conversion == ord("s"):
            value = self.grew(str(value))
        elif node.conversion == ord("a"):
            value = self.grew(ascii(value))
        return self.grew(format(value, spec))

    def subscript(self, container: Any, index_node: ast.AST) -> Any:
        if isinstance(index_node, ast.Slice):
            bounds = (index_node.lower, index_node.upper, index_node.step)
            parts = [self.ev(p) if p is not None else None for p in bounds]
            if any(p is not None and type(p) not in (int, bool) for p in parts):
                return unknown_of(*parts)
            index: Any = slice(*parts)
        else:
            index = self.ev(index_node)
            if needs_of(index) is not None:
                return unknown_of(index)
        kind = type(container)
        if kind is dict:
            if not hashable(index):
                return UNKNOWN
            return container[index]
        if kind in (list, tuple, str, range):
            if type(index) not in (int, bool, slice):
                return UNKNOWN
            return self.grew(container[index])
        return unknown_of(container, index)

    # -- calls

    def spread(self, nodes: list[ast.expr]) -> list[Any] | None:
        """The values of `nodes` in order, each `*x` spread into its items; `None` when an `x` has no known items."""
        values: list[Any] = []
        for node in nodes:
            if isinstance(node, ast.Starred):
                items = self.items(self.ev(node.value))
                if items is None:
                    return None
                values.extend(items)
            else:
                values.append(self.ev(node))
        return values

    def arguments(self, node: ast.Call) -> tuple[list[Any], dict[str, Any]] | Unknown:
        args = self.spread(node.args)
        if args is None:
            return UNKNOWN
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            value = self.ev(keyword.value)
            if keyword.arg is None:
                if type(value) is not dict or not all(type(k) is str for k in value):
                    return unknown_of(value)
                kwargs.update(value)
            else:
                kwargs[keyword.arg] = value
        return args, kwargs

    def call(self, node: ast.Call) -> Any:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = self.ev(func.value)
            arguments = self.arguments(node)
            return self.method(node, func, receiver, arguments)
        target = self.ev(func)
        arguments = self.arguments(node)
        if isinstance(target, Ref):
            if target.kind == "tool":
                return self.tool(target.name, arguments, node)
            if target.kind == "submit":
                raise Stop
            if isinstance(arguments, Unknown):
                return arguments
            if target.kind == "builtin":
                return self.builtin(target.name, *arguments)
        # Anything else: a user function, a class, something from the REPL or a module. Unknown, and a barrier.
        if type(target) is Opaque or (type(target) is Unknown and isinstance(func, ast.Name)):
            self.barrier = True
        if not isinstance(arguments, Unknown):
            for arg in node.args:
                base = base_name(arg)
                if base:
                    self.forget(base)  # the callee may change what it was given
        return UNKNOWN

    def tool(self, name: str, arguments: Any, node: ast.Call) -> Any:
        """A call of the REPL's tool `name` with `arguments` (`(args, kwargs)` or `Unknown`): unknown,
        and a barrier (it may change anything). An evaluator that models tools overrides it."""
        self.barrier = True
        return UNKNOWN

    def method(self, node: ast.Call, func: ast.Attribute, receiver: Any, arguments: Any) -> Any:
        name = func.attr
        kind = type(receiver)
        base = base_name(func.value)
        mutating = (kind is list and name in LIST_WRITE) or (kind is dict and name in DICT_WRITE)
        if isinstance(arguments, Unknown):
            if mutating and base:
                self.forget(base)
            return unknown_of(arguments)
        args, kwargs = arguments
        if kind is str and name in STR_METHODS:
            return self.str_method(receiver, name, args, kwargs)
        if kind is list and name in LIST_READ | LIST_WRITE:
            return self.list_method(receiver, name, args, kwargs, base)
        if kind is dict and name in DICT_READ | DICT_WRITE:
            return self.dict_method(receiver, name, args, kwargs, base)
        if base and kind not in SCALARS:
            self.forget(base)  # an unknown method may change its object, and what it was given
        for value_node in node.args:
            name_of = base_name(value_node)
            if name_of:
                self.forget(name_of)
        return unknown_of(receiver)

    def bind(self, target: ast.AST, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.store(target.id, value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = target.elts
            items = self.items(value) if not any(isinstance(e, ast.Starred) for e in elements) else None
            if items is not None and len(items) == len(elements):
                for element, item in zip(elements, items, strict=True):
                    self.bind(element, item)
            else:
                unknown = unknown_of(value)
                for element in elements:
                    self.bind(element.value if isinstance(element, ast.Starred) else element, unknown)
        elif isinstance(target, ast.Subscript):
            container = self.ev(target.value)
            key = self.ev(target.slice)
            if type(container) is dict and needs_of(key) is None and hashable(key):
                container[key] = value
                self.grew_by(1)
            elif type(container) is list and type(key) is int and -len(container) <= key < len(container):
                container[key] = value
            else:
                base = base_name(target)
                if base:
                    self.forget(base)
        else:  # attributes, starred: the object changes in ways the shadow does not follow
            base = base_name(target)
            if base:
                self.forget(base)


__all__ = ["Expressions"]
