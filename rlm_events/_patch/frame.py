"""One iteration of one instrumented call (`Frame`), and the stand-in through which DSPy 3.1's inline
`repl.execute` reaches the stages (`SkippableREPL`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspy import Prediction

from .detect import NO_RESULT
from .prelude import PreludeREPL

if TYPE_CHECKING:
    from .call import Call
    from .predictor import Acting


class Frame:
    """One iteration of one call: the loop body's arguments by name, and what its stages learnt on the way."""

    __slots__ = (
        "action",
        "args",
        "code",
        "index",
        "own_body",
        "prefix",
        "prelude",
        "processing",
        "prompt",
        "result",
        "skip",
        "stand_in",
    )

    def __init__(self, call: Call, args: dict[str, Any]) -> None:
        """Start iteration `args["iteration"]` of `call`, whose loop body is called with `args`."""
        self.args = args  # what DSPy's loop body runs with; pre_iteration replaces history, variables, input_args
        self.index: int = args["iteration"]
        self.action: Prediction | None = None  # generate_action's output: the LM's reasoning and code
        self.skip: Any = NO_RESULT  # pre_execution's result, used instead of running the code
        self.processing: dict[str, Any] | None = None  # _process_execution_result's arguments, while deferred
        self.code = ""
        self.result: Any = None
        self.stand_in: Acting | None = None  # generate_action as the loop reads it until the action is in
        self.own_body = False  # run by _patch.loop_body, which fires pre_execution itself: no stand-in
        self.prefix = ""  # pre_iteration's python_code: prepended to this iteration's code
        self.prelude = call.prelude  # the persistent prelude: runs before this iteration's execution
        self.prompt = ""  # pre_iteration's prompt_context, until the action prompt shows it
        call.frame = self
        if not call.seams.has_execute_code:
            args["repl"] = SkippableREPL(args["repl"], self)

    def close(self) -> None:
        """The loop body returned: drop what refers back to this frame (the `generate_action` stand-in, 3.1's
        skippable REPL), so that the iteration's objects (its action, history, arguments) are freed as soon as
        nothing uses them, by reference counting, instead of waiting in a reference cycle for the cyclic garbage
        collector (whose extra collections showed as a slower loop)."""
        self.stand_in = None
        repl = self.args.get("repl")
        if isinstance(repl, SkippableREPL):
            self.args["repl"] = object.__getattribute__(repl, "_repl")


class SkippableREPL:
    """DSPy 3.1 runs `repl.execute` inline; this stand-in lets pre_execution skip it. Everything else passes."""

    def __init__(self, repl: Any, frame: Frame) -> None:
        object.__setattr__(self, "_repl", repl)
        object.__setattr__(self, "_frame", frame)

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        frame = self._frame
        if frame.skip is not NO_RESULT:
            return frame.skip
        if frame.prelude:  # runs first, on its own: see _patch.prelude
            return PreludeREPL(self._repl, frame.prelude).execute(code, variables=variables)
        return self._repl.execute(code, variables=variables)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repl, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._repl, name, value)


__all__ = ["Frame", "SkippableREPL"]
