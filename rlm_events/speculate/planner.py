"""The shadow planner of [`Speculate`][rlm_events.speculate.Speculate]: which speculable calls will this code make?

`Planner` is the bounded evaluator of `rlm_events._ast` (a pure-AST evaluation over plain-data
copies: it never runs, compiles or imports the code, and runs no code of the values it sees) that records each call
of a speculable tool (`llm_query`, `llm_query_batched`, the tools marked pure) whose arguments it can compute.

Predictions may be wrong (the REPL may hold other values than the shadow thinks, the code may raise half-way): a
prediction is only ever a guess, claimed by the real call only on an exact match of name and arguments.
"""

from __future__ import annotations

import ast
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._ast import LIMITS, UNKNOWN, Evaluator, Limits, Unknown, base_name, needs_of
from .._ast.values import unknown_of
from . import repl as repl_io
from .library import Library, side_effect_free
from .stats import SpeculateStats


@dataclass
class Predicted:
    """One call the code is expected to make: tool name and concrete arguments, as the code writes them."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    line: int = 0
    after_unknown: bool = False
    """Planned past a call the planner could not follow (which may have changed its arguments)."""


@dataclass
class CallPlan:
    """What one planning found."""

    calls: list[Predicted] = field(default_factory=list)
    needs: set[str] = field(default_factory=set)
    """Free names whose values would have made a blocked call (or loop) computable."""
    assumed_builtins: set[str] = field(default_factory=set)
    """Builtin names the planning assumed not to be rebound in the REPL."""
    stopped: str | None = None
    """Why the planning stopped early (`"budget"`, `"time"`), if it did."""


class Planner(Evaluator):
    """Walk one iteration's code in the shadow and record the speculable calls it will make.

    Args:
        speculable: names of the tools that may be called ahead (`llm_query`, `llm_query_batched`, pure tools).
        tools: every tool name the code can call (calls of the others are unknown, and barriers for pure tools).
        values: what the code's free names hold when it starts: plain data or `Unknown`.
        absent: names known to be unbound in the REPL (builtins of that name are the real builtins).
        llm_tools: the speculable names that are the sub-LLM tools (not stopped by a barrier).
        past_unknown_calls: plan the pure tools past calls it cannot follow too (the sub-LLM tools always are);
            `False` stops planning pure tools at the first such call.
        limits: the bounds of one planning.

    Calls of the library functions of `rlm_events.speculate.library` (through names the code's own `import`
    bound, or aliases of them) are not barriers; calls of other library functions are.
    """

    def __init__(
        self,
        *,
        speculable: frozenset[str],
        tools: frozenset[str],
        values: Mapping[str, Any],
        absent: Container[str] | None = None,
        llm_tools: frozenset[str] = frozenset({"llm_query", "llm_query_batched"}),
        past_unknown_calls: bool = True,
        limits: Limits = LIMITS,
    ) -> None:
        super().__init__(tools=tools, values=values, absent=absent, limits=limits)
        self.speculable, self.llm_tools = speculable, llm_tools
        self.past_unknown_calls = past_unknown_calls
        self.calls: list[Predicted] = []

    def run(self, tree: ast.Module) -> CallPlan:
        """Plan `tree`: the calls it will make, as far as the shadow can tell."""
        self.evaluate(tree)
        return CallPlan(self.calls, self.needs, self.assumed_builtins, self.stopped)

    def tool(self, name: str, arguments: Any, node: ast.Call) -> Any:
        if name not in self.speculable:
            self.barrier = True  # an unmarked tool may change what pure tools read
            return UNKNOWN
        if self.barrier and name not in self.llm_tools and not self.past_unknown_calls:
            return UNKNOWN
        if isinstance(arguments, Unknown):
            if arguments.needs:
                self.needs.update(arguments.needs)
            return UNKNOWN
        args, kwargs = arguments
        needs = needs_of([args, kwargs])
        if needs is not None:
            self.needs.update(needs)
            return Unknown(needs)
        self.calls.append(Predicted(name, tuple(args), dict(kwargs), self.line, self.barrier))
        return UNKNOWN

    # -- library functions: names the code's imports bind

    def _stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.store(alias.asname, Library(alias.name))
                else:  # `import os.path` binds `os`
                    top = alias.name.split(".")[0]
                    self.store(top, Library(top))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.names[0].name != "*":
            for alias in node.names:
                self.store(alias.asname or alias.name, Library(f"{node.module}.{alias.name}"))
        else:
            super()._stmt(node)

    def _ev(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Attribute):
            owner = self.ev(node.value)
            return Library(f"{owner.path}.{node.attr}") if type(owner) is Library else unknown_of(owner)
        return super()._ev(node)

    def call(self, node: ast.Call) -> Any:
        path = self.library_path(node.func)
        if path is None:
            return super().call(node)
        arguments = self.arguments(node)
        if not side_effect_free(path):
            self.barrier = True  # a library function that may change anything read after it
        if not isinstance(arguments, Unknown) and not any(isinstance(a, ast.Starred) for a in node.args):
            for arg, value in zip(node.args, arguments[0], strict=True):
                base = base_name(arg)
                if base and needs_of(value) is not None:
                    self.forget(base)  # not plain data: an iterator the call consumes, an object it may change
        return UNKNOWN

    def library_path(self, func: ast.AST) -> str | None:
        """The dotted path of the library function `func` names through the code's imports, else `None`."""
        if isinstance(func, ast.Name):
            value = self.lookup(func.id)
            return value.path if type(value) is Library else None
        if isinstance(func, ast.Attribute):
            owner = self.library_path(func.value)
            return f"{owner}.{func.attr}" if owner is not None else None
        return None


def plan_calls(
    reader: repl_io.NamespaceReader | repl_io.ProbeReader | None,
    tree: ast.Module,
    variables: dict[str, Any],
    *,
    speculable: frozenset[str],
    tools: frozenset[str],
    limits: Limits,
    stats: SpeculateStats,
    past_unknown_calls: bool = True,
) -> list[Predicted]:
    """The calls `tree` will make, planned over the execution's `variables` and what `reader` reads of the
    REPL (nothing when `None`). A probe reads only the names a planning found it needs, in up to three rounds
    (each read can reveal names that were hidden behind unknown values); `stats.repl_reads` counts them."""

    options = {"speculable": speculable, "tools": tools, "past_unknown_calls": past_unknown_calls, "limits": limits}

    def planned(values: Any, absent: Any) -> CallPlan:
        return Planner(values=values, absent=absent, **options).run(tree)  # type: ignore[arg-type]

    if isinstance(reader, repl_io.NamespaceReader):
        values, absent = reader.values(variables, limits)
        return planned(values, absent).calls
    if not isinstance(reader, repl_io.ProbeReader):
        return planned(repl_io.Values(variables, {}, limits), None).calls
    read: dict[str, Any] = {}
    asked: set[str] = set()
    absent_known: frozenset[str] | None = None
    for _ in range(3):
        values = repl_io.Values(variables, read, limits)
        plan = planned(values, repl_io.Absent(values, absent_known) if absent_known is not None else None)
        wanted = {n for n in plan.needs if n not in asked and n not in variables}
        if not wanted or not reader.started():
            return plan.calls
        wanted |= {n for n in plan.assumed_builtins if n not in asked}
        got, bound = reader.read(sorted(wanted), limits)
        stats.repl_reads += 1
        asked |= wanted
        read.update(got)
        read.update({name: UNKNOWN for name in bound if name not in got})
        absent_known = frozenset(asked - set(read))
    return plan.calls


__all__ = ["CallPlan", "Planner", "Predicted", "plan_calls"]
