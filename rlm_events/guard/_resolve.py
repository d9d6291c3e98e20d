"""Name resolution for the guard's rules: what each name and attribute chain of the code refers to (an allowed
module, a package on the way to one, a member, a denied module, a built-in), through the code's own imports, the
imports of earlier steps and what the guard's Python knows; and which objects are the code's own (`self`, instances
of plain classes it defines)."""

from __future__ import annotations

import ast
import functools
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from . import allowlist
from ._bindings import annotations_of, bindings_of, import_bindings
from ._certain import certainly_bound, unstable_names
from ._fold import StringValues
from ._host import ALWAYS_BUILTIN, HOST_BUILTINS, MISSING, host_attr, is_submodule, module_name, packages
from ._scopes import Scopes, child_nodes
from ._violation import Violation, ViolationKind

if TYPE_CHECKING:
    from ._policy import GuardPolicy


class Ref(NamedTuple):
    """What an expression names: an allowed `module`, a `package` on the way to one, a `member` of one, a
    `denied` module (reported where it was reached), or a `builtin`. (A named tuple: made dozens of times per
    check, and cheaper to make than a frozen dataclass.)"""

    kind: Literal["module", "package", "member", "denied", "builtin"]
    path: str


@functools.lru_cache(maxsize=16)
def restricted_modules(only_members: frozenset[str]) -> frozenset[str]:
    """The modules offered member by member: every dotted prefix of an `only_members` entry."""
    found: set[str] = set()
    for member in only_members:
        parts = member.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(found)


_UNRESOLVED = object()  # not resolved yet (None means: resolves to nothing the rules check)
_VISITORS: dict[type, dict[type, Callable[..., Any]]] = {}  # visitor class -> node type -> its visit method


class Resolver(ast.NodeVisitor):
    """The state of one pass over a module's tree, and what its names refer to; the rules subclass it."""

    def __init__(
        self,
        policy: GuardPolicy,
        tree: ast.Module,
        scopes: Scopes,
        shadowed: frozenset[str],
        imported: Mapping[str, str] | None = None,
    ) -> None:
        self.policy, self.tree, self.shadowed = policy, tree, shadowed
        self.visitors = _VISITORS.setdefault(type(self), {})  # node type -> this class's visit method
        # Names earlier steps imported (None: unknown, so any allowed module's name may be that module).
        self.imported = imported
        self._resolved: dict[ast.AST, Ref | None] = {}
        self.found: list[Violation] = []
        # (CPython 3.11 reads attributes of instances with fewer than 30 of them faster: the scanner has 28, so the
        # tree's node list is read through `scopes.nodes`, on the rare paths that need it)
        self.scopes = scopes  # every node, its parent and its scope
        self.function_scope, self.class_local = scopes.lookups()
        self.parents: dict[ast.AST, ast.AST] = self.scopes.parents
        self.bindings = bindings_of(self.scopes.binding_nodes)
        self.strings = StringValues(self.bindings)  # what string expressions hold
        self.bound = set(self.bindings)
        self.unstable = unstable_names(self.scopes.of_type(ast.Global, ast.Nonlocal)) | scopes.namespaces.deleted
        # Names the module's namespace binds somewhere (at the top, in a branch or loop, or through `global`).
        self.global_names = scopes.module_names() | self.unstable
        # Per scope (the module is `tree`): local name → dotted path it was imported as.
        self.scope_aliases: dict[ast.AST, dict[str, str]] = {}
        self._collect_imports()
        self.aliases = self.scope_aliases.get(tree, {})  # the module namespace's
        self.refused_imports: set[str] = set()  # local names whose import is already reported
        self.checked: set[int] = set()  # ids of string constants already checked as attribute names
        self.own: list[frozenset[str]] = [frozenset()]  # `self`/`cls` of the methods being visited
        self.annotation_strings = self._annotation_strings()
        self.names_stored_as_name_attr = any(
            n.attr == "name" and not isinstance(n.ctx, ast.Load)  # type: ignore[attr-defined]
            for n in self.scopes.of_type(ast.Attribute)
        )

    def visit(self, node: ast.AST) -> Any:
        """`ast.NodeVisitor.visit`, with each class's method for each node type looked up once."""
        kind = type(node)
        method = self.visitors.get(kind)
        if method is None:
            visitor = type(self)
            method = self.visitors[kind] = getattr(visitor, f"visit_{kind.__name__}", visitor.generic_visit)
        return method(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        """Visit `node`'s children (as the scopes listed them, without the load/store markers no rule reads)."""
        children = self.scopes.child_nodes.get(node)
        visitors = self.visitors
        for child in children if children is not None else child_nodes(node):
            method = visitors.get(type(child))  # `visit()` inlined: one call less per node
            if method is None:
                self.visit(child)
            else:
                method(self, child)

    def flag(self, node: ast.AST, kind: ViolationKind, name: str, detail: str, hint: str = "") -> None:
        """Report a violation at `node`'s line."""
        self.found.append(Violation(kind, name, getattr(node, "lineno", 0), detail, hint))

    def visible_strings(
        self,
        node: ast.AST,
        expr: ast.AST | None,
        violation: tuple[ViolationKind, str, str, str],
        *,
        elements: bool = False,
    ) -> set[str]:
        """Every string `expr` can hold (with `elements`: every element of the collection `expr`), to check, when
        the code shows them all; else none, and `node` is flagged with `violation` (kind, name, detail, hint): the
        guard cannot see what the code does. A missing `expr` (the `**mapping` of a dict display) shows nothing."""
        if expr is None:
            texts = None
        else:
            texts = self.strings.known_elements(expr) if elements else self.strings.known_strings(expr)
        if texts is None:
            self.flag(node, *violation)
            return set()
        return texts

    # --- prepasses -----------------------------------------------------------------------------------------------

    def _collect_imports(self) -> None:
        """Bind every imported name first, in the namespace the import binds it in (the module's for an import
        at the top, in a class body or under `global`), so a use before the import (in a function) resolves too."""
        declared = self.scopes.of_type(ast.Global)
        declared_global = {n for node in declared for n in node.names}  # type: ignore[attr-defined]
        # (a name bound to two paths is ambiguous whichever comes first: the imports' order does not matter)
        for node in self.scopes.of_type(ast.Import, ast.ImportFrom):
            scope = self.scopes.scope_of.get(node, self.tree)
            if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                scope = self.tree
            for local, path in import_bindings(node).items():  # type: ignore[arg-type]
                self._bind_alias(self.tree if local in declared_global else scope, local, path)

    def _bind_alias(self, scope: ast.AST, local: str, path: str) -> None:
        aliases = self.scope_aliases.setdefault(scope, {})
        known = aliases.get(local)
        if known is not None and known != path:
            aliases[local] = "<ambiguous>"  # bound to two things: refused where used
        else:
            aliases[local] = path

    def _annotation_strings(self) -> set[int]:
        found: set[int] = set()
        for node in self.scopes.of_type(ast.arg, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef):
            for annotation in annotations_of(node):
                found.update(
                    id(n) for n in ast.walk(annotation) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                )
        return found

    # --- resolving names -----------------------------------------------------------------------------------------

    def resolve(self, node: ast.AST) -> Ref | None:
        """What `node` names, when it is a module, something reached through one, or a built-in. (Remembered per
        node: the rules ask about the same names many times, and what they name is fixed once the imports are
        collected.)"""
        kind = type(node)
        if kind is not ast.Name and kind is not ast.Attribute:
            return None
        known = self._resolved.get(node, _UNRESOLVED)  # (no KeyError raised on the first time: the usual case)
        if known is not _UNRESOLVED:
            return known  # type: ignore[return-value]
        if kind is ast.Name:
            ref = self._resolve_name(node)  # type: ignore[arg-type]
        else:
            base = self.resolve(node.value)  # type: ignore[attr-defined]
            ref = None if base is None else self.step(base, node.attr)  # type: ignore[attr-defined]
        self._resolved[node] = ref
        return ref

    def _resolve_name(self, node: ast.Name) -> Ref | None:
        name = node.id
        if name in self.shadowed:
            return None
        function = self.function_scope(node)
        if function is not None:  # a function's own variable: never a built-in, nor a module of the REPL
            path = self.scope_aliases.get(function, {}).get(name)
            return None if path is None else self.classify(path)
        class_local = self.class_local(node)
        if class_local:  # a class body's own name, an import there included
            path = self.scope_aliases.get(self.scopes.scope_of[node], {}).get(name)
            if path is not None:
                return self.classify(path)
        if name in self.aliases:
            return self.classify(self.aliases[name])
        if name in ALWAYS_BUILTIN:  # `open`, `getattr`, `eval` …: checked as the built-in whatever the code binds
            return Ref("builtin", name)
        if self.bound_here(node, class_local):
            return None
        if name in HOST_BUILTINS:
            return Ref("builtin", name)
        if self.imported is not None and name in self.imported:
            return self.classify(self.imported[name])
        if name in allowlist.RISKY_MODULE_NAMES or name in self.policy.modules or self.is_package(name):
            return self.classify(name)
        return None

    def bound_here(self, node: ast.Name, class_local: bool | None = None) -> bool:
        """Whether the use `node` (not a function's variable) means a variable of the code: certainly bound before it
        runs, or (for names that are not built-ins or modules the REPL may hold) bound in its namespace at all.
        (`class_local`: `Scopes.class_local(node)`, when the caller knows it.)"""
        if node.id not in self.bound:
            return False
        risky = node.id in ALWAYS_BUILTIN or node.id in HOST_BUILTINS or node.id in allowlist.RISKY_MODULE_NAMES
        if class_local is None:
            class_local = self.class_local(node)
        if not risky and (class_local or node.id in self.global_names):
            return True  # (whether it is certainly bound before this use does not matter then: the cheaper test first)
        return certainly_bound(node, self.scopes, self.unstable)

    def step(self, base: Ref, attr: str) -> Ref | None:
        """What `<base>.attr` names."""
        if base.kind == "builtin":
            return None
        path = f"{base.path}.{attr}"
        if base.kind == "denied":
            return base
        if base.kind == "package":
            return self.classify(path)
        if base.kind == "module":
            if path in self.policy.modules:
                return Ref("module", path)
            value = host_attr(base.path, attr)
            if isinstance(value, types.ModuleType):
                name = module_name(value)
                return Ref("module", name) if name in self.policy.modules else Ref("denied", path)
            if value is MISSING and (self.is_package(path) or is_submodule(path)):
                return Ref("package", path) if self.is_package(path) else Ref("denied", path)
        return Ref("member", path)

    def is_package(self, path: str) -> bool:
        """Whether `path` is a package on the way to an allowed module (`xml` for `xml.etree.ElementTree`)."""
        return path not in self.policy.modules and path in packages(self.policy.modules)

    def classify(self, path: str) -> Ref:
        """What the dotted `path` (from an import, or reached through a package) names."""
        if path == "<ambiguous>":
            return Ref("denied", path)
        if path in self.policy.modules:
            return Ref("module", path)
        if self.is_package(path):
            return Ref("package", path)
        module = self.policy.module_of(path)
        if module is None:
            return Ref("denied", path)
        # a member path from an import: `from json import loads` → json.loads, checked at the import
        ref: Ref | None = Ref("module", module)
        for part in path[len(module) + 1 :].split("."):
            ref = self.step(ref, part) if ref is not None else None
        return ref or Ref("member", path)

    def offered(self, path: str) -> bool:
        """Whether the policy offers the member `path` at all (its refusal is reported where it is reached)."""
        module = self.policy.module_of(path)
        if module is None or path in self.policy.deny_members:
            return False
        member = ".".join(path.split(".")[: module.count(".") + 2])
        return module not in restricted_modules(self.policy.only_members) or member in self.policy.only_members

    def denied_prefix(self, path: str) -> str:
        """The shortest prefix of `path` that is neither an allowed module nor a package on the way to one."""
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in self.policy.modules and not self.is_package(prefix):
                return prefix
        return path

    def is_chain_base(self, node: ast.AST) -> bool:
        """Whether `node` is the `x` of `x.attr` (a module there is on the way to a member, not a value)."""
        parent = self.parents.get(node)
        return isinstance(parent, ast.Attribute) and parent.value is node

    def is_callee(self, node: ast.AST) -> bool:
        """Whether `node` is the function of a call (called directly, not passed around)."""
        parent = self.parents.get(node)
        return isinstance(parent, ast.Call) and parent.func is node


__all__ = ["Ref", "Resolver", "restricted_modules"]
