"""The registration API in one order, (stage, callable), each call with its inverse, and clear errors for misuse."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage, signals
from rlm_events.builtins import CodeGuard
from rlm_events.installable import Installable, Registrations
from rlm_events.replay import ReplayTools
from rlm_events.taps.timings import StageTimings


def run(rlm: dspy.RLM, lm: Any) -> dspy.Prediction:
    with dspy.context(lm=lm):
        return rlm(text="t")


def test_every_registration_has_its_inverse(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    heard: list[str] = []

    def mw(ctx, next):
        heard.append("middleware")
        return next(ctx)

    def tap(ctx):
        heard.append("tap")

    def receiver(sender, ctx):
        heard.append("receiver")

    events.use(Stage.RUN_END, mw)
    events.tap([Stage.RUN_END], tap, inline=True)
    events.connect(Stage.RUN_END, receiver, weak=False)
    run(rlm, lm)
    assert heard == ["middleware", "receiver", "tap"]
    events.remove(Stage.RUN_END, mw)
    events.untap(tap)
    events.disconnect(Stage.RUN_END, receiver)
    heard.clear()
    run(rlm, lm)
    assert heard == []


def test_clear_removes_middleware_taps_and_connected_receivers(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    heard: list[str] = []
    events.use(Stage.RUN_START, lambda ctx, next: (heard.append("mw"), next(ctx))[1])
    events.tap(lambda ctx: heard.append("tap"), inline=True)
    events.connect(Stage.RUN_END, lambda sender, ctx: heard.append("receiver"), weak=False)
    events.clear()
    run(rlm, lm)
    assert heard == [] and not any(True for _ in signals.run_end.receivers_for(rlm))


def test_remove_all_takes_a_middleware_off_every_stage(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    stages: list[str] = []

    def mw(ctx, next):
        stages.append(ctx.stage.value)
        return next(ctx)

    events.middleware(Stage.RUN_START, Stage.RUN_END)(mw)
    events.remove_all(mw)
    run(rlm, lm)
    assert stages == []


def test_middleware_without_a_stage_says_a_stage_is_missing(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    with pytest.raises(TypeError, match="a stage is missing"):

        @events.middleware  # type: ignore[arg-type]
        def forgot(ctx, next):
            return next(ctx)

    with pytest.raises(TypeError, match="a stage is missing"):
        events.middleware()


def test_tap_with_the_old_argument_order_is_refused(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    with pytest.raises(TypeError, match=r"tap\(stages, fn\)"):
        events.tap(print, ["run_end"], inline=True)


@pytest.mark.parametrize("bad", [123, ["a"], b"bytes"])
def test_skip_takes_text_naming_the_stage(make_rlm, bad):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_EXECUTION)
    def skip(ctx, next):
        ctx.skip(bad)
        return next(ctx)

    with pytest.raises(TypeError, match=r"pre_execution: skip\(\) expects the text .* got"):
        run(rlm, lm)


def test_signals_are_reached_one_way():
    assert "BY_STAGE" not in signals.__all__ and not hasattr(signals, "for_stage")
    assert all(getattr(signals, stage.value).name == stage.value for stage in Stage)


def test_built_ins_taps_and_replay_tools_share_one_install_protocol(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    from rlm_events.replay import Recording

    recording = Recording(run_id="r", module="RLM", started_at="2026-01-01T00:00:00Z")
    installables = [CodeGuard(), StageTimings(), ReplayTools(recording)]
    for item in installables:
        assert isinstance(item, Installable) and isinstance(item.registrations(), Registrations)
        item.install(events)
    assert events.plan.busy[Stage.PRE_EXECUTION] and events.plan.busy[Stage.TOOL_CALL]
    for item in installables:
        item.uninstall(events)
    assert not any(events.plan.busy.values())
