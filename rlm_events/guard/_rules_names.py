"""The name rules: bare names that are refused built-ins, denied modules, or modules and call-only functions used
as values."""

from __future__ import annotations

import ast
import builtins

from . import allowlist
from ._host import ALWAYS_BUILTIN, is_dunder
from ._rules_imports import ImportRules
from ._violation import ViolationKind


class NameRules(ImportRules):
    """Bare names, and modules or call-only functions used as values."""

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if not isinstance(node.ctx, ast.Load):
            if is_dunder(name) and name not in self.policy.dunders and name not in self.policy.builtins:
                self.flag(node, "attribute", name, f"assignment to {name!r}", "use an ordinary variable name")
            return
        if name in self.refused_imports:
            return  # its import is reported; once that goes, this use goes with it
        ref = self.resolve(node)
        if name[:2] == "__" and (ref is None or ref.kind != "builtin") and is_dunder(name):
            if name not in self.policy.builtins and name not in self.policy.dunders:
                # whatever the code binds it to, a use may reach the interpreter's own (`__builtins__`, `__loader__`)
                self.flag(node, "attribute", name, f"use of {name!r}", "use your variables and the allowed modules")
            return
        if ref is None:
            return
        if ref.kind == "builtin":
            self._check_builtin(node, name)
        elif ref.kind == "denied":
            alias = f" (as {name!r})" if name in self.aliases and self.aliases[name] != name else ""
            what = f"use of {ref.path!r}{alias}" if name in self.aliases else f"use of module {name!r}"
            self.refuse_module(node, ref.path, what)
        elif ref.kind in ("module", "package") and not self.is_chain_base(node):
            if name in self.aliases or self._known_module(name):
                self.module_as_value(node, ref.path, name)
        elif ref.kind == "member" and ref.path in allowlist.CALL_ONLY_MEMBERS and not self.is_callee(node):
            self.name_taking_as_value(node, ref.path)

    def _known_module(self, name: str) -> bool:
        """Whether the unbound `name` is a module in the REPL: imported by an earlier step, or (when the earlier
        steps are unknown) the name of an allowed module. Otherwise it is a variable of an earlier step."""
        if self.imported is None or name in self.imported:
            return True
        return name in allowlist.RISKY_MODULE_NAMES

    def _check_builtin(self, node: ast.Name, name: str) -> None:
        if name not in self.policy.builtins:
            kind: ViolationKind = (
                "call" if callable(getattr(builtins, name, None)) or name in ALWAYS_BUILTIN else "attribute"
            )
            hint = allowlist.BUILTIN_HINTS.get(name, "use your variables and the allowed modules")
            self.flag(node, kind, name, f"use of {name!r}", hint)
        elif name in allowlist.CALL_ONLY_BUILTINS and not self.is_callee(node):
            self.flag(
                node,
                "dynamic" if name != "open" else "write",
                name,
                f"{name!r} used as a value (only direct calls {name}(...) can be checked)",
                f"call {name}(...) directly, with the names written out",
            )

    def module_as_value(self, node: ast.AST, path: str, name: str) -> None:
        """Report a module used as a value (passed or stored, it could be reached in ways the guard cannot see)."""
        self.flag(
            node,
            "module",
            path,
            f"the module {path!r} used as a value",
            f"use its members directly ({path}.<name>); if {name!r} is your own variable, give it another name",
        )

    def name_taking_as_value(self, node: ast.AST, path: str) -> None:
        """Report a call-only function used as a value (its arguments are checked only in a direct call)."""
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


__all__ = ["NameRules"]
