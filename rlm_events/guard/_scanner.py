"""The guard's one pass over a module's tree: every rule, with the methods' `self` tracked through the scopes."""

from __future__ import annotations

import ast

from ._rules_calls import CallRules
from ._rules_strings import StringRules


class Scanner(CallRules, StringRules):
    """One pass over a module's tree, resolving names through the code's own imports; `found` holds the
    violations in the order they were met."""

    def run(self) -> None:
        """Check the whole tree."""
        self.visit(self.tree)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.check_registered(node)
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.visit(node.args)
        for parameter in getattr(node, "type_params", ()):  # PEP 695 (3.12+): bounds and defaults are code too
            self.visit(parameter)
        if node.returns is not None:
            self.visit(node.returns)
        own = set(self.own[-1])
        params = [*node.args.posonlyargs, *node.args.args]
        stored = self.scopes.stored_names(node)
        own -= stored | {a.arg for a in (*params, *node.args.kwonlyargs)}
        method = isinstance(self.parents.get(node), ast.ClassDef) and self.own_self(node)
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


__all__ = ["Scanner"]
