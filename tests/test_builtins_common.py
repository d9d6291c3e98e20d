"""What every built-in shares: one-line install on its stages, uninstall, and a clear error on a wrong stage."""

from __future__ import annotations

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import Budget, CodeGuard, HistoryTrimmer, RetryHint, ToolCallCache

BUILTINS = [CodeGuard(), Budget(), RetryHint(), HistoryTrimmer(), ToolCallCache()]
EXPECTED_STAGES = {
    CodeGuard: {Stage.PRE_EXECUTION},
    Budget: {Stage.RUN_START, Stage.TOOL_CALL, Stage.POST_ITERATION, Stage.RUN_END},
    RetryHint: {Stage.POST_EXECUTION},
    HistoryTrimmer: {Stage.PRE_ITERATION},
    ToolCallCache: {Stage.TOOL_CALL},
}


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda b: type(b).__name__)
def test_install_registers_exactly_its_stages_and_uninstall_removes_it(make_rlm, builtin):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    assert builtin.install(events) is builtin
    registered = {stage for stage, chain in events.plan.chains.items() if builtin in list(chain)}
    assert registered == EXPECTED_STAGES[type(builtin)]
    builtin.uninstall(events)
    assert not any(builtin in list(chain) for chain in events.plan.chains.values())


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda b: type(b).__name__)
def test_a_builtin_used_at_a_wrong_stage_fails_the_run_naming_it(make_rlm, builtin):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    per_iteration = [Stage.PRE_ITERATION, Stage.PRE_EXECUTION, Stage.POST_EXECUTION, Stage.POST_ITERATION]
    wrong = next(stage for stage in per_iteration if stage not in builtin.STAGES)
    with dspy.context(lm=lm), pytest.raises(TypeError, match=rf"{type(builtin).__name__} is a middleware for stage"):
        events.use(wrong, builtin)  # refused here once the core checks built-ins at registration
        rlm(text="x")


def test_all_builtins_together_in_one_async_run(make_rlm):
    import asyncio

    from rlm_events.testing import ScriptedLM

    sub = ScriptedLM(["unused"], sub="sub")
    steps = ["import os", "print(valuez)", "print(llm_query('q'), llm_query('q'))", "SUBMIT(answer='ok')"]
    rlm, lm = make_rlm(steps, sub_lm=sub)
    events = rlm_events.instrument(rlm)
    for builtin in (ToolCallCache(), Budget(max_iterations=10), CodeGuard(), RetryHint(), HistoryTrimmer()):
        builtin.install(events)
    with dspy.context(lm=lm):
        result = asyncio.run(rlm.acall(text="x"))
    outputs = [e["output"] for e in result.trajectory]
    assert outputs[0].startswith("[Error] CodeGuard refused")
    assert "[Hint] NameError" in outputs[1]
    assert outputs[2] == "sub sub" and len(sub.history) == 1
    assert result.answer == "ok"
