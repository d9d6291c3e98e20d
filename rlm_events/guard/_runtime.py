"""The guard's run-time layer: a [`GuardPolicy`][rlm_events.guard.GuardPolicy]'s rules checked while the code runs,
in the interpreters this library controls (the in-process one and the sandbox's worker).

The static pass cannot see names computed at run time (`getattr(obj, ''.join(['__subcl', 'asses__']))`,
`vars(x)[k]`, `__import__(name)`, a format string built from input). Here they are checked as they happen,
against the same rules, by two of CPython's own mechanisms rather than a home-made tracer:

* **a guarded `__builtins__`** for the step's namespace: `getattr`, `hasattr`, `setattr`, `delattr`, `vars`,
  `open`, `__import__` (every `import` statement of the code goes through it) and `__build_class__` (which
  records the classes the code defines: its "own" objects) are checking versions; built-in functions the policy
  does not list (`eval`, `exec`, `compile`, `globals` …) refuse when called. Attribute loads of `format`,
  `format_map` and `vformat` are compiled into a lookup through `<guard:format>` (a name no code can spell), so
  format strings built at run time have their fields checked before `str.format` does the lookups in C.
* **a CPython audit hook** (PEP 578, `sys.addaudithook`) for what the interpreter itself reports: processes,
  network, writing files, native code, unpickling, hooks and tracers (refused whoever makes the call while the
  code runs, since library code acts for the code), and imports, `exec`/`compile` and audited attribute reads
  (`__code__`, `tb_frame` …) when the code itself makes them (library code may, e.g. `dataclasses` runs `exec`).

RestrictedPython was weighed and not used: it compiles its own language subset (no `_name` variables or
attributes, so no `self._cache`, `super().__init__()` or `x.__class__`; no `async`; a rewritten `print`), a policy
other than `GuardPolicy` that would refuse much of the ordinary code the guard allows, and its guard functions
are the policy-specific part we would write anyway.

An audit hook cannot be removed, so it is installed once, at the first guarded execution, and is one dictionary
test while no guarded code runs. It applies to a thread whose stack holds a frame of a guarded namespace (the
executing thread, and threads running functions the code defined), except inside host tool calls
(`host_code()`); in the sandbox's worker, `armed(process_wide=True)` applies it to every thread of the process.
It is a policy layer, not a sandbox: what C code does for the code without an audit event (`operator.attrgetter`
with a dunder name, a thread started on a C function directly in the in-process interpreter) is left to the static
pass and to the sandbox.

Standard library only, with no import from this package: the sandbox's worker receives this module's source from
the host and loads it (the sandbox exposes only the worker script).
"""

from __future__ import annotations

import _string
import ast
import builtins
import contextlib
import contextvars
import os
import string
import sys
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

FORMAT_LOOKUP = "<guard:format>"  # the global the format-method lookups are compiled into; no code can spell it
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
        self.builtins = self._builtins()

    # --- the code's own objects ------------------------------------------------------------------------------------

    def is_own(self, obj: Any) -> bool:
        """Whether `obj` is a class the code defined (a plain one: see `__build_class__`) or an instance of one."""
        return (obj if isinstance(obj, type) else type(obj)) in self.own

    def _build_class(self, *args: Any, **kwargs: Any) -> Any:
        cls = builtins.__build_class__(*args, **kwargs)
        # Own when every base is own or a built-in type: library bases bring their private state with them.
        bases = cls.__mro__[1:] if isinstance(cls, type) and type(cls) is type else None
        if bases is not None and all(b in self.own or (b.__module__ == "builtins" and b is not type) for b in bases):
            self.own.add(cls)
        return cls

    # --- attribute access ------------------------------------------------------------------------------------------

    def check_attribute(self, obj: Any, name: Any, how: str) -> None:
        """Raise [`RuntimeRefusal`][rlm_events.guard._runtime.RuntimeRefusal] if reading or writing `obj.<name>` breaks
        the rules (a name that is not a string is left to Python's own error)."""
        if not isinstance(name, str):
            return
        refused = self.rules.name_refusal(name, self.is_own(obj), how)
        if refused is None and isinstance(obj, types.ModuleType):
            module = module_name(obj)
            refused = self.rules.module_refusal(module, f"{how} {name!r} of") or self.rules.member_refusal(
                module, name, how
            )
        if refused is not None:
            raise refused

    def _value(self, value: Any, how: str) -> Any:
        if isinstance(value, types.ModuleType):
            refused = self.rules.module_refusal(module_name(value), f"{how} reaches")
            if refused is not None:
                raise refused
        return value

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
        return self._value(getattr(obj, name, *default), how)

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
        if not self.is_own(obj):
            for key in list(found):
                self.check_attribute(obj, key, f"{what} holds")
        return found

    # --- format strings --------------------------------------------------------------------------------------------

    def format_lookup(self, obj: Any, name: str) -> Any:
        """`obj.<name>` for `format`, `format_map` and `vformat`: on strings and `string.Formatter`s, a version that
        checks the format string's fields (attribute parts as attribute reads) before formatting."""
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
        for item in fromlist or ():
            if item != "*":
                self.check_attribute(module, item, f"from {name} import")
                self._value(getattr(module, item, None), f"from {name} import {item}")
        return module

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
        key = id(self.namespace)
        _ARMED[key] = self
        _DEPTH[key] = _DEPTH.get(key, 0) + 1
        previous = _PROCESS_WIDE
        if process_wide:
            _PROCESS_WIDE = self
        try:
            yield
        finally:
            _PROCESS_WIDE = previous
            _DEPTH[key] -= 1
            if not _DEPTH[key]:
                del _DEPTH[key], _ARMED[key]

    def audit(self, event: str, args: tuple[Any, ...], from_the_code: bool, host_api: bool) -> None:
        """Refuse the audit `event` if the rules deny it (see the module's docstring)."""
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


class FormatLookups(ast.NodeTransformer):
    """Compiles every read of an attribute named `format`, `format_map` or `vformat` into
    `<guard:format>(receiver, name)`, so a format string's fields are checked when it is used."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr in FORMAT_METHODS and isinstance(node.ctx, ast.Load):
            lookup = ast.Call(ast.Name(FORMAT_LOOKUP, ast.Load()), [node.value, ast.Constant(node.attr)], [])
            return ast.copy_location(lookup, node)
        return node


def rewrite(tree: ast.Module) -> ast.Module:
    """`tree` with its format-method lookups routed through the guard (see `FormatLookups`)."""
    if not any(isinstance(n, ast.Attribute) and n.attr in FORMAT_METHODS for n in ast.walk(tree)):
        return tree
    return ast.fix_missing_locations(FormatLookups().visit(tree))


# --- the audit hook: one per process ---------------------------------------------------------------------------------

_ARMED: dict[int, RuntimeGuard] = {}  # id(namespace) -> its guard, while its code runs
_DEPTH: dict[int, int] = {}
_PROCESS_WIDE: RuntimeGuard | None = None
_HOST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("rlm_events_guard_host_code", default=False)
_hook_installed = False


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
    """Install the audit hook once per process (it cannot be removed; idle, it is one dictionary test)."""
    global _hook_installed
    if not _hook_installed:
        _hook_installed = True
        sys.addaudithook(_audit)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _ARMED and _PROCESS_WIDE is None:
        return
    if event not in ANY_CALLER and event not in FROM_THE_CODE and event not in _OTHER_EVENTS:
        return
    if _HOST_CODE.get():
        return
    guard, from_the_code, host_api = _caller(sys._getframe(1))
    if guard is not None:
        guard.audit(event, args, from_the_code, host_api)


_OTHER_EVENTS = frozenset({"open", "import", "object.__getattr__", "object.__setattr__", "object.__delattr__"})


def _caller(frame: types.FrameType | None) -> tuple[RuntimeGuard | None, bool, bool]:
    """The guard whose code is on this stack (else the process-wide one), whether the nearest Python frame (past
    the import machinery) is that code, and whether a host API's frame is in between."""
    nearest, host_api = True, False
    while frame is not None:
        namespace = frame.f_globals
        guard = _ARMED.get(id(namespace))
        if guard is not None and guard.namespace is namespace:
            return guard, nearest, host_api
        module = namespace.get("__name__")
        module = module if isinstance(module, str) else ""
        if not module.startswith("importlib"):  # (frame.f_code would raise an audit event of its own)
            nearest = False
        if module.partition(".")[0] in HOST_APIS:
            host_api = True
        frame = frame.f_back
    return _PROCESS_WIDE, False, host_api


__all__ = [
    "ANY_CALLER",
    "FORMAT_LOOKUP",
    "FORMAT_METHODS",
    "FROM_THE_CODE",
    "HOST_APIS",
    "RULE_FIELDS",
    "FormatLookups",
    "Rules",
    "RuntimeGuard",
    "RuntimeRefusal",
    "host_code",
    "install_hook",
    "rewrite",
]
