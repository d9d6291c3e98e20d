"""The only subpackage that touches DSPy's (and PredictRLM's) private RLM API.

rlm-events never copies DSPy's loop. It swaps the class of one `dspy.RLM` instance for a cached subclass whose
overrides wrap the smallest private seams and call the original method for the real work, so DSPy's own loop body
keeps running:

| seam | stages |
| --- | --- |
| `forward` / `aforward` | `run_start`, `run_end` (the call boundary; the interpreter is shut down inside, before `run_end`) |
| `_execute_iteration` (+async) | `pre_iteration` before, `post_execution` and `post_iteration` after |
| `generate_action` (read) | `pre_execution` right after the predictor (any callable) returned the code |
| `_execute_code` (or the REPL) | skips execution when `pre_execution` supplied a result |
| `_process_execution_result` | `post_execution` folds code and result first (in place in sync calls; deferred to the awaitable iteration seam in async ones) |
| `_extract_fallback` (+async) | `extract` |
| `_prepare_execution_tools` | `tool_call` around every tool the executed code can call |

Modules: `detect` (what a class's loop looks like), `call` (per-call state and the stage helpers), `frame`
(one iteration, and 3.1's skippable REPL), `predictor` (the `generate_action` stand-in), `classes` (the
instrumented subclass), `predict_rlm` (PredictRLM's kernel seams, used instead of the iteration seams below for a
class with that loop), `construct` (building an RLM the same way on every release), `interpreters` (what
rlm-events needs of DSPy's code interpreters: the one interpreter discovery, the error classes, the uncallbacked
execute), `exposed` (what the rest of rlm-events may read of the runtime and the running call, through
`rlm_events.runtime`), `subclass` (the stand-in subclasses' pickling and copies), `direct_calls` (DSPy 3.4's check
for direct `forward()` calls on the instrumented RLM's own modules, where DSPy before 3.4.1 walks the whole stack).

Version differences (DSPy 3.1.2 to 3.4.x) live in `detect.Seams` and `RLMConstructor`, detected once per
RLM class from signatures, attributes and the loop's source, never from version numbers:

* 3.1 runs `repl.execute` inline in `_execute_iteration` (so the REPL is wrapped to let pre_execution skip it)
  and its `_process_execution_result` takes no `code`: it records `pred.code` (3.1.2 as the LM wrote it, fence
  included), so contexts see it stripped, as it runs, and a changed code is handed over through `pred.code`.
  3.2+ route execution through `_execute_code` and pass `code` explicitly.
* 3.3 adds a positional-only caller-owned `interpreter` to `forward` and 3.4 a keyword `interpreter_factory`:
  call options, never input args. 3.4 adds arguments to `_execute_iteration`; arguments are bound by name.
* The constructor takes `max_iterations` and one shared `interpreter` before 3.3, `max_iters` and an
  `interpreter_factory` from 3.3 on; 3.1.2 takes tools as a dict. `RLMConstructor` translates.

A class whose loop lacks a needed piece raises [`UnsupportedDSPyError`][rlm_events.UnsupportedDSPyError] at
`instrument()` time,
naming the class, its method and the piece ("report this DSPy version" only when DSPy's own class changed). A
subclass's overrides may delegate to `super()` or reimplement; `generate_action` may be any callable. A stage
that cannot fire in a running call is named in one WARNING per RLM and predictor class (`warn_once()`).
"""  # noqa: E501

from __future__ import annotations

from typing import Any

from .classes import instrumented_rlm_class
from .construct import RLMConstructor
from .detect import ATTR
from .direct_calls import check_by_caller_frame, check_by_stack_walk, own_modules
from .handle import Handle
from .predict_rlm import own_lms
from .prices import dspy_model_info, register_dspy_prices
from .subclass import base_of, is_stand_in
from .warnings import warn_once

# The patch layer's API for the rest of rlm-events (nothing outside this package imports its private names); what
# it lets rlm-events read of the runtime and the running call is `exposed`, re-exported whole by `rlm_events.runtime`.
__all__ = [
    "Handle",
    "RLMConstructor",
    "attach",
    "detach",
    "dspy_model_info",
    "instrumentation_of",
    "own_lms",
    "register_dspy_prices",
    "warn_once",
]


# -- attach / detach ------------------------------------------------------------------------------------------


def instrumentation_of(rlm: Any) -> Handle | None:
    return rlm.__dict__.get(ATTR)


def attach(rlm: Any, events: Handle) -> None:
    """Instrument `rlm` with `events` (`rlm` must not be instrumented yet)."""
    original: Any = type(rlm)
    cls = instrumented_rlm_class(original)
    rlm.__dict__[ATTR] = events
    rlm.__class__ = cls
    for module in own_modules(rlm):  # DSPy < 3.4.1: no stack walk under the seams' frames (see _patch.direct_calls)
        check_by_caller_frame(module)
    events.attached(rlm)


def detach(rlm: Any) -> None:
    """Exactly undo `attach()`; a no-op on an RLM that is not instrumented."""
    events = rlm.__dict__.pop(ATTR, None)
    if is_stand_in(type(rlm)):
        rlm.__class__ = base_of(type(rlm))
        for module in own_modules(rlm):
            check_by_stack_walk(module)
    if events is not None:
        events.detached(rlm)
