"""Name resolution for the guard's rules: what each name and attribute chain of the code refers to (an allowed
module, a package on the way to one, a member, a denied module, a built-in), through the code's own imports, the
imports of earlier steps and what the guard's Python knows; and which objects are the code's own (`self`, instances
of plain classes it defines)."""

from __future__ import annotations

import ast
import builtins
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import allowlist
from ._bindings import bindings_of, decorated, imported_names
from ._fold import StringValues
from ._host import ALWAYS_BUILTIN, HOST_BUILTINS, MISSING, host_attr, is_submodule, module_name, packages
from ._violation import Violation, ViolationKind

if TYPE_CHECKING:
    from ._policy import GuardPolicy


@dataclass(frozen=True)
class Ref:
    """What an expression names: an allowed `module`, a `package` on the way to one, a `member` of one, a
    `denied` module (reported where it was reached), or a `builtin`."""

    kind: Literal["module", "package", "member", "denied", "builtin"]
    path: str


MethodOwner = Literal["method", "local"]


class Resolver(ast.NodeVisitor):
    """The state of one pass over a module's tree, and what its names refer to; the rules subclass it."""

    def __init__(
        self,
        policy: GuardPolicy,
        tree: ast.Module,
        shadowed: frozenset[str],
        imported: Mapping[str, str] | None = None,
    ) -> None:
        self.policy, self.tree, self.shadowed = policy, tree, shadowed
        # Names earlier steps imported (None: unknown, so any allowed module's name may be that module).
        self.imported = imported
        self.found: list[Violation] = []
        self.nodes = list(ast.walk(tree))
        self.parents: dict[ast.AST, ast.AST] = {
            child: parent for parent in self.nodes for child in ast.iter_child_nodes(parent)
        }
        self.bindings = bindings_of(self.nodes)
        self.strings = StringValues(self.bindings)  # what string expressions hold
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

    def flag(self, node: ast.AST, kind: ViolationKind, name: str, detail: str, hint: str = "") -> None:
        """Report a violation at `node`'s line."""
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
        """Classes the code defines whose instances are plain objects: no `__new__`, no metaclass, bases that are
        such classes, built-in types (not `type`) or members of allowed modules; defined once, never rebound."""
        defs = [n for n in self.nodes if isinstance(n, ast.ClassDef)]
        methods = {
            d.name: {
                f.name
                for f in d.body
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and not decorated(f, "staticmethod")
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
            if base.id in HOST_BUILTINS and base.id not in self.bound and base.id != "type":
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
            if any(s.kind == "value" and s.expr is not None and self.is_archive(s.expr) for s in sites)
        }

    def is_archive(self, node: ast.AST) -> bool:
        """Whether `node` is an archive object: a call of an archive opener, or a name bound to one."""
        if isinstance(node, ast.Name):
            return node.id in getattr(self, "archives", ())
        if isinstance(node, ast.Call):
            ref = self.resolve(node.func)
            return ref is not None and ref.path in allowlist.ARCHIVES
        return False

    # --- resolving names -----------------------------------------------------------------------------------------

    def resolve(self, node: ast.AST) -> Ref | None:
        """What `node` names, when it is a module, something reached through one, or a built-in."""
        if isinstance(node, ast.Name):
            name = node.id
            if name in self.shadowed:
                return None
            if name in self.aliases:
                return self.classify(self.aliases[name])
            if name in ALWAYS_BUILTIN or (name in HOST_BUILTINS and name not in self.bound):
                return Ref("builtin", name)
            if name in self.bound:
                return None
            if self.imported is not None and name in self.imported:
                return self.classify(self.imported[name])
            if name in allowlist.RISKY_MODULE_NAMES or name in self.policy.modules or self.is_package(name):
                return self.classify(name)
            return None
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else self.step(base, node.attr)
        return None

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
        restricted = any(m.startswith(f"{module}.") for m in self.policy.only_members)
        return not restricted or member in self.policy.only_members

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

    def owner(self, node: ast.AST) -> MethodOwner | None:
        """Whether `node` is the code's own object: a method's `self`/`cls`, or an instance (or class) of a
        plain class this code defines."""
        if not isinstance(node, ast.Name) or node.id in self.shadowed:
            return None
        if node.id in self.own[-1]:
            return "method"
        if node.id in self.local_instances or node.id in self.local_classes:
            return "local"
        return None


__all__ = ["MethodOwner", "Ref", "Resolver"]
