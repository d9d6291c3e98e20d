"""One iteration's planning and dispatch, shared by the two moments it happens: while the LM writes the code
(`rlm_events.speculate.streamed`) and at `pre_execution`, on the whole code.

`Planning` holds what both need (the REPL, the execution's variables, the tools, how the REPL is read) and keeps
the REPL reads of the iteration: the REPL does not change between the LM's answer and the code's execution, so a
name read while the code streamed in is not read again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._ast import parse
from ..context import Run
from . import repl as repl_io
from .dispatch import dispatch_calls
from .ledger import Live
from .planner import Predicted, plan_calls

if TYPE_CHECKING:
    from .middleware import Speculate


class Planning:
    """Plan and dispatch the calls of iteration `iteration` of `run` (see the module docstring)."""

    def __init__(
        self,
        speculate: Speculate,
        live: Live,
        run: Run,
        iteration: int,
        repl: Any,
        variables: dict[str, Any],
        tools: dict[str, Callable[..., Any]],
        reader: Any,
    ) -> None:
        self.speculate, self.live, self.run, self.iteration = speculate, live, run, iteration
        self.repl, self.variables, self.tools = repl, variables, tools
        self.repl_tools = dict(vars(repl).get("tools") or {}) if hasattr(repl, "__dict__") else {}
        self.reader = repl_io.ReadOnce(reader) if isinstance(reader, repl_io.ProbeReader) else reader

    def plan(self, code: str, *, streamed: bool = False) -> list[Predicted]:
        """The calls `code` will make (a prefix of the code while it streams in: `streamed`)."""
        started = time.perf_counter()
        tree = parse(code)
        if tree is None:
            return []
        predicted = plan_calls(
            self.reader,
            tree,
            self.variables,
            speculable=frozenset(self.tools),
            tools=frozenset(self.repl_tools),
            limits=self.speculate.limits,
            stats=self.live.stats,
            past_unknown_calls=self.speculate.past_unknown_calls,
        )
        self.live.stats.planning_seconds += time.perf_counter() - started
        if not streamed:
            self.live.stats.planned += len(predicted)
        return predicted

    def dispatch(self, calls: list[Predicted], *, streamed: bool = False) -> None:
        """Start the calls of `calls` that may start and were not started for this iteration yet."""
        if calls:
            dispatch_calls(
                self.live,
                self.run,
                self.iteration,
                calls,
                self.repl,
                self.tools,
                self.repl_tools,
                max_per_iteration=self.speculate.max_per_iteration,
                tracer=self.speculate.tracer,
                streamed=streamed,
            )


__all__ = ["Planning"]
