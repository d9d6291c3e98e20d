"""The AST check behind :meth:`GuardPolicy.check`: one pass over the code's tree, and the violations it finds."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._syntax import bound_names

if TYPE_CHECKING:
    from .policy import GuardPolicy

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


_OPEN_FUNCTIONS = frozenset({"open", "io.open", "codecs.open", "os.fdopen"})
_WRITE_METHODS = frozenset({"write_text", "write_bytes"})
_MODE = re.compile(r"[rwxabtU+]{1,4}")
_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


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
