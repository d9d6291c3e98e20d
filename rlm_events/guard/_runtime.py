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

Standard library only, with no import from this package: the sandbox's worker receives this module's source from
the host and loads it (the sandbox exposes only the worker script).
"""

from __future__ import annotations

import _string
import ast
import builtins
import contextlib
import contextvars
import copy
import functools
import io
import operator
import os
import string
import sys
import threading
import types
import typing
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

FORMAT_LOOKUP = "<guard:format>"  # the global the format-method lookups are compiled into; no code can spell it
# The globals other attribute reads, and the receivers of attribute writes and deletes, are compiled into.
ATTRIBUTE_LOOKUP = "<guard:attribute>"
ATTRIBUTE_OWNER = "<guard:owner>"
BUILTINS_REFUSED = "<guard:builtins>"  # what reading `__builtins__` is compiled into: a refusal
PATTERN_CLASS = "<guard:pattern>"  # the class patterns' classes (their attribute reads are checked on the subject)
FORMAT_METHODS = frozenset({"format", "format_map", "vformat"})
RULE_FIELDS = ("modules", "only_members", "deny_members", "builtins", "dunders", "private", "deny_attributes")
# Packages whose calls act for the host: a dspy sub-agent's LM call uses the network and DSPy's disk cache. Audit
# events under one of their frames (and no frame of the code nearer) are theirs.
HOST_APIS = frozenset({"dspy"})
_WRITE_MODE = frozenset("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_GUARDED = frozenset({"getattr", "hasattr", "setattr", "delattr", "vars", "open", "__import__", "__build_class__"})


def _events(names: str, rule: str, what: str) -> dict[str, tuple[str, str]]:
    return dict.fromkeys(names.split(), (rule, what))


# Audit events refused whoever makes the call, while guarded code runs: (policy rule, what it is).
ANY_CALLER: dict[str, tuple[str, str]] = {
    **_events(
        """os.system os.exec os.posix_spawn os.spawn os.fork os.forkpty os.kill os.killpg subprocess.Popen pty.spawn
        os.startfile signal.pthread_kill""",
        "call",
        "starting or signalling a process",
    ),
    **_events(
        """socket.connect socket.bind socket.getaddrinfo socket.gethostbyname socket.gethostbyaddr socket.sendto
        socket.sendmsg socket.sethostname http.client.connect urllib.Request ftplib.connect smtplib.connect
        imaplib.open poplib.connect nntplib.connect webbrowser.open""",
        "module",
        "using the network",
    ),
    **_events(
        """os.remove os.rename os.rmdir os.mkdir os.chmod os.chown os.truncate os.symlink os.link os.utime
        os.setxattr os.removexattr os.putenv os.unsetenv os.chdir shutil.copyfile shutil.copymode shutil.copystat
        shutil.copytree shutil.move shutil.rmtree shutil.chown shutil.make_archive shutil.unpack_archive""",
        "write",
        "changing files, directories or the environment",
    ),
    **_events(
        """ctypes.dlopen ctypes.dlsym ctypes.dlsym/handle ctypes.cdata ctypes.cdata/buffer ctypes.call_function
        ctypes.addressof ctypes.string_at ctypes.wstring_at ctypes.PyObj_FromPtr sys.settrace sys.setprofile
        sys._current_frames sys._current_exceptions sys.addaudithook gc.get_objects gc.get_referrers
        gc.get_referents function.__new__ pickle.find_class""",
        "attribute",
        "reaching native code, other objects' references or the interpreter's hooks",
    ),
}
# Audit events refused when the code itself (or a C function it called) makes them; library code may.
FROM_THE_CODE: dict[str, tuple[str, str]] = {
    "compile": ("call", "compiling code at run time"),
    "exec": ("call", "running code built at run time"),
    "code.__new__": ("call", "building a code object"),
    "marshal.loads": ("call", "loading a code object"),
    "builtins.input": ("call", "reading standard input"),
}


class RuntimeRefusal(PermissionError):
    """What the run-time layer raises for a refused operation; the message names the operation and the policy rule.
    A `PermissionError` (an `OSError`), so library code that tolerates a refused file operation (the import
    system's bytecode cache) goes on."""


class Rules:
    """A policy's rules as plain data (see [`runtime_rules()`][rlm_events.guard._runtime_policy.runtime_rules]):
    what the run-time checks read."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        fields = {name: frozenset(payload[name]) for name in RULE_FIELDS}
        self.modules, self.only_members = fields["modules"], fields["only_members"]
        self.deny_members, self.deny_attributes = fields["deny_members"], fields["deny_attributes"]
        self.builtins, self.dunders, self.private = fields["builtins"], fields["dunders"], fields["private"]
        self.reasons: dict[str, str] = dict(payload.get("reasons") or {})
        self.restricted = frozenset(m.rpartition(".")[0] for m in self.only_members)
        # Packages on the way to an allowed module (`os` of `os.path`, `xml` and `xml.etree`): code holds them after
        # `import os.path` and may go through them to that module, and nowhere else.
        self.packages = frozenset(m.rsplit(".", i)[0] for m in self.modules for i in range(1, m.count(".") + 1))
        self.tops = frozenset(m.split(".")[0] for m in self.modules)

    def related(self, module: str) -> bool:
        """Whether classes and functions defined in `module` may be handed to the code: an allowed module, one of
        its submodules or private twins (`json.decoder`, `_io`, `_thread` for `threading`), or the built-ins."""
        if module in self.modules or module in self.packages or module == "builtins":
            return True
        head = _TWINS.get(module, module).lstrip("_").split(".")[0]
        return head in self.tops

    def on_the_way(self, module: str, name: str) -> bool:
        """Whether `module.name` is an allowed module or a package on the way to one (`os.path`, `xml.etree`)."""
        path = f"{module}.{name}"
        return path in self.modules or path in self.packages

    def refusal(self, rule: str, what: str, reason: str | None = None) -> RuntimeRefusal:
        """The error for a refused operation: what it was, why (`reason`, else the rule's own reason), the rule."""
        why = reason or self.reasons.get(rule, "the guard's policy denies it")
        return RuntimeRefusal(f"CodeGuard refused at run time: {what} ({why}; policy rule {rule!r})")

    def module_refusal(self, name: str, how: str) -> RuntimeRefusal | None:
        if name in self.modules:
            return None
        return self.refusal("module", f"{how} module {name!r}, which the policy does not allow")

    def member_refusal(self, module: str, name: str, how: str) -> RuntimeRefusal | None:
        path = f"{module}.{name}"
        if path in self.deny_members or (module in self.restricted and path not in self.only_members):
            return self.refusal("module", f"{how} {path!r}, a member the policy does not allow")
        return None

    def name_refusal(self, name: str, own: bool, how: str) -> RuntimeRefusal | None:
        """The attribute `name` read or written as if the code spelled it (`own`: on the code's own object)."""
        if name in self.deny_attributes:
            return self.refusal("attribute", f"{how} {name!r}, an interpreter-internal attribute")
        if len(name) > 4 and name.startswith("__") and name.endswith("__"):
            if name not in self.dunders:
                return self.refusal("attribute", f"{how} {name!r}, a dunder attribute the policy does not list")
            if name == "__dict__" and not own:
                return self.refusal("attribute", f"{how} '__dict__' of an object that is not the code's own")
        elif name.startswith("_") and name not in self.private and not own:
            return self.refusal("attribute", f"{how} {name!r}, a private attribute of an object not the code's own")
        return None


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
        """Raise [`RuntimeRefusal`][rlm_events.guard._runtime.RuntimeRefusal] if reading or writing `obj.<name>` breaks
        the rules (a name that is not a string is left to Python's own error). `spelled`: the code wrote
        `obj.<name>`; as in the static pass, a `_name` of an object of a class the code defined is its own then
        (`self._cache` in a subclass of a library class)."""
        if not isinstance(name, str):
            return
        own = self.is_own(obj) or (spelled and not _is_dunder(name) and self.is_defined(obj))
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

    def pattern_class(self, cls: Any, names: tuple[str, ...], positional: int) -> Any:
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
            elif not isinstance(node, _TYPE_EXPRESSION):
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
        if not isinstance(mode, str) or _WRITE_MODE & set(mode) or isinstance(file, int) or kwargs.get("opener"):
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
        global _PROCESS_WIDE
        install_hook()
        self.namespace["__builtins__"] = self.builtins
        # The namespace stays guarded after this execution, for as long as the guard lives: functions the code
        # defined (a thread's target, a callback it handed to a library) may run after it returns.
        _guard_namespace(self)
        previous = _PROCESS_WIDE
        if process_wide:
            _PROCESS_WIDE = self
        try:
            yield
        finally:
            _PROCESS_WIDE = previous

    def check_library_compile(self, args: tuple[Any, ...], library: str, host_api: bool) -> None:
        """A library compiling source while the code runs: `typing` (and pydantic, for a `dspy.Signature`) evaluate
        the code's annotation strings with `eval`, in C and with the namespaces they choose (the real built-ins),
        where no check of this layer runs. Such a source may only be a type expression: names that are not refused
        built-ins, dotted names the attribute rules allow, subscripts, tuples, `|` and constants; no call. The
        parsers and generators (`ast`, `dataclasses`, `namedtuple`) compile what they build from identifiers, and
        a host API's other compilations (templates of an LM client) are the host's."""
        top = library.partition(".")[0]
        if not library or top in _GENERATORS or (host_api and top not in _EVALUATORS):
            return  # ("": no frame of the code on the stack, in a thread it did not start: the sandbox's worker)
        source = args[0] if args else None
        shown = repr(source)[:60]
        refused = self.rules.refusal(
            "call",
            f"{library or 'a library'} compiling {shown} while the code runs",
            "code a library evaluates for the code (an annotation string) may only be a type expression",
        )
        if isinstance(source, (bytes, bytearray)):
            source = bytes(source).decode("utf-8", "replace")
        try:
            tree = ast.parse(source.strip(), mode="eval") if isinstance(source, str) else source
        except SyntaxError:
            raise refused from None
        if not isinstance(tree, ast.AST):
            raise refused
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                found = self.rules.name_refusal(node.attr, False, f"{library} compiling {shown}: it reads")
                if found is not None:
                    raise found
            elif isinstance(node, ast.Name):
                value = vars(builtins).get(node.id)
                if node.id.startswith("__") or (
                    value is not None and not isinstance(value, type) and self.builtins.get(node.id) is not value
                ):
                    raise refused  # `__import__`, `getattr`: the namespace may hold the real built-ins
            elif not isinstance(node, _TYPE_EXPRESSION):
                raise refused

    def audit(self, event: str, args: tuple[Any, ...], from_the_code: bool, host_api: bool, library: str = "") -> None:
        """Refuse the audit `event` if the rules deny it (see the module's docstring). `library`: the module of the
        nearest Python frame, when it is not the code's."""
        if event == "compile" and not from_the_code:
            self.check_library_compile(args, library, host_api)
        if host_api:  # the host's API acting for the code (a dspy sub-agent's LM call, its cache)
            return
        rule = ANY_CALLER.get(event)
        if rule is not None:
            raise self.rules.refusal(rule[0], f"{event}{_shown(args)}", f"{rule[1]} is denied")
        if event == "open":
            mode, flags = (args[1], args[2]) if len(args) > 2 else (None, 0)
            if (isinstance(mode, str) and _WRITE_MODE & set(mode)) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
                raise self.rules.refusal("write", f"open({args[0]!r}, {mode or flags!r}) for writing")
            return
        if not from_the_code:
            return
        if event == "import":
            found = self.rules.module_refusal(str(args[0]), "import of")
            if found is not None:
                raise found
        elif event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
            self.check_attribute(args[0], args[1], f"{event} on a {type(args[0]).__name__}:")
        elif event in FROM_THE_CODE:
            rule = FROM_THE_CODE[event]
            raise self.rules.refusal(rule[0], f"{event}{_shown(args)}", f"{rule[1]} is denied")


# Library modules whose compilations the code cannot turn into its own code: `ast` only parses, `dataclasses` and
# `collections` (namedtuple) generate code from identifiers.
_GENERATORS = frozenset({"ast", "dataclasses", "collections"})
# Libraries that evaluate annotation strings (`ForwardRef`): also under a host API (pydantic under `dspy.Signature`).
_EVALUATORS = frozenset({"typing", "typing_extensions", "pydantic"})
# What a string evaluated as an annotation may hold: a type expression, with no call.
_TYPE_EXPRESSION = (
    ast.Expression, ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.BinOp, ast.BitOr,
    ast.Load, ast.Slice, ast.UnaryOp, ast.USub, ast.Starred,
)  # fmt: skip


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


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _kind(obj: Any) -> str:
    return module_name(obj) if isinstance(obj, types.ModuleType) else f"a {type(obj).__name__}"


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


# Modules whose classes and functions allowed modules hand out under another name: (module -> the allowed one).
_TWINS = {
    "_thread": "threading",
    "genericpath": "os.path",
    "posixpath": "os.path",
    "ntpath": "os.path",
    "_sre": "re",
    "_blake2": "hashlib",
    "_sha1": "hashlib",
    "_sha256": "hashlib",
    "_sha512": "hashlib",
    "_sha3": "hashlib",
    "_md5": "hashlib",
    "_collections_abc": "collections",
    "_weakrefset": "threading",
}

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


def _shown(args: tuple[Any, ...]) -> str:
    text = ", ".join(repr(a) if not isinstance(a, (list, dict, tuple)) else "…" for a in args[:2])
    return f"({text if len(text) <= 80 else text[:77] + '...'})"


class GuardedLookups(ast.NodeTransformer):
    """Compiles the code's attribute accesses into the guard's checks (the names are the globals above, which no code
    can spell):

    * a read `x.name` into `<guard:attribute>(x, "name")`, a read of `format`, `format_map` or `vformat` into
      `<guard:format>(x, "name")` (a format string's fields are checked when it is used);
    * a write or delete `x.name = v` / `del x.name` into `<guard:owner>(x, "name").name = v`;
    * the class of a class pattern `case C(a=p)` into a name bound just before the `match` to
      `<guard:pattern>(C, ("a",), 0)`, since CPython reads the pattern's attributes in C.

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

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        returns, node.returns = node.returns, None
        self.generic_visit(node)
        node.returns = returns if self.lazy_annotations or returns is None else self.visit(returns)
        return node

    def _mangled(self, name: str) -> str:
        if name.startswith("__") and not name.endswith("__") and self.classes:
            owner = self.classes[-1].lstrip("_")
            if owner:
                return f"_{owner}{name}"
        return name

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        self.classes.append(node.name)
        try:
            node.body = self._statements(node.body)
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
                    call = ast.Call(
                        ast.Name(PATTERN_CLASS, ast.Load()),
                        [self.visit(pattern.cls), names, ast.Constant(len(pattern.patterns))],
                        [],
                    )
                    bound.append(ast.copy_location(ast.Assign([ast.Name(alias, ast.Store())], call), node))
                    pattern.cls = ast.copy_location(ast.Name(alias, ast.Load()), pattern.cls)
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


# --- the audit hook: one per process ---------------------------------------------------------------------------------

# id(namespace) -> its guard, from its first guarded execution for as long as the guard lives: the audit hook applies
# to frames of these namespaces whenever they run.
_WATCHED: dict[int, weakref.ref[RuntimeGuard]] = {}
_PROCESS_WIDE: RuntimeGuard | None = None
_HOST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("rlm_events_guard_host_code", default=False)
# Per thread: `carried`, the guard of the code that started the thread (set for the thread's whole life, see
# `_started`); `busy`, while the hook itself runs (its frame reads raise audit events of their own).
_THREAD = threading.local()
_hook_installed = False


def _guard_namespace(guard: RuntimeGuard) -> None:
    key = id(guard.namespace)
    kept = _WATCHED.get(key)
    if kept is not None and kept() is guard:
        return

    def forget(ref: weakref.ref[RuntimeGuard]) -> None:
        if _WATCHED.get(key) is ref:  # (a later guard of the same namespace replaced it)
            del _WATCHED[key]

    _WATCHED[key] = weakref.ref(guard, forget)


@contextlib.contextmanager
def host_code() -> Iterator[None]:
    """Host code called from the code (a tool): the audit hook does not apply to it, nor to what it starts in
    threads that copy its context."""
    token = _HOST_CODE.set(True)
    try:
        yield
    finally:
        _HOST_CODE.reset(token)


def install_hook() -> None:
    """Install the audit hook once per process (it cannot be removed; idle, it is one dictionary test), and have
    every thread started from guarded code carry that code's guard (see `_started`)."""
    global _hook_installed
    if not _hook_installed:
        _hook_installed = True
        sys.addaudithook(_audit)
        # What `Thread.start()` calls: `_start_joinable_thread(function, handle=, daemon=)` from Python 3.13,
        # `_start_new_thread(function, args, kwargs)` before. Both start `function` in the new thread.
        for name in ("_start_joinable_thread", "_start_new_thread"):
            starter = getattr(threading, name, None)
            if starter is not None:
                setattr(threading, name, functools.partial(_started, starter))
                break
        copy._reconstruct = functools.partial(_reconstructed, copy._reconstruct)  # type: ignore[attr-defined]


def _reconstructed(
    reconstruct: Callable[..., Any], x: Any, memo: Any, func: Any, args: Any, *rest: Any, **kw: Any
) -> Any:
    """`copy`'s rebuilding of an object from what its reducer returned (`__reduce_ex__`: a callable, its arguments,
    and state to write into the result): while guarded code runs, the state is written only into a new object of
    the copied one's class, never into whatever the callable returns (a module: `json`'s namespace patched). The
    code may define reducers in classes it builds with `type()` or `dataclasses.make_dataclass`, where
    `__build_class__` does not see them."""
    if any(part is not None for part in rest[:3]) and (_WATCHED or _PROCESS_WIDE is not None):
        _THREAD.busy = True
        try:
            guard = _caller(sys._getframe(1))[0] or getattr(_THREAD, "carried", None)
        finally:
            _THREAD.busy = False
        if guard is not None:
            made = func(*args)
            if not isinstance(made, type(x)) or isinstance(made, (type, types.ModuleType)):
                raise guard.rules.refusal(
                    "attribute",
                    f"copying a {type(x).__name__} whose reducer rebuilt it as {type(made).__name__!r}",
                    "the copy protocol writes the object's state into what its reducer returns",
                )
            return reconstruct(x, memo, lambda *_: made, args, *rest, **kw)
    return reconstruct(x, memo, func, args, *rest, **kw)


def _started(starter: Callable[..., Any], function: Callable[..., Any], *rest: Any, **options: Any) -> Any:
    """`threading`'s thread starter: a thread started while guarded code is on the stack (a `Thread` or `Timer`
    of the code, an executor's worker, an event loop's default executor) carries that code's guard for its whole
    life, so what it runs (a C function such as `io.open`, a callback after the execution returned) is checked as
    the code's. The host's threads (started by host code, tools and host APIs) carry none."""
    guard = None
    if (_WATCHED or _PROCESS_WIDE is not None) and not _HOST_CODE.get():
        guard = getattr(_THREAD, "carried", None)
        if guard is None:
            _THREAD.busy = True
            try:
                found, _, host_api, _ = _caller(sys._getframe(1))
            finally:
                _THREAD.busy = False
            guard = None if host_api or found is _PROCESS_WIDE else found
    if guard is None:
        return starter(function, *rest, **options)

    def carrying(*inner: Any, **named: Any) -> Any:
        _THREAD.carried = guard
        return function(*inner, **named)

    return starter(carrying, *rest, **options)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED and _PROCESS_WIDE is None:
        return
    if event not in ANY_CALLER and event not in FROM_THE_CODE and event not in _OTHER_EVENTS:
        return
    if _HOST_CODE.get() or getattr(_THREAD, "busy", False):
        return
    _THREAD.busy = True
    try:
        guard, from_the_code, host_api, library = _caller(sys._getframe(1))
        if guard is None:  # no frame of guarded code: a thread that code started (running a C function …)?
            guard = getattr(_THREAD, "carried", None)
    finally:
        _THREAD.busy = False
    if guard is not None:
        guard.audit(event, args, from_the_code, host_api, library)


_OTHER_EVENTS = frozenset({"open", "import", "object.__getattr__", "object.__setattr__", "object.__delattr__"})


def _caller(frame: types.FrameType | None) -> tuple[RuntimeGuard | None, bool, bool, str]:
    """The guard whose code is on this stack (else the process-wide one), whether the nearest Python frame (past
    the import machinery) is that code, whether a host API's frame is in between, and the module of the nearest
    Python frame when it is not the code's (`""` when it is)."""
    nearest, host_api, library = True, False, ""
    while frame is not None:
        namespace = frame.f_globals
        ref = _WATCHED.get(id(namespace))
        guard = ref() if ref is not None else None
        if guard is not None and guard.namespace is namespace:
            return guard, nearest, host_api, library
        module = namespace.get("__name__")
        module = module if isinstance(module, str) else ""
        if not module.startswith("importlib") and nearest:
            nearest, library = False, module or "?"
        if module.partition(".")[0] in HOST_APIS and _host_api_frame(frame, module):
            host_api = True
        frame = frame.f_back
    return _PROCESS_WIDE, False, host_api, library if _carried() else ""


def _carried() -> bool:
    return getattr(_THREAD, "carried", None) is not None


def _host_api_frame(frame: types.FrameType, module: str) -> bool:
    """Whether `frame` runs a host API's own code: its globals are the module's and its code comes from the
    package's files. (Code can give its classes `__module__ = "dspy"`, and `dataclasses` then compiles their
    `__init__` with that module's globals: a frame of code the code wrote, which must not pass for the host's.)"""
    loaded = sys.modules.get(module)
    if loaded is None or getattr(loaded, "__dict__", None) is not frame.f_globals:
        return False
    top = sys.modules.get(module.partition(".")[0])
    where = getattr(top, "__file__", None)
    if not isinstance(where, str):
        return False
    # (frame.f_code raises an audit event of its own: the hook is `busy` meanwhile and lets it through.)
    return frame.f_code.co_filename.startswith(os.path.dirname(where) + os.sep)


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
