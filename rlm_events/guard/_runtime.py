"""The guard's run-time layer: a [`GuardPolicy`][rlm_events.guard.GuardPolicy]'s rules checked while the code runs,
in the interpreters this library controls (the in-process one and the sandbox's worker).

The static pass cannot see names computed at run time (`getattr(obj, ''.join(['__subcl', 'asses__']))`,
`vars(x)[k]`, `__import__(name)`, a format string built from input). Here they are checked as they happen,
against the same rules, by two of CPython's own mechanisms rather than a home-made tracer:

* **a guarded `__builtins__`** for the step's namespace: `getattr`, `hasattr`, `setattr`, `delattr`, `vars`,
  `open`, `__import__` (every `import` statement of the code goes through it) and `__build_class__` (which
  records the classes the code defines: its "own" objects) are checking versions; built-in functions the policy
  does not list (`eval`, `exec`, `compile`, `globals` …) refuse when called. The code's attribute accesses are
  compiled into lookups through names no code can spell (`GuardedLookups`): `x.name` is checked as
  `getattr(x, "name")` is, writes and deletes too, the attributes class patterns read, and reads of `format`,
  `format_map` and `vformat` give versions that check a format string's fields before `str.format` does the
  lookups in C. Library functions that read attributes named by their arguments (`operator.attrgetter`) or evaluate
  strings (`typing.get_type_hints`) are handed out in checking versions (`_SUBSTITUTES`), and classes and functions
  of modules the policy does not allow are not handed out at all.
* **a CPython audit hook** (PEP 578, `sys.addaudithook`) for what the interpreter itself reports: processes,
  network, writing files, native code, unpickling, hooks and tracers (refused whoever makes the call while the
  code runs, since library code acts for the code), and imports, `exec`/`compile` and audited attribute reads
  (`__code__`, `tb_frame` …) when the code itself makes them (library code may, e.g. `dataclasses` runs `exec`).

RestrictedPython was weighed and not used: it compiles its own language subset (no `_name` variables or
attributes, so no `self._cache`, `super().__init__()` or `x.__class__`; no `async`; a rewritten `print`), a policy
other than `GuardPolicy` that would refuse much of the ordinary code the guard allows, and its guard functions
are the policy-specific part we would write anyway.

An audit hook cannot be removed, so it is installed once, at the first guarded execution, and is one dictionary
test while no guarded interpreter exists. It applies to a thread whose stack holds a frame of a guarded namespace
(during and after the execution: a callback the code left behind runs later), and to threads started while such a
frame was on the stack, for their whole life (a thread started on a C function holds no frame of the code), except
inside host tool calls (`host_code()`) and host APIs (a `dspy` frame whose code is dspy's own); in the sandbox's
worker, `armed(process_wide=True)` applies it to every thread of the process. It is a policy layer, not a sandbox:
what C code does for the code without an audit event is left to the static pass and to the sandbox.


How the layer is laid out, one concept a module: this one holds
[`RuntimeGuard`][rlm_events.guard._runtime.RuntimeGuard] (a namespace's guarded built-ins and the checks behind them);
`_runtime_rules` the rules as data and the refusal; `_runtime_rewrite` the compiling of attribute accesses into
lookups; `_runtime_audit` the audit hook and the process-wide patches. The names they export are exported from here
too: this module is the layer's entry point.

Standard library only, importing nothing of this package but the layer's own modules (relatively): the sandbox's
worker receives their sources from the host and loads them as a package of their own (the sandbox exposes only the
worker script).
"""

from __future__ import annotations

import _string
import ast
import builtins
import contextlib
import functools
import io
import operator
import string
import sys
import types
import typing
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ._runtime_audit import ANY_CALLER, FROM_THE_CODE, HOST_APIS, every_thread, host_code, install_hook, watch
from ._runtime_rewrite import (
    ATTRIBUTE_LOOKUP,
    ATTRIBUTE_OWNER,
    BUILTINS_REFUSED,
    FORMAT_LOOKUP,
    FORMAT_METHODS,
    PATTERN_CLASS,
    GuardedLookups,
    rewrite,
)
from ._runtime_rules import RULE_FIELDS, TYPE_EXPRESSION, WRITE_MODE, Rules, RuntimeRefusal, is_dunder


class RuntimeGuard:
    """The run-time checks for one namespace (one interpreter's REPL): its guarded built-ins, the classes its code
    defined, and [`armed()`][rlm_events.guard._runtime.RuntimeGuard.armed] around each execution."""

    def __init__(self, rules: Rules, namespace: dict[str, Any]) -> None:
        self.rules, self.namespace = rules, namespace
        self.own: weakref.WeakSet[type] = weakref.WeakSet()
        self.defined: weakref.WeakSet[type] = weakref.WeakSet()  # every class the code defined, own or not
        self._patterns: dict[tuple[type, tuple[str, ...], int], type] = {}  # see pattern_class()
        self._plain_names: dict[str, bool] = {}  # see _plain_name()
        self.builtins = self._builtins()

    # --- the code's own objects ------------------------------------------------------------------------------------

    def is_own(self, obj: Any) -> bool:
        """Whether `obj` is a class the code defined (a plain one: see `__build_class__`), an instance of one, or a
        function the code defined (its globals are the namespace)."""
        if isinstance(obj, types.FunctionType):
            return obj.__globals__ is self.namespace
        return (obj if isinstance(obj, type) else type(obj)) in self.own

    def is_defined(self, obj: Any) -> bool:
        """Whether `obj` is a class the code defined (whatever its bases and metaclass) or an instance of one."""
        return (obj if isinstance(obj, type) else type(obj)) in self.defined

    def _build_class(self, *args: Any, **kwargs: Any) -> Any:
        cls = builtins.__build_class__(*args, **kwargs)
        if isinstance(cls, type):
            self.defined.add(cls)
        # Own when every base is own or a built-in type: library bases bring their private state with them.
        bases = cls.__mro__[1:] if isinstance(cls, type) and type(cls) is type else None
        if bases is not None and all(b in self.own or (b.__module__ == "builtins" and b is not type) for b in bases):
            self.own.add(cls)
        return cls

    # --- attribute access ------------------------------------------------------------------------------------------

    def check_attribute(self, obj: Any, name: Any, how: str, *, spelled: bool = False) -> None:
        """Raise [`RuntimeRefusal`][rlm_events.guard._runtime_rules.RuntimeRefusal] if reading or writing
        `obj.<name>` breaks the rules (a name that is not a string is left to Python's own error). `spelled`: the code
        wrote `obj.<name>`; as in the static pass, a `_name` of an object of a class the code defined is its own then
        (`self._cache` in a subclass of a library class)."""
        if not isinstance(name, str):
            return
        own = self.is_own(obj) or (spelled and not is_dunder(name) and self.is_defined(obj))
        refused = self.rules.name_refusal(name, own, how)
        if refused is None and isinstance(obj, types.ModuleType):
            module = module_name(obj)
            refused = self.rules.module_refusal(module, f"{how} {name!r} of") or self.rules.member_refusal(
                module, name, how
            )
        if refused is not None:
            raise refused

    def _value(self, value: Any, how: str, depth: int = 0) -> Any:
        """`value`, read by the code through an attribute: refused if it is a module the policy does not allow; the
        checking version of a library function that reads attributes named by its arguments (`_SUBSTITUTES`)."""
        if isinstance(value, types.ModuleType):
            refused = self.rules.module_refusal(module_name(value), f"{how} reaches")
            if refused is not None:
                raise refused
        elif isinstance(value, (type, types.FunctionType)) or (
            isinstance(value, types.BuiltinFunctionType) and isinstance(value.__self__, (types.ModuleType, type(None)))
        ):
            # A class or function of a module the policy does not allow (`pathlib.Path` in a field's annotation
            # after `dspy.Signature("x: pathlib.Path -> y")` imported it): what importing it would have given.
            module = getattr(value, "__module__", None)
            if isinstance(module, str) and not self.rules.related(module):
                raise self.rules.refusal(
                    "module", f"{how} is {value.__qualname__!r} of module {module!r}, which the policy does not allow"
                )
        substitute = _SUBSTITUTES.get(id(value))
        if substitute is not None and substitute[0] is value:
            return getattr(self, substitute[1])
        if isinstance(value, types.BuiltinFunctionType) and value.__self__ is builtins:
            return self.builtins.get(value.__name__, value)  # the namespace's version (guarded, or refusing)
        if type(value).__module__ in _TYPE_FORMS and depth < 8:
            # A type expression (`Type[pathlib.Path]`): `typing.get_args` hands out what it holds.
            for part in (typing.get_origin(value), *typing.get_args(value)):
                if part is not None and not isinstance(part, (str, int, float, bool, bytes)):
                    self._value(part, f"{how} holds {part!r}, which", depth + 1)
        if isinstance(value, io.IOBase) and _writable_file(value):
            # A file of the host's open for writing (a logging handler's stream): the code opens files for reading
            # only, and writes through its own objects.
            raise self.rules.refusal("write", f"{how} is a file open for writing", "writing files is denied")
        return value

    # --- attributes the code spells (compiled into these lookups, see `GuardedLookups`) -----------------------------

    def attribute(self, obj: Any, name: str) -> Any:
        """`obj.<name>` read by the code: checked as `getattr(obj, "<name>")` is, except that a module may be gone
        through to an allowed submodule (`os.path` after `import os.path`)."""
        # The common case first (every attribute the code reads comes here): a public name on an object that is not
        # a module, giving a value of a type that needs no check (`row.items`, `text.upper`, `point.x`).
        if not isinstance(obj, types.ModuleType) and self._plain_name(name):
            value = getattr(obj, name)
            kind = type(value)
            if kind is types.BuiltinFunctionType:
                owner = value.__self__
                if owner is not builtins and not isinstance(owner, types.ModuleType) and owner is not None:
                    return value  # a method of an object (`rows.append`)
            elif _PLAIN_VALUES.get(kind) or (kind not in _PLAIN_VALUES and _plain_value_type(kind)):
                return value
            return self._value(value, f"{_kind(obj)}.{name}")
        if isinstance(obj, types.ModuleType) and self.rules.on_the_way(module_name(obj), name):
            return getattr(obj, name)
        self.check_spelled(obj, name, "reads")
        if name in FORMAT_METHODS:
            return self.format_lookup(obj, name)
        if name == "__class__":
            return obj.__class__  # what type(obj) gives
        return self._value(getattr(obj, name), f"{_kind(obj)}.{name}")

    def _plain_name(self, name: str) -> bool:
        """Whether reading `name` on an object that is not a module needs no check: a public name the rules allow,
        other than the format methods (and `__class__`)."""
        plain = self._plain_names.get(name)
        if plain is None:
            plain = (
                not name.startswith("_")
                and name not in FORMAT_METHODS
                and self.rules.name_refusal(name, False, "") is None
            )
            if len(self._plain_names) < 10_000:
                self._plain_names[name] = plain
        return plain

    def owner(self, obj: Any, name: str) -> Any:
        """`obj`, whose attribute `name` the code assigns or deletes (`obj.<name> = v`, `del obj.<name>`): refused on
        a module (shared with the host) and for names the rules refuse."""
        if isinstance(obj, types.ModuleType):
            raise self.rules.refusal(
                "attribute",
                f"assigning or deleting {module_name(obj)}.{name}",
                "modules are shared with the host: patching them is denied",
            )
        if self._plain_name(name):  # what check_spelled() lets through for any object but a module (`p.x = 1`)
            return obj
        self.check_spelled(obj, name, "writes")
        return obj

    def check_spelled(self, obj: Any, name: str, verb: str) -> None:
        """The attribute rules for `obj.<name>` as the code wrote it; a refusal names the module's member
        (`os.system`) where the receiver is a module."""
        if isinstance(obj, types.ModuleType):
            module = module_name(obj)
            refused = self.rules.module_refusal(module, f"{module}.{name}: the code {verb} an attribute of")
            if refused is not None:
                raise refused
        self.check_attribute(obj, name, f"{_kind(obj)}.{name} {verb}", spelled=True)

    def pattern_class(self, resolve: Callable[[], Any], names: tuple[str, ...], positional: int) -> PatternSite:
        """Where a `case cls(..., name=p)` pattern finds its class: `resolve()` (the code's `lambda: cls`) when the
        case is tried, as `checked_pattern_class` gives it."""
        return PatternSite(self, resolve, names, positional)

    def checked_pattern_class(self, cls: Any, names: tuple[str, ...], positional: int) -> Any:
        """The class a `case cls(..., name=p)` pattern matches with: one whose `isinstance` check first checks the
        attributes the pattern reads on the subject (its keywords, and the class's `__match_args__` for
        positional sub-patterns) as if the code spelled them, since CPython reads them in C."""
        if not isinstance(cls, type):
            return cls  # Python's own TypeError
        if not names and (not positional or cls in _MATCH_SELF):
            return cls  # `case int(x)` binds the subject itself; `case C()` reads nothing
        key = (cls, names, positional)
        proxy = self._patterns.get(key)
        if proxy is None:
            proxy = self._patterns[key] = _pattern_proxy(self, cls, names, positional)
        return proxy

    def check_pattern(self, subject: Any, cls: type, names: tuple[str, ...], positional: int) -> None:
        """The attribute reads of a class pattern (see `pattern_class`), on the subject it is tried on."""
        listed = getattr(cls, "__match_args__", ())
        read = [*(listed[:positional] if isinstance(listed, tuple) else ()), *names]
        for name in read:
            if isinstance(name, str):
                self.check_spelled(subject, name, "is read by a class pattern: it reads")
                if hasattr(subject, name):
                    self._value(getattr(subject, name), f"{_kind(subject)}.{name}")

    def _attrgetter(self, attr: Any, *attrs: Any) -> Callable[[Any], Any]:
        """`operator.attrgetter` whose reads (each part of a dotted name) are checked as the code's own."""
        names = (attr, *attrs)
        for name in names:
            if not isinstance(name, str):
                raise TypeError("attribute name must be a string")

        def get(obj: Any, name: str) -> Any:
            for part in name.split("."):
                obj = self.attribute(obj, part)
            return obj

        if len(names) == 1:
            return lambda obj: get(obj, names[0])
        return lambda obj: tuple(get(obj, name) for name in names)

    def _methodcaller(self, name: Any, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """`operator.methodcaller` whose method lookup is checked as the code's own."""
        if not isinstance(name, str):
            raise TypeError("method name must be a string")
        return lambda obj: self.attribute(obj, name)(*args, **kwargs)

    def _update_wrapper(
        self,
        wrapper: Any,
        wrapped: Any,
        assigned: Any = functools.WRAPPER_ASSIGNMENTS,
        updated: Any = functools.WRAPPER_UPDATES,
    ) -> Any:
        """`functools.update_wrapper` whose reads of `wrapped` and writes to `wrapper` are checked as the code's own
        (it copies the attributes it is given the names of: `assigned=("__self__",)` read a bound method's object,
        `updated=("__dict__",)` a module's namespace), except the naming attributes it copies by default."""
        for name in assigned:
            if name not in functools.WRAPPER_ASSIGNMENTS:
                self.check_spelled(wrapped, name, "is read by functools.update_wrapper: it reads")
            try:
                value = getattr(wrapped, name)
            except AttributeError:
                continue
            if name not in functools.WRAPPER_ASSIGNMENTS:
                value = self._value(value, f"functools.update_wrapper reading {name!r}")
                self._check_write(wrapper, name, "functools.update_wrapper")
            setattr(wrapper, name, value)
        for name in updated:
            self.check_spelled(wrapper, name, "is updated by functools.update_wrapper: it writes")
            if name == "__dict__" and not self.is_own(wrapped) and not isinstance(wrapped, types.ModuleType):
                # As vars() of an object that is not the code's: each entry checked as an attribute read.
                found = dict(getattr(wrapped, "__dict__", {}))
                for key in found:
                    self.check_attribute(wrapped, key, "functools.update_wrapper copies")
                    found[key] = self._value(found[key], f"functools.update_wrapper copying {key!r}")
            else:
                self.check_spelled(wrapped, name, "is read by functools.update_wrapper: it reads")
                found = getattr(wrapped, name, {})
            getattr(wrapper, name).update(found)
        wrapper.__wrapped__ = wrapped
        return wrapper

    def _wraps(
        self, wrapped: Any, assigned: Any = functools.WRAPPER_ASSIGNMENTS, updated: Any = functools.WRAPPER_UPDATES
    ) -> Callable[[Any], Any]:
        """`functools.wraps` of the checking `functools.update_wrapper`."""
        return functools.partial(self._update_wrapper, wrapped=wrapped, assigned=assigned, updated=updated)

    def _get_type_hints(self, obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False) -> Any:
        """`typing.get_type_hints` whose string annotations are type expressions: it evaluates them with `eval` in
        `typing`, compiled without the layer's attribute checks (and with the real built-ins when given a `globalns`
        of its own), so the code could run any expression through it. Here a string annotation may hold only names,
        dotted names (each read checked as the code's own, in `obj`'s globals), subscripts, tuples, lists, `|` and
        constants; and the namespaces are `typing`'s defaults."""
        if globalns is not None or localns is not None:
            raise self.rules.refusal("call", "typing.get_type_hints() with namespaces of the code's choosing")
        scope = getattr(obj, "__globals__", None) if not isinstance(obj, (type, types.ModuleType)) else None
        if isinstance(obj, type):
            scope = vars(sys.modules[obj.__module__]) if obj.__module__ in sys.modules else None
        for layer in _annotated(obj):
            for value in layer.values():
                for text in _strings_in(value):
                    self._check_annotation(text, scope if isinstance(scope, dict) else self.namespace)
        hints = typing.get_type_hints(obj, include_extras=include_extras)
        return {name: self._value(hint, f"the type hint of {name!r}") for name, hint in hints.items()}

    def _check_annotation(self, text: str, scope: dict[str, Any], depth: int = 0) -> None:
        refused = self.rules.refusal(
            "call",
            f"typing.get_type_hints() on the annotation {text[:60]!r}",
            "a string annotation is run as code: only a type expression may be one",
        )
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError:
            raise refused from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and depth < 5:
                self._check_annotation(node.value, scope, depth + 1)
            elif isinstance(node, ast.Attribute):
                if not isinstance(node.ctx, ast.Load):
                    raise refused
                chain: list[str] = []
                part: ast.expr = node
                while isinstance(part, ast.Attribute):
                    chain.insert(0, part.attr)
                    part = part.value
                if isinstance(part, ast.Name) and part.id in scope:
                    value = scope[part.id]
                    for name in chain:
                        value = self.attribute(value, name)
            elif not isinstance(node, TYPE_EXPRESSION):
                raise refused

    def _getattr(self, obj: Any, name: Any, *default: Any) -> Any:
        how = f"getattr() on a {type(obj).__name__} reads"
        self.check_attribute(obj, name, how)
        if isinstance(name, str) and name in FORMAT_METHODS:
            try:
                return self.format_lookup(obj, name)
            except AttributeError:
                if default:
                    return default[0]
                raise
        value = getattr(obj, name, *default)
        return value if name == "__class__" else self._value(value, how)

    def _hasattr(self, obj: Any, name: Any) -> bool:
        self.check_attribute(obj, name, f"hasattr() on a {type(obj).__name__} reads")
        return hasattr(obj, name)

    def _setattr(self, obj: Any, name: Any, value: Any) -> None:
        self._check_write(obj, name, "setattr")
        setattr(obj, name, value)

    def _delattr(self, obj: Any, name: Any) -> None:
        self._check_write(obj, name, "delattr")
        delattr(obj, name)

    def _check_write(self, obj: Any, name: Any, how: str) -> None:
        if isinstance(obj, types.ModuleType) or (isinstance(obj, type) and not self.is_own(obj)):
            raise self.rules.refusal(
                "attribute",
                f"{how}() on {obj!r}",
                "modules and classes are shared with the host: patching them is denied",
            )
        self.check_attribute(obj, name, f"{how}() on a {type(obj).__name__} writes")

    def _vars(self, *args: Any) -> Any:
        if len(args) != 1:
            raise self.rules.refusal("call", "vars() without an object: it reads the REPL's namespace")
        obj = args[0]
        what = f"vars() of a {type(obj).__name__}"
        if isinstance(obj, types.ModuleType):
            raise self.rules.refusal(
                "module",
                f"vars() of module {obj.__name__!r}",
                "a module's namespace holds its private and module members",
            )
        if isinstance(obj, type) and not self.is_own(obj):
            raise self.rules.refusal(
                "attribute", what, "a class's namespace holds its internals (functions' globals …)"
            )
        found = vars(obj)
        if self.is_own(obj):
            return found
        # Another object's namespace: read-only, each entry checked as an attribute read (a library object's
        # `__dict__` holds its private state, open files …).
        checked = {}
        for key, value in found.items():
            self.check_attribute(obj, key, f"{what} holds")
            checked[key] = self._value(value, f"{what} holds {key!r}, which")
        return types.MappingProxyType(checked)

    # --- format strings --------------------------------------------------------------------------------------------

    def format_lookup(self, obj: Any, name: str) -> Any:
        """`obj.<name>` for `format`, `format_map` and `vformat`: on strings and `string.Formatter`s, a version that
        checks the format string's fields (attribute parts as attribute reads) before formatting. Any other name is
        read as the code's own attribute read (the lookup is reachable as a value in the built-ins table)."""
        if name not in FORMAT_METHODS:
            return self.attribute(obj, name)
        self.check_attribute(obj, name, f"{_kind(obj)}.{name} reads")
        method = getattr(obj, name)
        mapping = name == "format_map"
        if isinstance(obj, str) and name in ("format", "format_map"):
            return lambda *a, **k: self._formatted(method, obj, () if mapping else a, a[0] if mapping else k, a, k)
        if isinstance(obj, type) and issubclass(obj, str) and name in ("format", "format_map"):
            return lambda fmt, *a, **k: self._formatted(
                method, fmt, () if mapping else a, a[0] if mapping else k, (fmt, *a), k
            )
        if isinstance(obj, string.Formatter) and name == "vformat":
            return lambda fmt, a, k: self._formatted(method, fmt, a, k, (fmt, a, k), {})
        if isinstance(obj, string.Formatter) and name == "format":
            return lambda fmt, *a, **k: self._formatted(method, fmt, a, k, (fmt, *a), k)
        return method

    def _formatted(
        self, method: Callable[..., Any], fmt: Any, positional: Any, named: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        if isinstance(fmt, str):
            self.check_format(fmt, positional, named)
        return method(*args, **kwargs)

    def check_format(self, fmt: str, args: Any, kwargs: Any, depth: int = 0) -> None:
        """Check each field of `fmt` (`{0.attr[key]}` …, nested ones in format specs too) against the attribute
        rules, following the field through the actual arguments where it can."""
        auto = 0
        for _, field, spec, _ in _string.formatter_parser(fmt):
            if field is None:
                continue
            first, rest = _string.formatter_field_name_split(field)
            if first == "":
                first, auto = auto, auto + 1
            obj, known = _item(args if isinstance(first, int) else kwargs, first)
            for is_attribute, key in rest:
                if is_attribute:
                    self.check_attribute(obj if known else None, key, f"the format field {{{field}}} reads")
                    obj, known = _attribute(obj, key) if known else (None, False)
                else:
                    obj, known = _item(obj, key) if known else (None, False)
            if spec and depth < 2:
                self.check_format(spec, args, kwargs, depth + 1)

    # --- imports and files -----------------------------------------------------------------------------------------

    def _import(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> types.ModuleType:
        if level:
            raise self.rules.refusal("module", f"a relative import of {name!r}: the REPL is no package")
        submodules = [f"{name}.{item}" for item in fromlist or () if item != "*"]
        if name not in self.rules.modules and not (submodules and all(s in self.rules.modules for s in submodules)):
            raise self.rules.refusal("module", f"import of module {name!r}, which the policy does not allow")
        module = builtins.__import__(name, globals, locals, fromlist, level)
        if not fromlist:
            return module
        # `from m import x` binds what the returned object holds: a module of the checked values (the checking
        # versions of `_SUBSTITUTES`), not the real module, whose other members the statement never checks.
        bound = types.ModuleType(module.__name__)
        for item in fromlist:
            if item == "*":
                public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
                for member in public:
                    with contextlib.suppress(RuntimeRefusal, AttributeError):
                        self.check_attribute(module, member, f"from {name} import")
                        value = self._value(getattr(module, member), f"from {name} import {member}")
                        setattr(bound, member, value)
                continue
            self.check_attribute(module, item, f"from {name} import")
            if hasattr(module, item):
                setattr(bound, item, self._value(getattr(module, item), f"from {name} import {item}"))
        return bound

    def _open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "open" not in self.rules.builtins:
            raise self.rules.refusal("call", "open(): this policy gives the code no files")
        if not isinstance(mode, str) or WRITE_MODE & set(mode) or isinstance(file, int) or kwargs.get("opener"):
            raise self.rules.refusal("write", f"open({file!r}, {mode!r}): only reading a path is allowed")
        return open(file, mode, *args, **kwargs)

    def _builtins(self) -> dict[str, Any]:
        guarded = {
            "getattr": self._getattr,
            "hasattr": self._hasattr,
            "setattr": self._setattr,
            "delattr": self._delattr,
            "vars": self._vars,
            "open": self._open,
            "__import__": self._import,
            "__build_class__": self._build_class,
            FORMAT_LOOKUP: self.format_lookup,
            ATTRIBUTE_LOOKUP: self.attribute,
            ATTRIBUTE_OWNER: self.owner,
            PATTERN_CLASS: self.pattern_class,
            BUILTINS_REFUSED: self._builtins_refused,
        }
        table = vars(builtins).copy()
        for name, value in list(table.items()):
            if name in guarded:
                continue
            refusable = isinstance(value, types.BuiltinFunctionType) or name in ("exit", "quit", "help", "copyright")
            if refusable and name not in self.rules.builtins:
                table[name] = self._refused(name)
        table.update(guarded)
        table.update(__loader__=None, __spec__=None)  # the import machinery's, not the code's
        return table

    def _builtins_refused(self) -> Any:
        raise self.rules.refusal("attribute", "reading '__builtins__'", "the REPL's built-ins table is the guard's")

    def _refused(self, name: str) -> Callable[..., Any]:
        def refused(*_: Any, **__: Any) -> Any:
            raise self.rules.refusal("call", f"the built-in {name}(), which the policy does not allow")

        refused.__name__ = refused.__qualname__ = name
        return refused

    # --- scope -----------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def armed(self, *, process_wide: bool = False) -> Iterator[None]:
        """While the code runs: its namespace's built-ins guarded and the audit hook applying to it (to every
        thread of the process with `process_wide`, for the sandbox's worker). Re-entrant."""
        install_hook()
        self.namespace["__builtins__"] = self.builtins
        # The namespace stays guarded after this execution, for as long as the guard lives: functions the code
        # defined (a thread's target, a callback it handed to a library) may run after it returns.
        watch(self)
        with every_thread(self if process_wide else None):
            yield


# Per type of value read through an attribute: whether such values need no check (not a module, class, function,
# type expression or file). Bounded: classes the code makes come and go.
_PLAIN_VALUES: dict[type, bool] = {}


def _plain_value_type(kind: type) -> bool:
    plain = not issubclass(
        kind, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, io.IOBase)
    ) and (getattr(kind, "__module__", None) not in _TYPE_FORMS)
    if len(_PLAIN_VALUES) > 4096:
        _PLAIN_VALUES.clear()
    _PLAIN_VALUES[kind] = plain
    return plain


def _writable_file(stream: io.IOBase) -> bool:
    """Whether `stream` writes to a file descriptor other than the standard output and error (whatever
    `sys.stdout`/`sys.stderr` are now: a host may redirect them)."""
    if isinstance(stream, (io.StringIO, io.BytesIO)) or stream is sys.stdout or stream is sys.stderr:
        return False
    try:
        if not stream.writable():
            return False
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False  # closed, or no descriptor: memory, or a wrapper the code made
    standard = {1, 2}
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            standard.add(getattr(sys, name).fileno())
    return descriptor not in standard


def _kind(obj: Any) -> str:
    return module_name(obj) if isinstance(obj, types.ModuleType) else f"a {type(obj).__name__}"


class PatternSite:
    """A class pattern's class in the code (`case C(a=p)` reads `<guard:pattern:N>.cls`): `C` is evaluated when
    Python tries the case, as it evaluates a class pattern's class, and handed over checked."""

    __slots__ = ("_guard", "_names", "_positional", "_resolve")

    def __init__(
        self, guard: RuntimeGuard, resolve: Callable[[], Any], names: tuple[str, ...], positional: int
    ) -> None:
        self._guard, self._resolve, self._names, self._positional = guard, resolve, names, positional

    @property
    def cls(self) -> Any:
        return self._guard.checked_pattern_class(self._resolve(), self._names, self._positional)


def _pattern_proxy(guard: RuntimeGuard, cls: type, names: tuple[str, ...], positional: int) -> type:
    """A class that matches what `cls` matches, checking the pattern's attribute reads on the subject first."""

    class Checked(type):
        def __instancecheck__(self, subject: Any) -> bool:
            if not isinstance(subject, cls):
                return False
            guard.check_pattern(subject, cls, names, positional)
            return True

    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    listed = getattr(cls, "__match_args__", None)
    if listed is not None:
        namespace["__match_args__"] = listed
    return Checked(cls.__name__, (), namespace)


# Modules of the classes of type expressions (`list[int]`, `typing.Optional[x]`, `int | None`).
_TYPE_FORMS = frozenset({"typing", "types", "typing_extensions"})

# The built-in types whose class pattern binds the subject itself (`case int(x)`), reading no attribute.
_MATCH_SELF = frozenset({bool, bytearray, bytes, dict, float, frozenset, int, list, set, str, tuple})

# Library functions that read attributes named by their arguments, in C or through `typing`'s `eval`: the code gets a
# version that checks the names (id of the function -> (the function, the RuntimeGuard method)).
_SUBSTITUTES: dict[int, tuple[Any, str]] = {
    id(f): (f, method)
    for f, method in (
        (operator.attrgetter, "_attrgetter"),
        (operator.methodcaller, "_methodcaller"),
        (typing.get_type_hints, "_get_type_hints"),
        (functools.update_wrapper, "_update_wrapper"),
        (functools.wraps, "_wraps"),
    )
}


def _annotated(obj: Any) -> list[dict[str, Any]]:
    """The annotation dictionaries `typing.get_type_hints(obj)` evaluates."""
    if isinstance(obj, type):
        found = [vars(c).get("__annotations__") for c in obj.__mro__]
    else:
        found = [getattr(obj, "__annotations__", None)]
    return [a for a in found if isinstance(a, dict)]


def _strings_in(value: Any, depth: int = 0) -> Iterator[str]:
    """The strings `typing.get_type_hints` would evaluate in this annotation (`"x"`, `list["x"]`, a `ForwardRef`)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, typing.ForwardRef):
        yield value.__forward_arg__
    elif depth < 20 and typing.get_origin(value) is not typing.Literal:
        args = getattr(value, "__args__", None)
        for arg in args if isinstance(args, tuple) else ():
            yield from _strings_in(arg, depth + 1)


def module_name(module: types.ModuleType) -> str:
    """The name the policy knows `module` by (`os.path` for `posixpath`)."""
    name = module.__dict__.get("__name__")
    return _MODULE_ALIASES.get(name, name) if isinstance(name, str) else "?"


_MODULE_ALIASES = {"posixpath": "os.path", "ntpath": "os.path"}


def _item(container: Any, key: Any) -> tuple[Any, bool]:
    try:
        return container[key], True
    except Exception:
        return None, False


def _attribute(obj: Any, name: str) -> tuple[Any, bool]:
    try:
        return getattr(obj, name), True
    except Exception:
        return None, False


__all__ = [
    "ANY_CALLER",
    "ATTRIBUTE_LOOKUP",
    "ATTRIBUTE_OWNER",
    "BUILTINS_REFUSED",
    "FORMAT_LOOKUP",
    "FORMAT_METHODS",
    "FROM_THE_CODE",
    "HOST_APIS",
    "PATTERN_CLASS",
    "RULE_FIELDS",
    "GuardedLookups",
    "Rules",
    "RuntimeGuard",
    "RuntimeRefusal",
    "host_code",
    "install_hook",
    "rewrite",
]
