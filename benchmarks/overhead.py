"""What rlm-events adds to every iteration of a real ``dspy.RLM`` loop, measured against the bare loop.

Run ``python benchmarks/overhead.py`` (``--quick`` for a smoke run, ``--json PATH`` to also write the figures).
Everything runs in one process, offline:

* **Loop overhead.** A real ``dspy.RLM`` whose LM answers instantly (:class:`~rlm_events.testing.ScriptedLM`) runs
  exactly ``--iterations`` iterations per call (``max_iters`` = iterations, ``SUBMIT`` only in the last one). Each
  configuration (see :data:`CONFIGS`) has its own RLM; one round calls each once, in an order rotated every round,
  so machine drift and position effects hit every configuration alike. Per configuration: the median call time,
  the time added per iteration (median of the per-round differences to the bare call, divided by the iterations)
  and the ratio to bare (median of the per-round ratios, with the half-width of its ~95% confidence interval).
  Done with the cheap in-process interpreter (the loop's own cost is smallest, so overhead shows most; timed in
  CPU time of this process, which all of the work is and which other processes on a shared machine barely
  disturb) and with ``dspy.LocalInterpreter`` (a subprocess, the realistic case; wall time).
* **Memory.** ``tracemalloc`` growth and peak over many short calls with every mechanism in use (middleware,
  receivers and a tap on every stage) and bare, then a census of live contexts, runs and signal receivers.
* **Stage dispatch.** Micro-benchmarks of one stage seam when nothing is subscribed to that stage, and of the
  parts a subscribed stage is made of.

Every call is checked (full trajectory, expected answer), so a configuration that changed the run cannot pass as
fast. DSPy's LM/module histories and its predictor trace are cleared between calls, outside the timed section, in
every configuration. Optional configurations show "n/a" with the reason when they cannot run: the built-ins
(``rlm_events.builtins`` + ``rlm_events.trace``) and the reference package ``dspy-rlm-hooks`` (Python >= 3.12,
DSPy <= 3.2: it replaces the loop body with a copy of DSPy 3.1's). On DSPy < 3.3, ``--no-stack-walk`` removes
DSPy's own per-frame cost from every configuration (see :func:`_without_dspy_stack_walk`).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import gc
import importlib
import importlib.util
import inspect
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.clients import base_lm
from dspy.primitives.repl_types import REPLHistory
from dspy.utils.callback import BaseCallback

import rlm_events
from rlm_events import PreExecutionContext, Run, Stage, StageContext, snapshot
from rlm_events.context import construct
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


def _workload(iterations: int, interpreter_factory: Callable[[], Any]) -> dict[str, Any]:
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


def _passthrough(ctx: StageContext, next: Callable[[StageContext], StageContext]) -> StageContext:
    return next(ctx)


def _listener(sender: Any, ctx: StageContext) -> None:
    pass


def _bare(rlm: dspy.RLM, tmp: Path) -> Setup:
    return Setup()


def _instrumented_idle(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm)
    return Setup()


def _detached(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm)
    rlm_events.uninstrument(rlm)
    return Setup()


def _iteration_stages_idle(rlm: dspy.RLM, tmp: Path) -> Setup:
    rlm_events.instrument(rlm).use(Stage.RUN_END, _passthrough)
    return Setup()


def _reference_hooks(rlm: dspy.RLM, tmp: Path) -> Setup:
    events = rlm_events.instrument(rlm)
    for stage in ITERATION_STAGES:
        events.use(stage, _passthrough)
    return Setup()


def _busy(rlm: dspy.RLM, tmp: Path, *, taps: int = 0) -> Setup:
    events = rlm_events.instrument(rlm)
    # Distinct callables: the same function connected twice is one blinker receiver.
    listeners = [lambda sender, ctx: None for _ in range(3)]
    for stage in Stage:
        for _ in range(3):
            events.use(stage, _passthrough)
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


def _builtins(rlm: dspy.RLM, tmp: Path) -> Setup | str:
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
    return Setup(
        teardown=close if callable(close) else lambda: None,
        check=lambda: None if path.exists() and path.stat().st_size else "the JSONL trace recorded nothing",
    )


def _reference_package(rlm: dspy.RLM, tmp: Path) -> Setup | str:
    """dspy-rlm-hooks, the package the targets refer to: four pass-through hooks, one per iteration stage."""
    try:  # by name: a package to compare with, installed by hand, not a dependency of this project
        hooks: Any = importlib.import_module("dspy_rlm_hooks")
    except ImportError:
        return "not installed (pip install dspy-rlm-hooks; Python >= 3.12)"
    # It replaces _execute_iteration with its own copy of DSPy 3.1's loop body, so it only runs where that fits.
    expected = ["self", "repl", "variables", "history", "iteration", "input_args", "output_field_names"]
    if list(inspect.signature(type(rlm)._execute_iteration).parameters) != expected:
        return f"dspy-rlm-hooks does not run on DSPy {dspy.__version__} (it copies DSPy 3.1's loop body)"
    hooks.enable_rlm_hooks(
        rlm,
        pre_iteration_hook=lambda iteration, variables, history, input_args: hooks.PreIterationOutput(),
        pre_execution_hook=lambda iteration, code, variables, history, input_args: hooks.PreExecutionOutput(code=code),
        post_execution_hook=lambda iteration, code, result, variables, history, input_args: hooks.PostExecutionOutput(
            result=result
        ),
        post_iteration_hook=lambda iteration, action, code, result, history: hooks.PostIterationOutput(history=history),
    )
    return Setup(teardown=lambda: hooks.disable_rlm_hooks(rlm))


class _CountingCallback(BaseCallback):
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


def _dspy_callback(rlm: dspy.RLM, tmp: Path) -> Setup:
    callback = _CountingCallback()
    return Setup(
        overrides={"callbacks": [callback]},
        check=lambda: None if callback.events else "the DSPy callback observed nothing",
    )


CONFIGS: tuple[Config, ...] = (
    Config("bare", "1 bare (never instrumented)", _bare),
    Config("idle", "2 instrumented, nothing subscribed", _instrumented_idle),
    Config("detached", "3 instrumented, then uninstrumented", _detached),
    Config("busy", "4 3 middleware + 3 listeners, every stage", _busy),
    Config("builtins", "5 CodeGuard + Budget + JsonlTrace", _builtins),
    Config("dspy_callback", "6 DSPy BaseCallback (module/LM/interp.)", _dspy_callback),
    Config("reference", "ref 4 pass-through middleware (1/iter. stage)", _reference_hooks),
    Config("idle_stages", "seam call instrumented, iteration stages idle", _iteration_stages_idle),
    Config("reference_package", "ref' dspy-rlm-hooks, 4 pass-through hooks", _reference_package),
)
TARGETS: dict[str, dict[str, str]] = {
    "InProcessInterpreter": {"idle": "ratio<=1.05", "detached": "ratio~1.00", "busy": "ratio<=1.25"},
    "LocalInterpreter": {"busy": "ratio<=1.02"},
}
REFERENCE_US_PER_ITERATION = 35.0  # dspy-rlm-hooks 0.1.8, four pass-through hooks
MIN_JUDGED_ROUNDS = 10  # fewer rounds (--quick) check that everything works; their figures are not judged


# -- running calls -----------------------------------------------------------------------------------------------


def _clear_histories(rlm: dspy.RLM, lm: ScriptedLM) -> None:
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


def _call(rlm: dspy.RLM, lm: ScriptedLM, setup: Setup, iterations: int) -> dict[str, float]:
    """One checked call; returns its wall time and this process's CPU time, in seconds."""
    with dspy.context(lm=lm, **setup.overrides):
        wall, cpu = time.perf_counter(), time.process_time()
        prediction = rlm(question="What is the answer?")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    steps = len(prediction.trajectory)
    if prediction.answer != ANSWER or steps != iterations:
        raise AssertionError(f"the workload changed: {steps} iterations (want {iterations}), {prediction.answer!r}")
    _clear_histories(rlm, lm)
    return {"wall": wall, "cpu": cpu}


@dataclass
class Row:
    """One configuration's figures in one loop benchmark (``None`` where not applicable)."""

    key: str
    label: str
    available: bool
    note: str = ""
    median_ms: float | None = None
    median_wall_ms: float | None = None
    added_us_per_iteration: float | None = None
    ratio: float | None = None
    ratio_ci95: float | None = None
    target: str | None = None
    met: bool | None = None


def _ci95_of_median(values: Sequence[float]) -> float | None:
    """Half-width of an approximate 95% confidence interval of the median (normal approximation via the MAD);
    ``None`` with fewer than 3 values."""
    if len(values) < 3:
        return None
    centre = statistics.median(values)
    mad = statistics.median(abs(v - centre) for v in values) * 1.4826
    return 1.96 * 1.2533 * mad / len(values) ** 0.5


def _met(target: str, row: Row) -> bool:
    assert row.ratio is not None and row.added_us_per_iteration is not None
    if target.endswith("us/iter"):
        return row.added_us_per_iteration < float(target.removeprefix("<").removesuffix("us/iter"))
    if target.startswith("ratio<="):
        return row.ratio <= float(target.removeprefix("ratio<="))
    if target == "ratio~1.00":  # no effect: 1.00 lies inside the confidence interval, or the ratio is within 0.5 %
        return abs(row.ratio - 1) <= max(row.ratio_ci95 or 0.0, 0.005)
    raise ValueError(f"unknown target {target!r}")


def loop_benchmark(
    make_rlm: MakeRLM,
    interpreter_factory: Callable[[], Any],
    *,
    iterations: int,
    rounds: int,
    warmup: int,
    clock: str,
    tmp: Path,
    configs: Sequence[Config] = CONFIGS,
) -> dict[str, Any]:
    """Interleaved rounds over ``configs`` (the first must be the bare one); figures per configuration, from
    ``clock``: ``"wall"`` time, or ``"cpu"``, this process's CPU time (all of the work when the interpreter runs
    in-process, and insensitive to other processes competing for the CPU)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    name = getattr(interpreter_factory, "__name__", type(interpreter_factory).__name__)
    prepared: list[tuple[Config, dspy.RLM, ScriptedLM, Setup]] = []
    unavailable: dict[str, str] = {}
    for config in configs:
        rlm, lm = make_rlm(script(iterations), **_workload(iterations, interpreter_factory))
        setup = config.apply(rlm, tmp)
        if isinstance(setup, str):
            unavailable[config.key] = setup
        else:
            prepared.append((config, rlm, lm, setup))
    times: dict[str, list[float]] = {config.key: [] for config, *_ in prepared}
    walls: dict[str, list[float]] = {config.key: [] for config, *_ in prepared}
    try:
        for round_ in range(warmup + rounds):
            shift = round_ % len(prepared)
            for config, rlm, lm, setup in prepared[shift:] + prepared[:shift]:
                elapsed = _call(rlm, lm, setup, iterations)
                if round_ >= warmup:
                    times[config.key].append(elapsed[clock])
                    walls[config.key].append(elapsed["wall"])
        problems = {config.key: setup.check() for config, _, _, setup in prepared}
    finally:
        for _, _, _, setup in prepared:
            setup.teardown()
    bare = times[configs[0].key]
    rows: list[Row] = []
    for config in configs:
        if config.key in unavailable:
            rows.append(Row(config.key, config.label, available=False, note=unavailable[config.key]))
            continue
        own = times[config.key]
        ratios = [t / b for t, b in zip(own, bare, strict=True)]
        added = [(t - b) / iterations * 1e6 for t, b in zip(own, bare, strict=True)]
        row = Row(
            config.key,
            config.label,
            available=True,
            note=problems[config.key] or "",
            median_ms=statistics.median(own) * 1e3,
            median_wall_ms=statistics.median(walls[config.key]) * 1e3,
            added_us_per_iteration=statistics.median(added),
            ratio=statistics.median(ratios),
            ratio_ci95=_ci95_of_median(ratios),
            target=TARGETS.get(name, {}).get(config.key),
        )
        if config.key == "reference":
            row.target = f"<{REFERENCE_US_PER_ITERATION:g}us/iter"
            if "reference_package" in times:  # measured here: ours must cost less than it, on the same workload
                theirs = [(t - b) / iterations * 1e6 for t, b in zip(times["reference_package"], bare, strict=True)]
                row.target = f"<{statistics.median(theirs):.1f}us/iter"
        if row.target is not None and rounds >= MIN_JUDGED_ROUNDS:
            row.met = _met(row.target, row)
        rows.append(row)
    return {
        "interpreter": name,
        "iterations": iterations,
        "rounds": rounds,
        "clock": clock,
        "bare_us_per_iteration": statistics.median(bare) / iterations * 1e6,
        "configs": [asdict(r) for r in rows],
    }


# -- memory ------------------------------------------------------------------------------------------------------


def _census() -> dict[str, int]:
    gc.collect()
    alive = gc.get_objects()
    return {
        # By type: isinstance() with a pydantic model class asks every object for an attribute in pydantic 2.10 and
        # earlier, and some objects (diskcache's FanoutCache) raise for names they do not know.
        "contexts": sum(1 for o in alive if issubclass(type(o), StageContext)),
        "runs": sum(1 for o in alive if issubclass(type(o), Run)),
        "receivers": sum(len(s.receivers) for s in BY_STAGE.values()),
    }


def memory_benchmark(make_rlm: MakeRLM, *, runs: int, iterations: int, warmup: int, tmp: Path) -> dict[str, Any]:
    """``tracemalloc`` growth and peak over ``runs`` short calls, bare and with middleware, receivers and a tap on
    every stage; then what is left alive once the instrumented RLM is uninstrumented and dropped."""
    before = _census()
    results: dict[str, Any] = {"runs": runs, "iterations": iterations}
    for key, apply in (("bare", _bare), ("busy_tapped", lambda r, t: _busy(r, t, taps=1))):
        rlm, lm = make_rlm(script(iterations), **_workload(iterations, InProcessInterpreter))
        setup = apply(rlm, tmp)
        for _ in range(warmup):  # caches, interned strings, pydantic schemas: allocated once, not growth
            _call(rlm, lm, setup, iterations)
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(runs):
                _call(rlm, lm, setup, iterations)
            gc.collect()
            growth, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        during = _census()
        setup.teardown()
        rlm_events.uninstrument(rlm)
        del rlm, lm, setup
        results[key] = {
            "growth_bytes": growth,
            "peak_bytes": peak,
            "contexts_alive_between_calls": during["contexts"] - before["contexts"],
            "runs_alive_between_calls": during["runs"] - before["runs"],
        }
    after = _census()
    results["left_after_teardown"] = {k: after[k] - before[k] for k in after}
    results["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results


# -- stage dispatch ----------------------------------------------------------------------------------------------


def _per_call_us(fn: Callable[[], Any], loops: int) -> float:
    return min(timeit.repeat(fn, number=loops, repeat=5)) / loops * 1e6


def dispatch_benchmark(make_rlm: MakeRLM, *, loops: int) -> list[dict[str, Any]]:
    """What one stage seam costs when nothing is subscribed to its stage, and the parts of a subscribed one."""
    rlm, _ = make_rlm(script(2), **_workload(2, InProcessInterpreter))
    events = rlm_events.instrument(rlm)
    events.use(Stage.RUN_END, _passthrough)  # the call is instrumented; pre_execution is idle
    idle = events.plan
    other, _ = make_rlm(script(2), **_workload(2, InProcessInterpreter))
    busy = rlm_events.instrument(other)
    for _ in range(3):
        busy.use(Stage.PRE_EXECUTION, _passthrough)
    listeners = [lambda sender, ctx: None for _ in range(3)]
    run = Run.model_construct(id="bench", module=rlm, started_at=None, state={})
    history = REPLHistory()

    def context() -> PreExecutionContext:  # as the stage seams build one: every field given, in order
        fields = {"stage": Stage.PRE_EXECUTION, "iteration": 0, "input_args": {}, "run": run}
        return construct(
            PreExecutionContext, {**fields, "code": "x = 1", "reasoning": "", "history": history, "result": None}
        )

    ctx = context()
    stage = Stage.PRE_EXECUTION
    alone: list[tuple[str, Callable[[], Any], float | None]] = [
        ("idle stage seam: is anything subscribed? (plan.wants)", lambda: idle.wants(stage), 2.0),
        ("fire an idle stage anyway (plan.fire)", lambda: idle.fire(ctx, rlm), 2.0),
        ("call start: is the whole plan idle? (plan.idle)", lambda: idle.idle, None),
        ("build a stage context (as the seams do)", context, None),
        ("read-only snapshot for one tap", lambda: snapshot(ctx), None),
        ("fire: 3 pass-through middleware", lambda: busy.plan.fire(ctx, other), None),
    ]
    # With receivers in the process, even on another RLM, blinker has to look them up for every send.
    crowded: list[tuple[str, Callable[[], Any], float | None]] = [
        ("fire: 3 pass-through middleware + 3 listeners", lambda: busy.plan.fire(ctx, other), None),
        ("fire an idle stage, listeners on another RLM", lambda: idle.fire(ctx, rlm), 2.0),
    ]
    rows = []

    def measure(figures: list[tuple[str, Callable[[], Any], float | None]]) -> None:
        for name, fn, target in figures:
            us = _per_call_us(fn, loops)
            rows.append({"name": name, "us": us, "target_us": target, "met": None if target is None else us <= target})

    try:
        measure(alone)
        for listener in listeners:
            BY_STAGE[stage].connect(listener, sender=other, weak=False)
        measure(crowded)
    finally:
        for listener in listeners:
            BY_STAGE[stage].disconnect(listener)
        rlm_events.uninstrument(rlm)
        rlm_events.uninstrument(other)
    return rows


# -- report ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    iterations: int
    rounds: int
    local_rounds: int
    warmup: int
    memory_runs: int
    memory_iterations: int
    dispatch_loops: int
    clock: str = "auto"  # "auto": CPU time with the in-process interpreter, wall time with dspy.LocalInterpreter
    real_client_rounds: int = 100  # benchmarks/real_client.py: the meter on a real LM client (0: skipped)


FULL = Settings(
    iterations=50,
    rounds=100,
    local_rounds=100,
    warmup=3,
    memory_runs=10_000,
    memory_iterations=2,
    dispatch_loops=200_000,
)
QUICK = Settings(
    iterations=3,
    rounds=1,
    local_rounds=1,
    warmup=1,
    memory_runs=10,
    memory_iterations=2,
    dispatch_loops=1_000,
    real_client_rounds=1,
)


def _real_client() -> Any:
    """``benchmarks/real_client.py``, loaded by path (this file also runs as a module loaded by path)."""
    spec = importlib.util.spec_from_file_location("real_client_benchmark", Path(__file__).with_name("real_client.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(settings: Settings = FULL, *, make_rlm: MakeRLM = build_rlm, local: bool = True) -> dict[str, Any]:
    """Run every benchmark; the report is plain JSON-able data (see :func:`render` for the table)."""
    load_before = os.getloadavg()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlm-events-bench-")))
        loops = [
            loop_benchmark(
                make_rlm,
                InProcessInterpreter,
                iterations=settings.iterations,
                rounds=settings.rounds,
                warmup=settings.warmup,
                clock="wall" if settings.clock == "wall" else "cpu",
                tmp=tmp,
            )
        ]
        local_factory = getattr(dspy, "LocalInterpreter", None)
        if local and local_factory is not None:
            loops.append(
                loop_benchmark(
                    make_rlm,
                    local_factory,
                    iterations=settings.iterations,
                    rounds=settings.local_rounds,
                    warmup=min(settings.warmup, 1),
                    clock="cpu" if settings.clock == "cpu" else "wall",  # the child process's work is not ours
                    tmp=tmp,
                )
            )
        memory = memory_benchmark(
            make_rlm,
            runs=settings.memory_runs,
            iterations=settings.memory_iterations,
            warmup=min(50, settings.memory_runs // 2),
            tmp=tmp,
        )
    dispatch = dispatch_benchmark(make_rlm, loops=settings.dispatch_loops)
    rounds = settings.real_client_rounds
    real_client = _real_client().benchmark(rounds=rounds, warmup=min(settings.warmup, 3)) if rounds else None
    return {
        "environment": {
            "dspy": dspy.__version__,
            "rlm_events": rlm_events.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_before": list(load_before),
            "load_avg_after": list(os.getloadavg()),
        },
        "settings": asdict(settings),
        "loops": loops,
        "memory": memory,
        "memory_target_bytes": 1 << 20,
        "dispatch": dispatch,
        "real_client": real_client,
    }


def _fmt(value: float | None, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _verdict(met: bool | None) -> str:
    return "(not judged)" if met is None else ("ok" if met else "MISSED")


def render(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    env = report["environment"]
    load = "/".join(f"{x:.2f}" for x in env["load_avg_before"])
    lines = [
        f"rlm-events {env['rlm_events']} overhead: DSPy {env['dspy']}, Python {env['python']}, "
        f"{env['cpus']} CPUs, load {load} (1/5/15 min) at start",
    ]
    if env.get("dspy_stack_walk_replaced"):
        lines.append("DSPy's inspect.stack() per forward() lookup replaced by DSPy 3.3's check, in every configuration")
    for loop in report["loops"]:
        lines += [
            "",
            f"{loop['interpreter']}: {loop['iterations']} iterations per call, {loop['rounds']} interleaved rounds, "
            f"{loop['clock']} time; bare loop {loop['bare_us_per_iteration']:.0f} us/iteration",
            f"  {'configuration':<48} {'median ms':>9} {'+us/iter':>9} {'ratio':>7} {'±95%':>6}  target",
        ]
        for row in loop["configs"]:
            if not row["available"]:
                lines.append(f"  {row['label']:<48} {'n/a':>9} {'n/a':>9} {'n/a':>7} {'':>6}  {row['note']}")
                continue
            bare = row["key"] == "bare"
            target = f"{row['target']} {_verdict(row['met'])}" if row["target"] else ""
            lines.append(
                f"  {row['label']:<48} {row['median_ms']:>9.2f} "
                f"{'—' if bare else format(row['added_us_per_iteration'], '+.1f'):>9} "
                f"{row['ratio']:>7.3f} {_fmt(None if bare else row['ratio_ci95'], '.3f'):>6}  {target}"
                + (f"  ! {row['note']}" if row["note"] else "")
            )
    memory = report["memory"]
    limit = report["memory_target_bytes"]
    lines += [
        "",
        f"Memory: {memory['runs']} calls of {memory['iterations']} iterations (tracemalloc), "
        f"process max RSS {memory['max_rss_bytes'] / 2**20:.0f} MiB",
    ]
    for key, label in (("bare", "bare"), ("busy_tapped", "3 middleware + 3 listeners + 1 tap, every stage")):
        m = memory[key]
        verdict = _verdict(m["growth_bytes"] <= limit) if key != "bare" else ""
        lines.append(
            f"  {label:<48} growth {m['growth_bytes'] / 1024:>8.1f} KiB  peak {m['peak_bytes'] / 1024:>8.1f} KiB  "
            f"contexts/runs alive between calls {m['contexts_alive_between_calls']}/{m['runs_alive_between_calls']}"
            + (f"  target <=1 MiB {verdict}" if verdict else "")
        )
    left = memory["left_after_teardown"]
    lines.append(
        f"  after uninstrument + drop: {left['contexts']} contexts, {left['runs']} runs, "
        f"{left['receivers']} receivers left"
    )
    lines += ["", "Stage dispatch (one call)"]
    for row in report["dispatch"]:
        target = f"target <={row['target_us']:g} us {_verdict(row['met'])}" if row["target_us"] is not None else ""
        lines.append(f"  {row['name']:<60} {row['us']:>7.3f} us  {target}")
    if report.get("real_client"):
        lines += ["", _real_client().render(report["real_client"])]
    return "\n".join(lines)


@contextmanager
def _without_dspy_stack_walk() -> Iterator[bool]:
    """DSPy before 3.3 calls ``inspect.stack()`` on every ``module.forward`` lookup (to warn about direct calls),
    once per iteration for ``generate_action``, at a cost that grows with the stack depth. While this is active,
    every configuration, bare included, uses DSPy 3.3's equivalent check instead, so each configuration's own cost
    is measured rather than DSPy's cost per frame on the stack. Yields whether anything was replaced."""
    from dspy.primitives import module as dspy_module

    original = dspy_module.Module.__getattribute__
    try:
        walks = "inspect.stack(" in inspect.getsource(original)
    except (OSError, TypeError):
        walks = False
    if not walks:
        yield False
        return

    def __getattribute__(self: Any, name: str) -> Any:  # DSPy 3.3's version, verbatim in behaviour
        attr = object.__getattribute__(self, name)
        if name == "forward" and callable(attr) and sys._getframe(1).f_code.co_name != "__call__":
            dspy_module.logger.warning(
                f"Calling module.forward(...) on {type(self).__name__} directly is discouraged. "
                "Please use module(...) instead."
            )
        return attr

    dspy_module.Module.__getattribute__ = __getattribute__  # type: ignore[method-assign]
    try:
        yield True
    finally:
        dspy_module.Module.__getattribute__ = original  # type: ignore[method-assign]


@contextmanager
def _quiet_dspy() -> Iterator[None]:
    """The extract fallback never runs here, but DSPy logs a warning per call at max_iters boundaries; keep the
    table readable."""
    import logging

    logger = logging.getLogger("dspy.predict.rlm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None, *, make_rlm: MakeRLM = build_rlm) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few short rounds: checks that it works, not timing")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the report as JSON to PATH")
    parser.add_argument("--iterations", type=int, help="iterations per call in the loop benchmarks")
    parser.add_argument("--rounds", type=int, help="interleaved rounds with the in-process interpreter")
    parser.add_argument("--local-rounds", type=int, help="interleaved rounds with dspy.LocalInterpreter")
    parser.add_argument("--memory-runs", type=int, help="calls in the memory benchmark")
    parser.add_argument("--no-local", action="store_true", help="skip the dspy.LocalInterpreter benchmark")
    parser.add_argument(
        "--no-stack-walk",
        action="store_true",
        help="on DSPy < 3.3, give every configuration (bare included) DSPy 3.3's cheap check for direct forward() "
        "calls instead of its inspect.stack() per iteration, whose cost grows with every frame on the stack",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", *CLOCKS),
        help="what the loop benchmarks time (default auto: CPU time of this process with the in-process "
        "interpreter, wall time with dspy.LocalInterpreter)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in ("iterations", "rounds", "local_rounds", "memory_runs", "clock")
        if getattr(args, name) is not None
    }
    if overrides.get("iterations", 2) < 2:
        parser.error("--iterations must be at least 2")
    settings = Settings(**{**asdict(settings), **overrides})
    with _quiet_dspy(), ExitStack() as stack:
        replaced = args.no_stack_walk and stack.enter_context(_without_dspy_stack_walk())
        report = run(settings, make_rlm=make_rlm, local=not args.no_local)
    report["environment"]["dspy_stack_walk_replaced"] = bool(replaced)
    report["command"] = " ".join(["python", "benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])])
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
