"""What :class:`~rlm_events.builtins.CodeGuard` refuses: a :class:`GuardPolicy` checked against the code's AST.

The check reads the syntax tree, never the text, so ``print("eval is fine in a string")`` passes while
``import os as o; o.system(...)``, ``getattr(__builtins__, "ev" + "al")`` or ``open(path, "w")`` do not. Names are
resolved through the code's own imports (``import subprocess as sp`` → ``sp.run`` is ``subprocess.run``).

It is a policy check, not a sandbox: Python has too many doors for a static check to close them all against an
adversary. Run untrusted code in a real sandbox (DSPy's default Deno/Pyodide ``PythonInterpreter``) and use the
guard to steer the LM away from what you do not want and to make the refusal explicit.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from ._syntax import bound_names, parse

ViolationKind = Literal["call", "module", "attribute", "write", "dynamic"]

_REASONS: dict[str, str] = {
    "call": "built-ins that run dynamic code or escape the REPL are denied",
    "module": "modules that reach the operating system, processes or the interpreter's internals are denied",
    "attribute": "interpreter internals are denied",
    "write": "writing files is denied",
    "dynamic": "attribute names must be literal strings",
}


@dataclass(frozen=True)
class Violation:
    """One thing the policy denies, where it is, and why."""

    kind: ViolationKind
    name: str
    line: int
    detail: str

    @property
    def reason(self) -> str:
        """Why this kind of construct is denied, in words meant for the LM."""
        return _REASONS[self.kind]

    def __str__(self) -> str:
        return f"line {self.line}: {self.detail} ({self.reason})"


_DEFAULT_CALLS = frozenset(
    {"eval", "exec", "compile", "__import__", "breakpoint", "globals", "locals", "vars", "input", "exit", "quit"}
)
_DEFAULT_MODULES = frozenset(
    {
        "os",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "ctypes",
        "importlib",
        "multiprocessing",
        "pty",
        "signal",
        "builtins",
        "code",
        "resource",
    }
)
_DEFAULT_ATTRIBUTES = frozenset(
    {
        "__builtins__",
        "__globals__",
        "__subclasses__",
        "__code__",
        "__closure__",
        "__import__",
        "__loader__",
        "__self__",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "gi_frame",
        "cr_frame",
        "tb_frame",
    }
)
_STRICT_CALLS = frozenset({"open", "getattr", "setattr", "delattr", "memoryview", "help"})
_STRICT_MODULES = frozenset(
    {
        "pathlib",
        "io.open",
        "io.open_code",
        "io.FileIO",
        "tempfile",
        "glob",
        "fileinput",
        "shelve",
        "pickle",
        "marshal",
        "dbm",
        "sqlite3",
        "urllib",
        "http",
        "requests",
        "httpx",
        "ftplib",
        "smtplib",
        "ssl",
        "socketserver",
        "asyncio",
        "threading",
        "_thread",
        "concurrent",
        "inspect",
        "gc",
        "runpy",
        "codeop",
        "types.CodeType",
        "types.FunctionType",
        "platform",
        "getpass",
        "pwd",
        "grp",
        "webbrowser",
    }
)
_STRICT_ATTRIBUTES = frozenset(
    {
        "__dict__",
        "__class__",
        "__bases__",
        "__base__",
        "__mro__",
        "__getattribute__",
        "__reduce__",
        "__reduce_ex__",
        "__spec__",
        "__func__",
        "tb_next",
    }
)
_OPEN_FUNCTIONS = frozenset({"open", "io.open", "codecs.open", "os.fdopen"})
_WRITE_METHODS = frozenset({"write_text", "write_bytes"})
_MODE = re.compile(r"[rwxabtU+]{1,4}")
_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


def _names(value: Any, field: str, *, dotted: bool) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError(f"GuardPolicy.{field} takes a collection of names, got the string {value!r}; use {{{value!r}}}")
    try:
        names = frozenset(value)
    except TypeError:
        raise TypeError(f"GuardPolicy.{field} takes a collection of names, got {type(value).__name__}") from None
    for name in names:
        parts = name.split(".") if dotted and isinstance(name, str) else [name]
        if not all(isinstance(p, str) and p.isidentifier() for p in parts):
            kind = "a module name or dotted path" if dotted else "an identifier"
            raise ValueError(f"GuardPolicy.{field}: {name!r} is not {kind}")
    return names


class GuardPolicy(BaseModel):
    """What generated code may not do. Immutable; derive variants with :meth:`extend` and :meth:`allow`.

    * ``deny_calls``: built-in names that may be neither called nor referenced (a reference could be aliased and
      called later), e.g. ``eval``. Attribute calls such as ``re.compile`` are not affected.
    * ``deny_modules``: modules (``"os"`` covers ``os.path`` too) or dotted paths inside one (``"shutil.rmtree"``)
      that may be neither imported nor used, under any alias.
    * ``deny_attributes``: attribute names that may not be accessed (``x.__globals__``, or via
      ``getattr(x, "__globals__")``); dunder names here are denied as bare names too (``__builtins__``).
    * ``deny_write_open``: refuse ``open``/``io.open``/``Path.open`` with a mode that writes (``w``, ``a``, ``x``,
      ``+``) or a mode that is not a literal, and ``Path.write_text``/``write_bytes``.
    * ``deny_dynamic_getattr``: refuse ``getattr``/``setattr``/``delattr``/``hasattr`` whose name is not a literal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deny_calls: frozenset[str] = frozenset()
    deny_modules: frozenset[str] = frozenset()
    deny_attributes: frozenset[str] = frozenset()
    deny_write_open: bool = False
    deny_dynamic_getattr: bool = False

    @field_validator("deny_calls", "deny_attributes", mode="before")
    @classmethod
    def _identifiers(cls, value: Any, info: Any) -> frozenset[str]:
        return _names(value, info.field_name, dotted=False)

    @field_validator("deny_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any, info: Any) -> frozenset[str]:
        return _names(value, info.field_name, dotted=True)

    @classmethod
    def default(cls) -> GuardPolicy:
        """Refuse what breaks out of the REPL or reaches the machine; allow ordinary data processing.

        Denies the built-ins ``eval exec compile __import__ breakpoint globals locals vars input exit quit``; the
        modules ``os subprocess sys shutil socket ctypes importlib multiprocessing pty signal builtins code
        resource``; the attributes ``__builtins__ __globals__ __subclasses__ __code__ __closure__ __import__
        __loader__ __self__ f_globals f_locals f_builtins f_back gi_frame cr_frame tb_frame``; and writing files.
        Reading files with ``open(path)`` and ``getattr`` with any name are allowed.
        """
        return cls(
            deny_calls=_DEFAULT_CALLS,
            deny_modules=_DEFAULT_MODULES,
            deny_attributes=_DEFAULT_ATTRIBUTES,
            deny_write_open=True,
        )

    @classmethod
    def strict(cls) -> GuardPolicy:
        """:meth:`default`, plus no file, network, thread or introspection access at all.

        Adds the built-ins ``open getattr setattr delattr memoryview help``; the modules ``pathlib tempfile glob
        fileinput shelve pickle marshal dbm sqlite3 urllib http requests httpx ftplib smtplib ssl socketserver
        asyncio threading _thread concurrent inspect gc runpy codeop platform getpass pwd grp webbrowser`` and the
        paths ``io.open io.open_code io.FileIO types.CodeType types.FunctionType`` (``io.StringIO`` stays usable);
        the attributes ``__dict__ __class__ __bases__ __base__ __mro__ __getattribute__ __reduce__ __reduce_ex__
        __spec__ __func__ tb_next``; and ``getattr``-style calls with a computed name.
        """
        return cls.default().extend(
            deny_calls=_STRICT_CALLS,
            deny_modules=_STRICT_MODULES,
            deny_attributes=_STRICT_ATTRIBUTES,
            deny_dynamic_getattr=True,
        )

    @classmethod
    def named(cls, name: str) -> GuardPolicy:
        """The preset called ``name``: ``"default"`` or ``"strict"``."""
        presets = {"default": cls.default, "strict": cls.strict}
        if name not in presets:
            raise ValueError(f"unknown GuardPolicy preset {name!r}; use 'default', 'strict' or a GuardPolicy(...)")
        return presets[name]()

    def extend(
        self,
        *,
        deny_calls: Iterable[str] = (),
        deny_modules: Iterable[str] = (),
        deny_attributes: Iterable[str] = (),
        deny_write_open: bool | None = None,
        deny_dynamic_getattr: bool | None = None,
    ) -> GuardPolicy:
        """A copy that denies these too (flags given as ``None`` keep their value)."""
        return GuardPolicy(
            deny_calls=self.deny_calls | _names(deny_calls, "deny_calls", dotted=False),
            deny_modules=self.deny_modules | _names(deny_modules, "deny_modules", dotted=True),
            deny_attributes=self.deny_attributes | _names(deny_attributes, "deny_attributes", dotted=False),
            deny_write_open=self.deny_write_open if deny_write_open is None else deny_write_open,
            deny_dynamic_getattr=self.deny_dynamic_getattr if deny_dynamic_getattr is None else deny_dynamic_getattr,
        )

    def allow(
        self, *, calls: Iterable[str] = (), modules: Iterable[str] = (), attributes: Iterable[str] = ()
    ) -> GuardPolicy:
        """A copy that no longer denies these names (e.g. ``GuardPolicy.strict().allow(modules={"pathlib"})``)."""
        return self.model_copy(
            update={
                "deny_calls": self.deny_calls - _names(calls, "calls", dotted=False),
                "deny_modules": self.deny_modules - _names(modules, "modules", dotted=True),
                "deny_attributes": self.deny_attributes - _names(attributes, "attributes", dotted=False),
            }
        )

    def check(self, code: str, *, shadowed: Iterable[str] = ()) -> list[Violation]:
        """Every violation in ``code``, in source order; ``[]`` when it complies *or does not parse* (the
        interpreter then reports the syntax error itself, which tells the LM more than a refusal would).

        ``shadowed`` are names the REPL binds to something of its own (the RLM's inputs and tools): a bare use of
        ``input`` or ``code`` then means that variable, not the built-in or the module.
        """
        tree = parse(code)
        if tree is None:
            return []
        scanner = _Scanner(self, tree, frozenset(shadowed))
        scanner.visit(tree)
        unique = dict.fromkeys(scanner.found)
        return sorted(unique, key=lambda v: v.line)

    def module_denied(self, path: str) -> str | None:
        """The denied module or path that covers the dotted ``path`` (``"os.path.join"`` → ``"os"``), or ``None``."""
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in self.deny_modules:
                return prefix
        return None


class _Scanner(ast.NodeVisitor):
    """One pass over a module's tree, resolving names through the code's own imports."""

    def __init__(self, policy: GuardPolicy, tree: ast.AST, shadowed: frozenset[str]) -> None:
        self.policy = policy
        self.found: list[Violation] = []
        self.aliases: dict[str, str] = {}  # local name → dotted path it was imported as
        self.refused_imports: set[str] = set()  # local names whose import is already reported
        self.tree = tree
        self._locally_bound: set[str] | None = None  # computed only if a bare denied module name shows up
        dunders = {a for a in policy.deny_attributes if a.startswith("__")}
        self.denied_names = (policy.deny_calls - shadowed) | dunders
        self.shadowed = shadowed

    @property
    def locally_bound(self) -> set[str]:
        if self._locally_bound is None:
            self._locally_bound = bound_names(self.tree)
        return self._locally_bound

    def flag(self, node: ast.AST, kind: ViolationKind, name: str, detail: str) -> None:
        self.found.append(Violation(kind, name, getattr(node, "lineno", 0), detail))

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted path an expression names (``sp.run`` → ``subprocess.run``), or ``None`` if not a name."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            denied = self.policy.module_denied(alias.name)
            local = alias.asname or alias.name.split(".")[0]
            self.aliases[local] = alias.name if alias.asname else local
            if denied:
                self.flag(node, "module", denied, f"import of module {alias.name!r}")
                self.refused_imports.add(local)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        denied = self.policy.module_denied(module) if module else None
        if denied:
            self.flag(node, "module", denied, f"import from module {module!r}")
        if not denied and any(a.name == "*" for a in node.names):
            # A star import would bind denied names without naming them.
            inside = sorted(m for m in self.policy.deny_modules if m.startswith(f"{module}."))
            if inside:
                self.flag(node, "module", inside[0], f"'from {module} import *' (it includes {inside[0]!r})")
        for alias in node.names:
            path = f"{module}.{alias.name}" if module else alias.name
            local = alias.asname or alias.name
            self.aliases[local] = path
            inner = denied or self.policy.module_denied(path)
            if inner and not denied:
                self.flag(node, "module", inner, f"import of {path!r}")
            if alias.name in self.policy.deny_calls:
                self.flag(node, "call", alias.name, f"import of {alias.name!r}")
            if inner or alias.name in self.policy.deny_calls:
                self.refused_imports.add(local)

    # names and attributes

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            return
        if node.id in self.denied_names:
            kind: ViolationKind = "call" if node.id in self.policy.deny_calls else "attribute"
            self.flag(node, kind, node.id, f"use of {node.id!r}")
            return
        path = self.aliases.get(node.id)
        if node.id in self.refused_imports:
            return  # its import is reported; once that goes, this use goes with it
        if path is not None:
            denied = self.policy.module_denied(path)
            if denied:
                alias = f" (as {node.id!r})" if node.id != path else ""
                self.flag(node, "module", denied, f"use of {path!r}{alias}")
        else:
            # A module left in the REPL's namespace by injected code, used without importing it here.
            denied = self.policy.module_denied(node.id)
            if denied and node.id not in self.shadowed and node.id not in self.locally_bound:
                self.flag(node, "module", denied, f"use of module {node.id!r}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in self.policy.deny_attributes:
            self.flag(node, "attribute", node.attr, f"access to attribute {node.attr!r}")
        if node.attr in _WRITE_METHODS and self.policy.deny_write_open:
            self.flag(node, "write", node.attr, f"call of .{node.attr}()")
        path = self.resolve(node)
        root = self.resolve(node.value) if isinstance(node.value, (ast.Name, ast.Attribute)) else None
        if path is not None and root is not None:
            denied = self.policy.module_denied(path)
            # Report a dotted denial here only when the root alone is allowed (the root reports itself otherwise).
            if denied and self.policy.module_denied(root) is None and denied == path:
                self.flag(node, "module", denied, f"use of {path!r}")
        self.generic_visit(node)

    # calls

    def visit_Call(self, node: ast.Call) -> None:
        target = self.resolve(node.func)
        if target in _ATTRIBUTE_BUILTINS and target not in self.aliases:
            self._check_attribute_call(node, target)
        if self.policy.deny_write_open:
            if target in _OPEN_FUNCTIONS:
                self._check_open_mode(node, target, position=1)
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "open":
                self._check_method_open(node)
        self.generic_visit(node)

    def _check_attribute_call(self, node: ast.Call, target: str) -> None:
        if len(node.args) < 2:
            return
        name = node.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            text = name.value
            if text in self.policy.deny_attributes or text in self.denied_names:
                kind: ViolationKind = "attribute" if text in self.policy.deny_attributes else "call"
                self.flag(node, kind, text, f"{target}(..., {text!r})")
        elif self.policy.deny_dynamic_getattr:
            self.flag(node, "dynamic", target, f"{target}() with a computed attribute name")

    def _check_method_open(self, node: ast.Call) -> None:
        """``Path(...).open(mode)``; other ``.open(name)`` methods (``ZipFile.open``) take a name first, so a
        positional argument counts as a mode only when it looks like one."""
        first = node.args[0] if node.args else None
        looks_like_mode = (
            isinstance(first, ast.Constant) and isinstance(first.value, str) and _MODE.fullmatch(first.value)
        )
        if looks_like_mode or any(k.arg == "mode" for k in node.keywords):
            self._check_open_mode(node, ".open", position=0)

    def _check_open_mode(self, node: ast.Call, target: str, *, position: int) -> None:
        mode: ast.expr | None = node.args[position] if len(node.args) > position else None
        for keyword in node.keywords:
            if keyword.arg == "mode":
                mode = keyword.value
        if mode is None:
            return  # read-only text mode
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            if set(mode.value) & set("wax+"):
                self.flag(node, "write", target, f"{target}(..., {mode.value!r}) opens a file for writing")
        else:
            self.flag(node, "write", target, f"{target}() with a mode that is not a literal")


__all__ = ["GuardPolicy", "Violation", "ViolationKind"]
