"""The bounded evaluator of REPL code: `Evaluator` walks a module's statements in order over plain data.

It never runs the code, never compiles it, never imports, and never calls anything but the fixed table of
operations of `rlm_events._ast.operations` on values of the exact types `str`, `int`, `float`, `bool`,
`None`, `list`, `tuple`, `dict` and `range` (see `rlm_events._ast.values` for how values enter it).
Whatever it cannot model is `Unknown`: a call of anything not in the table (user
functions, modules, tools), attribute access, `while` loops, branches on unknown conditions. Unknown values carry
the free names they depend on (collected in `needs`), so the caller knows
which REPL variables would make a blocked result computable.

Statements it cannot follow make what they assign unknown; `try` bodies are followed as if nothing raises. Every
evaluation is bounded by `Limits` (steps, sizes, wall time).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from .expressions import Expressions
from .limits import Break, Continue, Stop, TooBig, Uncertain
from .names import escapes
from .values import UNKNOWN, Opaque


class Evaluator(Expressions):
    """Evaluates one module of REPL code statement by statement (see the module docstring).

    `Evaluator(tools=..., values=..., absent=None, limits=LIMITS).evaluate(tree)`; what it found is on the
    instance: `scopes` (the code's bindings), `needs`, `assumed_builtins`, `barrier`, and
    `stopped` (why it stopped early: `"budget"`, `"time"`, `"depth"`). Subclasses record what they
    look for by overriding `tool`.
    """

    def evaluate(self, tree: ast.Module) -> None:
        """Evaluate `tree`'s statements until the code ends, stops (`SUBMIT`, `raise`), or a limit is hit."""
        self.start_clock()
        try:
            self.block(tree.body)
        except Stop as stop:
            if stop.args:
                self.stopped = str(stop.args[0])
        except (Break, Continue, Uncertain):
            pass
        except RecursionError:
            self.stopped = "depth"

    # -- statements

    def block(self, stmts: Iterable[ast.stmt]) -> None:
        for stmt in stmts:
            self.stmt(stmt)

    def stmt(self, node: ast.stmt) -> None:
        self.tick()
        self.line = getattr(node, "lineno", self.line)
        try:
            self._stmt(node)
        except (TooBig, ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError):
            self.invalidate([node])  # a statement the evaluator could not follow: what it assigns is unknown

    def _stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr):
            self.ev(node.value)
        elif isinstance(node, ast.Assign):
            value = self.ev(node.value)
            for target in node.targets:
                self.bind(target, value)
        elif isinstance(node, ast.AugAssign):
            current = self.ev(as_load(node.target))
            self.bind(node.target, self.binop(node.op, current, self.ev(node.value)))
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.bind(node.target, self.ev(node.value))
        elif isinstance(node, ast.For):
            self.for_loop(node)
        elif isinstance(node, ast.If):
            test = self.truth(self.ev(node.test))
            if test is None:
                self.invalidate([*node.body, *node.orelse])
                if escapes(node.body) or escapes(node.orelse):
                    raise Uncertain
            else:
                self.block(node.body if test else node.orelse)
        elif isinstance(node, ast.Break):
            raise Break
        elif isinstance(node, ast.Continue):
            raise Continue
        elif isinstance(node, (ast.Raise, ast.Return)):
            raise Stop
        elif isinstance(node, ast.Assert):
            if self.truth(self.ev(node.test)) is False:
                raise Stop
        elif isinstance(node, ast.Pass):
            return
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            try_node: Any = node
            self.block(try_node.body)  # predicted as if nothing raises
            self.invalidate(try_node.handlers)
            self.block(try_node.orelse)
            self.block(try_node.finalbody)
        elif isinstance(node, ast.With):
            for item in node.items:
                self.ev(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, UNKNOWN)
            self.block(node.body)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.store(node.name, Opaque())
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                self.store((alias.asname or alias.name).split(".")[0], UNKNOWN)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            return
        elif isinstance(node, ast.Delete):
            self.invalidate([node])
        else:  # while, match, async statements...: whatever they assign is unknown, their calls not predicted
            self.invalidate([node])
            if escapes([node]) and not isinstance(node, (ast.While,)):
                raise Uncertain

    def for_loop(self, node: ast.For) -> None:
        items = self.iterated(node.iter)
        if items is None:
            self.invalidate([node])
            return
        broke = False
        try:
            for item in items:
                self.tick()
                self.bind(node.target, item)
                try:
                    self.block(node.body)
                except Continue:
                    continue
                except Break:
                    broke = True
                    break
        except Uncertain:
            self.invalidate([node])
            return
        if not broke:
            self.block(node.orelse)


def as_load(target: ast.expr) -> ast.expr:
    """The expression reading what an augmented assignment's target holds."""
    if isinstance(target, ast.Name):
        return ast.Name(id=target.id, ctx=ast.Load())
    if isinstance(target, ast.Subscript):
        return ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load())
    return ast.Constant(value=None)  # attributes: unknown (None here: AugAssign then fails, giving unknown)


__all__ = ["Evaluator", "as_load"]
