"""One blinker signal per [`Stage`][rlm_events.Stage], in the `rlm_events` `blinker.Namespace`.

Every signal is sent with `sender=` the `dspy.RLM` instance and `ctx=` the stage's context, *after* the
stage's middleware chain folded it. `forward` sends with `send`; `aforward` with `send_async` (sync
receivers work there too; `tool_call` is always sent synchronously because the interpreter calls tools
synchronously). Receivers connected with `sender=rlm` hear only that instance.

blinker holds receivers weakly by default: a bound method or closure stops receiving once its owner is garbage
collected. Connect lambdas and other temporaries with `weak=False` (and disconnect them when done).
"""

from __future__ import annotations

from blinker import NamedSignal, Namespace

from .stages import Stage

namespace = Namespace()

run_start: NamedSignal = namespace.signal("run_start", doc="A call to the RLM starts.")
pre_iteration: NamedSignal = namespace.signal("pre_iteration", doc="Before the LM generates an iteration's code.")
pre_execution: NamedSignal = namespace.signal("pre_execution", doc="Generated code is about to run.")
post_execution: NamedSignal = namespace.signal("post_execution", doc="Code ran; the raw result is known.")
post_iteration: NamedSignal = namespace.signal("post_iteration", doc="The result was folded into the history.")
extract: NamedSignal = namespace.signal("extract", doc="The extract fallback produced the answer.")
tool_call: NamedSignal = namespace.signal("tool_call", doc="Executed code called a tool or sub-LLM.")
run_end: NamedSignal = namespace.signal("run_end", doc="A call ended, successfully or not.")

# Internal: the seams and Instrumentation.connect() look signals up by stage. Users reach a signal one way, as the
# attribute of its stage's name (``signals.pre_execution``), or connect through Instrumentation.connect(stage, ...).
BY_STAGE: dict[Stage, NamedSignal] = {stage: namespace.signal(stage.value) for stage in Stage}


__all__ = [
    "extract",
    "namespace",
    "post_execution",
    "post_iteration",
    "pre_execution",
    "pre_iteration",
    "run_end",
    "run_start",
    "tool_call",
]
