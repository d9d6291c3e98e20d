"""The library rules: functions of allowed modules that read or set attributes, evaluate strings or open files
*for* the code, given names or strings it computes.

* Attribute names handed to a library: `functools.update_wrapper`/`wraps` (`assigned=`, `updated=`),
  `dataclasses.make_dataclass` (field names, `namespace=`), a class body's `__match_args__` (positional class
  patterns read those attributes), `type(name, bases, namespace)`: names and namespaces must be literals, and are
  checked as the attribute names they are.
* Format strings: `.format()`/`.format_map()` on a string the guard cannot see (also as a value: `str.format`,
  `functools.partial(str.format, ...)`), `logging.Formatter`/`basicConfig`/`StrFormatStyle` with a `{` style:
  their fields traverse attributes, so the template must be visible (its fields are then checked).
* Annotations evaluated at run time (`typing.get_type_hints(f)`, `@f.register` of `functools.singledispatch`):
  only for functions and classes of the code whose annotations are visible types, never a variable.
* Classes of other objects: `type(x)(...)` or `x.__class__(...)` (a file's `.raw` re-opened for writing), and
  setting attributes of modules, of their members or of such classes (`json.dumps = ...`).
* Readers of files or the network that only get buffers: `pandas.read_csv(io.StringIO(text))`, never a path or URL.
"""

from __future__ import annotations

import ast

from . import allowlist
from ._bindings import annotations_of
from ._hints import GETATTR_HINT
from ._rules_attributes import AttributeRules

_FORMAT_METHODS = frozenset({"format", "format_map"})
_UNKNOWN = ast.Name(id="<unknown>")
_BUFFERS = frozenset({"io.StringIO", "io.BytesIO"})


class LibraryRules(AttributeRules):
    """Calls whose arguments a library turns into attribute access, code or file access."""

    def check_library_call(self, node: ast.Call, path: str | None) -> None:
        """The library rules for a call of `path` (`None`: not a member or built-in the guard resolves)."""
        if path in allowlist.ATTRIBUTE_NAME_ARGUMENTS:
            for position, keyword in allowlist.ATTRIBUTE_NAME_ARGUMENTS[path]:
                argument = _argument(node, position, keyword)
                if argument is not None:
                    self.check_name_list(node, argument, path)
        if path == "dataclasses.make_dataclass":
            self._check_make_dataclass(node)
        elif path == "type" and len(node.args) == 3:
            self.check_namespace(node, node.args[2], "type(name, bases, namespace)")
        elif path in allowlist.FORMAT_STYLES:
            self._check_format_style(node, path)
        elif path in allowlist.ANNOTATION_EVALUATORS:
            target = node.args[0] if node.args else None
            if len(node.args) != 1 or not self.visible_annotations(target):
                self.flag(node, "dynamic", path, f"{path}() of an object whose annotations the guard cannot see", _ANN)
        elif path in allowlist.BUFFER_READERS:
            source = _argument(node, 0, allowlist.BUFFER_READERS[path])
            if not self._is_buffer(source):
                detail = f"{path}() of a path or URL (it reads files or the network)"
                self.flag(node, "write", path, detail, "pass the data: " + path + "(io.StringIO(text))")
        if self._is_class_of_other(node.func):
            self.flag(node, "dynamic", "type", "a call of another object's class", _CLASS_HINT)

    def check_name_list(self, node: ast.AST, names: ast.expr, what: str) -> None:
        """`names` is a collection of attribute names a library reads or sets: literals, each an allowed name."""
        ref = self.resolve(names) if isinstance(names, (ast.Name, ast.Attribute)) else None
        if ref is not None and ref.kind == "member":
            return  # functools.WRAPPER_ASSIGNMENTS and the like: the library's own defaults
        unseen = f"{what} with attribute names the guard cannot see"
        for text in sorted(self.visible_strings(node, names, ("dynamic", what, unseen, GETATTR_HINT), elements=True)):
            if is_dunder_text(text) and text not in ("__module__", "__name__", "__qualname__", "__doc__"):
                self.flag(node, "attribute", text, f"{what} with the attribute name {text!r}", GETATTR_HINT)
            else:
                self.check_attribute_name(node, _UNKNOWN, text, f"{what} with {text!r}")

    def check_namespace(self, node: ast.AST, namespace: ast.expr, what: str) -> None:
        """A class namespace built by a call: a literal dict whose keys are allowed attribute names."""
        if not isinstance(namespace, ast.Dict) or any(k is None for k in namespace.keys):
            self.flag(node, "dynamic", what, f"{what} with a namespace the guard cannot see", _CLASS_HINT)
            return
        for key, value in zip(namespace.keys, namespace.values, strict=True):
            unseen = f"{what} with a computed attribute name"
            for text in self.visible_strings(node, key, ("dynamic", what, unseen, _CLASS_HINT)):
                if text == "__match_args__":
                    self.check_name_list(node, value, "__match_args__")
                elif text.startswith("__") and text not in self.policy.dunders:
                    self.flag(node, "attribute", text, f"{what} defining {text!r}", _CLASS_HINT)

    def _check_make_dataclass(self, node: ast.Call) -> None:
        fields = _argument(node, 1, "fields")
        names: list[ast.expr] = []
        if isinstance(fields, (ast.List, ast.Tuple)):
            for item in fields.elts:
                names.append(item.elts[0] if isinstance(item, (ast.Tuple, ast.List)) and item.elts else item)
        if fields is not None and (not isinstance(fields, (ast.List, ast.Tuple)) or (not names and fields.elts)):
            self.flag(node, "dynamic", "make_dataclass", "make_dataclass() with fields the guard cannot see", _CLS)
        if names:
            self.check_name_list(node, ast.Tuple(elts=names, ctx=ast.Load()), "dataclasses.make_dataclass")
        namespace = _argument(node, 99, "namespace")
        if namespace is not None:
            self.check_namespace(node, namespace, "make_dataclass(namespace=...)")

    def _check_format_style(self, node: ast.Call, path: str) -> None:
        fmt_position, fmt_keyword, style_position = allowlist.FORMAT_STYLES[path]
        style = _argument(node, style_position, "style")
        styles = {"{"} if path == "logging.StrFormatStyle" else None
        if styles is None:
            styles = {"%"} if style is None else self.strings.known_strings(style)
        if styles is not None and styles <= {"%", "$"}:
            return  # %(name)s and $name look names up in a dict, nothing more
        template = _argument(node, fmt_position, fmt_keyword)
        if template is None or self.strings.known_strings(template) is None:
            self.flag(node, "dynamic", path, f"{path}() with a '{{' style and a format the guard cannot see", _FMT)

    def check_format_value(self, node: ast.Attribute) -> None:
        """`x.format` taken as a value (`functools.partial(str.format, t)`): only on a string the code shows."""
        as_value = node.attr in _FORMAT_METHODS and isinstance(node.ctx, ast.Load) and not self.is_callee(node)
        if as_value and self.strings.known_strings(node.value) is None:
            detail = f".{node.attr} of a string the guard cannot see, used as a value"
            self.flag(node, "dynamic", node.attr, detail, _FMT)

    def visible_annotations(self, target: ast.expr | None) -> bool:
        """Whether `target` is a function or class of the code whose annotations are all visible types."""
        if not isinstance(target, ast.Name) or len(self.bindings.get(target.id, [])) != 1:
            return False
        definition = next(
            (
                n
                for n in self.scopes.nodes
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == target.id
            ),
            None,
        )
        return definition is not None and self.annotations_are_types(definition)

    def annotations_are_types(self, definition: ast.AST) -> bool:
        """Whether every annotation of `definition` is a type the guard can see: no name of a variable (which could
        hold a string to evaluate), an input, or anything the code does not define or import."""
        for node in ast.walk(definition):
            for annotation in annotations_of(node):
                if not self._is_type_expression(annotation):
                    return False
        return True

    def _is_type_expression(self, node: ast.expr) -> bool:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name):
                ref = self.resolve(inner)
                classes = {n.name for n in self.scopes.nodes if isinstance(n, ast.ClassDef)}
                if inner.id not in classes and (ref is None or ref.kind not in ("builtin", "member", "module")):
                    return False
        return True

    def _is_buffer(self, node: ast.expr | None) -> bool:
        if isinstance(node, ast.Name):
            sites = self.bindings.get(node.id, [])
            return bool(sites) and all(s.kind == "value" and self._is_buffer(s.expr) for s in sites)
        if isinstance(node, ast.Call):
            ref = self.resolve(node.func)
            return ref is not None and ref.path in _BUFFERS
        return False

    def _is_class_of_other(self, func: ast.expr) -> bool:
        """Whether `func` is the class of an object that is not the code's own: `type(x)`, `x.__class__`, or a name
        bound to one."""
        if isinstance(func, ast.Name):
            sites = self.bindings.get(func.id, [])
            return any(s.kind == "value" and s.expr is not None and self._is_class_of_other(s.expr) for s in sites)
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and len(func.args) == 1:
            ref = self.resolve(func.func)
            return ref is not None and ref.path == "type" and self.owner(func.args[0]) is None
        if isinstance(func, ast.Attribute) and func.attr == "__class__":
            return self.owner(func.value) is None
        return False

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                if any(isinstance(t, ast.Name) and t.id == "__match_args__" for t in targets):
                    self.check_name_list(statement, statement.value, "__match_args__")
        self.generic_visit(node)

    def check_registered(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """`@f.register` reads the dispatch type from `node`'s annotations (evaluating strings): visible types only."""
        if _registers(node) and not self.annotations_are_types(node):
            detail = f"@register of {node.name!r}, whose annotations the guard cannot see as types"
            self.flag(node, "dynamic", "register", detail, "pass the type: @f.register(int)")


def _registers(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether `node` is decorated with a bare `@x.register` (the dispatch type is read from its annotations)."""
    return any(isinstance(d, ast.Attribute) and d.attr == "register" for d in node.decorator_list)


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for item in node.keywords:
        if item.arg == keyword:
            return item.value
    return node.args[position] if len(node.args) > position else None


def is_dunder_text(text: str) -> bool:
    return len(text) > 4 and text.startswith("__") and text.endswith("__")


_ANN = "annotate with types written in this step (x: int); for a dataclass use dataclasses.fields(cls)"
_CLASS_HINT = "define classes with a class statement and create objects by calling them"
_CLS = "list the fields literally: make_dataclass('P', [('x', int), ('y', int)])"
_FMT = "format values you computed: f'{value}', or '{}'.format(value) on a string literal"


__all__ = ["LibraryRules"]
