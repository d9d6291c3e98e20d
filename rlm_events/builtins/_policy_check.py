"""The AST check behind :meth:`GuardPolicy.check`: parsing with the target grammar, one pass over the tree, and
the violations it finds (each with what to do instead)."""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import re
import string
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from . import _allowlist as allowlist

if TYPE_CHECKING:
    from .policy import GuardPolicy

ViolationKind = Literal["call", "module", "attribute", "write", "dynamic", "syntax"]

_REASONS: dict[str, str] = {
    "call": "built-ins that run code or reach the REPL's internals or the file system are denied",
    "module": "only allowlisted modules, and their public non-module members, may be used; others are denied",
    "attribute": "private, dunder and interpreter-internal attributes are denied",
    "write": "writing files is denied",
    "dynamic": "attribute names the code does not spell out are denied",
    "syntax": "code the guard cannot parse is denied, since it cannot be checked",
}


@dataclass(frozen=True)
class Violation:
    """One thing the policy refuses, where it is, why, and what to do instead (``hint``)."""

    kind: ViolationKind
    name: str
    line: int
    detail: str
    hint: str = ""

    @property
    def reason(self) -> str:
        """Why this kind of construct is denied, in words meant for the LM."""
        return _REASONS[self.kind]

    def __str__(self) -> str:
        text = f"line {self.line}: {self.detail} ({self.reason})"
        return f"{text}; {self.hint}" if self.hint else text


# --- parsing ---------------------------------------------------------------------------------------------------------

HOST = (sys.version_info[0], sys.version_info[1])
_NEWER_SYNTAX = (
    "no `type X = ...` statements, no `def f[T]` / `class C[T]` type parameters, and no f-string that reuses its "
    "own quote character inside {...}"
)


def parse_code(code: str, target: tuple[int, int] | None) -> tuple[ast.Module | None, Violation | None]:
    """The module's tree, or the ``"syntax"`` violation that refuses it."""
    try:
        if target is not None and target < HOST:
            return ast.parse(code, feature_version=target), None
        return ast.parse(code), None
    except SyntaxError as exc:
        line = exc.lineno or 0
        message = f"{exc.msg} (line {line})" if line else exc.msg
        here = f"{HOST[0]}.{HOST[1]}"
        if target is not None and target > HOST:
            wanted = f"{target[0]}.{target[1]}"
            return None, Violation(
                "syntax",
                "parse",
                line,
                f"the guard runs on Python {here} and cannot parse this code ({message}); the sandbox runs Python "
                f"{wanted}, which may accept it, but code the guard cannot read is not run",
                f"write it in Python {here} syntax: {_NEWER_SYNTAX}",
            )
        version = f"Python {target[0]}.{target[1]}" if target is not None else f"Python {here}"
        return None, Violation(
            "syntax",
            "parse",
            line,
            f"this is not valid {version}: {message}; nothing was run",
            "fix the syntax and send plain Python only (no markdown fences or prose)",
        )
    except ValueError:
        return None, Violation(
            "syntax", "parse", 0, "the code contains null bytes; nothing was run", "send plain Python text"
        )


# --- what the host knows about modules --------------------------------------------------------------------------------

_MISSING = object()


@cache
def _host_module(name: str) -> types.ModuleType | None:
    """The allowed module ``name`` on the guard's Python (imported once), or ``None`` if it cannot be imported."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except BaseException:  # an allowed module that is not installed here
        return None


def _host_attr(module: str, attr: str) -> Any:
    mod = _host_module(module)
    return _MISSING if mod is None else getattr(mod, attr, _MISSING)


def _module_name(value: types.ModuleType) -> str:
    spec = getattr(value, "__spec__", None)
    return getattr(spec, "name", None) or value.__name__


@cache
def _is_submodule(path: str) -> bool:
    """Whether ``path`` (not an attribute of its module here) names a module: a stdlib name or a real submodule."""
    if path.rpartition(".")[2] in sys.stdlib_module_names:
        return True
    try:
        return importlib.util.find_spec(path) is not None
    except BaseException:
        return False


_HOST_BUILTINS = frozenset(dir(builtins))
_ALWAYS_BUILTIN = allowlist.CALL_ONLY_BUILTINS | frozenset(allowlist.BUILTIN_HINTS)
_DUNDER = re.compile(r"__\w+__\Z")
_ATTRIBUTE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_MODE = re.compile(r"[rwxabtU+]{1,4}")
_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
_STR_METHODS = frozenset(
    {"upper", "lower", "strip", "lstrip", "rstrip", "replace", "title", "capitalize", "swapcase", "casefold"}
)
_SEQUENCE_WRAPPERS = frozenset({"sorted", "reversed", "list", "tuple", "set", "frozenset"})


def _is_dunder(name: str) -> bool:
    return bool(_DUNDER.match(name)) and len(name) > 4


@lru_cache(maxsize=16)
def _packages(modules: frozenset[str]) -> frozenset[str]:
    """Every proper dotted prefix of the allowed modules (``xml``, ``xml.etree`` for ``xml.etree.ElementTree``)."""
    return frozenset(".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1))


def _module_hint(name: str, policy: GuardPolicy) -> str:
    for key in (name, name.split(".")[0]):
        if key in allowlist.MODULE_HINTS:
            return allowlist.MODULE_HINTS[key]
    if name.split(".")[-1].startswith("_"):
        return "C modules and private modules are off limits: use the allowed modules"
    sample = [
        m for m in ("re", "json", "math", "statistics", "collections", "itertools", "datetime") if m in policy.modules
    ]
    return f"use the allowed modules ({', '.join(sample)}, …) and your variables" if sample else ""


# --- bindings: what a name can hold, as far as the code shows ---------------------------------------------------------


@dataclass(frozen=True)
class _Binding:
    kind: Literal["value", "element", "other"]
    expr: ast.expr | None = None


def _bindings(nodes: Iterable[ast.AST]) -> dict[str, list[_Binding]]:
    """Every place each name is bound, and with what (``value`` of an assignment, ``element`` of a loop)."""
    found: dict[str, list[_Binding]] = {}

    def add(name: str, binding: _Binding) -> None:
        found.setdefault(name, []).append(binding)

    def targets(target: ast.expr, binding: _Binding) -> None:
        if isinstance(target, ast.Name):
            add(target.id, binding)
        else:
            for node in ast.walk(target):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    add(node.id, _Binding("other"))

    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
            add(node.id, _Binding("other"))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets(target, _Binding("value", node.value))
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            targets(node.target, _Binding("value", node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            targets(node.target, _Binding("element", node.iter))
        elif isinstance(node, ast.AugAssign):
            targets(node.target, _Binding("other"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name, _Binding("other"))
        elif isinstance(node, ast.arg):
            add(node.arg, _Binding("other"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                add((alias.asname or alias.name).split(".")[0], _Binding("other"))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets(node.optional_vars, _Binding("value", node.context_expr))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            add(node.name, _Binding("other"))
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name, _Binding("other"))
        elif (isinstance(node, ast.MatchAs) and node.name) or (isinstance(node, ast.MatchStar) and node.name):
            add(node.name, _Binding("other"))
        elif isinstance(node, ast.MatchMapping) and node.rest:
            add(node.rest, _Binding("other"))
    return found


@dataclass(frozen=True)
class _Ref:
    """What an expression names: an allowed ``module``, a ``package`` on the way to one, a ``member`` of one, a
    ``denied`` module (reported where it was reached), or a ``builtin``."""

    kind: Literal["module", "package", "member", "denied", "builtin"]
    path: str


_MethodOwner = Literal["method", "local"]


class _Scanner(ast.NodeVisitor):
    """One pass over a module's tree, resolving names through the code's own imports."""

    def __init__(
        self,
        policy: GuardPolicy,
        tree: ast.Module,
        shadowed: frozenset[str],
        imported: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self.tree = tree
        self.shadowed = shadowed
        # Names earlier steps imported (None: unknown, so any allowed module's name may be that module).
        self.imported = imported
        self.found: list[Violation] = []
        self.nodes = list(ast.walk(tree))
        self.parents: dict[ast.AST, ast.AST] = {
            child: parent for parent in self.nodes for child in ast.iter_child_nodes(parent)
        }
        self.bindings = _bindings(self.nodes)
        self.bound = set(self.bindings)
        self.aliases: dict[str, str] = {}  # local name → dotted path it was imported as
        self._collect_imports()
        self.refused_imports: set[str] = set()  # local names whose import is already reported
        self.checked: set[int] = set()  # ids of string constants already checked as attribute names
        self.own: list[frozenset[str]] = [frozenset()]  # `self`/`cls` of the methods being visited
        self.annotation_strings = self._annotation_strings()
        self.local_classes, self.class_methods = self._local_classes()
        self.local_instances = self._local_instances()
        self.archives = self._archive_names()
        self.names_stored_as_name_attr = any(
            isinstance(n, ast.Attribute) and n.attr == "name" and not isinstance(n.ctx, ast.Load) for n in self.nodes
        )

    def run(self) -> None:
        self.visit(self.tree)

    def flag(self, node: ast.AST, kind: ViolationKind, name: str, detail: str, hint: str = "") -> None:
        self.found.append(Violation(kind, name, getattr(node, "lineno", 0), detail, hint))

    # --- prepasses -----------------------------------------------------------------------------------------------

    def _collect_imports(self) -> None:
        """Bind every imported name first, so a use before the import (in a function) resolves too."""
        for node in self.nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for local, path in imported_names(ast.Module(body=[node], type_ignores=[])).items():
                    self._bind_alias(local, path)

    def _bind_alias(self, local: str, path: str) -> None:
        known = self.aliases.get(local)
        if known is not None and known != path:
            self.aliases[local] = "<ambiguous>"  # bound to two things: refused where used
        else:
            self.aliases[local] = path

    def _annotation_strings(self) -> set[int]:
        found: set[int] = set()
        for node in self.nodes:
            annotations: list[ast.expr | None] = []
            if isinstance(node, ast.arg):
                annotations.append(node.annotation)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations.append(node.returns)
            elif isinstance(node, ast.AnnAssign):
                annotations.append(node.annotation)
            for annotation in annotations:
                if annotation is not None:
                    found.update(
                        id(n) for n in ast.walk(annotation) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    )
        return found

    def _local_classes(self) -> tuple[set[str], dict[str, set[str]]]:
        """Classes the code defines whose instances are plain objects: no ``__new__``, no metaclass, bases that are
        such classes, built-in types (not ``type``) or members of allowed modules; defined once, never rebound."""
        defs = [n for n in self.nodes if isinstance(n, ast.ClassDef)]
        methods = {
            d.name: {
                f.name
                for f in d.body
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _decorated(f, "staticmethod")
            }
            for d in defs
        }
        candidates = {
            d.name: d
            for d in defs
            if len(self.bindings.get(d.name, [])) == 1
            and not d.keywords
            and not any(isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == "__new__" for f in d.body)
        }
        good: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, d in candidates.items():
                if name not in good and all(self._plain_base(b, good) for b in d.bases):
                    good.add(name)
                    changed = True
        return good, methods

    def _plain_base(self, base: ast.expr, good: set[str]) -> bool:
        if isinstance(base, ast.Name):
            if base.id in good:
                return True
            if base.id in _HOST_BUILTINS and base.id not in self.bound and base.id != "type":
                return isinstance(getattr(builtins, base.id), type)
        ref = self.resolve(base)
        return ref is not None and ref.kind == "member"

    def _local_instances(self) -> set[str]:
        names = set()
        for name, sites in self.bindings.items():
            if sites and all(
                s.kind == "value"
                and isinstance(s.expr, ast.Call)
                and isinstance(s.expr.func, ast.Name)
                and s.expr.func.id in self.local_classes
                for s in sites
            ):
                names.add(name)
        return names

    def _archive_names(self) -> set[str]:
        return {
            name
            for name, sites in self.bindings.items()
            if any(s.kind == "value" and s.expr is not None and self._is_archive(s.expr) for s in sites)
        }

    def _is_archive(self, node: ast.AST) -> bool:
        """Whether ``node`` is an archive object: a call of an archive opener, or a name bound to one."""
        if isinstance(node, ast.Name):
            return node.id in getattr(self, "archives", ())
        if isinstance(node, ast.Call):
            ref = self.resolve(node.func)
            return ref is not None and ref.path in allowlist.ARCHIVES
        return False

    # --- resolving names -----------------------------------------------------------------------------------------

    def resolve(self, node: ast.AST) -> _Ref | None:
        """What ``node`` names, when it is a module, something reached through one, or a built-in."""
        if isinstance(node, ast.Name):
            name = node.id
            if name in self.shadowed:
                return None
            if name in self.aliases:
                return self._classify(self.aliases[name])
            if name in _ALWAYS_BUILTIN or (name in _HOST_BUILTINS and name not in self.bound):
                return _Ref("builtin", name)
            if name in self.bound:
                return None
            if self.imported is not None and name in self.imported:
                return self._classify(self.imported[name])
            if name in allowlist.RISKY_MODULE_NAMES or name in self.policy.modules or self._is_package(name):
                return self._classify(name)
            return None
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else self._step(base, node.attr)
        return None

    def _step(self, base: _Ref, attr: str) -> _Ref | None:
        """What ``<base>.attr`` names."""
        if base.kind == "builtin":
            return None
        path = f"{base.path}.{attr}"
        if base.kind == "denied":
            return base
        if base.kind == "package":
            return self._classify(path)
        if base.kind == "module":
            if path in self.policy.modules:
                return _Ref("module", path)
            value = _host_attr(base.path, attr)
            if isinstance(value, types.ModuleType):
                name = _module_name(value)
                return _Ref("module", name) if name in self.policy.modules else _Ref("denied", path)
            if value is _MISSING and (self._is_package(path) or _is_submodule(path)):
                return _Ref("package", path) if self._is_package(path) else _Ref("denied", path)
        return _Ref("member", path)

    def _is_package(self, path: str) -> bool:
        """Whether ``path`` is a package on the way to an allowed module (``xml`` for ``xml.etree.ElementTree``)."""
        return path not in self.policy.modules and path in _packages(self.policy.modules)

    def _classify(self, path: str) -> _Ref:
        if path == "<ambiguous>":
            return _Ref("denied", path)
        if path in self.policy.modules:
            return _Ref("module", path)
        if self._is_package(path):
            return _Ref("package", path)
        module = self.policy.module_of(path)
        if module is None:
            return _Ref("denied", path)
        # a member path from an import: `from json import loads` → json.loads, checked at the import
        ref: _Ref | None = _Ref("module", module)
        for part in path[len(module) + 1 :].split("."):
            ref = self._step(ref, part) if ref is not None else None
        return ref or _Ref("member", path)

    def _offered(self, path: str) -> bool:
        """Whether the policy offers the member ``path`` at all (its refusal is reported where it is reached)."""
        module = self.policy.module_of(path)
        if module is None or path in self.policy.deny_members:
            return False
        member = ".".join(path.split(".")[: module.count(".") + 2])
        restricted = any(m.startswith(f"{module}.") for m in self.policy.only_members)
        return not restricted or member in self.policy.only_members

    def _denied_prefix(self, path: str) -> str:
        """The shortest prefix of ``path`` that is neither an allowed module nor a package on the way to one."""
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in self.policy.modules and not self._is_package(prefix):
                return prefix
        return path

    def _is_chain_base(self, node: ast.AST) -> bool:
        parent = self.parents.get(node)
        return isinstance(parent, ast.Attribute) and parent.value is node

    def _is_callee(self, node: ast.AST) -> bool:
        parent = self.parents.get(node)
        return isinstance(parent, ast.Call) and parent.func is node

    def owner(self, node: ast.AST) -> _MethodOwner | None:
        """Whether ``node`` is the code's own object: a method's ``self``/``cls``, or an instance (or class) of a
        plain class this code defines."""
        if not isinstance(node, ast.Name) or node.id in self.shadowed:
            return None
        if node.id in self.own[-1]:
            return "method"
        if node.id in self.local_instances or node.id in self.local_classes:
            return "local"
        return None

    # --- modules -------------------------------------------------------------------------------------------------

    def _refuse_module(self, node: ast.AST, path: str, detail: str) -> None:
        name = self._denied_prefix(path) if path != "<ambiguous>" else path
        if name == "<ambiguous>":
            self.flag(node, "module", name, detail, "give each imported module its own name")
            return
        self.flag(node, "module", name, detail, _module_hint(name, self.policy))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            if alias.name not in self.policy.modules:
                self._refuse_module(node, alias.name, f"import of module {alias.name!r}")
                self.refused_imports.add(local)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.flag(node, "module", module or ".", "a relative import", "import allowed modules by their full name")
            return
        if any(a.name == "*" for a in node.names):
            self.flag(node, "module", module, f"'from {module} import *'", f"import the names you need from {module}")
            return
        base = self._classify(module)
        for alias in node.names:
            local = alias.asname or alias.name
            path = f"{module}.{alias.name}"
            if path in self.policy.modules:
                continue
            if base.kind == "module":
                if not self._member_ok(node, base.path, alias.name, f"import of {path!r}"):
                    self.refused_imports.add(local)
            else:
                self._refuse_module(node, path, f"import from module {module!r}")
                self.refused_imports.add(local)

    def _member_ok(self, node: ast.AST, module: str, attr: str, detail: str) -> bool:
        """Check ``module.attr`` (``module`` allowed); report and return ``False`` if it is refused."""
        path = f"{module}.{attr}"
        if path in self.policy.modules:
            return True
        if attr in allowlist.ENTRY_POINTS:
            self.flag(node, "module", path, f"{detail}: a command-line entry point", "call the module's functions")
            return False
        if attr.startswith("_"):
            self.flag(
                node,
                "module",
                path,
                f"{detail}: a private member of {module}",
                f"use {module}'s public API; private names of modules are off limits",
            )
            return False
        if path in self.policy.deny_members:
            self.flag(node, "module", path, f"{detail}: {path} is denied", _member_hint(path))
            return False
        if any(m.startswith(f"{module}.") for m in self.policy.only_members) and path not in self.policy.only_members:
            offered = sorted(m.rpartition(".")[2] for m in self.policy.only_members if m.startswith(f"{module}."))
            self.flag(
                node, "module", path, f"{detail}: not among {module}'s allowed members", f"use {', '.join(offered)}"
            )
            return False
        value = _host_attr(module, attr)
        if isinstance(value, types.ModuleType):
            name = _module_name(value)
            if name not in self.policy.modules:
                self.flag(
                    node,
                    "module",
                    path,
                    f"{detail}: {path} is the module {name!r}, which is not allowed",
                    _module_hint(name, self.policy) or "use the allowed modules directly",
                )
                return False
        elif value is _MISSING and not self._is_package(path) and _is_submodule(path):
            self.flag(
                node,
                "module",
                path,
                f"{detail}: {path} is a module that is not allowed",
                _module_hint(path, self.policy),
            )
            return False
        return True

    # --- names ---------------------------------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if not isinstance(node.ctx, ast.Load):
            if _is_dunder(name) and name not in self.policy.dunders and name not in self.policy.builtins:
                self.flag(node, "attribute", name, f"assignment to {name!r}", "use an ordinary variable name")
            return
        if name in self.refused_imports:
            return  # its import is reported; once that goes, this use goes with it
        ref = self.resolve(node)
        if ref is None:
            if _is_dunder(name) and name not in self.policy.builtins and name not in self.bound:
                self.flag(node, "attribute", name, f"use of {name!r}", "use your variables and the allowed modules")
            return
        if ref.kind == "builtin":
            self._check_builtin(node, name)
        elif ref.kind == "denied":
            alias = f" (as {name!r})" if name in self.aliases and self.aliases[name] != name else ""
            what = f"use of {ref.path!r}{alias}" if name in self.aliases else f"use of module {name!r}"
            self._refuse_module(node, ref.path, what)
        elif ref.kind in ("module", "package") and not self._is_chain_base(node):
            if name in self.aliases or self._known_module(name):
                self._module_as_value(node, ref.path, name)
        elif ref.kind == "member" and ref.path in allowlist.CALL_ONLY_MEMBERS and not self._is_callee(node):
            self._name_taking_as_value(node, ref.path)

    def _known_module(self, name: str) -> bool:
        """Whether the unbound ``name`` is a module in the REPL: imported by an earlier step, or (when the earlier
        steps are unknown) the name of an allowed module. Otherwise it is a variable of an earlier step."""
        if self.imported is None or name in self.imported:
            return True
        return name in allowlist.RISKY_MODULE_NAMES

    def _check_builtin(self, node: ast.Name, name: str) -> None:
        if name not in self.policy.builtins:
            kind: ViolationKind = (
                "call" if callable(getattr(builtins, name, None)) or name in _ALWAYS_BUILTIN else "attribute"
            )
            hint = allowlist.BUILTIN_HINTS.get(name, "use your variables and the allowed modules")
            self.flag(node, kind, name, f"use of {name!r}", hint)
        elif name in allowlist.CALL_ONLY_BUILTINS and not self._is_callee(node):
            self.flag(
                node,
                "dynamic" if name != "open" else "write",
                name,
                f"{name!r} used as a value (only direct calls {name}(...) can be checked)",
                f"call {name}(...) directly, with the names written out",
            )

    def _module_as_value(self, node: ast.AST, path: str, name: str) -> None:
        self.flag(
            node,
            "module",
            path,
            f"the module {path!r} used as a value",
            f"use its members directly ({path}.<name>); if {name!r} is your own variable, give it another name",
        )

    def _name_taking_as_value(self, node: ast.AST, path: str) -> None:
        if path in allowlist.NAME_TAKING:
            self.flag(
                node, "dynamic", path, f"{path} used as a value", f"call {path}('name') directly with literal names"
            )
        else:
            self.flag(
                node,
                "write",
                path,
                f"{path} used as a value (only direct calls {path}(...) can be checked)",
                f"call {path}(...) directly, with a literal mode that reads",
            )

    # --- attributes ----------------------------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root: ast.expr = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in self.refused_imports:
            return  # reached through a refused import, which is reported
        base = self.resolve(node.value)
        if base is not None and base.kind == "module":
            if self._member_ok(node, base.path, node.attr, f"access to {base.path}.{node.attr}"):
                ref = self.resolve(node)
                if ref is not None and ref.kind in ("module", "package") and not self._is_chain_base(node):
                    self._module_as_value(node, ref.path, f"{base.path}.{node.attr}")
                elif ref is not None and ref.path in allowlist.CALL_ONLY_MEMBERS and not self._is_callee(node):
                    self._name_taking_as_value(node, ref.path)
        elif base is not None and base.kind == "package":
            path = f"{base.path}.{node.attr}"
            ref = self._classify(path)
            if ref.kind == "denied":
                self._refuse_module(node, path, f"use of module {path!r}")
            elif not self._is_chain_base(node):
                self._module_as_value(node, path, path)
        elif base is None or base.kind in ("member", "builtin"):
            self._check_attribute_name(node, node.value, node.attr, f"access to attribute {node.attr!r}", node.ctx)
            if node.attr == "extract" and self._is_archive(node.value):
                self.flag(node, "write", "extract", "use of .extract() on an archive", _DENIED_METHOD_HINTS["write"])
        self.generic_visit(node)

    def _check_attribute_name(
        self, node: ast.AST, receiver: ast.expr, attr: str, detail: str, ctx: ast.expr_context | None = None
    ) -> bool:
        """The rules for ``receiver.attr`` when ``receiver`` is not a module; report and return ``False`` if refused."""
        owner = self.owner(receiver)
        if _is_dunder(attr):
            if attr not in self.policy.dunders:
                self.flag(node, "attribute", attr, detail, _dunder_hint(attr))
                return False
            if ctx is not None and not isinstance(ctx, ast.Load):
                self.flag(node, "attribute", attr, f"assignment to attribute {attr!r}", "assign ordinary attributes")
                return False
            if attr == "__dict__" and not (owner == "local" or (owner == "method" and self.policy.self_introspection)):
                self.flag(
                    node,
                    "attribute",
                    attr,
                    f"{detail} of an object the guard cannot tell is a plain instance",
                    "use dataclasses.asdict(obj) or name the fields; obj.__dict__ is allowed on instances of classes "
                    "defined in the same step (p = Point(...); p.__dict__)",
                )
                return False
            return True
        if attr.startswith("_") and attr not in self.policy.private and owner is None:
            self.flag(
                node,
                "attribute",
                attr,
                f"{detail}: a private attribute of another object",
                "use the object's public API (private attributes are allowed only on self and on your own classes)",
            )
            return False
        if attr in self.policy.deny_attributes:
            self.flag(node, "attribute", attr, detail, "frames, code objects and tracebacks are off limits")
            return False
        if attr in allowlist.DENIED_METHODS:
            what = allowlist.DENIED_METHODS[attr]
            kind: ViolationKind = "write" if what == "write" else "attribute"
            self.flag(node, kind, attr, f"call of .{attr}()", _DENIED_METHOD_HINTS[what])
            return False
        return True

    # --- calls ---------------------------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = self.resolve(node.func)
        path = func.path if func is not None and func.kind in ("builtin", "member") else None
        if path in _ATTRIBUTE_BUILTINS:
            self._check_attribute_call(node, path)
        elif path == "vars":
            self._check_vars(node)
        elif path is not None and path in allowlist.OPENERS:
            if "open" in self.policy.builtins if path == "open" else self._offered(path):
                self._check_open_mode(node, path, allowlist.OPENERS[path])
        elif path is not None and path in allowlist.WRITING_KEYWORDS:
            self._check_writing_keywords(node, path)
        elif path is not None and path in allowlist.NAME_TAKING:
            self._check_name_taking(node, path)
        elif isinstance(node.func, ast.Attribute):
            self._check_method_call(node, node.func, func)
        self.generic_visit(node)

    def _check_method_call(self, node: ast.Call, func: ast.Attribute, ref: _Ref | None) -> None:
        receiver = func.value
        if func.attr in ("format", "format_map") and self.policy.literal_formats:
            template = receiver
            if isinstance(receiver, ast.Name) and receiver.id == "str" and node.args:
                template = node.args[0]
            if self.known_strings(template) is None:
                self.flag(
                    node,
                    "dynamic",
                    func.attr,
                    f".{func.attr}() on a string the guard cannot see",
                    "use an f-string, or call .format() on a string literal written in this step",
                )
        if func.attr == "open" and ref is None:
            self._check_method_open(node)
        if (
            isinstance(receiver, ast.Name)
            and receiver.id in self.class_methods
            and func.attr in self.class_methods[receiver.id]
            and not (node.args and self.owner(node.args[0]) is not None)
            and not _is_classmethod_call(self.nodes, receiver.id, func.attr)
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
                self.flag(node, "dynamic", fn, f"{fn}() without a visible attribute name", _GETATTR_HINT)
            return
        receiver, name = node.args[0], node.args[1]
        names = self.known_strings(name)
        if names is not None:
            if isinstance(name, ast.Constant):
                self.checked.add(id(name))
            base = self.resolve(receiver)
            for text in sorted(names):
                if not text.isidentifier():
                    continue
                if base is not None and base.kind == "module":
                    self._member_ok(node, base.path, text, f"{fn}({base.path}, {text!r})")
                else:
                    self._check_attribute_name(node, receiver, text, f"{fn}(..., {text!r})")
            return
        if fn == "hasattr" or self._fields_idiom(name):
            return
        owner = self.owner(receiver)
        if owner == "local" or (owner == "method" and (fn != "getattr" or self.policy.self_introspection)):
            return
        self.flag(node, "dynamic", fn, f"{fn}() with a computed attribute name", _GETATTR_HINT)

    def _fields_idiom(self, name: ast.expr) -> bool:
        """``getattr(rec, f.name)`` with ``f`` iterating over ``dataclasses.fields(...)``."""
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
        self._check_attribute_name(node, node.args[0], "__dict__", "vars(...)")

    def _check_name_taking(self, node: ast.Call, path: str) -> None:
        args = node.args if path == "operator.attrgetter" else node.args[:1]
        if not args or (node.keywords and path == "operator.attrgetter"):
            self.flag(node, "dynamic", path, f"{path}() without literal names", _GETATTR_HINT)
            return
        for arg in args:
            names = self.known_strings(arg)
            if names is None:
                self.flag(node, "dynamic", path, f"{path}() with a computed name", _GETATTR_HINT)
                continue
            if isinstance(arg, ast.Constant):
                self.checked.add(id(arg))
            for text in names:
                for part in text.split(".") if path == "operator.attrgetter" else [text]:
                    self._check_attribute_name(node, ast.Name(id="<unknown>"), part, f"{path}({text!r})")

    def _check_open_mode(self, node: ast.Call, target: str, position: int) -> None:
        mode: ast.expr | None = node.args[position] if len(node.args) > position else None
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.flag(node, "write", target, f"{target}(*args): a mode the guard cannot see", _OPEN_HINT)
            return
        for keyword in node.keywords:
            if keyword.arg is None:
                self.flag(node, "write", target, f"{target}(**kwargs): a mode the guard cannot see", _OPEN_HINT)
                return
            if keyword.arg == "mode":
                mode = keyword.value
            elif keyword.arg == "opener":
                self.flag(node, "write", target, f"{target}(..., opener=...)", _OPEN_HINT)
        if mode is None:
            return  # the default mode reads
        modes = self.known_strings(mode)
        if modes is None:
            self.flag(node, "write", target, f"{target}() with a mode that is not a literal", _OPEN_HINT)
            return
        for text in sorted(modes):
            if set(text.split(":")[0]) & set("wax+"):
                self.flag(node, "write", target, f"{target}(..., {text!r}) opens a file for writing", _OPEN_HINT)

    def _check_method_open(self, node: ast.Call) -> None:
        """``Path(...).open(mode)``, ``ZipFile.open(name, mode)``: a positional argument counts as a mode only when
        it looks like one."""
        for position in (0, 1):
            arg = node.args[position] if len(node.args) > position else None
            text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""
            if _MODE.fullmatch(text) and set(text) & set("wax+"):
                self.flag(node, "write", ".open", f".open(..., {text!r}) opens a file for writing", _OPEN_HINT)
        for keyword in node.keywords:
            if keyword.arg == "mode":
                self._check_open_mode(node, ".open", position=99)

    def _check_writing_keywords(self, node: ast.Call, path: str) -> None:
        for keyword in node.keywords:
            if keyword.arg is None or keyword.arg in allowlist.WRITING_KEYWORDS[path]:
                shown = "**kwargs" if keyword.arg is None else f"{keyword.arg}="
                self.flag(node, "write", path, f"{path}({shown}...) can write files", "log with print() instead")

    # --- definitions, patterns, strings --------------------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        own = set(self.own[-1])
        params = [*node.args.posonlyargs, *node.args.args]
        stored = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        own -= stored | {a.arg for a in (*params, *node.args.kwonlyargs)}
        method = isinstance(self.parents.get(node), ast.ClassDef) and not _decorated(node, "staticmethod")
        if method and params and params[0].arg not in stored:
            own.add(params[0].arg)
        self.own.append(frozenset(own))
        for statement in node.body:
            self.visit(statement)
        self.own.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)
        params = {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
        self.own.append(self.own[-1] - params)
        self.visit(node.body)
        self.own.pop()

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            self._check_attribute_name(node, ast.Name(id="<subject>"), attr, f"class pattern keyword {attr!r}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str) or id(node) in self.checked:
            return
        if id(node) in self.annotation_strings:
            self._check_code_string(node, node.value, "string annotation")
            return
        self._check_string(node, node.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self._check_folded(node)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._check_folded(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._check_folded(node)
        self.generic_visit(node)

    def _check_folded(self, node: ast.expr) -> None:
        text = self.fold(node)
        if isinstance(text, str):
            self._check_string(node, text, folded=True)

    def _check_string(self, node: ast.AST, text: str, *, folded: bool = False) -> None:
        how = "a string built from literals" if folded else "the string"
        if len(text) <= 200 and _ATTRIBUTE_PATH.match(text):
            for part in text.split("."):
                if _is_dunder(part) and part not in self.policy.dunders and part not in allowlist.DUNDER_STRINGS:
                    self.flag(
                        node,
                        "attribute",
                        part,
                        f"{how} {text!r} names an internal attribute",
                        "strings cannot carry attribute names past the guard; write the code plainly",
                    )
                    return
        if "{" in text:
            self._check_format_fields(node, text, how)

    def _check_format_fields(self, node: ast.AST, text: str, how: str, depth: int = 0) -> None:
        try:
            fields = list(string.Formatter().parse(text))
        except (ValueError, TypeError):
            return
        for _, field, spec, _ in fields:
            if field:
                for kind, part in _field_parts(field):
                    bad = (
                        (part.startswith("_") and part not in self.policy.private and part not in self.policy.dunders)
                        or part in self.policy.deny_attributes
                        if kind == "attr"
                        else _is_dunder(part) and part not in self.policy.dunders
                    )
                    if bad:
                        self.flag(
                            node,
                            "attribute",
                            part,
                            f"{how} {text[:60]!r} reaches {part!r} through a format field",
                            "format values you computed: f'{value}', or '{}'.format(value)",
                        )
                        return
            if spec and "{" in spec and depth < 2:
                self._check_format_fields(node, spec, how, depth + 1)

    def _check_code_string(self, node: ast.Constant, text: str, what: str) -> None:
        """A string that some function may evaluate (an annotation): check it as the code it is."""
        try:
            expr = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError):
            self.flag(node, "dynamic", what, f"{what} {text[:60]!r} is not a Python expression", _ANNOTATION_HINT)
            return
        for inner in ast.walk(expr):
            inner.lineno = node.lineno  # type: ignore[attr-defined]
            for child in ast.iter_child_nodes(inner):
                self.parents[child] = inner
        self.visit(expr.body)

    # --- what strings an expression can hold ---------------------------------------------------------------------

    def fold(self, node: ast.AST, depth: int = 0) -> Any:
        """The value of a str/int/bytes expression built only from literals (``'__glo' + 'bals__'``), else ``None``."""
        if depth > 12:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, bytes)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.fold(node.operand, depth + 1)
            return -operand if isinstance(operand, int) else None
        if isinstance(node, ast.BinOp):
            left, right = self.fold(node.left, depth + 1), self.fold(node.right, depth + 1)
            if left is None or right is None:
                if isinstance(node.op, ast.Mod) and isinstance(left, str) and isinstance(node.right, ast.Tuple):
                    items = [self.fold(e, depth + 1) for e in node.right.elts]
                    if all(i is not None for i in items):
                        return _safe(lambda: left % tuple(items))
                return None
            if isinstance(node.op, ast.Mult) and (
                (isinstance(left, int) and left > 1000) or (isinstance(right, int) and right > 1000)
            ):
                return None
            op = {ast.Add: lambda a, b: a + b, ast.Mult: lambda a, b: a * b, ast.Mod: lambda a, b: a % b}.get(
                type(node.op)
            )
            return _safe(lambda: op(left, right)) if op else None
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    if value.conversion != -1 or value.format_spec is not None:
                        return None
                    inner = self.fold(value.value, depth + 1)
                    if inner is None:
                        return None
                    parts.append(str(inner))
                else:
                    parts.append(self.fold(value, depth + 1))
            return "".join(p for p in parts if isinstance(p, str)) if all(isinstance(p, str) for p in parts) else None
        if isinstance(node, ast.Subscript):
            value = self.fold(node.value, depth + 1)
            if not isinstance(value, (str, bytes)):
                return None
            index = node.slice
            if isinstance(index, ast.Slice):
                bounds = [
                    None if b is None else self.fold(b, depth + 1) for b in (index.lower, index.upper, index.step)
                ]
                if any(b is not None and not isinstance(b, int) for b in bounds) or any(
                    b is None and e is not None
                    for b, e in zip(bounds, (index.lower, index.upper, index.step), strict=False)
                ):
                    return None
                return _safe(lambda: value[slice(*bounds)])
            at = self.fold(index, depth + 1)
            return _safe(lambda: value[at]) if isinstance(at, int) else None
        if isinstance(node, ast.Name):
            sites = self.bindings.get(node.id, [])
            if len(sites) == 1 and sites[0].kind == "value" and sites[0].expr is not None:
                return self.fold(sites[0].expr, depth + 1)
            return None
        if isinstance(node, ast.Call) and not node.keywords:
            return self._fold_call(node, depth)
        return None

    def _fold_call(self, node: ast.Call, depth: int) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            code = self.fold(node.args[0], depth + 1)
            return _safe(lambda: chr(code)) if isinstance(code, int) else None
        if isinstance(func, ast.Name) and func.id == "bytes" and len(node.args) == 1:
            items = self._fold_items(node.args[0], depth)
            return _safe(lambda: bytes(items)) if items is not None else None
        if not isinstance(func, ast.Attribute):
            return None
        receiver = self.fold(func.value, depth + 1)
        args = [self.fold(a, depth + 1) for a in node.args]
        if any(a is None for a in args):
            if func.attr == "join" and isinstance(receiver, str) and len(node.args) == 1:
                items = self._fold_items(node.args[0], depth)
                return _safe(lambda: receiver.join(items)) if items is not None else None
            return None
        if func.attr == "join" and isinstance(receiver, str) and len(node.args) == 1:
            items = self._fold_items(node.args[0], depth)
            return _safe(lambda: receiver.join(items)) if items is not None else None
        if isinstance(receiver, str) and func.attr in _STR_METHODS:
            return _safe(lambda: getattr(receiver, func.attr)(*args))
        if isinstance(receiver, bytes) and func.attr == "decode":
            return _safe(lambda: receiver.decode(*args))
        if isinstance(func.value, ast.Name) and func.value.id == "bytes" and func.attr == "fromhex" and args:
            return _safe(lambda: bytes.fromhex(args[0]))
        return None

    def _fold_items(self, node: ast.AST, depth: int) -> list[Any] | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.fold(e, depth + 1) for e in node.elts]
            return items if all(i is not None for i in items) else None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "map"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in ("chr", "str")
        ):
            inner = self._fold_items(node.args[1], depth + 1)
            fn = chr if node.args[0].id == "chr" else str
            return _safe(lambda: [fn(i) for i in inner]) if inner is not None else None
        if isinstance(node, ast.Name):
            sites = self.bindings.get(node.id, [])
            if len(sites) == 1 and sites[0].kind == "value" and sites[0].expr is not None:
                return self._fold_items(sites[0].expr, depth + 1)
        return None

    def known_strings(self, node: ast.AST, depth: int = 0, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """Every string ``node`` can hold, when the code shows them all (literals, names bound only to literals,
        loops over literal collections), else ``None``."""
        if depth > 12:
            return None
        value = self.fold(node)
        if isinstance(value, str):
            return {value}
        if isinstance(node, ast.IfExp):
            body, other = (
                self.known_strings(node.body, depth + 1, seen),
                self.known_strings(node.orelse, depth + 1, seen),
            )
            return body | other if body is not None and other is not None else None
        if isinstance(node, ast.Name) and node.id not in seen:
            sites = self.bindings.get(node.id, [])
            if not sites:
                return None
            found: set[str] = set()
            for site in sites:
                if site.expr is None or site.kind == "other":
                    return None
                more = (
                    self.known_strings(site.expr, depth + 1, seen | {node.id})
                    if site.kind == "value"
                    else self._known_elements(site.expr, depth + 1, seen | {node.id})
                )
                if more is None:
                    return None
                found |= more
            return found
        return None

    def _known_elements(self, node: ast.AST, depth: int, seen: frozenset[str]) -> set[str] | None:
        """Every string an iteration over ``node`` can yield, when the code shows them all."""
        if depth > 12:
            return None
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            found: set[str] = set()
            for element in node.elts:
                more = self.known_strings(element, depth + 1, seen)
                if more is None:
                    return None
                found |= more
            return found
        if isinstance(node, ast.Dict):
            return (
                self._known_elements(ast.List(elts=[k for k in node.keys if k is not None]), depth + 1, seen)
                if all(k is not None for k in node.keys)
                else None
            )
        if isinstance(node, ast.Name) and node.id not in seen:
            sites = self.bindings.get(node.id, [])
            if not sites or any(s.kind != "value" or s.expr is None for s in sites):
                return None
            found = set()
            for site in sites:
                assert site.expr is not None
                more = self._known_elements(site.expr, depth + 1, seen | {node.id})
                if more is None:
                    return None
                found |= more
            return found
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            func = node.func
            if isinstance(func, ast.Name) and func.id in _SEQUENCE_WRAPPERS:
                return self._known_elements(node.args[0], depth + 1, seen)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.keywords:
            if node.func.attr == "split":
                text = self.fold(node.func.value)
                sep = [self.fold(a) for a in node.args]
                if isinstance(text, str) and all(isinstance(s, str) for s in sep):
                    return set(text.split(*sep))
            if node.func.attr == "keys" and not node.args:
                return self._known_elements(node.func.value, depth + 1, seen)
        return None


def _safe(compute: Any) -> Any:
    try:
        value = compute()
    except Exception:
        return None
    if isinstance(value, (str, bytes)) and len(value) > 10_000:
        return None
    return value


def _field_parts(field: str) -> Iterator[tuple[str, str]]:
    """The ``.attr`` and ``[key]`` parts of a format field name (``0.__class__[x]`` → attr __class__, key x)."""
    for match in re.finditer(r"\.([^.\[]*)|\[([^\]]*)\]", field):
        if match.group(1) is not None:
            yield "attr", match.group(1)
        else:
            yield "key", match.group(2)


def _decorated(node: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == name) or (isinstance(d, ast.Attribute) and d.attr == name)
        for d in node.decorator_list
    )


def _is_classmethod_call(nodes: Iterable[ast.AST], cls: str, method: str) -> bool:
    for node in nodes:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == method:
                    return _decorated(f, "classmethod")
    return False


def _dunder_hint(attr: str) -> str:
    if attr in ("__bases__", "__base__", "__mro__", "__subclasses__"):
        return "use isinstance()/issubclass() to ask about types"
    if attr in ("__globals__", "__builtins__", "__code__", "__closure__", "__func__", "__self__"):
        return "use your variables and functions by name"
    if attr in ("__getattribute__", "__getattr__", "__setattr__", "__delattr__"):
        return "access attributes by name: obj.name"
    if attr == "__annotations__":
        return "use dataclasses.fields(obj) to list a dataclass's fields"
    return (
        "use the object's public API; of the dunder attributes only __class__, __name__, __dict__ (own objects) and "
        "the operator methods are allowed"
    )


def _member_hint(path: str) -> str:
    hints = {
        "typing.get_type_hints": "it evaluates string annotations as code; use dataclasses.fields(cls) for fields",
        "string.Formatter": "use f-strings or str.format on a literal",
        "codecs.open": "use your variables; io.StringIO(text) gives a file-like object",
        "logging.FileHandler": "log with print() instead",
        "concurrent.futures.ProcessPoolExecutor": "use concurrent.futures.ThreadPoolExecutor",
        "contextlib.chdir": "work on your variables, not the file system",
    }
    if path in hints:
        return hints[path]
    if path.startswith("asyncio."):
        return "asyncio may run coroutines (asyncio.run, gather, sleep) but not open processes, sockets or loops"
    if path.startswith(("xml.etree.ElementTree.", "tarfile.", "zipfile.")):
        return "parse data you already have: ElementTree.fromstring(text), zipfile.ZipFile(io.BytesIO(data))"
    if path.startswith("threading."):
        return "threads may not trace or profile the interpreter"
    return "it reaches files, processes, the network or code execution"


_GETATTR_HINT = (
    "spell the attribute names out: obj.name, getattr(obj, 'name'), or loop over a literal list "
    "(for f in ('a', 'b'): getattr(obj, f)); for a dataclass use dataclasses.asdict(obj)[key]"
)
_OPEN_HINT = "the data is already in your variables: work on them (io.StringIO(text) for a file-like object)"
_ANNOTATION_HINT = "write annotations as expressions (x: int), not as strings"
_DENIED_METHOD_HINTS = {
    "write": "writing files is not possible here; keep results in variables and SUBMIT them",
    "process": "there is no shell or subprocess here: do the work in Python",
    "network": "there is no network here: use llm_query(...) or the tools you were given",
}


def imported_names(tree: ast.Module) -> dict[str, str]:
    """The names ``tree``'s imports bind, and the dotted paths they are bound to."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names
