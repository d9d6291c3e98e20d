"""The import rules: which modules code may import, and which members of an allowed module it may reach."""

from __future__ import annotations

import ast
import types

from . import allowlist
from ._hints import member_hint, module_hint
from ._host import MISSING, host_attr, is_submodule, module_name
from ._owners import Owners
from ._resolve import restricted_modules


class ImportRules(Owners):
    """Imports, and the members of allowed modules (`module.attr`) wherever code reaches them."""

    def refuse_module(self, node: ast.AST, path: str, detail: str) -> None:
        """Report the denied module `path` (named by its first denied prefix), with what to use instead."""
        name = self.denied_prefix(path) if path != "<ambiguous>" else path
        if name == "<ambiguous>":
            self.flag(node, "module", name, detail, "give each imported module its own name")
            return
        self.flag(node, "module", name, detail, module_hint(name, self.policy))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            if alias.name not in self.policy.modules:
                self.refuse_module(node, alias.name, f"import of module {alias.name!r}")
                self.refused_imports.add(local)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.flag(node, "module", module or ".", "a relative import", "import allowed modules by their full name")
            return
        if any(a.name == "*" for a in node.names):
            self.flag(node, "module", module, f"'from {module} import *'", f"import the names you need from {module}")
            return
        base = self.classify(module)
        for alias in node.names:
            local = alias.asname or alias.name
            path = f"{module}.{alias.name}"
            if path in self.policy.modules:
                continue
            if base.kind == "module":
                if not self.member_ok(node, base.path, alias.name, f"import of {path!r}"):
                    self.refused_imports.add(local)
            else:
                self.refuse_module(node, path, f"import from module {module!r}")
                self.refused_imports.add(local)

    def member_ok(self, node: ast.AST, module: str, attr: str, detail: str) -> bool:
        """Check `module.attr` (`module` allowed); report and return `False` if it is refused."""
        path = f"{module}.{attr}"
        if path in self.policy.modules:
            return True
        refused = self._member_refusal(module, attr, path)
        if refused is None:
            return True
        why, hint = refused
        self.flag(node, "module", path, f"{detail}: {why}", hint)
        return False

    def _member_refusal(self, module: str, attr: str, path: str) -> tuple[str, str] | None:
        """Why `module.attr` is refused and what to do instead, or `None` when it is allowed."""
        if attr in allowlist.ENTRY_POINTS:
            return "a command-line entry point", "call the module's functions"
        if attr.startswith("_"):
            return (
                f"a private member of {module}",
                f"use {module}'s public API; private names of modules are off limits",
            )
        if path in self.policy.deny_members:
            return f"{path} is denied", member_hint(path)
        if module in restricted_modules(self.policy.only_members) and path not in self.policy.only_members:
            offered = sorted(m.rpartition(".")[2] for m in self.policy.only_members if m.startswith(f"{module}."))
            return f"not among {module}'s allowed members", f"use {', '.join(offered)}"
        value = host_attr(module, attr)
        if isinstance(value, types.ModuleType):
            name = module_name(value)
            if name not in self.policy.modules:
                hint = module_hint(name, self.policy) or "use the allowed modules directly"
                return f"{path} is the module {name!r}, which is not allowed", hint
        elif value is MISSING and not self.is_package(path) and is_submodule(path):
            return f"{path} is a module that is not allowed", module_hint(path, self.policy)
        return None


__all__ = ["ImportRules"]
