"""Which objects are the code's own, so that computed attribute access on them is allowed: instances of plain
classes the code defines (or `types.SimpleNamespace`s it makes), and the `self` of methods that cannot be called
with another object as `self`.

A class is plain when nothing in the code can make its constructor return another object or its attribute access
do something else: it is defined once, without a metaclass, with no decorator but `dataclasses.dataclass` and
`functools.total_ordering` (which return the class they are given), binds none of `__new__`, `__getattribute__`,
`__getattr__`, `__class__`, `__dict__`, `__init_subclass__`, `__class_getitem__`, and has plain bases (such classes,
built-in types other than `type`, classes of allowed modules).

A method's `self` is the code's own only when every reference to the method calls it on an instance: the method
is not read off a class (`get = C.get`, `type(p).get(other)`, `C.get(other)`), not named by a string (`getattr(C,
'get')`), its class is not passed around as a value (`K = C`), and it has no decorator but `property` and its
`setter`/`getter`/`deleter`.
"""

from __future__ import annotations

import ast
import builtins
from typing import Literal

from ._bindings import decorated
from ._resolve import Resolver

MethodOwner = Literal["method", "local"]
_RETURNS_ITS_CLASS = frozenset({"dataclasses.dataclass", "functools.total_ordering"})
_IDENTITY_DUNDERS = frozenset(
    {"__new__", "__getattribute__", "__getattr__", "__class__", "__dict__", "__init_subclass__", "__class_getitem__"}
)
_INSTANCE_MAKERS = frozenset({"types.SimpleNamespace"})
_PROPERTY_DECORATORS = frozenset({"property", "setter", "getter", "deleter"})


class Owners(Resolver):
    """What in the code is the code's own object (see the module's docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        defs: list[ast.ClassDef] = self.scopes.of_type(ast.ClassDef)  # type: ignore[assignment]
        self.class_defs = {d.name: d for d in defs}
        self.class_methods = {
            d.name: {
                f.name
                for f in d.body
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and not decorated(f, "staticmethod")
            }
            for d in defs
        }
        self.local_classes = self._plain_classes(defs)
        self.local_instances = self._own_instances()
        self.exposed_methods = self._exposed_methods()

    def _plain_classes(self, defs: list[ast.ClassDef]) -> set[str]:
        candidates = {
            d.name: d
            for d in defs
            if len(self.bindings.get(d.name, [])) == 1
            and not d.keywords
            and all(self._returns_its_class(decorator) for decorator in d.decorator_list)
            and not (_class_binds(d) & _IDENTITY_DUNDERS)
        }
        good: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, d in candidates.items():
                if name not in good and all(self._plain_base(b, good) for b in d.bases):
                    good.add(name)
                    changed = True
        return good

    def _returns_its_class(self, decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        ref = self.resolve(target)
        return ref is not None and ref.path in _RETURNS_ITS_CLASS

    def _plain_base(self, base: ast.expr, good: set[str]) -> bool:
        if isinstance(base, ast.Name) and base.id in good:
            return True
        ref = self.resolve(base)
        if ref is not None and ref.kind == "builtin":
            value = getattr(builtins, ref.path, None)
            return isinstance(value, type) and not issubclass(value, type)
        return ref is not None and ref.kind == "member"

    def is_instance_maker(self, node: ast.AST) -> bool:
        """Whether `node` is a call that makes a plain object: a plain class of the code, `types.SimpleNamespace`."""
        if not isinstance(node, ast.Call):
            return False
        if isinstance(node.func, ast.Name) and node.func.id in self.local_classes:
            return True
        ref = self.resolve(node.func)
        return ref is not None and ref.path in _INSTANCE_MAKERS

    def _own_instances(self) -> set[str]:
        return {
            name
            for name, sites in self.bindings.items()
            if sites and all(s.kind == "value" and s.expr is not None and self.is_instance_maker(s.expr) for s in sites)
        }

    def _classish(self) -> set[str]:
        """Names that may hold a class of the code: the class names, and names bound to a class (`K = C`,
        `K = type(p)`, `K = p.__class__`)."""
        names = set(self.class_defs)
        for name, sites in self.bindings.items():
            if any(s.expr is not None and _is_class_expr(s.expr, names) for s in sites):
                names.add(name)
        return names

    def _exposed_methods(self) -> set[str]:
        method_names = {m for methods in self.class_methods.values() for m in methods}
        if not method_names:
            return set()
        classish = self._classish()
        exposed: set[str] = set()
        for node in self.scopes.of_type(ast.Constant, ast.Attribute, ast.Name):  # (the result is a set: any order)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in method_names:
                exposed.add(node.value)  # getattr(C, 'get'), operator.methodcaller('get') …
            elif isinstance(node, ast.Attribute) and node.attr in method_names:
                if not self._called_on_an_instance(node, classish):
                    exposed.add(node.attr)
            elif (
                isinstance(node, ast.Name)
                and node.id in self.class_defs
                and isinstance(node.ctx, ast.Load)
                and not self._class_used_in_place(node)
            ):
                exposed |= self.class_methods.get(node.id, set())
        return exposed

    def _called_on_an_instance(self, node: ast.Attribute, classish: set[str]) -> bool:
        call = self.parents.get(node)
        if not (isinstance(call, ast.Call) and call.func is node):
            return False  # read, not called: `get = C.get`, `f(p.get)`
        receiver = node.value
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) and receiver.func.id == "super":
            return not receiver.args  # super().m(...) passes the caller's own self
        if isinstance(receiver, ast.Name) and receiver.id not in classish:
            return True
        # on a class: C.m(self_or_own_instance, ...) only
        first = call.args[0] if call.args else None
        return isinstance(receiver, ast.Name) and isinstance(first, ast.Name) and first.id in self.local_instances

    def _class_used_in_place(self, node: ast.Name) -> bool:
        """Whether the class name `node` is only instantiated, read from, tested against or inherited from."""
        parent = self.parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is node:
            return True
        if isinstance(parent, (ast.Attribute, ast.ClassDef)):
            return True
        if isinstance(parent, ast.Tuple):
            parent = self.parents.get(parent)
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name):
            return parent.func.id in ("isinstance", "issubclass")
        return isinstance(parent, (ast.ExceptHandler, ast.MatchClass))

    def own_self(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        """Whether the method `node`'s first parameter can only be an instance of its class."""
        if node.name in self.exposed_methods:
            return False
        for decorator in node.decorator_list:
            name = decorator.id if isinstance(decorator, ast.Name) else getattr(decorator, "attr", None)
            if name not in _PROPERTY_DECORATORS:
                return False
        return True

    def owner(self, node: ast.AST) -> MethodOwner | None:
        """Whether `node` is the code's own object: a method's `self`, or a plain instance the code made."""
        if isinstance(node, ast.Call):
            return "local" if self.is_instance_maker(node) else None
        if not isinstance(node, ast.Name) or node.id in self.shadowed:
            return None
        if node.id in self.own[-1]:
            return "method"
        if node.id in self.local_instances:
            return "local"
        return None


def _class_binds(node: ast.ClassDef) -> set[str]:
    """The names the class body binds directly."""
    names: set[str] = set()
    for statement in node.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        targets = statement.targets if isinstance(statement, ast.Assign) else []
        if isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
            targets = [statement.target]
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _is_class_expr(node: ast.expr, classes: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in classes
    if isinstance(node, ast.Attribute):
        return node.attr == "__class__"
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type"


__all__ = ["MethodOwner", "Owners"]
