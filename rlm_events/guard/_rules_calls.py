"""The call rules: attribute names passed as strings (`getattr`, `vars`, `operator.attrgetter`), calls that
open or write files, `.format()` on strings the guard cannot see, and methods called on a class with another
object as `self`."""

from __future__ import annotations

import ast

from . import allowlist
from ._bindings import is_classmethod_call
from ._hints import GETATTR_HINT
from ._host import is_dunder
from ._resolve import Ref
from ._rules_files import FileRules
from ._rules_library import LibraryRules

_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
_PATCH = "modules and their classes are shared with the host: keep your changes in your own variables"


class CallRules(LibraryRules, FileRules):
    """Calls: what the callee is, and what its arguments let it reach."""

    def visit_Call(self, node: ast.Call) -> None:
        func = self.resolve(node.func)
        path = func.path if func is not None and func.kind in ("builtin", "member") else None
        if path in _ATTRIBUTE_BUILTINS:
            self._check_attribute_call(node, path)
        elif path == "vars":
            self._check_vars(node)
        elif path is not None and path in allowlist.OPENERS:
            if "open" in self.policy.builtins if path == "open" else self.offered(path):
                self.check_open_mode(node, path, allowlist.OPENERS[path])
        elif path is not None and path in allowlist.WRITING_KEYWORDS:
            self.check_writing_keywords(node, path)
        elif path is not None and path in allowlist.NAME_TAKING:
            self._check_name_taking(node, path)
        elif isinstance(node.func, ast.Attribute):
            self._check_method_call(node, node.func, func)
        self.check_library_call(node, path)
        self.generic_visit(node)

    def _check_method_call(self, node: ast.Call, func: ast.Attribute, ref: Ref | None) -> None:
        receiver = func.value
        if func.attr in ("format", "format_map") and self.policy.literal_formats:
            template = receiver
            if isinstance(receiver, ast.Name) and receiver.id == "str" and node.args:
                template = node.args[0]
            if self.strings.known_strings(template) is None:
                self.flag(
                    node,
                    "dynamic",
                    func.attr,
                    f".{func.attr}() on a string the guard cannot see",
                    "use an f-string, or call .format() on a string literal written in this step",
                )
        if func.attr == "open" and ref is None:
            self.check_method_open(node)
        destination = allowlist.PATH_WRITERS.get(func.attr)
        # json.dump(obj, fp) writes to a file object it is given: only methods of objects are checked here
        # (whether a destination is given is asked only of the methods that write one: most calls are not)
        if (
            destination is not None
            and (node.args or any(k.arg in (destination, None) for k in node.keywords))
            and not (func.attr == "dump" and ref is not None)
        ):
            detail = f".{func.attr}(...) with a destination writes a file"
            self.flag(node, "write", func.attr, detail, f"call .{func.attr}() without a path: it returns the text")
        if (
            isinstance(receiver, ast.Name)
            and receiver.id in self.class_methods
            and func.attr in self.class_methods[receiver.id]
            and not (node.args and self.owner(node.args[0]) is not None)
            and not is_classmethod_call(self.scopes.nodes, receiver.id, func.attr)
        ):
            self.flag(
                node,
                "dynamic",
                f"{receiver.id}.{func.attr}",
                f"{receiver.id}.{func.attr}(...) called on the class with another object as self",
                f"call the method on an instance: {receiver.id}(...).{func.attr}(...)",
            )

    def _check_attribute_call(self, node: ast.Call, fn: str) -> None:
        if len(node.args) < 2 or any(isinstance(a, ast.Starred) for a in node.args[:2]):
            if fn != "hasattr":
                self.flag(node, "dynamic", fn, f"{fn}() without a visible attribute name", GETATTR_HINT)
            return
        receiver, name = node.args[0], node.args[1]
        names = self.strings.known_strings(name)
        if names is not None:
            if isinstance(name, ast.Constant):
                self.checked.add(id(name))
            base = self.resolve(receiver)
            for text in sorted(names):
                if not text.isidentifier():
                    continue
                if fn in ("setattr", "delattr") and (is_dunder(text) or (base is not None and base.kind != "builtin")):
                    what = f"{fn}(..., {text!r})"
                    self.flag(node, "attribute", text, f"{what} changes a module, a class of one or a dunder", _PATCH)
                elif text in ("format", "format_map") and self.strings.known_strings(receiver) is None:
                    detail = f"{fn}(..., {text!r}) of a string the guard cannot see"
                    self.flag(node, "dynamic", text, detail, GETATTR_HINT)
                elif base is not None and base.kind == "module":
                    self.member_ok(node, base.path, text, f"{fn}({base.path}, {text!r})")
                else:
                    self.check_attribute_name(node, receiver, text, f"{fn}(..., {text!r})")
            return
        if fn == "hasattr" or self._fields_idiom(name):
            return
        owner = self.owner(receiver)
        if owner == "local" or (owner == "method" and (fn != "getattr" or self.policy.self_introspection)):
            return
        self.flag(node, "dynamic", fn, f"{fn}() with a computed attribute name", GETATTR_HINT)

    def _fields_idiom(self, name: ast.expr) -> bool:
        """`getattr(rec, f.name)` with `f` iterating over `dataclasses.fields(...)`."""
        if not (isinstance(name, ast.Attribute) and name.attr == "name" and isinstance(name.value, ast.Name)):
            return False
        if self.names_stored_as_name_attr:
            return False
        sites = self.bindings.get(name.value.id, [])
        return bool(sites) and all(
            s.kind == "element"
            and isinstance(s.expr, ast.Call)
            and (ref := self.resolve(s.expr.func)) is not None
            and ref.path == "dataclasses.fields"
            for s in sites
        )

    def _check_vars(self, node: ast.Call) -> None:
        if len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            self.flag(node, "call", "vars", "vars() without one object", "use your variables by name")
            return
        self.check_attribute_name(node, node.args[0], "__dict__", "vars(...)")

    def _check_name_taking(self, node: ast.Call, path: str) -> None:
        args = node.args if path == "operator.attrgetter" else node.args[:1]
        if not args or (node.keywords and path == "operator.attrgetter"):
            self.flag(node, "dynamic", path, f"{path}() without literal names", GETATTR_HINT)
            return
        for arg in args:
            names = self.visible_strings(node, arg, ("dynamic", path, f"{path}() with a computed name", GETATTR_HINT))
            if isinstance(arg, ast.Constant):
                self.checked.add(id(arg))
            for text in names:
                if path == "operator.methodcaller" and text in ("format", "format_map"):
                    self.flag(
                        node, "dynamic", path, f"{path}({text!r}): a format string the guard cannot see", GETATTR_HINT
                    )
                for part in text.split(".") if path == "operator.attrgetter" else [text]:
                    self.check_attribute_name(node, ast.Name(id="<unknown>"), part, f"{path}({text!r})")


__all__ = ["CallRules"]
