"""The attribute rules: `obj.attr` on something that is not a module (dunder, private, frame-internal and
denied method names), attributes reached through modules and packages, and class-pattern keywords."""

from __future__ import annotations

import ast

from . import allowlist
from ._hints import DENIED_METHOD_HINTS, DICT_HINT, PRIVATE_HINT, dunder_hint
from ._host import is_dunder
from ._resolve import Ref
from ._rules_names import NameRules
from ._violation import ViolationKind

_PATCH = "modules and their classes are shared with the host: keep your changes in your own variables"


class AttributeRules(NameRules):
    """Attribute access, wherever code spells an attribute name out."""

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root: ast.expr = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in self.refused_imports:
            return  # reached through a refused import, which is reported
        base = self.resolve(node.value)
        if not isinstance(node.ctx, ast.Load) and self._shared(node.value, base):
            what = "assignment to" if isinstance(node.ctx, ast.Store) else "deletion of"
            detail = f"{what} {node.attr!r} of a module or a class that is not yours"
            self.flag(node, "attribute", node.attr, detail, _PATCH)
        if base is not None and base.kind == "module":
            if self.member_ok(node, base.path, node.attr, f"access to {base.path}.{node.attr}"):
                ref = self.resolve(node)
                if ref is not None and ref.kind in ("module", "package") and not self.is_chain_base(node):
                    self.module_as_value(node, ref.path, f"{base.path}.{node.attr}")
                elif ref is not None and ref.path in allowlist.CALL_ONLY_MEMBERS and not self.is_callee(node):
                    self.name_taking_as_value(node, ref.path)
        elif base is not None and base.kind == "package":
            path = f"{base.path}.{node.attr}"
            ref = self.classify(path)
            if ref.kind == "denied":
                self.refuse_module(node, path, f"use of module {path!r}")
            elif not self.is_chain_base(node):
                self.module_as_value(node, path, path)
        elif base is None or base.kind in ("member", "builtin"):
            self.check_attribute_name(node, node.value, node.attr, f"access to attribute {node.attr!r}", node.ctx)
        self.check_format_value(node)
        self.generic_visit(node)

    def check_format_value(self, node: ast.Attribute) -> None:
        """Overridden by the library rules (`str.format` as a value)."""

    def _shared(self, receiver: ast.expr, base: Ref | None) -> bool:
        """Whether `receiver` is a module, a member of one, or the class of an object (`type(x)`, `x.__class__`)."""
        if base is not None and base.kind in ("module", "package", "member", "denied"):
            return True
        if isinstance(receiver, ast.Attribute) and receiver.attr == "__class__":
            return True
        return isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) and receiver.func.id == "type"

    def check_attribute_name(
        self, node: ast.AST, receiver: ast.expr, attr: str, detail: str, ctx: ast.expr_context | None = None
    ) -> bool:
        """The rules for `receiver.attr` when `receiver` is not a module; report and return `False` if refused."""
        owner = self.owner(receiver)
        if is_dunder(attr):
            if attr not in self.policy.dunders:
                self.flag(node, "attribute", attr, detail, dunder_hint(attr))
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
                    DICT_HINT,
                )
                return False
            return True
        if attr.startswith("_") and attr not in self.policy.private and owner is None:
            self.flag(node, "attribute", attr, f"{detail}: a private attribute of another object", PRIVATE_HINT)
            return False
        if attr in self.policy.deny_attributes:
            self.flag(node, "attribute", attr, detail, "frames, code objects and tracebacks are off limits")
            return False
        if attr == "extract" and not (isinstance(receiver, ast.Attribute) and receiver.attr == "str"):
            # an archive's .extract() writes files; pandas' Series.str.extract does not
            self.flag(node, "write", attr, f"call of .{attr}()", DENIED_METHOD_HINTS["write"])
            return False
        if attr in allowlist.DENIED_METHODS:
            what = allowlist.DENIED_METHODS[attr]
            kind: ViolationKind = "write" if what == "write" else "attribute"
            self.flag(node, kind, attr, f"call of .{attr}()", DENIED_METHOD_HINTS[what])
            return False
        return True

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            self.check_attribute_name(node, ast.Name(id="<subject>"), attr, f"class pattern keyword {attr!r}")
        self.generic_visit(node)


__all__ = ["AttributeRules"]
