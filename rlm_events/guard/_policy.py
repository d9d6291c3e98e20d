"""What [`CodeGuard`][rlm_events.guard.CodeGuard] lets generated code do: a
[`GuardPolicy`][rlm_events.guard._policy.GuardPolicy] checked on the AST.

A policy is an allowlist. Code may import only the listed modules and reach, through them, only their public,
non-module members (`logging.os`, `random._os` and `json.codecs` are refused even though `logging`,
`random` and `json` are allowed); it may use only the listed built-ins, and no private or dunder attribute
outside a short list (`__class__`, `__name__`, `__init__`, the operator protocols …). Attribute names may not
be smuggled in strings (`getattr` with a computed name, `operator.attrgetter`, `"{0.__globals__}".format`,
`case object(__globals__=g)`); string annotations are checked as the code they are. Code the guard cannot parse is
refused, parsed with the target interpreter's grammar where it is known
([`GuardPolicy.target_python`][rlm_events.guard._policy.GuardPolicy.target_python]).

The check reads the syntax tree, never the text, so `print("eval is fine in a string")` passes, and names are
resolved through the code's own imports (`import subprocess as sp` → `sp.run` is `subprocess.run`).

It is a policy check, not a sandbox: run untrusted code in a real sandbox (DSPy's default Deno/Pyodide
`PythonInterpreter`) and use the guard to steer the LM away from what you do not want, with refusals that say
what to do instead.
"""

from __future__ import annotations

import ast
import symtable
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from .._ast import converted
from . import allowlist
from ._bindings import imported_names
from ._grammar import parse_code
from ._scanner import Scanner
from ._scopes import Scopes
from ._violation import Violation


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
    """What generated code may do. Immutable; derive variants with
    [`allow()`][rlm_events.guard._policy.GuardPolicy.allow] and [`deny()`][rlm_events.guard._policy.GuardPolicy.deny].

    Fields left out take [`strict()`][rlm_events.guard._policy.GuardPolicy.strict]'s values.

    * `modules`: modules code may import and use (dotted; `"collections"` does not include
      `"collections.abc"`). Through a module, code reaches only its public members that are not modules
      themselves, unless that module is listed too (`threading.functools` is `functools`).
    * `only_members`: `"module.member"` paths; a module with entries here offers only those members.
    * `deny_members`: `"module.member"` paths refused in allowed modules (`"typing.get_type_hints"`).
    * `builtins`: built-in names code may use. `getattr`, `setattr`, `delattr`, `vars` and `open` may
      only be called directly; `open` (and the archive openers) only with a literal mode that reads.
    * `dunders`: dunder attributes code may access (`__dict__` only on the code's own objects).
    * `private`: `_name` attributes code may access on any object (namedtuple's `_asdict` …); private
      attributes of the code's own objects (`self._cache`) are always allowed.
    * `deny_attributes`: public attribute names refused too (frame and code internals such as `f_globals`).
    * `self_introspection`: allow `self.__dict__`, `vars(self)` and `getattr(self, name)` with a computed
      name inside methods (a method can be called with any object as `self`, so strict refuses them).
    * `literal_formats`: `.format()` / `.format_map()` only on strings written in the code.
    * `target_python`: `(major, minor)` of the interpreter that will run the code, when it is known: code is
      parsed with that grammar (`feature_version` when it is older than the guard's Python); code that the
      guard's older parser cannot read is refused with a message that says so. `None`: the guard's Python.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modules: frozenset[str] = allowlist.STRICT_MODULES
    only_members: frozenset[str] = allowlist.STRICT_ONLY_MEMBERS
    deny_members: frozenset[str] = allowlist.DENIED_MEMBERS
    builtins: frozenset[str] = allowlist.STRICT_BUILTINS
    dunders: frozenset[str] = allowlist.DUNDERS
    private: frozenset[str] = allowlist.PRIVATE
    deny_attributes: frozenset[str] = allowlist.FRAME_ATTRIBUTES
    self_introspection: bool = False
    literal_formats: bool = True
    target_python: tuple[int, int] | None = None

    @field_validator("builtins", "dunders", "private", "deny_attributes", mode="before")
    @classmethod
    def _identifiers(cls, value: Any, info: Any) -> frozenset[str]:
        return _names(value, info.field_name, dotted=False)

    @field_validator("modules", "only_members", "deny_members", mode="before")
    @classmethod
    def _modules(cls, value: Any, info: Any) -> frozenset[str]:
        return _names(value, info.field_name, dotted=True)

    @field_validator("target_python", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if value is None:
            return None
        if not (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and tuple(value) >= (3, 7)
        ):
            raise ValueError(f"GuardPolicy.target_python takes (major, minor), e.g. (3, 13), >= (3, 7); got {value!r}")
        return tuple(value)

    @classmethod
    def default(cls) -> GuardPolicy:
        """Ordinary analysis code, reading files, threads, `asyncio`, `logging` and archives read-only.

        [`strict()`][rlm_events.guard._policy.GuardPolicy.strict], plus: the modules
        `asyncio logging tarfile threading xml.etree.ElementTree zipfile`
        (minus their members that start processes, connect, write files or trace: see
        `rlm_events.guard.allowlist.DENIED_MEMBERS`), the built-in `open` and the openers `io.open`,
        `gzip.open`/`GzipFile`, `bz2`, `lzma`, `zipfile.ZipFile`, `tarfile.open` with a literal mode that
        reads, and `self.__dict__`, `vars(self)` and `getattr(self, name)` inside methods whose `self` can only be an
        instance of their class. (`.format()` stays limited to strings the code shows: a template's fields reach
        the attributes of its arguments, `"{0.__class__.__base__}"`.)
        """
        return cls(
            modules=allowlist.DEFAULT_MODULES,
            only_members=allowlist.DEFAULT_ONLY_MEMBERS,
            builtins=allowlist.DEFAULT_BUILTINS,
            self_introspection=True,
        )

    @classmethod
    def strict(cls) -> GuardPolicy:
        """Pure data processing: no files at all, no processes, network or interpreter internals.

        Modules: `rlm_events.guard.allowlist.STRICT_MODULES` (re, json, math, statistics, collections,
        itertools, functools, operator, datetime, dataclasses, typing, concurrent.futures, urllib.parse, …, and
        `dspy`'s sub-agent API), a few of them member by member (`io`: `StringIO`, `BytesIO`,
        `TextIOWrapper` …). Built-ins: the ordinary ones; not
        `eval exec compile __import__ globals locals breakpoint input help exit quit open`. Attributes: no private or
        dunder attribute except
        `rlm_events.guard.allowlist.DUNDERS` and `PRIVATE`, nor frame/code internals. `getattr` only
        with names the code spells out, `.format()` only on literal strings.
        """
        return cls()

    @classmethod
    def data_analysis(cls) -> GuardPolicy:
        """[`default()`][rlm_events.guard._policy.GuardPolicy.default] plus `numpy` and `pandas`, without their file,
        pickle and network I/O: `np.save`/`np.load`, `pd.read_pickle`, `df.to_csv(path)`, `df.to_parquet(...)` …
        are refused (see `rlm_events.guard.allowlist.DATA_MODULES`); their text readers (`pd.read_csv`,
        `np.loadtxt` …) take an in-memory buffer only (`pd.read_csv(io.StringIO(text))`), and writers such as
        `df.to_csv()` return text. The same members stay refused in any policy that allows these modules with
        [`allow()`][rlm_events.guard._policy.GuardPolicy.allow]."""
        return cls.default().allow(modules=allowlist.DATA_MODULES)

    @classmethod
    def named(cls, name: str) -> GuardPolicy:
        """The preset called `name`: `"default"`, `"strict"` or `"data"`
        ([`data_analysis()`][rlm_events.guard._policy.GuardPolicy.data_analysis])."""
        presets = {"default": cls.default, "strict": cls.strict, "data": cls.data_analysis}
        if name not in presets:
            raise ValueError(
                f"unknown GuardPolicy preset {name!r}; use 'default', 'strict', 'data' or a GuardPolicy(...)"
            )
        return presets[name]()

    def allow(
        self,
        *,
        modules: Iterable[str] = (),
        members: Iterable[str] = (),
        calls: Iterable[str] = (),
        attributes: Iterable[str] = (),
    ) -> GuardPolicy:
        """A copy that also allows these (`GuardPolicy.strict().allow(modules={"numpy"})`).

        `"numpy"` and `"pandas"` bring their everyday submodules (`numpy.linalg`, `numpy.random`, `pandas.api` …),
        and their members that read or write files, unpickle or reach the network stay refused (see
        [`data_analysis()`][rlm_events.guard._policy.GuardPolicy.data_analysis]).
        `members` are `"module.member"` paths: no longer denied, and added where a module is allowed member
        by member. `attributes`: dunder names join `dunders`, `_names` join `private`, others leave
        `deny_attributes`.
        """
        modules = _names(modules, "modules", dotted=True)
        # numpy and pandas come with their everyday submodules (numpy.linalg, numpy.random, pandas.api …)
        modules |= {m for m in allowlist.DATA_MODULES if m.split(".")[0] in modules}
        members = _names(members, "members", dotted=True)
        attributes = _names(attributes, "attributes", dotted=False)
        restricted = {m.rpartition(".")[0] for m in self.only_members}
        return self.model_copy(
            update={
                "modules": self.modules | modules,
                "deny_members": self.deny_members - members - modules,
                "only_members": self.only_members | {m for m in members if m.rpartition(".")[0] in restricted},
                "builtins": self.builtins | _names(calls, "calls", dotted=False),
                "dunders": self.dunders | {a for a in attributes if _is_dunder(a)},
                "private": self.private | {a for a in attributes if a.startswith("_") and not _is_dunder(a)},
                "deny_attributes": self.deny_attributes - attributes,
            }
        )

    def deny(
        self, *, modules: Iterable[str] = (), calls: Iterable[str] = (), attributes: Iterable[str] = ()
    ) -> GuardPolicy:
        """A copy that refuses these too.

        `modules`: an allowed module (and its submodules) leaves the allowlist; a dotted path inside an allowed
        module (`"json.dump"`) is added to `deny_members`. `calls`: built-ins. `attributes`: any names.
        """
        modules = _names(modules, "modules", dotted=True)
        attributes = _names(attributes, "attributes", dotted=False)
        gone = {m for m in self.modules if any(m == d or m.startswith(f"{d}.") for d in modules)}
        inside = {d for d in modules if d not in self.modules and self.module_of(d) is not None}
        return self.model_copy(
            update={
                "modules": self.modules - gone,
                "deny_members": self.deny_members | inside,
                "builtins": self.builtins - _names(calls, "calls", dotted=False),
                "dunders": self.dunders - attributes,
                "private": self.private - attributes,
                "deny_attributes": self.deny_attributes
                | {a for a in attributes if not a.startswith("_") or _is_dunder(a)},
            }
        )

    def extend(
        self,
        *,
        deny_calls: Iterable[str] = (),
        deny_modules: Iterable[str] = (),
        deny_attributes: Iterable[str] = (),
    ) -> GuardPolicy:
        """[`deny()`][rlm_events.guard._policy.GuardPolicy.deny] under the names of the former deny-list API."""
        return self.deny(modules=deny_modules, calls=deny_calls, attributes=deny_attributes)

    def with_target(self, target_python: tuple[int, int] | None) -> GuardPolicy:
        """A copy whose [`target_python`][rlm_events.guard._policy.GuardPolicy.target_python] is `target_python`."""
        return self.model_copy(update={"target_python": GuardPolicy._version(target_python)})

    def check(
        self,
        code: str,
        *,
        shadowed: Iterable[str] = (),
        target_python: tuple[int, int] | None = None,
        imported: Mapping[str, str] | None = None,
    ) -> list[Violation]:
        """Every violation in `code`, in source order; `[]` when it complies.

        Code that does not parse is refused (one `"syntax"` violation saying why); `target_python` (else the
        policy's [`target_python`][rlm_events.guard._policy.GuardPolicy.target_python], else the guard's own Python) is
        the grammar it is parsed with.
        `shadowed` are names the REPL binds to something of its own (the RLM's inputs and tools): a bare use of
        `input` or `code` then means that variable, not the built-in or the module. `imported` are the names
        earlier steps imported (name → dotted path, see [`imports_of()`][rlm_events.guard._policy.imports_of]):
        `j.codecs` after an earlier
        `import json as j` is then checked as `json.codecs`, and a bare name that no step imported is a
        variable. `None` (earlier steps unknown): a bare name of an allowed module may be that module, so it may
        not be used as a value.
        """
        tree, problem = parse_code(code, target_python or self.target_python)
        if problem is not None:
            return [problem]
        assert tree is not None
        scopes = Scopes(tree)  # one walk over the tree: every node, its parent, its scope, what each scope binds
        if not scopes.needs_symtable:
            scopes.use_tree()
        else:
            try:
                scopes.use_symtable(symtable.symtable(code, "<step>", "exec"))
            except (SyntaxError, ValueError) as exc:  # e.g. a name both `global` and a parameter: Python refuses it
                line = getattr(exc, "lineno", 0) or 0
                detail = f"this is not valid Python: {getattr(exc, 'msg', exc)} (line {line}); nothing was run"
                return [Violation("syntax", "parse", line, detail, "fix the syntax and send plain Python only")]
        scanner = Scanner(self, tree, scopes, frozenset(shadowed), imported)
        scanner.run()
        unique = dict.fromkeys(scanner.found)
        return sorted(unique, key=lambda v: v.line)

    def module_of(self, path: str) -> str | None:
        """The longest allowed module that `path` is, or is inside of (`"json.loads"` → `"json"`), or `None`."""
        parts = path.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self.modules:
                return prefix
        return None

    def module_allowed(self, name: str) -> bool:
        """Whether code may import the module `name`."""
        return name in self.modules


def imports_of(code: str) -> dict[str, str]:
    """The names `code`'s imports bind (name → dotted path); `{}` if it does not parse."""
    try:
        return imported_names(converted(lambda: ast.parse(code)))
    except (SyntaxError, ValueError):
        return {}


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


__all__ = ["GuardPolicy", "imports_of"]
