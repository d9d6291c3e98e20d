"""Speculation: [`Speculate`][rlm_events.speculate.middleware.Speculate] makes the sub-LLM calls (and pure tool calls)
an iteration's code is about to
make ahead of it, concurrently; the real calls claim the results on an exact match.
[`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats] says
what it did in a run (`Speculate.stats(run)`).

```pycon
>>> from rlm_events.speculate import Speculate, SpeculateStats
>>> # Speculate(pure=[lookup]).install(events)   (also importable from rlm_events.builtins)

```

Modules, one concern each: `middleware` ([`Speculate`][rlm_events.speculate.middleware.Speculate]: stages, install-time
checks), `planner` (the
shadow planner, on the bounded evaluator of `rlm_events._ast`), `library` (the library functions known to be
side-effect free), `iteration` (one iteration's planning and dispatch), `streamed` (planning the code while the
LM writes it), `repl` (reading the REPL's variables
without side effects, and the arguments a tool will see), `dispatch` (calls made ahead, from dispatch to claim),
`ledger` (every dispatched call and how it ended), `budget_gate` (the run's Budgets), `spans`
(OpenTelemetry), `stats` ([`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats]).
"""

from __future__ import annotations

from .middleware import Speculate
from .stats import SpeculateStats

__all__ = ["Speculate", "SpeculateStats"]
