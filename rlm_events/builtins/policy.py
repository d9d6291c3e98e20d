"""What :class:`~rlm_events.builtins.CodeGuard` refuses: a :class:`GuardPolicy` checked against the code's AST.

The check reads the syntax tree, never the text, so ``print("eval is fine in a string")`` passes while
``import os as o; o.system(...)``, ``getattr(__builtins__, "ev" + "al")`` or ``open(path, "w")`` do not. Names are
resolved through the code's own imports (``import subprocess as sp`` → ``sp.run`` is ``subprocess.run``).

It is a policy check, not a sandbox: Python has too many doors for a static check to close them all against an
adversary. Run untrusted code in a real sandbox (DSPy's default Deno/Pyodide ``PythonInterpreter``) and use the
guard to steer the LM away from what you do not want and to make the refusal explicit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ._policy_check import Violation, ViolationKind, _Scanner
from ._syntax import parse

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


__all__ = ["GuardPolicy", "Violation", "ViolationKind"]
