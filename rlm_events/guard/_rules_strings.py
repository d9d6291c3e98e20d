"""The string rules: strings that name internal attributes (literal or built from literals), format fields that
reach them (`"{0.__globals__}"`), and string annotations, checked as the code they are."""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterator

from .._ast import converted
from . import allowlist
from ._hints import ANNOTATION_HINT, FORMAT_FIELD_HINT, STRING_NAME_HINT
from ._host import is_dunder
from ._resolve import Resolver

_ATTRIBUTE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


class StringRules(Resolver):
    """Strings: attribute names smuggled in them, and annotations written as strings."""

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str) or id(node) in self.checked:
            return
        if id(node) in self.annotation_strings:
            self._check_code_string(node, node.value, "string annotation")
            return
        self._check_string(node, node.value)

    def _visit_foldable(self, node: ast.expr) -> None:
        """`'__glo' + 'bals__'`, `f'{a}{b}'`, `'x__class__'[1:]`: check the string they build, if literals do."""
        text = self.strings.fold(node)
        if isinstance(text, str):
            self._check_string(node, text, folded=True)
        self.generic_visit(node)

    visit_BinOp = visit_JoinedStr = visit_Subscript = _visit_foldable

    def _check_string(self, node: ast.AST, text: str, *, folded: bool = False) -> None:
        how = "a string built from literals" if folded else "the string"
        if len(text) <= 200 and _ATTRIBUTE_PATH.match(text):
            for part in text.split("."):
                if is_dunder(part) and part not in self.policy.dunders and part not in allowlist.DUNDER_STRINGS:
                    self.flag(node, "attribute", part, f"{how} {text!r} names an internal attribute", STRING_NAME_HINT)
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
                        else is_dunder(part) and part not in self.policy.dunders
                    )
                    if bad:
                        detail = f"{how} {text[:60]!r} reaches {part!r} through a format field"
                        self.flag(node, "attribute", part, detail, FORMAT_FIELD_HINT)
                        return
            if spec and "{" in spec and depth < 2:
                self._check_format_fields(node, spec, how, depth + 1)

    def _check_code_string(self, node: ast.Constant, text: str, what: str) -> None:
        """A string that some function may evaluate (an annotation): check it as the code it is."""
        try:
            expr = converted(lambda: ast.parse(text.strip(), mode="eval"))
        except (SyntaxError, ValueError):
            self.flag(node, "dynamic", what, f"{what} {text[:60]!r} is not a Python expression", ANNOTATION_HINT)
            return
        for inner in ast.walk(expr):
            inner.lineno = node.lineno  # type: ignore[attr-defined]
            for child in ast.iter_child_nodes(inner):
                self.parents[child] = inner
        self.visit(expr.body)


def _field_parts(field: str) -> Iterator[tuple[str, str]]:
    """The `.attr` and `[key]` parts of a format field name (`0.__class__[x]` → attr __class__, key x)."""
    for match in re.finditer(r"\.([^.\[]*)|\[([^\]]*)\]", field):
        if match.group(1) is not None:
            yield "attr", match.group(1)
        else:
            yield "key", match.group(2)


__all__ = ["StringRules"]
