"""The fast paths over pydantic's and blinker's internals (``rlm_events._fast``) and their public-API fallbacks.

For each: the fast path is in use on the installed release (a release that changes the internals fails here first),
fast path and fallback give the same results on real contexts and real signals, real RLM calls behave the same with
the fallback forced, and the import-time probe rejects internals that are not what the fast path expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import os
import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from typing import Any

import blinker
import dspy
import pydantic
import pytest
from blinker import ANY
from dspy.primitives.repl_types import REPLHistory
from pydantic import BaseModel, ValidationError

import rlm_events
from rlm_events import Run, Stage, StageContext, snapshot
from rlm_events._fast import ENV, disabled
from rlm_events._fast import blinker as fast_blinker
from rlm_events._fast import pydantic as fast_pydantic
from rlm_events.context import CONTEXT_TYPES, construct
from rlm_events.signals import BY_STAGE

VERSIONS = f"pydantic {pydantic.VERSION}, blinker {importlib.metadata.version('blinker')}"
FALLBACKS: dict[str, Callable[[], Any]] = {
    "pydantic": fast_pydantic.fallback,
    "blinker": fast_blinker.fallback,
}


# With RLM_EVENTS_FAST_PATHS=0 (the whole suite on the fallbacks) there is no fast path to pin.
needs_fast_paths = pytest.mark.skipif(disabled() is not None, reason=f"{disabled()}: the fast paths are off")


@contextmanager
def fallbacks(*names: str) -> Iterator[None]:
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(FALLBACKS[name]())
        yield


# -- (a) the fast paths are in use on the installed releases ---------------------------------------------------


@needs_fast_paths
def test_the_fast_paths_are_in_use_on_the_installed_releases():
    """A pydantic or blinker release whose internals changed fails here first (then: check the fast path against
    it, and name the release in the module's docstring, or leave that release on the fallback)."""
    assert fast_pydantic.FAST and fast_pydantic.REASON is None, f"{VERSIONS}: {fast_pydantic.REASON}"
    assert fast_blinker.FAST and fast_blinker.REASON is None, f"{VERSIONS}: {fast_blinker.REASON}"
    assert fast_pydantic.probe() is None and fast_blinker.probe() is None
    rlm_events.Instrumentation()  # the first instrumentation (not the import) tracks the stage signals
    assert set(BY_STAGE.values()) <= set(fast_blinker._BY_SENDER)  # the stage signals are read directly
    tracked = list(fast_blinker._TRACKED)
    rlm_events.Instrumentation()
    assert tracked == fast_blinker._TRACKED  # idempotent: no signal tracked twice


@needs_fast_paths
def test_fallback_switches_each_path_for_the_block_only():
    rlm_events.Instrumentation()
    with fast_pydantic.fallback():
        assert not fast_pydantic.FAST and fast_blinker.FAST
    with fast_blinker.fallback():
        assert not fast_blinker.FAST and not fast_blinker._BY_SENDER and fast_pydantic.FAST
    assert fast_pydantic.FAST and fast_blinker.FAST and set(BY_STAGE.values()) <= set(fast_blinker._BY_SENDER)


def test_the_environment_turns_both_fast_paths_off():
    code = "from rlm_events._fast import blinker, pydantic; print(pydantic.FAST, blinker.FAST, pydantic.REASON)"
    env = {**os.environ, ENV: "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["False", "False", f"{ENV}=0", "in", "the", "environment"]


# -- (b) fast path and fallback give the same results -----------------------------------------------------------


def _state(model: BaseModel) -> tuple[Any, ...]:
    return (
        type(model),
        list(model.__dict__.items()),
        model.__pydantic_fields_set__,
        model.__pydantic_extra__,
        model.__pydantic_private__,
        repr(model),
    )


def _both(build: Callable[[], BaseModel]) -> tuple[BaseModel, BaseModel]:
    fast = build()
    with fast_pydantic.fallback():
        slow = build()
    return fast, slow


def _real_contexts(make_rlm) -> list[StageContext]:
    rlm, lm = make_rlm(["print(llm_query('q'))", "print(1)"], max_iters=2, extract={"answer": "extracted"})
    built: list[StageContext] = []

    def keep(ctx, next):
        built.append(ctx)
        return next(ctx)

    events = rlm_events.instrument(rlm)
    for stage in Stage:
        events.use(stage, keep)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "extracted"
    assert {ctx.stage for ctx in built} == set(Stage)
    return built


def test_contexts_are_built_the_same_on_both_paths(make_rlm):
    for ctx in _real_contexts(make_rlm):
        cls, values = type(ctx), dict(ctx.__dict__)
        fast, slow = _both(lambda cls=cls, values=values: construct(cls, dict(values)))
        assert _state(fast) == _state(slow) and fast == slow == ctx, ctx.stage
        fast, slow = _both(lambda cls=cls, values=values: construct(cls, dict(values), {"stage"}))
        assert _state(fast) == _state(slow) and fast.model_fields_set == {"stage"}
        fast, slow = _both(lambda ctx=ctx: snapshot(ctx))
        assert _state(fast) == _state(slow) and fast == slow
        with pytest.raises(ValidationError, match="frozen"):
            slow.stage = ctx.stage


@pytest.mark.parametrize("cls", [*CONTEXT_TYPES.values(), Run], ids=lambda c: c.__name__)
def test_model_construct_is_the_same_on_both_paths(cls, make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    run = Run.model_construct(id="r", module=rlm, started_at=datetime.now(timezone.utc))
    required = (
        {"id": "r", "module": rlm, "started_at": run.started_at} if cls is Run else {"stage": cls.STAGE, "run": run}
    )
    calls: list[tuple[set[str] | None, dict[str, Any]]] = [
        (None, required),
        (None, {**required, "not_a_field": 1}),  # ignored
        (None, {k: v for k, v in required.items() if k != "stage" and k != "id"}),  # a required field left unset
        ({"run"}, required),
    ]
    if "history" in cls.model_fields:
        calls.append((None, {**required, "history": REPLHistory(), "code": "x = 1", "variables": []}))
    for fields_set, given in calls:
        fast, slow = _both(lambda fields_set=fields_set, given=given: cls.model_construct(fields_set, **given))
        assert _state(fast) == _state(slow), given
        for name, value in fast.__dict__.items():  # default factories run per instance on both paths
            if isinstance(value, (dict, list)) and name not in given:
                assert value is not slow.__dict__[name]
    if cls is not Run:
        fast, slow = _both(lambda: cls.model_construct(**required))
        for model in (fast, slow):
            with pytest.raises(ValidationError, match="iteration"):
                model.iteration = "not a number"


class _Listener:
    def __init__(self, heard: list[str], name: str) -> None:
        self.heard, self.name = heard, name

    def on(self, sender, **kwargs):
        self.heard.append(self.name)


def _answers(signal, senders: dict[str, Any]) -> dict[str, tuple[list[Any], bool, bool]]:
    return {
        name: (
            list(fast_blinker.receivers(signal, sender)),
            fast_blinker.hears(signal, sender),
            fast_blinker.may_hear(signal, sender),
        )
        for name, sender in senders.items()
    }


def _same_answers(fast: dict[str, Any], slow: dict[str, Any], *, ordered: bool = True) -> None:
    for name in fast:
        (fast_receivers, fast_hears, fast_may), (slow_receivers, slow_hears, slow_may) = fast[name], slow[name]
        if ordered:
            assert fast_receivers == slow_receivers, name
        assert Counter(fast_receivers) == Counter(slow_receivers), name
        assert fast_hears == slow_hears == bool(slow_receivers), name
        assert slow_may >= fast_may >= bool(fast_receivers), name  # a cheap filter; never misses a receiver


@needs_fast_paths
def test_signals_answer_the_same_on_both_paths(make_rlm):
    (one, _), (other, _), (unheard, _) = (make_rlm(["SUBMIT(answer='ok')"]) for _ in range(3))
    signal = BY_STAGE[Stage.PRE_EXECUTION]
    senders = {"one": one, "other": other, "unheard": unheard, "ANY": ANY, "a str": "one", "None": None}
    heard: list[str] = []
    listener = _Listener(heard, "method")

    def weak_any(sender, **kwargs):
        heard.append("weak any")

    def dying(sender, **kwargs):
        heard.append("dead")

    strong_any = lambda sender, **kwargs: heard.append("strong any")  # noqa: E731
    strong_one = lambda sender, **kwargs: heard.append("strong one")  # noqa: E731
    to_other = lambda sender, **kwargs: heard.append("other")  # noqa: E731
    connected = [
        (strong_any, ANY, False),
        (weak_any, ANY, True),
        (listener.on, one, True),  # a WeakMethod
        (strong_one, one, False),
        (to_other, other, False),
        (strong_one, "one", False),
    ]
    try:
        for receiver, sender, weak in connected:
            signal.connect(receiver, sender=sender, weak=weak)
        signal.connect(dying, sender=one)  # weakly; held by this frame only
        assert signal.receivers and fast_blinker.FAST
        fast = _answers(signal, senders)
        with fast_blinker.fallback():
            slow = _answers(signal, senders)
        _same_answers(fast, slow)
        assert Counter(fast["one"][0]) == Counter([strong_any, weak_any, listener.on, strong_one, dying])
        assert Counter(fast["unheard"][0]) == Counter([strong_any, weak_any]) and fast["unheard"][1:] == (True, True)

        del fast, slow, dying  # the answers held it too; now blinker's weakref callback disconnects it
        gc.collect()
        signal.disconnect(to_other, sender=other)  # the sender's bucket stays, empty
        signal.disconnect(strong_any)
        fast = _answers(signal, senders)
        with fast_blinker.fallback():
            slow = _answers(signal, senders)
        _same_answers(fast, slow)
        assert fast["other"] == ([weak_any], True, True) and Counter(fast["one"][0]) == Counter(
            [weak_any, listener.on, strong_one]
        )

        with signal.muted():
            fast = _answers(signal, senders)
            with fast_blinker.fallback():
                slow = _answers(signal, senders)
            assert all(answer[0] == [] for answer in [*fast.values(), *slow.values()])

        plan = rlm_events.instrument(unheard).plan
        signal.disconnect(weak_any)
        decisions = [(plan.wants(Stage.PRE_EXECUTION, s), plan.idle_for(s)) for s in (one, other, unheard)]
        with fast_blinker.fallback():
            assert [plan.idle_for(s) for s in (one, other, unheard)] == [d[1] for d in decisions]
            assert all(
                plan.wants(Stage.PRE_EXECUTION, s) >= d[0]
                for s, d in zip((one, other, unheard), decisions, strict=True)
            )
        assert decisions == [(True, False), (False, True), (False, True)]
    finally:
        for receiver, _, _ in connected:
            signal.disconnect(receiver)
    assert not signal.receivers


def test_a_dead_weak_receiver_still_connected_is_skipped_on_both_paths(make_rlm):
    """The state between a weakly connected receiver's death and blinker's weakref callback (a garbage-collection
    cycle, interpreter shutdown): the receiver is still connected, its reference dead."""
    (one, _), (other, _) = make_rlm(["SUBMIT(answer='ok')"]), make_rlm(["SUBMIT(answer='ok')"])
    signal = BY_STAGE[Stage.POST_ITERATION]
    heard: list[str] = []
    alive = _Listener(heard, "alive")

    def ghost(sender, **kwargs):
        heard.append("ghost")

    signal.connect(alive.on, sender=one)
    signal.connect(ghost, sender=one)
    signal.connect(ghost, sender=ANY)
    try:
        ghost_id = next(k for k, v in signal.receivers.items() if isinstance(v, weakref.ref) and v() is ghost)
        signal.receivers[ghost_id] = weakref.ref(ghost)  # no callback: blinker does not learn of its death
        del ghost
        gc.collect()
        senders = {"one": one, "other": other}
        fast = _answers(signal, senders)  # first: receivers_for() disconnects the dead receiver
        with fast_blinker.fallback():
            slow = _answers(signal, senders)
        _same_answers(fast, slow, ordered=False)
        assert fast["one"][0] == [alive.on] and fast["other"][0] == [] and ghost_id not in signal.receivers
    finally:
        signal.disconnect(alive.on)
    assert not signal.receivers


# -- (c) real calls behave the same with the fallbacks forced -------------------------------------------------


def _observed_calls(make_rlm) -> list[tuple[Any, ...]]:
    (rlm, lm), (other, _) = (
        make_rlm(["print(llm_query('q'))", "print(1)"], max_iters=2, extract={"answer": "extracted"}),
        make_rlm(["SUBMIT(answer='ok')"]),
    )
    rlm_events.instrument(other)
    log: list[tuple[Any, ...]] = []
    events = rlm_events.instrument(rlm)

    @events.middleware(*Stage)
    def middleware(ctx, next):
        if ctx.stage is Stage.PRE_EXECUTION:
            ctx.code = ctx.code.replace("print(1)", "print(2)")
        log.append(("middleware", ctx.stage.value, ctx.iteration, list(ctx.__dict__), sorted(ctx.model_fields_set)))
        return next(ctx)

    def tap(ctx):
        log.append(("tap", ctx.stage.value, ctx.iteration, type(ctx).__name__, getattr(ctx, "code", None)))

    events.tap(tap, inline=True)
    listener = _Listener([], "method")
    receivers = [
        (lambda sender, ctx: log.append(("any", ctx.stage.value, sender is rlm)), ANY, False),
        (lambda sender, ctx: log.append(("other", ctx.stage.value)), other, False),
        (listener.on, rlm, True),
    ]

    def dying(sender, ctx):
        log.append(("dead", ctx.stage.value))

    for receiver, sender, weak in receivers:
        for signal in BY_STAGE.values():
            signal.connect(receiver, sender=sender, weak=weak)
    BY_STAGE[Stage.PRE_ITERATION].connect(dying, sender=rlm)
    del dying
    gc.collect()
    try:
        with dspy.context(lm=lm):
            assert rlm(text="x").answer == "extracted"
            log.append(("method heard", len(listener.heard)))
            with BY_STAGE[Stage.POST_EXECUTION].muted():
                assert asyncio.run(rlm.acall(text="x")).answer == "extracted"
        log.append(("method heard", len(listener.heard)))
    finally:
        for receiver, _, _ in receivers:
            for signal in BY_STAGE.values():
                signal.disconnect(receiver)
    # Its function receivers are gone (blinker keeps receivers other tests disconnected per sender: not ours).
    assert not any(id(r) in signal.receivers for r, _, _ in receivers[:2] for signal in BY_STAGE.values())
    return log


@pytest.mark.parametrize("forced", [("pydantic",), ("blinker",), ("pydantic", "blinker")], ids="+".join)
def test_real_calls_fire_the_same_with_the_fallback_forced(forced, make_rlm):
    fast = _observed_calls(make_rlm)
    with fallbacks(*forced):
        slow = _observed_calls(make_rlm)
    assert slow == fast
    stages = [entry[1] for entry in fast if entry[0] == "middleware"]
    assert set(stages) == {stage.value for stage in Stage} and len(stages) == 2 * 12
    assert ("tap", "pre_execution", 1, "PreExecutionContext", "print(2)") in fast
    assert not any(entry[0] in ("other", "dead") for entry in fast)
    assert ("any", "post_execution", True) in fast and [e for e in fast if e[0] == "method heard"] == [
        ("method heard", 12),
        ("method heard", 22),  # muted: no post_execution (twice) in the async call
    ]


def _connections_changed_mid_call(make_rlm) -> list[tuple[str, int]]:
    """Receivers connected, disconnected and dying during a call, between two sends of the same stage: each send
    calls the receivers connected at that moment (the fast path's kept read of them must not outlive a change)."""
    rlm, lm = make_rlm(["print(1)", "print(2)", "print(3)", "SUBMIT(answer='ok')"])
    rlm_events.instrument(rlm)
    signal, heard = BY_STAGE[Stage.POST_ITERATION], []
    late = lambda sender, ctx: heard.append(("late", ctx.iteration))  # noqa: E731
    early = lambda sender, ctx: heard.append(("early", ctx.iteration))  # noqa: E731

    def weak(sender, ctx):
        heard.append(("weak", ctx.iteration))

    def change(sender, ctx):
        if ctx.iteration == 0:
            signal.connect(late, sender=rlm, weak=False)
        elif ctx.iteration == 1:
            signal.disconnect(early)
        elif ctx.iteration == 2:
            holder.clear()  # the weak receiver's last reference: gone, without a disconnect
            gc.collect()

    holder = [weak]
    signal.connect(early, weak=False)
    signal.connect(weak, sender=rlm)  # weakly: `holder` keeps it alive until iteration 2
    signal.connect(change, sender=rlm, weak=False)
    del weak
    try:
        with dspy.context(lm=lm):
            assert rlm(text="q").answer == "ok"
    finally:
        for receiver in (late, early, change):
            signal.disconnect(receiver)
    return heard


def test_connections_changed_during_a_call_reach_the_next_send_on_both_paths(make_rlm):
    fast = _connections_changed_mid_call(make_rlm)
    with fast_blinker.fallback():
        slow = _connections_changed_mid_call(make_rlm)
    assert Counter(fast) == Counter(slow)
    assert sorted(fast) == sorted(
        [("early", 0), ("early", 1), ("weak", 0), ("weak", 1), ("weak", 2), ("late", 1), ("late", 2), ("late", 3)]
    )


def _one_plan_two_senders(make_rlm) -> list[tuple[str, str, int]]:
    """Two RLMs of one composite module share one plan, so a stage's kept read of its receivers is asked for both
    senders in turn; in the second call, the signal is muted from the first RLM's second iteration on (after a send
    that the kept read answers again), and unmuted after the call: each send calls the receivers blinker's send()
    would call then."""
    (first, lm), (second, _) = make_rlm(["print(1)", "SUBMIT(answer='a')"]), make_rlm(["unused"])

    class Pair(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = first, second

        def forward(self, text: str) -> Any:
            return first(text=text), second(text=text)

    pair = Pair()
    rlm_events.instrument(pair)
    signal, heard = BY_STAGE[Stage.POST_ITERATION], []

    def named(rlm: Any) -> str:
        return "first" if rlm is first else "second" if rlm is second else "?"

    receivers = {
        "first's": (lambda sender, ctx: heard.append(("first's", named(sender), ctx.iteration))),
        "second's": (lambda sender, ctx: heard.append(("second's", named(sender), ctx.iteration))),
        "any": (lambda sender, ctx: heard.append(("any", named(sender), ctx.iteration))),
    }
    signal.connect(receivers["first's"], sender=first, weak=False)
    signal.connect(receivers["second's"], sender=second, weak=False)
    signal.connect(receivers["any"], weak=False)
    muting, mute = contextlib.ExitStack(), [False]

    def mute_from_the_second_iteration(sender: Any, ctx: Any) -> None:
        if mute[0] and ctx.iteration == 1:
            muting.enter_context(signal.muted())

    BY_STAGE[Stage.PRE_ITERATION].connect(mute_from_the_second_iteration, sender=first, weak=False)
    try:
        with dspy.context(lm=lm):
            for muted in (False, True, False):  # the same script (lm's) for both: two iterations each
                heard.append(("call", "muted" if muted else "heard", 0))
                mute[0] = muted
                with muting:
                    pair(text="q")
    finally:
        for receiver in receivers.values():
            signal.disconnect(receiver)
        BY_STAGE[Stage.PRE_ITERATION].disconnect(mute_from_the_second_iteration)
    return heard


def test_a_stages_kept_receivers_answer_for_its_sender_only_and_not_while_muted(make_rlm):
    fast = _one_plan_two_senders(make_rlm)
    with fast_blinker.fallback():
        slow = _one_plan_two_senders(make_rlm)
    assert fast == slow
    heard = [(own, rlm, i) for rlm in ("first", "second") for i in (0, 1) for own in (f"{rlm}'s", "any")]
    calls: list[list[tuple[str, str, int]]] = []
    for entry in fast:
        calls.append([]) if entry[0] == "call" else calls[-1].append(entry)
    markers = [entry[1] for entry in fast if entry[0] == "call"]
    assert markers == ["heard", "muted", "heard"]
    muted = [("any", "first", 0), ("first's", "first", 0)]  # muted from the first RLM's second iteration on
    assert [sorted(call) for call in calls] == [sorted(heard), muted, sorted(heard)]


def test_plans_built_while_another_thread_connects_receivers_do_not_break_the_connect():
    """Every announced connect or disconnect empties every plan's kept reads; a plan built on another thread at that
    moment (it adds its own) must not make the user's `connect()` raise ("Set changed size during iteration")."""
    import threading

    from rlm_events.plan import Plan, track_stage_signals

    track_stage_signals()
    signal, errors, done = BY_STAGE[Stage.PRE_ITERATION], [], threading.Event()
    plans: list[Plan] = []

    def build_plans() -> None:
        try:
            while not done.is_set():
                plans.append(Plan())
                del plans[:-20]
        except Exception as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    def connect_and_disconnect() -> None:
        receiver = lambda sender, ctx: None  # noqa: E731
        try:
            for _ in range(3000):
                signal.connect(receiver, weak=False)
                signal.disconnect(receiver)
        except Exception as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)
        finally:
            done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython can, so the two interleave
    try:
        threads = [threading.Thread(target=build_plans), threading.Thread(target=connect_and_disconnect)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


_REENTERED = """
import weakref
from rlm_events._fast import blinker as fast_blinker
from rlm_events.plan import Plan, track_stage_signals
from rlm_events.signals import BY_STAGE
from rlm_events.stages import Stage

track_stage_signals()
signal = BY_STAGE[Stage.PRE_ITERATION]
receiver = lambda sender, ctx: None


class Reentered(weakref.WeakSet):
    def add(self, item):  # as a finalizer the garbage collector runs here would: a connect and a disconnect
        signal.connect(receiver, weak=False)
        signal.disconnect(receiver)
        super().add(item)


fast_blinker._KEPT = Reentered(fast_blinker._KEPT)
Plan()
print("built")
"""


def test_a_connect_from_inside_the_kept_reads_lock_does_not_deadlock():
    """A finalizer run by the garbage collector while a plan registers its kept reads may connect or disconnect a
    receiver, which empties every kept read under the same lock, on the same thread: it must not wait for itself."""
    done = subprocess.run([sys.executable, "-c", _REENTERED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "built", done.stderr


def test_the_actions_fields_are_read_as_getattr_reads_them():
    """`pre_execution` reads the action's code and reasoning with `Prediction.get()` when it is a plain Prediction;
    whatever the action is, the answer is `getattr`'s."""
    from types import SimpleNamespace

    from rlm_events._patch.prediction import field_of

    class Planned(dspy.Prediction):  # a subclass may answer from a property, not from its fields
        @property
        def code(self) -> str:
            return "from the property"

    actions = [
        dspy.Prediction(code="print(1)", reasoning="r"),
        dspy.Prediction(),
        Planned(code="from the fields"),
        SimpleNamespace(code="print(2)"),
    ]
    for action in actions:
        for name in ("code", "reasoning"):
            assert field_of(action, name, "missing") == getattr(action, name, "missing"), (action, name)
    assert field_of(actions[2], "code") == "from the property"


# -- (d) the probes reject internals that are not what the fast paths expect ----------------------------------


def test_the_pydantic_probe_rejects_a_base_model_with_its_own_new(monkeypatch):
    class WithNew(BaseModel):  # as a release whose BaseModel defines __new__ (setting and deleting
        def __new__(cls, *args, **kwargs):  # BaseModel.__new__ itself would not restore object.__new__)
            return super().__new__(cls)

    monkeypatch.setattr(fast_pydantic, "BaseModel", WithNew)
    assert fast_pydantic.probe() == "BaseModel defines __new__"


def test_the_pydantic_probe_rejects_a_missing_slot(monkeypatch):
    monkeypatch.setattr(fast_pydantic, "_SLOTS", (*fast_pydantic._SLOTS, "__pydantic_renamed__"))
    assert fast_pydantic.probe() == "BaseModel has no '__pydantic_renamed__' slot"


def test_the_pydantic_probe_rejects_a_model_construct_that_builds_otherwise(monkeypatch):
    original = BaseModel.model_construct.__func__  # type: ignore[attr-defined]

    def keeps_unknown_keywords(cls, _fields_set=None, **values):  # as pydantic before 2.7
        built = original(cls, _fields_set, **values)
        built.__dict__.update((k, v) for k, v in values.items() if k not in cls.model_fields)
        return built

    monkeypatch.setattr(BaseModel, "model_construct", classmethod(keeps_unknown_keywords))
    reason = fast_pydantic.probe()
    assert reason is not None and reason.startswith("Shaped.model_construct(") and "('other', 3)" in reason


def test_the_pydantic_probe_rejects_a_slot_it_does_not_set(monkeypatch):
    monkeypatch.setattr(BaseModel, "__slots__", (*BaseModel.__slots__, "__pydantic_new_state__"))
    assert fast_pydantic.probe() == "BaseModel has slots the fast path does not set: __pydantic_new_state__"


def test_the_pydantic_probe_rejects_unvalidated_assignment(monkeypatch):
    monkeypatch.setattr(BaseModel, "__setattr__", object.__setattr__)
    assert fast_pydantic.probe() == "assigning a field of Shaped built so is not validated"


def test_the_blinker_probe_rejects_other_sender_ids(monkeypatch):
    monkeypatch.setattr(blinker.base, "make_id", lambda obj: ("id", id(obj)))
    assert fast_blinker.probe() == "blinker.base.make_id(obj) is not id(obj) for a plain object"


def test_the_blinker_probe_rejects_another_any_id(monkeypatch):
    monkeypatch.setattr(blinker.base, "ANY_ID", -1)
    assert fast_blinker.probe() == "blinker.base.ANY_ID is -1, not the int 0"


def test_the_blinker_probe_rejects_receivers_kept_elsewhere(monkeypatch):
    init = blinker.Signal.__init__

    def elsewhere(self, *args, **kwargs):  # a release that renames the bookkeeping
        init(self, *args, **kwargs)
        self._senders = self.__dict__.pop("_by_sender")

    monkeypatch.setattr(blinker.Signal, "__init__", elsewhere)
    assert fast_blinker.probe() == "a blinker Signal keeps no _by_sender and receivers dicts"


def test_the_blinker_probe_rejects_receivers_found_otherwise(monkeypatch):
    receivers_for = blinker.Signal.receivers_for

    def also_by_name(self, sender):  # a release that also finds receivers another way
        yield from receivers_for(self, sender)
        if sender is not ANY:
            yield from receivers_for(self, ANY)

    monkeypatch.setattr(blinker.Signal, "receivers_for", also_by_name)
    reason = fast_blinker.probe()
    assert reason is not None and reason.startswith("receivers to senders and to ANY: the fast path finds")


def test_the_blinker_probe_rejects_a_replaced_bookkeeping_dict(monkeypatch):
    def clear_by_replacing(self):
        self.receivers.clear()
        self._by_sender = type(self._by_sender)(self.set_class)

    monkeypatch.setattr(blinker.Signal, "_clear_state", clear_by_replacing)
    assert fast_blinker.probe() == "a blinker Signal replaces its _by_sender dict"


def test_the_blinker_probe_rejects_unannounced_connection_changes(monkeypatch):
    monkeypatch.setattr(fast_blinker, "_announce", lambda signal: None)  # a release that stops announcing them
    reason = fast_blinker.probe()
    assert reason is not None and reason.startswith("after connecting: the fast path finds")


def test_the_blinker_probe_rejects_a_mute_it_cannot_see(monkeypatch):
    @contextmanager
    def muted(self):
        yield

    monkeypatch.setattr(blinker.Signal, "muted", muted)
    assert fast_blinker.probe() == "signal.muted() does not set is_muted"


REJECTED_AT_IMPORT = """
import blinker.base, dspy, pydantic
blinker.base.make_id = lambda obj, make_id=blinker.base.make_id: ("id", make_id(obj))  # blinker stays consistent
pydantic.BaseModel.__slots__ = (*pydantic.BaseModel.__slots__, "__pydantic_new_state__")
import rlm_events
from rlm_events._fast import blinker as fast_blinker, pydantic as fast_pydantic
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
heard = []
rlm_events.instrument(rlm).middleware(rlm_events.Stage.PRE_EXECUTION)(lambda ctx, next: next(ctx))
rlm_events.signals.pre_execution.connect(lambda sender, ctx: heard.append(ctx.code), sender=rlm, weak=False)
with dspy.context(lm=ScriptedLM(["print(1)", "SUBMIT(answer='ok')"])):
    answer = rlm(text="x").answer
print(fast_pydantic.FAST, fast_blinker.FAST, answer, heard)
print(fast_pydantic.REASON)
print(fast_blinker.REASON)
"""


def test_internals_rejected_at_import_leave_the_public_api_in_use():
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop(ENV, None)
    done = subprocess.run([sys.executable, "-c", REJECTED_AT_IMPORT], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False False ok ['print(1)', \"SUBMIT(answer='ok')\"]",
        "BaseModel has slots the fast path does not set: __pydantic_new_state__",
        "blinker.base.make_id(obj) is not id(obj) for a plain object",
    ]


class _FrameCountingPredictor:
    """`generate_action` that notes, per call, whether the action-stream path (`_patch.streaming.generate`) is
    between it and DSPy's loop: DSPy <= 3.3 reads every frame on the stack on each predictor call."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.streamed_path = predictor, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        frame, names = sys._getframe(1), []
        while frame is not None and frame.f_code.co_name not in ("_execute_iteration", "_aexecute_iteration"):
            names.append((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
            frame = frame.f_back
        self.streamed_path.append(("streaming.py", "generate") in names)
        return self.predictor(*args, **kwargs)


@pytest.mark.parametrize("streams", [False, True], ids=["in-place", "action-stream"])
def test_the_action_stand_in_calls_the_predictor_in_place_unless_the_run_streams(streams, make_rlm):
    """The stand-in skips the stream path (one frame less under DSPy's stack walk) exactly when the run has no action
    stream; either way pre_execution fires on the action and the run's answer is the same."""
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    counting = _FrameCountingPredictor(rlm.generate_action)
    rlm.generate_action = counting
    codes: list[str] = []
    events = rlm_events.instrument(rlm)

    def seen(ctx: Any, next: Callable[[Any], Any]) -> Any:
        codes.append(ctx.code)
        return next(ctx)

    events.use(Stage.PRE_EXECUTION, seen)
    if streams:  # an opener that streams no iteration: the stream path runs and calls the predictor as is

        def streaming(ctx: Any, next: Callable[[Any], Any]) -> Any:
            rlm_events.runtime.stream_actions(ctx.run, lambda index: None)
            return next(ctx)

        events.use(Stage.RUN_START, streaming)
    with dspy.context(lm=lm):
        assert rlm(text="q").answer == "ok"
    assert codes == ["print(1)", "SUBMIT(answer='ok')"]
    assert counting.streamed_path == [streams, streams]


def _predictor_frames(make_rlm, cls: type | None = None) -> tuple[list[bool], list[str]]:
    """Whether the stand-in (`_patch.predictor.Acting`) was on the stack at each action predictor call, and the codes
    pre_execution saw, in an instrumented call of an RLM of class `cls` (default `dspy.RLM`)."""
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    if cls is not None:
        rlm.__class__ = cls
    predictor, stand_in_seen = rlm.generate_action, []

    def recording(*args: Any, **kwargs: Any) -> Any:
        frame, names = sys._getframe(1), set()
        while frame is not None:
            names.add((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
            frame = frame.f_back
        stand_in_seen.append(("predictor.py", "__call__") in names)
        return predictor(*args, **kwargs)

    rlm.generate_action = recording
    codes: list[str] = []

    def seen(ctx: Any, next: Callable[[Any], Any]) -> Any:
        codes.append(ctx.code)
        ctx.code = ctx.code.replace("print(1)", "print(2)")
        return next(ctx)

    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, seen)
    with dspy.context(lm=lm):
        prediction = rlm(text="q")
    assert prediction.answer == "ok"
    assert prediction.trajectory[0]["code"] == "print(2)"  # what pre_execution changed is what ran
    assert prediction.trajectory[0]["output"].strip() == "2"
    return stand_in_seen, codes


def _runs_own_body() -> bool:
    """Whether rlm-events runs dspy.RLM's loop body itself on this DSPy (`_patch.loop_body`)."""
    from rlm_events._patch import loop_body

    return loop_body.FAST and loop_body.source_release(dspy.RLM._execute_iteration) is not None


def test_the_action_is_read_on_the_loops_verbose_read_where_dspy_walks_the_stack(make_rlm):
    """DSPy <= 3.3 walks the stack on each predictor call: there the predictor is called without the stand-in's
    frame and pre_execution fires when the loop reads `self.verbose` (`_patch.action_read`, checked against DSPy
    3.1.2 and 3.3.1); a DSPy that does not walk and whose loop body rlm-events runs itself (`_patch.loop_body`) calls
    the predictor from that body; a loop body of another shape, and every other DSPy, use the stand-in. Either way
    pre_execution sees the same codes and what it changed runs."""
    from rlm_events._patch.action_read import action_read_code
    from rlm_events._patch.direct_calls import class_walks_the_stack

    walks = class_walks_the_stack(dspy.RLM)
    if walks:  # a DSPy that walks with a loop body the fast path does not read fails here first
        assert action_read_code(dspy.RLM) is not None, dspy.__version__
    stand_in = not walks and not _runs_own_body()
    stand_in_seen, codes = _predictor_frames(make_rlm)
    assert stand_in_seen == [stand_in, stand_in]
    assert codes == ["print(1)", "SUBMIT(answer='ok')"]

    class OwnLoop(dspy.RLM):  # delegates to DSPy's loop body: its own does not have the shape the fast path reads
        def _execute_iteration(self, *args: Any, **kwargs: Any) -> Any:
            return super()._execute_iteration(*args, **kwargs)

    assert action_read_code(OwnLoop) is None
    assert _predictor_frames(make_rlm, OwnLoop) == ([True, True], codes)


def test_the_action_read_fast_path_switched_off_falls_back_to_the_stand_in(make_rlm, monkeypatch):
    from rlm_events._patch import action_read
    from rlm_events._patch.classes import instrumented_rlm_class

    monkeypatch.setattr(action_read, "ENABLED", False)
    instrumented_rlm_class.cache_clear()
    try:
        assert action_read.action_read_code(dspy.RLM) is None
        stand_in = not _runs_own_body()  # the loop body rlm-events runs, where it does, calls the predictor itself
        assert _predictor_frames(make_rlm) == ([stand_in, stand_in], ["print(1)", "SUBMIT(answer='ok')"])
    finally:
        monkeypatch.undo()
        instrumented_rlm_class.cache_clear()
