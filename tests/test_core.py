"""The event bus and middleware pipeline on real dspy.RLM loops (scripted LM, real interpreter)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dspy
import pytest
from pydantic import ValidationError

import rlm_events
from rlm_events import Stage, signals
from rlm_events.testing import InProcessInterpreter

ORDER_ONE_ITERATION = ["run_start", "pre_iteration", "pre_execution", "post_execution", "post_iteration", "run_end"]


def stage_log(events):
    log: list[tuple[str, int | None]] = []

    @events.middleware(*Stage)
    def record(ctx, next):
        log.append((ctx.stage.value, ctx.iteration))
        return next(ctx)

    return log


def test_stages_fire_in_order_sync(make_rlm):
    rlm, lm = make_rlm(["print(len(text))", "print(llm_query('q'))", "SUBMIT(answer='ok')"])
    log = stage_log(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        assert rlm(text="hello").answer == "ok"
    per_iteration = ["pre_iteration", "pre_execution", "post_execution", "post_iteration"]
    assert log == [
        ("run_start", None),
        *[(s, 0) for s in per_iteration],
        *[(s, 1) for s in ["pre_iteration", "pre_execution", "tool_call", "post_execution", "post_iteration"]],
        *[(s, 2) for s in per_iteration],
        ("run_end", None),
    ]


@pytest.mark.parametrize("entry", ["call", "forward", "acall", "aforward"])
def test_every_entry_point_behaves_the_same(make_rlm, entry):
    rlm, lm = make_rlm(["print(text)", "SUBMIT(answer=text.upper())"])
    log = stage_log(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        if entry == "call":
            result = rlm(text="hi")
        elif entry == "forward":
            result = rlm.forward(text="hi")
        else:
            result = asyncio.run(getattr(rlm, entry)(text="hi"))
    assert result.answer == "HI"
    assert [s for s, _ in log] == ["run_start", *ORDER_ONE_ITERATION[1:5] * 2, "run_end"]


def test_rewritten_code_is_what_runs_and_what_history_records(make_rlm):
    rlm, lm = make_rlm(["print('original')", "SUBMIT(answer='done')"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_EXECUTION)
    def rewrite(ctx, next):
        ctx.code = ctx.code.replace("original", "rewritten")
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    first = result.trajectory[0]
    assert first["code"] == "print('rewritten')"
    assert first["output"] == "rewritten"


def test_pre_execution_can_skip_execution_and_supply_the_result(make_rlm):
    rlm, lm = make_rlm(["open('/tmp/should-not-exist-rlm-events', 'w').write('x')", "SUBMIT(answer='done')"])
    events = rlm_events.instrument(rlm)

    @events.middleware("pre_execution")
    def refuse(ctx, next):
        if "open(" in ctx.code:
            ctx.skip("[Error] writing files is not allowed")
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "[Error] writing files is not allowed"
    import os

    assert not os.path.exists("/tmp/should-not-exist-rlm-events")


def test_injected_variables_and_code_are_usable_and_shown_to_the_lm(make_rlm):
    rlm, lm = make_rlm(["print(helper(3) + bonus)", "SUBMIT(answer=str(helper(bonus)))"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_ITERATION)
    def inject(ctx, next):
        ctx.extra_vars["bonus"] = 10
        if ctx.iteration == 0:
            ctx.python_code = "def helper(n):\n    return n * 2"
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "16"
    assert result.answer == "20"  # helper defined in iteration 0 persists
    action_prompts = [str(h["messages"]) for h in lm.history if "[[ ## code ## ]]" in str(h["messages"][0])]
    assert all("bonus" in p for p in action_prompts)


def test_post_execution_result_change_is_what_history_records(make_rlm):
    rlm, lm = make_rlm(["print(undefined_name)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    seen = []

    @events.middleware(Stage.POST_EXECUTION)
    def hint(ctx, next):
        seen.append(ctx.result)
        if isinstance(ctx.result, str) and ctx.result.startswith("[Error]"):
            ctx.result += "\nHint: define it first."
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert seen[0].startswith("[Error]") and "NameError" in seen[0]
    assert result.trajectory[0]["output"].endswith("Hint: define it first.")


def test_stop_ends_the_loop_through_the_extract_fallback(make_rlm):
    rlm, lm = make_rlm(["print(1)"] * 5 + ["SUBMIT(answer='never')"], max_iters=10, extract={"answer": "extracted"})
    events = rlm_events.instrument(rlm)
    log = stage_log(events)
    ends = []

    @events.middleware(Stage.POST_ITERATION)
    def budget(ctx, next):
        ctx.stop = ctx.iteration == 1
        return next(ctx)

    events.tap([Stage.RUN_END], ends.append, inline=True)
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.answer == "extracted"
    assert [s for s, _ in log][-2:] == ["extract", "run_end"]
    assert ends[0].iterations == 2 and ends[0].forced_extract


def test_extract_fires_when_max_iters_is_reached(make_rlm):
    rlm, lm = make_rlm(["print(1)"], max_iters=2, extract={"answer": "fallback"})
    events = rlm_events.instrument(rlm)
    seen = []

    @events.middleware(Stage.EXTRACT)
    def watch(ctx, next):
        seen.append(len(ctx.history))
        ctx = next(ctx)
        seen.append(ctx.prediction.answer)
        return ctx

    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "fallback"
    assert seen == [2, "fallback"]


def test_post_iteration_can_reject_a_submission(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='bad')", "SUBMIT(answer='good')"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.POST_ITERATION)
    def validate(ctx, next):
        if ctx.prediction is not None and ctx.prediction.answer == "bad":
            ctx.prediction = None
            ctx.history = ctx.history.append(code="# review", output="rejected: answer must be good")
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.answer == "good"
    assert any("rejected" in e["output"] for e in result.trajectory)


def test_tool_call_middleware_can_deny_llm_query(make_rlm):
    rlm, lm = make_rlm(["print(llm_query('secret?'))", "SUBMIT(answer='ok')"], sub="LEAK")
    events = rlm_events.instrument(rlm)
    calls = []

    @events.middleware(Stage.TOOL_CALL)
    def deny(ctx, next):
        calls.append((ctx.name, ctx.args, ctx.kwargs, ctx.iteration))
        if ctx.name == "llm_query":
            ctx.result = "denied by policy"
            return ctx
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "denied by policy"
    assert calls == [("llm_query", ("secret?",), {}, 0)]
    assert not any(h["messages"][-1]["content"] == "secret?" for h in lm.history)  # the sub-LLM was never called


def test_tool_call_wraps_user_tools(make_rlm):
    def lookup(key: str) -> str:
        """Look a key up."""
        return key.upper()

    rlm, lm = make_rlm(
        ["print(lookup('k'))", "SUBMIT(answer='ok')"],
        max_iters=3,
        tools=[lookup],
        interpreter_factory=InProcessInterpreter,
    )
    events = rlm_events.instrument(rlm)
    seen = []
    events.tap(["tool_call"], lambda ctx: seen.append((ctx.name, ctx.result)), inline=True)
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "K"
    assert seen == [("lookup", "K")]
    rlm_events.uninstrument(rlm)


def test_run_start_can_change_inputs_and_run_state_is_per_call(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"])
    events = rlm_events.instrument(rlm)
    states = []

    @events.middleware(Stage.RUN_START)
    def redact(ctx, next):
        ctx.input_args["text"] = ctx.input_args["text"].replace("password", "*****")
        ctx.run.state["count"] = ctx.run.state.get("count", 0) + 1
        return next(ctx)

    events.tap([Stage.RUN_END], lambda ctx: states.append((ctx.run.id, dict(ctx.run.state))), inline=True)
    with dspy.context(lm=lm):
        assert rlm(text="my password").answer == "my *****"
        rlm(text="again")
    assert [s for _, s in states] == [{"count": 1}, {"count": 1}]
    assert states[0][0] != states[1][0]


def test_async_middleware_run_on_the_callers_loop_in_aforward(make_rlm):
    rlm, lm = make_rlm(["print(cached)", "SUBMIT(answer=str(cached))"])
    events = rlm_events.instrument(rlm)
    loops = set()

    @events.middleware(Stage.PRE_ITERATION)
    async def fetch(ctx, next):
        loops.add(asyncio.get_running_loop())
        await asyncio.sleep(0)
        ctx.extra_vars["cached"] = 7
        return await next(ctx)

    @events.middleware(Stage.POST_EXECUTION, Stage.PRE_EXECUTION, Stage.EXTRACT, Stage.RUN_END)
    async def touch(ctx, next):
        loops.add(asyncio.get_running_loop())
        return await next(ctx)

    async def main():
        with dspy.context(lm=lm):
            return await rlm.acall(text="x"), asyncio.get_running_loop()

    result, loop = asyncio.run(main())
    assert result.answer == "7"
    assert loops == {loop}


def test_async_middleware_also_work_from_a_sync_call(make_rlm):
    rlm, lm = make_rlm(["print(cached)", "SUBMIT(answer=str(cached))"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_ITERATION)
    async def fetch(ctx, next):
        await asyncio.sleep(0)
        ctx.extra_vars["cached"] = 9
        return await next(ctx)

    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "9"


def test_signals_are_sent_after_the_chain_with_sender_and_ctx(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    other, _ = make_rlm(["SUBMIT(answer='other')"])
    events = rlm_events.instrument(rlm)
    rlm_events.instrument(other)

    @events.middleware(Stage.PRE_EXECUTION)
    def rewrite(ctx, next):
        ctx.code = "print(2)" if ctx.code == "print(1)" else ctx.code
        return next(ctx)

    heard = []
    listener = signals.pre_execution.connected_to(lambda sender, ctx: heard.append((sender, ctx.code)), sender=rlm)
    with listener, dspy.context(lm=lm):
        rlm(text="x")
        other(text="y")
    assert heard == [(rlm, "print(2)"), (rlm, "SUBMIT(answer='ok')")]


def test_listeners_via_connect_via_decorator_and_async_send(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    rlm_events.instrument(rlm)
    heard = []

    @signals.run_end.connect_via(rlm)
    def on_end(sender, ctx):
        heard.append(("sync", ctx.prediction.answer))

    @signals.run_start.connect_via(rlm)
    async def on_start(sender, ctx):
        heard.append(("async", ctx.stage.value))

    try:
        with dspy.context(lm=lm):
            rlm(text="x")
            asyncio.run(rlm.acall(text="x"))
    finally:
        signals.run_end.disconnect(on_end)
        signals.run_start.disconnect(on_start)
    assert heard == [("async", "run_start"), ("sync", "ok")] * 2


def test_a_raising_tap_does_not_fail_the_run_and_is_logged(make_rlm, caplog):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)

    def broken(ctx):
        raise RuntimeError("tap bug")

    events.tap(broken, inline=True)
    with caplog.at_level(logging.DEBUG, logger="rlm_events"), dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "broken" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info


def test_taps_get_read_only_snapshots(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    errors = []

    def meddle(ctx):
        try:
            ctx.code = "print('hijacked')"
        except ValidationError as exc:
            errors.append(exc)

    events.tap([Stage.PRE_EXECUTION], meddle, inline=True)
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["code"] == "SUBMIT(answer='ok')"
    assert errors and "frozen" in str(errors[0])


def test_context_assignment_is_validated(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_EXECUTION)
    def wrong(ctx, next):
        ctx.code = 3
        return next(ctx)

    with dspy.context(lm=lm), pytest.raises(ValidationError, match="code") as info:
        rlm(text="x")
    assert any("wrong" in n and "pre_execution" in n for n in info.value.__notes__)


def test_failed_runs_fire_run_end_with_the_error_and_shut_the_interpreter_down(make_rlm):
    made = []

    def factory():
        made.append(InProcessInterpreter())
        return made[-1]

    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], interpreter_factory=factory)
    events = rlm_events.instrument(rlm)
    ends = []
    events.tap(["run_end"], ends.append, inline=True)

    @events.middleware(Stage.POST_EXECUTION)
    def explode(ctx, next):
        raise KeyError("middleware bug")

    with dspy.context(lm=lm), pytest.raises(KeyError) as info:
        rlm(text="x")
    assert "explode" in info.value.__notes__[0] and "post_execution" in info.value.__notes__[0]
    assert isinstance(ends[0].error, KeyError) and ends[0].prediction is None
    assert made[0].closed
    events.remove_all(explode)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"  # the instance is still usable


def test_instrumenting_one_instance_leaves_others_untouched(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    other, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    log = stage_log(events)
    assert type(other) is dspy.RLM and type(other.generate_action) is dspy.Predict
    with dspy.context(lm=lm):
        other(text="x")
    assert log == []


def test_uninstrument_restores_exactly(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    before = (type(rlm), type(rlm.generate_action), dict(rlm.__dict__))
    events = rlm_events.instrument(rlm)
    log = stage_log(events)
    assert isinstance(rlm, dspy.RLM) and rlm_events.instrumentation_of(rlm) is events
    rlm_events.uninstrument(rlm)
    rlm_events.uninstrument(rlm)  # idempotent
    assert (type(rlm), type(rlm.generate_action), dict(rlm.__dict__)) == before
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert log == []
    assert rlm_events.instrument(rlm) is not events  # a fresh instrumentation after a full undo


@pytest.mark.parametrize("undo", ["disconnect", "clear", "uninstrument"])
def test_undoing_a_connect_lets_blinker_drop_the_receiver(make_rlm, undo):
    """blinker keeps a receiver disconnected sender by sender in `signal.receivers`, alive when connected with
    `weak=False`, until it is disconnected from every sender at once; rlm-events does that once nothing else
    connects it, and leaves a receiver connected elsewhere connected."""
    import gc
    import weakref

    from rlm_events._fast import blinker as fast_blinker

    (rlm, lm), (other, _) = make_rlm(["SUBMIT(answer='ok')"]), make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    signal = signals.BY_STAGE[Stage.POST_ITERATION]
    heard: list[str] = []

    def only_ours(sender, ctx):
        heard.append("ours")

    def shared(sender, ctx):
        heard.append("shared")

    gone = weakref.ref(events.connect(Stage.POST_ITERATION, only_ours, weak=False))
    events.connect(Stage.POST_ITERATION, shared, weak=False)
    signal.connect(shared, sender=other, weak=False)  # the user's own connection, outside rlm-events
    try:
        with dspy.context(lm=lm):
            rlm(text="x")
        assert heard == ["ours", "shared"]
        if undo == "disconnect":
            events.disconnect(Stage.POST_ITERATION, only_ours)
            events.disconnect(Stage.POST_ITERATION, shared)
        elif undo == "clear":
            events.clear()
        else:
            rlm_events.uninstrument(rlm)
            events = rlm_events.instrument(rlm)  # the old instrumentation, its registrations with it, is let go
        del only_ours
        gc.collect()
        assert gone() is None and len(signal.receivers) == 1  # only the user's own connection is left
        assert list(signal.receivers_for(other)) == [shared] and not list(signal.receivers_for(rlm))
        with fast_blinker.fallback():  # blinker's internals not as expected: its own behaviour, nothing dropped
            kept = weakref.ref(events.connect(Stage.PRE_ITERATION, lambda sender, ctx: None, weak=False))
            events.disconnect(Stage.PRE_ITERATION, kept())
            gc.collect()
            assert kept() is not None and not list(signal.receivers_for(rlm))
    finally:
        signal.disconnect(shared)
        for receiver in list(signals.BY_STAGE[Stage.PRE_ITERATION].receivers.values()):
            signals.BY_STAGE[Stage.PRE_ITERATION].disconnect(receiver)
    assert not signal.receivers and not signals.BY_STAGE[Stage.PRE_ITERATION].receivers


def test_receivers_connected_for_an_rlm_are_let_go_when_it_is_collected(make_rlm):
    """An RLM dropped while instrumented (a server building one per request, never calling `uninstrument()`) takes
    the receivers `connect()` connected for it along, even strong ones: blinker drops a dead sender's bucket but
    would keep them in `signal.receivers`, with what they close over. A receiver still connected elsewhere (the
    user's own connection to every sender, or to another RLM) stays."""
    import gc
    import weakref

    from rlm_events._fast import blinker as fast_blinker
    from rlm_events.testing import ScriptedLM, build_rlm

    signal = signals.BY_STAGE[Stage.POST_ITERATION]
    (other, other_lm), before = make_rlm(["SUBMIT(answer='ok')"]), set(signal.receivers)
    rlm_events.instrument(other)
    buckets = len(getattr(signal, "_by_sender", ()))  # blinker's per-sender sets: none left behind either
    heard: list[str] = []

    def everywhere(sender, ctx):
        heard.append("everywhere")

    signal.connect(everywhere, weak=False)  # the user's own, to every sender
    per_request = []
    try:
        for request in range(20):
            rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
            events = rlm_events.instrument(rlm)
            payload = [request] * 1000  # what a per-request closure would keep alive

            def listener(sender, ctx, payload=payload):
                heard.append(f"request {payload[0]}")

            per_request.append(weakref.ref(events.connect(Stage.POST_ITERATION, listener, weak=False)))
            events.connect(Stage.POST_ITERATION, everywhere, weak=False)
            events.connect(Stage.PRE_ITERATION, everywhere, weak=False)
            with dspy.context(lm=ScriptedLM(["SUBMIT(answer='ok')"])):
                assert rlm(text="x").answer == "ok"
            del rlm, events, listener, payload
        gc.collect()
        assert heard.count("everywhere") == 2 * 20 and [h for h in heard if h.startswith("request")] == [
            f"request {n}" for n in range(20)
        ]
        assert all(gone() is None for gone in per_request)
        assert set(signal.receivers) == before | {id(everywhere)}  # the user's own connection stays
        assert len(getattr(signal, "_by_sender", ())) <= buckets + 1  # ANY's
        assert not signals.BY_STAGE[Stage.PRE_ITERATION].receivers
        with dspy.context(lm=other_lm):
            heard.clear()
            other(text="x")
            assert heard == ["everywhere"]
        with fast_blinker.fallback():  # blinker's internals not as expected: its own behaviour, nothing let go
            rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
            kept = weakref.ref(rlm_events.instrument(rlm).connect(Stage.PRE_ITERATION, lambda s, ctx: None, weak=False))
            del rlm
            gc.collect()
            assert kept() is not None
    finally:
        signal.disconnect(everywhere)
        for receiver in list(signals.BY_STAGE[Stage.PRE_ITERATION].receivers.values()):
            signals.BY_STAGE[Stage.PRE_ITERATION].disconnect(receiver)
    assert set(signal.receivers) == before


def test_the_predictor_is_the_users_own_outside_an_iteration(make_rlm):
    """pre_execution fires through the RLM's own class: generate_action keeps its object while instrumented, and
    reading it outside an iteration gives that object. Its class is DSPy's own, except where DSPy walks the stack on
    each `forward` lookup (before 3.4): there it is a stand-in with DSPy 3.4's check (`_patch.direct_calls`) until
    `uninstrument()`."""
    from rlm_events._patch.direct_calls import class_walks_the_stack

    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    predictor = rlm.generate_action
    events = rlm_events.instrument(rlm)
    seen: list[Any] = []
    events.use(Stage.PRE_EXECUTION, lambda ctx, next: (seen.append(rlm.generate_action), next(ctx))[1])
    assert rlm.generate_action is predictor and isinstance(predictor, dspy.Predict)
    assert (type(predictor) is dspy.Predict) is not class_walks_the_stack(dspy.Module)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert seen == [predictor] and rlm.generate_action is predictor
    rlm_events.uninstrument(rlm)
    assert type(predictor) is dspy.Predict


def test_composite_modules_instrument_every_rlm_inside(make_rlm):
    first, lm = make_rlm(["SUBMIT(answer=text + '!')"])
    second, _ = make_rlm(["SUBMIT(answer=text + '!')"])

    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = first, second

        def forward(self, text):
            return self.second(text=self.first(text=text).answer)

    program = Pipeline()
    events = rlm_events.instrument(program)
    assert rlm_events.instrument(program) is events
    assert set(map(id, events.modules)) == {id(first), id(second)}
    senders = []
    events.tap([Stage.RUN_END], lambda ctx: senders.append(ctx.run.module), inline=True)
    with dspy.context(lm=lm):
        assert program(text="x").answer == "x!!"
    assert senders == [first, second]
    rlm_events.uninstrument(program)
    assert type(first) is dspy.RLM and type(second) is dspy.RLM


def test_instrumenting_something_without_rlm_is_a_type_error():
    with pytest.raises(TypeError, match=r"expects a dspy\.RLM"):
        rlm_events.instrument(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"contains no dspy\.RLM"):
        rlm_events.instrument(dspy.Predict("q -> a"))


def test_registration_errors_are_clear_and_early(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    with pytest.raises(rlm_events.UnknownStageError, match="did you mean 'pre_execution'"):
        events.use("pre_exection", lambda ctx, next: next(ctx))
    with pytest.raises(TypeError, match=r"stage 'post_iteration'.*\(ctx, next\)"):
        events.use(Stage.POST_ITERATION, lambda ctx: ctx)
    with pytest.raises(TypeError, match="callable"):
        events.use("run_end", "not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exactly one argument"):
        events.tap(lambda a, b: None, inline=True)


def test_post_iteration_history_on_submit_is_the_whole_trajectory(make_rlm):
    rlm, lm = make_rlm(["print('a')", "print('b')", "SUBMIT(answer='ok')"], max_iters=4)
    seen = []

    def keep(ctx, next):
        seen.append((ctx.prediction, ctx.history))
        return next(ctx)

    rlm_events.instrument(rlm).use(Stage.POST_ITERATION, keep)
    with dspy.context(lm=lm):
        prediction = rlm(text="x")
    final, history = seen[-1]
    assert final is prediction and [p for p, _ in seen[:-1]] == [None, None]
    assert [e.model_dump() for e in history.entries] == prediction.trajectory
    assert [e.output.strip() for e in history.entries[:2]] == ["a", "b"] and "ok" in history.entries[2].output
    assert history.entries[:2] == seen[1][1].entries  # the entries the last iteration saw, then its own


def test_replace_swaps_middleware_in_one_change_or_not_at_all(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    events = rlm_events.instrument(rlm)
    order = []

    def old(ctx, next):
        order.append("old")
        return next(ctx)

    def new(ctx, next):
        order.append(f"new {ctx.stage.value}")
        return next(ctx)

    events.use(Stage.PRE_ITERATION, old)
    events.use(Stage.POST_ITERATION, old)
    before = events.plan
    with pytest.raises(TypeError, match="exactly"):  # a bad entry: nothing changes
        events.replace([old], [(Stage.PRE_EXECUTION, new), ("post_execution", lambda ctx: ctx)])
    assert events.plan is before
    with pytest.raises(rlm_events.UnknownStageError):
        events.replace([old], [("pre_executoin", new)])
    assert events.plan is before

    events.replace([old], [(Stage.PRE_EXECUTION, new), ("post_execution", new)])
    assert {s for s, chain in events.plan.chains.items() if chain} == {Stage.PRE_EXECUTION, Stage.POST_EXECUTION}
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert order == ["new pre_execution", "new post_execution"] * 2
