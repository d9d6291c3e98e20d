"""The rules the guard's run-time layer ([`rlm_events.guard._runtime`][rlm_events.guard._runtime]) checks, as
plain data: a [`GuardPolicy`][rlm_events.guard.GuardPolicy]'s names in the form
[`runtime_rules()`][rlm_events.guard._runtime_policy.runtime_rules] gives them
([`Rules`][rlm_events.guard._runtime_rules.Rules]), the error a refusal raises
([`RuntimeRefusal`][rlm_events.guard._runtime_rules.RuntimeRefusal]), and what the layer's checks share: which file
modes write, and what a type expression may hold.

Standard library only, importing nothing else of this package: the sandbox's worker loads the layer's modules from
their source (see [`rlm_events.guard._runtime`][rlm_events.guard._runtime]).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

RULE_FIELDS = ("modules", "only_members", "deny_members", "builtins", "dunders", "private", "deny_attributes")
WRITE_MODE = frozenset("wax+")  # the characters of an `open()` mode that write
# What a string evaluated as an annotation may hold: a type expression, with no call.
TYPE_EXPRESSION = (
    ast.Expression, ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.BinOp, ast.BitOr,
    ast.Load, ast.Slice, ast.UnaryOp, ast.USub, ast.Starred,
)  # fmt: skip


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
        # Packages on the way to an allowed module (`os` of `os.path`, `xml` and `xml.etree`): code holds them after
        # `import os.path` and may go through them to that module, and nowhere else.
        self.packages = frozenset(m.rsplit(".", i)[0] for m in self.modules for i in range(1, m.count(".") + 1))
        self.tops = frozenset(m.split(".")[0] for m in self.modules)

    def related(self, module: str) -> bool:
        """Whether classes and functions defined in `module` may be handed to the code: an allowed module, one of
        its submodules or private twins (`json.decoder`, `_io`, `_thread` for `threading`), or the built-ins."""
        if module in self.modules or module in self.packages or module == "builtins":
            return True
        head = _TWINS.get(module, module).lstrip("_").split(".")[0]
        return head in self.tops

    def on_the_way(self, module: str, name: str) -> bool:
        """Whether `module.name` is an allowed module or a package on the way to one (`os.path`, `xml.etree`)."""
        path = f"{module}.{name}"
        return path in self.modules or path in self.packages

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
        if is_dunder(name):
            if name not in self.dunders:
                return self.refusal("attribute", f"{how} {name!r}, a dunder attribute the policy does not list")
            if name == "__dict__" and not own:
                return self.refusal("attribute", f"{how} '__dict__' of an object that is not the code's own")
        elif name.startswith("_") and name not in self.private and not own:
            return self.refusal("attribute", f"{how} {name!r}, a private attribute of an object not the code's own")
        return None


def is_dunder(name: str) -> bool:
    """Whether `name` has the dunder shape (`__...__`, any characters between: stricter than the static rules'
    `_host.is_dunder`, which the run-time layer's modules cannot import: they import only the standard library and
    each other)."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


# Modules whose classes and functions allowed modules hand out under another name: (module -> the allowed one).
_TWINS = {
    "_thread": "threading",
    "genericpath": "os.path",
    "posixpath": "os.path",
    "ntpath": "os.path",
    "_sre": "re",
    "_blake2": "hashlib",
    "_sha1": "hashlib",
    "_sha256": "hashlib",
    "_sha512": "hashlib",
    "_sha3": "hashlib",
    "_md5": "hashlib",
    "_collections_abc": "collections",
    "_weakrefset": "threading",
}


__all__ = [
    "RULE_FIELDS",
    "TYPE_EXPRESSION",
    "WRITE_MODE",
    "Rules",
    "RuntimeRefusal",
    "is_dunder",
]
