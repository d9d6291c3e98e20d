"""What the names of the evaluated code hold: the evaluator's scopes, the REPL's values, tools and builtins."""

from __future__ import annotations

import ast
from collections.abc import Container, Iterable, Mapping
from typing import Any

from .limits import LIMITS, Bounded, Limits
from .names import assigned_names
from .values import UNKNOWN, Ref, Unknown

BUILTIN_NAMES = frozenset(
    "len range str repr int float bool abs round min max sum sorted reversed enumerate zip list tuple "  # noqa: SIM905 - a table of names
    "dict any all divmod chr ord format print".split()
)
"""The builtins the evaluator models (their pure cases; see `Operations.builtin`)."""


class Scoped(Bounded):
    """Name resolution for code run in a REPL: the code's own bindings first (innermost scope first), then the
    REPL's tools, `SUBMIT`, the values of free names, and the modelled builtins.

    Args:
        tools: every tool name the code can call.
        values: what the code's free names hold when it starts: plain data or `Unknown`.
        absent: names known to be unbound in the REPL (builtins of that name are the real builtins); `None`
            when that is not known.
    """

    def __init__(
        self,
        *,
        tools: frozenset[str],
        values: Mapping[str, Any],
        absent: Container[str] | None = None,
        limits: Limits = LIMITS,
    ) -> None:
        super().__init__(limits)
        self.tools, self.values, self.absent = tools, values, absent
        self.scopes: list[dict[str, Any]] = [{}]
        self.needs: set[str] = set()
        """Free names whose values would have made a blocked call (or loop) computable."""
        self.assumed_builtins: set[str] = set()
        """Builtin names the evaluation assumed not to be rebound in the REPL."""
        self.barrier = False
        """An opaque callable (an unmodelled tool, a function of the code) was called: it may have changed
        anything read after it."""

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.tools:  # the interpreter binds its tools anew for every execution
            return Ref("tool", name)
        if name == "SUBMIT":
            return Ref("submit", name)
        if name in self.values:
            return self.values[name]
        if name in BUILTIN_NAMES:
            if self.absent is None or name not in self.absent:
                self.assumed_builtins.add(name)
            return Ref("builtin", name)
        if self.absent is not None and name in self.absent:
            return UNKNOWN  # a NameError in the real run
        return Unknown(frozenset({name}))

    def store(self, name: str, value: Any) -> None:
        self.scopes[-1][name] = value

    def invalidate(self, nodes: Iterable[ast.AST]) -> None:
        for name in assigned_names(nodes):
            self.forget(name)

    def forget(self, name: str) -> None:
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = UNKNOWN
                return
        self.scopes[0][name] = UNKNOWN


__all__ = ["BUILTIN_NAMES", "Scoped"]
