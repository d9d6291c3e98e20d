"""The overhead benchmark's workload and configurations (see ``benchmarks/overhead.py``): the RLM every
configuration runs, what each configuration does to it, the targets, and one checked call."""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.clients import base_lm
from dspy.utils.callback import BaseCallback

import rlm_events
from rlm_events import Stage, StageContext
from rlm_events.signals import BY_STAGE
from rlm_events.testing import InProcessInterpreter, ScriptedLM

MakeRLM = Callable[..., "tuple[dspy.RLM, ScriptedLM]"]
"""Builds ``(rlm, lm)`` like the ``make_rlm`` test fixture: ``make(steps, *, signature, max_iters,
interpreter_factory)``."""

ANSWER = "done"
ITERATION_STAGES = (Stage.PRE_ITERATION, Stage.PRE_EXECUTION, Stage.POST_EXECUTION, Stage.POST_ITERATION)


def build_rlm(
    steps: Sequence[Any],
    *,
    signature: str = "question -> answer",
    max_iters: int = 6,
    interpreter_factory: Callable[[], Any] | None = None,
    **lm_options: Any,
) -> tuple[dspy.RLM, ScriptedLM]:
    """The default workload builder (same contract as the tests' ``make_rlm`` fixture).

    Adapts to the constructor of older DSPy releases (``max_iterations`` and an ``interpreter`` instance before
    3.3), so the reference package, which only runs there, can be measured on the same workload.
    """
    lm = ScriptedLM(steps, **lm_options)
    factory = interpreter_factory or InProcessInterpreter
    params = inspect.signature(dspy.RLM.__init__).parameters
    options: dict[str, Any] = {"max_iters" if "max_iters" in params else "max_iterations": max_iters}
    if "interpreter_factory" in params:
        options["interpreter_factory"] = factory
    else:
        options["interpreter"] = factory()
    return dspy.RLM(signature, **options), lm


def script(iterations: int) -> list[Callable[[int], str]]:
    """Code steps that print something every iteration and ``SUBMIT`` only in the last one."""

    def step(i: int) -> str:
        return f"SUBMIT(answer={ANSWER!r})" if i >= iterations - 1 else f"print(sum(range({i})))"

    return [step]


def workload(iterations: int, interpreter_factory: Callable[[], Any]) -> dict[str, Any]:
    return {"signature": "question -> answer", "max_iters": iterations, "interpreter_factory": interpreter_factory}


# -- configurations ----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a configuration did to its RLM: extra ``dspy.context`` settings per call, and how to undo it."""

    overrides: dict[str, Any] = field(default_factory=dict)
    teardown: Callable[[], None] = lambda: None
    check: Callable[[], str | None] = lambda: None  # after the rounds: a problem with the setup itself, or None


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    apply: Callable[[dspy.RLM, Path], Setup | str]  # a str is why the configuration is not available ("n/a")


def passthrough(ctx: StageContext, next: Callable[[StageContext], StageContext]) -> StageContext:
    return next(ctx)


def listener(sender: Any, ctx: StageContext) -> None:
    pass


def bare(rlm: dspy.RLM, tmp: Path) -> Setup:
    return Setup()


def instrumented_idle(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm)
    return Setup()


def detached(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm)
    rlm_events.uninstrument(rlm)
    return Setup()


def iteration_stages_idle(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm).use(Stage.RUN_END, passthrough)
    return Setup()


def reference_hooks(rlm: dspy.RLM, tmp: Path) -> Setup:
    events = rlm_events.instrument(rlm)
    for stage in ITERATION_STAGES:
        events.use(stage, passthrough)
    return Setup()


def busy(rlm: dspy.RLM, tmp: Path, *, taps: int = 0) -> Setup:
    events = rlm_events.instrument(rlm)
    # Distinct callables: the same function connected twice is one blinker receiver.
    listeners = [lambda sender, ctx: None for _ in range(3)]
    for stage in Stage:
        for _ in range(3):
            events.use(stage, passthrough)
        for listener in listeners:
            events.connect(stage, listener, weak=False)
    for _ in range(taps):
        events.tap(lambda snapshot: None)

    def teardown() -> None:
        # Without a sender: blinker keeps a receiver disconnected from one sender in `signal.receivers`.
        for stage in Stage:
            for listener in listeners:
                BY_STAGE[stage].disconnect(listener)

    return Setup(teardown=teardown)


def builtins_setup(rlm: dspy.RLM, tmp: Path) -> Setup | str:
    try:
        from rlm_events.builtins import Budget, CodeGuard  # type: ignore[attr-defined]
        from rlm_events.trace import JsonlTrace  # type: ignore[import-not-found]
    except ImportError as exc:
        return f"not importable yet ({exc})"
    events = rlm_events.instrument(rlm)
    CodeGuard("default").install(events)
    # Limits far above the workload: the budget meters every iteration and tool call but never stops the run.
    Budget(max_iterations=10_000, max_seconds=3_600, max_tokens=10**12, max_cost_usd=10.0**6).install(events)
    path = tmp / f"trace-{id(rlm)}.jsonl"
    trace = JsonlTrace(path)
    if hasattr(trace, "install"):
        trace.install(events)
    else:
        events.tap(trace)
    close = getattr(trace, "close", None)

    def recorded() -> str | None:
        flush = getattr(rlm_events, "flush", None)  # the trace writes its lines on the tap delivery worker
        if callable(flush):
            flush()
        return None if path.exists() and path.stat().st_size else "the JSONL trace recorded nothing"

    return Setup(teardown=close if callable(close) else lambda: None, check=recorded)


def passthrough_hooks(hooks: Any) -> dict[str, Any]:
    """The four hooks, each returning what it was given, built on `hooks`' output models (the reference package
    and `rlm_events.hooks` have the same)."""
    return {
        "pre_iteration_hook": lambda iteration, variables, history, input_args: hooks.PreIterationOutput(),
        "pre_execution_hook": lambda iteration, code, variables, history, input_args: hooks.PreExecutionOutput(
            code=code
        ),
        "post_execution_hook": lambda iteration, code, result, variables, history, input_args: (
            hooks.PostExecutionOutput(result=result)
        ),
        "post_iteration_hook": lambda iteration, action, code, result, history: hooks.PostIterationOutput(
            history=history
        ),
    }


def reference_does_not_run(rlm_class: type) -> str | None:
    """Why dspy-rlm-hooks cannot run on `rlm_class` (`None` when it can). It replaces `_execute_iteration` with its
    own copy of DSPy 3.2's loop body, so it runs only where that fits: the loop's signature, and the
    `_process_execution_result` its copy calls (DSPy 3.1's takes no `code`)."""
    loop = ["self", "repl", "variables", "history", "iteration", "input_args", "output_field_names"]
    process = ["self", "pred", "code", "result", "history", "output_field_names"]
    if list(inspect.signature(rlm_class._execute_iteration).parameters) == loop and (
        list(inspect.signature(rlm_class._process_execution_result).parameters) == process
    ):
        return None
    return f"dspy-rlm-hooks does not run on DSPy {dspy.__version__} (it copies DSPy 3.2's loop body)"


def reference_package(rlm: dspy.RLM, tmp: Path) -> Setup | str:
    """dspy-rlm-hooks, the package the targets refer to: four pass-through hooks, one per iteration stage."""
    try:  # by name: a package to compare with, installed by hand, not a dependency of this project
        hooks: Any = importlib.import_module("dspy_rlm_hooks")
    except ImportError:
        return "not installed (pip install dspy-rlm-hooks; Python >= 3.12)"
    reason = reference_does_not_run(type(rlm))
    if reason is not None:
        return reason
    # Untraced, as the compatibility layer's configuration: 0.1.15's enable_rlm_hooks traces in MLflow whenever
    # MLflow is importable; its core function is the same hooks without the spans.
    enable = getattr(importlib.import_module("dspy_rlm_hooks.core"), "enable_rlm_hooks", hooks.enable_rlm_hooks)
    enable(rlm, **passthrough_hooks(hooks))
    return Setup(teardown=lambda: hooks.disable_rlm_hooks(rlm))


def compat_hooks(rlm: dspy.RLM, tmp: Path) -> Setup:
    """rlm_events.hooks (the dspy-rlm-hooks compatibility layer): the same four pass-through hooks as the
    reference package's configuration, on this DSPy."""
    from rlm_events import hooks

    hooks.enable_rlm_hooks(rlm, **passthrough_hooks(hooks), tracing=False)
    return Setup(teardown=lambda: hooks.disable_rlm_hooks(rlm))


def dispatch_floor(rlm: dspy.RLM, tmp: Path) -> Setup | str:
    """The floor under configuration 4: its registrations fired with none of rlm-events' bookkeeping.

    A subclass of the RLM's class runs a copy of DSPy 3.4.1's loop body with the four iteration stages in it, as
    rlm-events' own copy has them (run_start and run_end around `forward`): each context built by `construct` from
    one dict literal and folded through the same `Plan.fire` (3 middleware, then 3 receivers), the code and result
    taken from the contexts. There is no per-call state, frame, prelude, skip, stop or stand-in, no tool_call stage
    and no error handling: what configuration 4 costs on top of this is that bookkeeping. Only where DSPy's loop body
    is 3.4.1's (the body rlm-events copies); elsewhere it is not available."""
    # Here, not at the top: rlm_events' internals and DSPy's module helpers, used by this yardstick only.
    from dspy.predict import rlm as dspy_rlm

    from middleware import Chain
    from rlm_events import context as contexts
    from rlm_events._patch.loop_body import source_release
    from rlm_events.plan import Plan, track_stage_signals

    own = type(rlm)
    if source_release(own._execute_iteration) != "3.4.1":
        return f"DSPy {dspy.__version__}'s loop body is not 3.4.1's, which the floor copies"
    strip, format_error = dspy_rlm._strip_code_fences, dspy_rlm.format_error_for_lm
    track_stage_signals()
    plan = Plan({stage: Chain([passthrough] * 3, label=stage.value) for stage in Stage})
    listeners = [lambda sender, ctx: None for _ in range(3)]
    for stage in Stage:
        for receiver in listeners:
            BY_STAGE[stage].connect(receiver, sender=rlm, weak=False)
    fire, construct = plan.fire, contexts.construct
    runs: dict[int, Any] = {}  # each call's Run, by the RLM's id (one call at a time per RLM here)
    fired = {"calls": 0, "iterations": 0}  # for check(): every stage fired where it should

    def forward(self: Any, **kwargs: Any) -> Any:
        fired["calls"] += 1
        run = runs[id(self)] = contexts.Run.model_construct(id="floor", module=self, started_at=None, state={})
        start = {"stage": Stage.RUN_START, "iteration": None, "input_args": kwargs, "run": run}
        fire(construct(contexts.RunStartContext, start), self)
        prediction = own.forward(self, **kwargs)
        end = {
            "stage": Stage.RUN_END,
            "iteration": None,
            "input_args": kwargs,
            "run": run,
            "prediction": prediction,
            "error": None,
            "iterations": 0,
            "forced_extract": False,
            "duration_s": 0.0,
            "stop_reason": "submit",
        }
        fire(construct(contexts.RunEndContext, end), self)
        return prediction

    def _execute_iteration(self: Any, *args: Any) -> Any:  # DSPy 3.4.1's loop passes its eight positionally
        repl, variables, history, iteration, input_args, output_field_names, interpreter_factory, rules = args
        fired["iterations"] += 1
        run = runs[id(self)]
        pre_iteration = {
            "stage": Stage.PRE_ITERATION,
            "iteration": iteration,
            "input_args": input_args,
            "run": run,
            "history": history,
            "variables": list(variables),
            "extra_vars": {},
            "python_code": None,
            "persistent_python_code": "",
            "prompt_context": "",
        }
        started = fire(construct(contexts.PreIterationContext, pre_iteration), self)
        history, variables = started.history, started.variables
        # DSPy 3.4.1's body from here, with pre_execution and post_execution in place.
        variables_info = [variable.format() for variable in variables]
        action = self.generate_action(
            signature=self._action_signature_for_current_factory(interpreter_factory, rules),
            variables_info=variables_info,
            repl_history=history,
            iteration=f"{iteration + 1}/{self.max_iters}",
        )
        try:
            code, error = strip(action.code), None
        except SyntaxError as exc:
            code, error = action.code, exc
        pre_execution = {
            "stage": Stage.PRE_EXECUTION,
            "iteration": iteration,
            "input_args": input_args,
            "run": run,
            "code": code,
            "reasoning": action.reasoning,
            "history": history,
            "result": None,
        }
        code = fire(construct(contexts.PreExecutionContext, pre_execution), self).code
        if error is not None:
            result: Any = f"[Error] {format_error(error)}"
        else:
            result = self._execute_code(repl, code, input_args)
        post_execution = {
            "stage": Stage.POST_EXECUTION,
            "iteration": iteration,
            "input_args": input_args,
            "run": run,
            "code": code,
            "result": result,
            "history": history,
        }
        executed = fire(construct(contexts.PostExecutionContext, post_execution), self)
        code, result = executed.code, executed.result
        outcome = self._process_execution_result(action, code, result, history, output_field_names)
        submitted = not isinstance(outcome, type(history))  # a Prediction (SUBMIT), else the new history
        post_iteration = {
            "stage": Stage.POST_ITERATION,
            "iteration": iteration,
            "input_args": input_args,
            "run": run,
            "history": history if submitted else outcome,
            "prediction": outcome if submitted else None,
            "stop": False,
            "stop_reason": None,
            "action": action,
            "code": code,
            "result": result,
        }
        ended = fire(construct(contexts.PostIterationContext, post_iteration), self)
        return ended.history if ended.prediction is None else ended.prediction

    namespace = {"forward": forward, "_execute_iteration": _execute_iteration}
    rlm.__class__ = type(own.__name__, (own,), namespace)

    def teardown() -> None:
        rlm.__class__ = own
        for stage in Stage:  # without a sender: blinker keeps one disconnected from one sender in its receivers
            for receiver in listeners:
                BY_STAGE[stage].disconnect(receiver)

    def check() -> str | None:
        if fired["calls"] and fired["iterations"] >= fired["calls"]:
            return None
        return f"the floor's stages did not fire on every call and iteration: {fired}"

    return Setup(teardown=teardown, check=check)


class CountingCallback(BaseCallback):
    """DSPy's own observation mechanism: counts module, LM and interpreter events (the interpreter's only fire for
    interpreters DSPy decorates, such as ``dspy.LocalInterpreter``)."""

    def __init__(self) -> None:
        self.events = 0

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events += 1

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self.events += 1

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events += 1

    def on_lm_end(self, call_id: str, outputs: dict[str, Any] | None, exception: Exception | None = None) -> None:
        self.events += 1

    def on_interpreter_execute_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events += 1

    def on_interpreter_execute_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        self.events += 1


def dspy_callback(rlm: dspy.RLM, tmp: Path) -> Setup:
    callback = CountingCallback()
    return Setup(
        overrides={"callbacks": [callback]},
        check=lambda: None if callback.events else "the DSPy callback observed nothing",
    )


CONFIGS: tuple[Config, ...] = (
    Config("bare", "1 bare (never instrumented)", bare),
    Config("idle", "2 instrumented, nothing subscribed", instrumented_idle),
    Config("detached", "3 instrumented, then uninstrumented", detached),
    Config("busy", "4 3 middleware + 3 listeners, every stage", busy),
    Config("floor", "4f the same, with no rlm-events bookkeeping", dispatch_floor),
    Config("builtins", "5 CodeGuard + Budget + JsonlTrace", builtins_setup),
    Config("dspy_callback", "6 DSPy BaseCallback (module/LM/interp.)", dspy_callback),
    Config("reference", "ref 4 pass-through middleware (1/iter. stage)", reference_hooks),
    Config("idle_stages", "seam call instrumented, iteration stages idle", iteration_stages_idle),
    Config("compat_hooks", "hooks rlm_events.hooks, 4 pass-through hooks", compat_hooks),
    Config("reference_package", "ref' dspy-rlm-hooks, 4 pass-through hooks", reference_package),
)
TARGETS: dict[str, dict[str, str]] = {
    "InProcessInterpreter": {"idle": "ratio<=1.01", "detached": "ratio~1.00", "busy": "ratio<=1.05"},
    "LocalInterpreter": {"busy": "ratio<=1.02"},
}
REFERENCE_US_PER_ITERATION = 35.0  # dspy-rlm-hooks 0.1.8, four pass-through hooks
MIN_JUDGED_ROUNDS = 10  # fewer rounds (--quick) check that everything works; their figures are not judged


# -- running calls -----------------------------------------------------------------------------------------------


def clear_histories(rlm: dspy.RLM, lm: ScriptedLM) -> None:
    """DSPy keeps every LM call in the LM's, each calling module's and a global history, and every prediction in
    ``dspy.settings.trace`` (up to 10 000 of each): reset them so that neither time (bigger heaps to scan) nor
    memory drifts over the rounds, and what remains is ours."""
    lm.history.clear()
    base_lm.GLOBAL_HISTORY.clear()
    trace = dspy.settings.trace
    if isinstance(trace, list):
        trace.clear()
    for _, module in rlm.named_sub_modules():
        history = getattr(module, "history", None)
        if isinstance(history, list):
            history.clear()


CLOCKS = ("wall", "cpu")


def checked_call(rlm: dspy.RLM, lm: ScriptedLM, setup: Setup, iterations: int) -> dict[str, float]:
    """One checked call; returns its wall time and this process's CPU time, in seconds."""
    with dspy.context(lm=lm, **setup.overrides):
        wall, cpu = time.perf_counter(), time.process_time()
        prediction = rlm(question="What is the answer?")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    steps = len(prediction.trajectory)
    if prediction.answer != ANSWER or steps != iterations:
        raise AssertionError(f"the workload changed: {steps} iterations (want {iterations}), {prediction.answer!r}")
    clear_histories(rlm, lm)
    return {"wall": wall, "cpu": cpu}
