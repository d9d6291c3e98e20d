"""Hardening: concurrency, faults, cancellation, copies, pickling and memory, on real RLM loops."""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import logging
import random
import threading
import tracemalloc
from collections import defaultdict

import dspy
import pytest

import rlm_events
from rlm_events import Stage, isolated, signals
from rlm_events.testing import InProcessInterpreter

STEPS = ["print(text)", "print(llm_query(text))", "SUBMIT(answer=text + '!')"]
EXPECTED_STAGES = [
    "run_start",
    *["pre_iteration", "pre_execution", "post_execution", "post_iteration"],
    *["pre_iteration", "pre_execution", "tool_call", "post_execution", "post_iteration"],
    *["pre_iteration", "pre_execution", "post_execution", "post_iteration"],
    "run_end",
]


class CountingFactory:
    """An interpreter factory that remembers every interpreter it made (to check they were all shut down)."""

    def __init__(self) -> None:
        self.made: list[InProcessInterpreter] = []
        self.lock = threading.Lock()

    def __call__(self) -> InProcessInterpreter:
        interpreter = InProcessInterpreter()
        with self.lock:
            self.made.append(interpreter)
        return interpreter

    @property
    def all_closed(self) -> bool:
        return all(i.closed for i in self.made)


def per_call_counter(ctx, next):
    """A budget-like middleware: per-call counts in run.state, checked at the end of the call."""
    state = ctx.run.state
    if ctx.stage is Stage.RUN_START:
        state["text"] = ctx.input_args["text"]
        state["counts"] = defaultdict(int)
    state["counts"][ctx.stage.value] += 1
    if ctx.stage is Stage.RUN_END:
        assert ctx.input_args["text"] == state["text"]
    return next(ctx)


# -- concurrency ----------------------------------------------------------------------------------------------


def test_64_async_calls_and_16_threads_each_see_only_their_own_state_and_events(make_rlm):
    factory = CountingFactory()
    rlm, lm = make_rlm(STEPS, interpreter_factory=factory, sub=lambda prompt: prompt.upper())
    events = rlm_events.instrument(rlm)
    events.middleware(*Stage)(per_call_counter)
    by_run: dict[str, list[str]] = defaultdict(list)
    texts: dict[str, str] = {}
    lock = threading.Lock()

    def tap(ctx):
        with lock:
            by_run[ctx.run.id].append(ctx.stage.value)
            if ctx.stage is Stage.RUN_END:
                texts[ctx.run.id] = ctx.run.state["text"]

    events.tap(tap, inline=True)
    heard: dict[str, list[str]] = defaultdict(list)

    def listener(sender, ctx):
        with lock:
            heard[ctx.run.id].append(str(ctx.result))

    signals.post_execution.connect(listener, sender=rlm)
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def threaded(i: int) -> None:
        try:
            with dspy.context(lm=lm):
                results[f"t{i}"] = rlm(text=f"t{i}").answer
        except BaseException as exc:
            errors.append(exc)

    async def one(i: int) -> None:
        with dspy.context(lm=lm):
            results[f"a{i}"] = (await rlm.acall(text=f"a{i}")).answer

    async def all_async() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), timeout=240)

    threads = [threading.Thread(target=threaded, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        asyncio.run(all_async())
        for t in threads:
            t.join(timeout=240)
            assert not t.is_alive(), "a threaded call deadlocked"
    finally:
        signals.post_execution.disconnect(listener)
    assert not errors
    assert results == {key: key + "!" for key in [*(f"a{i}" for i in range(64)), *(f"t{i}" for i in range(16))]}
    assert len(by_run) == 80 and sorted(texts.values()) == sorted(results)
    for run_id, stages in by_run.items():
        assert stages == EXPECTED_STAGES, run_id
        text = texts[run_id]
        assert len(heard[run_id]) == 3 and heard[run_id][:2] == [text, text.upper()], run_id
        assert f"{text}!" in heard[run_id][2]  # the FinalOutput of SUBMIT
    assert len(factory.made) == 80 and factory.all_closed


def test_registrations_racing_with_running_calls_never_change_a_running_call(make_rlm):
    rlm, lm = make_rlm(STEPS, interpreter_factory=InProcessInterpreter, sub="ok")
    events = rlm_events.instrument(rlm)
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    lock = threading.Lock()

    def make_marker(name: str):
        def marker(ctx, next):
            with lock:
                seen[ctx.run.id][name].add(ctx.stage.value)
            return next(ctx)

        marker.__qualname__ = name
        return marker

    markers = [make_marker(f"m{i}") for i in range(6)]
    stop = threading.Event()

    def churn() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            marker = rng.choice(markers)
            if rng.random() < 0.5:
                events.middleware(*Stage)(marker)
            else:
                events.remove_all(marker)

    async def calls() -> list[str]:
        async def one(i: int) -> str:
            with dspy.context(lm=lm):
                return (await rlm.acall(text=f"x{i}")).answer

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(24))), timeout=240)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        answers = asyncio.run(calls())
    finally:
        stop.set()
        churner.join()
    assert answers == [f"x{i}!" for i in range(24)]
    for run_id, marks in seen.items():
        for name, stages in marks.items():
            # A marker present when the call started saw every one of its stages; one added later saw none.
            assert stages == set(EXPECTED_STAGES), (run_id, name, stages)


def test_instrument_and_uninstrument_racing_with_calls_never_crash(make_rlm):
    rlm, lm = make_rlm(STEPS, interpreter_factory=InProcessInterpreter, sub="ok")
    stop = threading.Event()
    errors: list[BaseException] = []

    def toggle() -> None:
        while not stop.is_set():
            events = rlm_events.instrument(rlm)
            events.middleware(*Stage)(per_call_counter)
            rlm_events.uninstrument(rlm)

    def caller(i: int) -> None:
        try:
            with dspy.context(lm=lm):
                for j in range(5):
                    assert rlm(text=f"{i}-{j}").answer == f"{i}-{j}!"
        except BaseException as exc:
            errors.append(exc)

    toggler = threading.Thread(target=toggle)
    callers = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    toggler.start()
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=240)
    stop.set()
    toggler.join()
    assert not errors
    rlm_events.uninstrument(rlm)
    assert type(rlm) is dspy.RLM and type(rlm.generate_action) is dspy.Predict
    assert "_rlm_events" not in rlm.__dict__


# -- faults ---------------------------------------------------------------------------------------------------

RUN_STAGES = [s for s in Stage if s is not Stage.TOOL_CALL]


class Injected(Exception):
    pass


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("stage", RUN_STAGES, ids=[s.value for s in RUN_STAGES])
def test_a_raising_middleware_fails_the_call_cleanly(make_rlm, stage, mode):
    factory = CountingFactory()
    steps = ["print(1)"] if stage is Stage.EXTRACT else ["print(1)", "SUBMIT(answer='ok')"]
    rlm, lm = make_rlm(steps, max_iters=2, interpreter_factory=factory, extract={"answer": "ok"})
    events = rlm_events.instrument(rlm)
    ends = []
    events.tap([Stage.RUN_END], ends.append, inline=True)

    if mode == "sync":

        def explode(ctx, next):
            raise Injected(ctx.stage.value)
    else:

        async def explode(ctx, next):
            await asyncio.sleep(0)
            raise Injected(ctx.stage.value)

    events.use(stage, explode)
    with dspy.context(lm=lm), pytest.raises(Injected) as info:
        if mode == "sync":
            rlm(text="x")
        else:
            asyncio.run(rlm.acall(text="x"))
    assert str(info.value) == stage.value
    assert any("explode" in note and repr(stage.value) in note for note in info.value.__notes__)
    if stage is not Stage.RUN_END:
        assert len(ends) == 1 and ends[0].error is info.value
    assert factory.all_closed and len(factory.made) == (0 if stage is Stage.RUN_START else 1)
    events.remove_all(explode)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"


def test_a_raising_tool_call_middleware_reaches_the_code_as_a_tool_error(make_rlm):
    rlm, lm = make_rlm(["print(llm_query('q'))", "SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.TOOL_CALL)
    def deny(ctx, next):
        raise PermissionError("sub-LLM calls are disabled")

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.answer == "ok"
    assert "PermissionError: sub-LLM calls are disabled" in result.trajectory[0]["output"]


def test_taps_and_isolated_listeners_that_raise_are_logged_once_per_call(make_rlm, caplog):
    rlm, lm = make_rlm(["print(1)", "print(2)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    events.tap([Stage.POST_ITERATION], lambda ctx: 1 / 0, inline=True)

    @isolated
    def broken_listener(sender, ctx):
        raise RuntimeError("listener bug")

    signals.post_iteration.connect(broken_listener, sender=rlm)
    try:
        with caplog.at_level(logging.DEBUG, logger="rlm_events"), dspy.context(lm=lm):
            assert rlm(text="x").answer == "ok"
    finally:
        signals.post_iteration.disconnect(broken_listener)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "failed" in r.getMessage()]
    assert len(warnings) == 2  # the tap once, the listener once
    assert len(debug) == 4  # their two later failures in the same call, each


def test_cancelling_aforward_mid_iteration_shuts_the_interpreter_down(make_rlm):
    factory = CountingFactory()
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], interpreter_factory=factory)
    events = rlm_events.instrument(rlm)
    started = asyncio.Event()
    ends = []
    events.tap([Stage.RUN_END], ends.append, inline=True)

    @events.middleware(Stage.PRE_EXECUTION)
    async def slow(ctx, next):
        started.set()
        await asyncio.sleep(3600)
        return await next(ctx)

    async def main() -> None:
        with dspy.context(lm=lm):
            task = asyncio.create_task(rlm.acall(text="x"))
            await asyncio.wait_for(started.wait(), timeout=60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert factory.made and factory.all_closed
    assert isinstance(ends[0].error, asyncio.CancelledError)
    events.remove_all(slow)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"


@pytest.mark.skipif(not hasattr(dspy, "LocalInterpreter"), reason="dspy.LocalInterpreter ships with DSPy 3.4+")
def test_a_crashing_interpreter_surfaces_dspys_error_and_nothing_hangs(make_rlm):
    rlm, lm = make_rlm(["import os\nos._exit(3)", "SUBMIT(answer='never')"], interpreter_factory=dspy.LocalInterpreter)
    events = rlm_events.instrument(rlm)
    ends = []
    events.tap([Stage.RUN_END], ends.append, inline=True)
    with dspy.context(lm=lm), pytest.raises(dspy.primitives.code_interpreter.CodeInterpreterError):
        rlm(text="x")
    assert isinstance(ends[0].error, dspy.primitives.code_interpreter.CodeInterpreterError)


# -- copies ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["copy.deepcopy", "rlm.deepcopy", "rlm.reset_copy"])
def test_copies_carry_their_own_independent_instrumentation(make_rlm, how):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    runs: list[tuple[int, str]] = []
    events.tap([Stage.RUN_END], lambda ctx: runs.append((id(ctx.run.module), ctx.run.id)), inline=True)

    @events.middleware(Stage.RUN_START)
    def shout(ctx, next):
        ctx.input_args["text"] = ctx.input_args["text"].upper()
        return next(ctx)

    clone = {"copy.deepcopy": copy.deepcopy, "rlm.deepcopy": dspy.RLM.deepcopy, "rlm.reset_copy": dspy.RLM.reset_copy}[
        how
    ](rlm)
    copied = rlm_events.instrumentation_of(clone)
    assert copied is not None and copied is not events and copied.modules == (clone,)
    events.use(Stage.PRE_EXECUTION, lambda ctx, next: next(ctx))  # registered after the copy: original only
    assert len(copied.plan.chains[Stage.PRE_EXECUTION]) == 0
    heard = []
    with signals.run_end.connected_to(lambda sender, ctx: heard.append(sender), sender=rlm), dspy.context(lm=lm):
        assert clone(text="copy").answer == "COPY"  # the copy's guard still applies
        assert rlm(text="original").answer == "ORIGINAL"
    assert heard == [rlm]
    assert [module for module, _ in runs] == [id(clone), id(rlm)]
    rlm_events.uninstrument(clone)
    assert type(clone) is dspy.RLM and rlm_events.instrumentation_of(rlm) is events


def test_save_and_load_of_an_instrumented_rlm(make_rlm, tmp_path):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    rlm.generate_action.demos = [
        dspy.Example(variables_info="v", repl_history="h", iteration="1/1", reasoning="r", code="c")
    ]
    rlm.save(tmp_path / "rlm.json")
    fresh, _ = make_rlm(["SUBMIT(answer=text)"], interpreter_factory=InProcessInterpreter)
    fresh.load(tmp_path / "rlm.json")
    assert len(fresh.generate_action.demos) == 1
    rlm.load(tmp_path / "rlm.json")  # loading into an instrumented RLM keeps its instrumentation
    assert rlm_events.instrumentation_of(rlm) is events
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "x"


def test_pickling_drops_the_instrumentation_and_never_fails_because_of_it(make_rlm, tmp_path):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    lock = threading.Lock()
    events.tap(lambda ctx: lock, inline=True)  # the tap holds an unpicklable lock
    rlm.save(str(tmp_path / "program"), save_program=True)  # DSPy's whole-program pickling (cloudpickle)
    load_options = {"allow_pickle": True} if "allow_pickle" in inspect.signature(dspy.load).parameters else {}
    restored = dspy.load(str(tmp_path / "program"), **load_options)
    assert type(restored) is dspy.RLM and type(restored.generate_action) is dspy.Predict
    assert rlm_events.instrumentation_of(restored) is None
    with dspy.context(lm=lm):
        assert restored(text="x").answer == "x"


# -- memory ---------------------------------------------------------------------------------------------------


def _forget_dspy_history(lm, rlm) -> None:
    """DSPy keeps LM call histories and its predictor trace on purpose; they are not ours to measure."""
    from dspy.clients import base_lm

    lm.history.clear()
    if isinstance(dspy.settings.trace, list):
        dspy.settings.trace.clear()
    getattr(base_lm, "GLOBAL_HISTORY", []).clear()
    for _, module in rlm.named_sub_modules():
        getattr(module, "history", []).clear()


def test_many_runs_with_weak_listeners_leak_nothing(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    events.use(Stage.PRE_EXECUTION, lambda ctx, next: next(ctx))
    events.tap([Stage.RUN_END], lambda ctx: None, inline=True)

    class Owner:
        calls = 0

        def on_iteration(self, sender, ctx):
            type(self).calls += 1

    owner = Owner()
    signals.post_iteration.connect(owner.on_iteration, sender=rlm)  # weak by default
    with dspy.context(lm=lm):
        for _ in range(100):
            rlm(text="x")
        _forget_dspy_history(lm, rlm)
        gc.collect()
        tracemalloc.start()
        # Each run's interpreter defines classes, churning object's subclass registry, a process-wide table that is
        # reallocated now and then. Reallocate it now, while tracing, so that a later reallocation frees a traced
        # block rather than counting the whole table as growth (its size is that of every class the process loaded:
        # MLflow's too, once another test imported it).
        churn = [type("_Churn", (), {}) for _ in range(2 * len(object.__subclasses__()) + 1024)]
        del churn
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            rlm(text="x")
            if i % 100 == 0:
                _forget_dspy_history(lm, rlm)
        _forget_dspy_history(lm, rlm)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert Owner.calls == 2100
    assert growth < 256 * 1024, f"memory grew by {growth / 1024:.0f} KiB over 2000 runs"
    del owner
    gc.collect()
    with dspy.context(lm=lm):
        rlm(text="x")
    assert Owner.calls == 2100  # a collected listener stops receiving (blinker's weak references)
    assert not signals.post_iteration.receivers_for(rlm) or all(
        r is not None for r in signals.post_iteration.receivers_for(rlm)
    )
