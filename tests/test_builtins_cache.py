"""ToolCallCache: repeated identical calls within a run are served without calling the sub-LLM or tool again."""

from __future__ import annotations

import asyncio

import dspy
import pytest

import rlm_events
from rlm_events.builtins import Budget, ToolCallCache
from rlm_events.testing import ScriptedLM

REPEATS = "a = llm_query('same')\nb = llm_query('same')\nc = llm_query('other')\nprint(a == b, a != c)"


def states(events):
    found = []
    events.tap(["run_end"], lambda ctx: found.append(ctx.run.state), inline=True)
    return found


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hit_avoids_the_second_sub_llm_call(make_rlm, mode):
    sub = ScriptedLM(["unused"], sub=lambda prompt: f"answer to {prompt}")
    rlm, lm = make_rlm([REPEATS, "SUBMIT(answer=b)"], sub_lm=sub)
    events = rlm_events.instrument(rlm)
    ToolCallCache().install(events)
    seen = states(events)
    with dspy.context(lm=lm):
        result = rlm(text="t") if mode == "sync" else asyncio.run(rlm.acall(text="t"))
    assert result.trajectory[0]["output"] == "True True"
    assert result.answer == "answer to same"
    assert [h["prompt"] for h in sub.history] == ["same", "other"]
    cache = seen[0]["tool_cache"]
    assert (cache.hits, cache.misses) == (1, 2)


def test_runs_do_not_share_a_cache(make_rlm):
    sub = ScriptedLM(["unused"], sub="x")
    rlm, lm = make_rlm(["print(llm_query('same'))", "SUBMIT(answer='ok')"], sub_lm=sub)
    ToolCallCache().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        rlm(text="t")
        rlm(text="t")
    assert len(sub.history) == 2


def test_named_user_tools_are_cached_and_others_are_not(make_rlm):
    calls: list[str] = []

    def lookup(key: str) -> str:
        calls.append(key)
        return key.upper()

    # Keyword calls: DSPy 3.4's LocalInterpreter passes positional arguments to user tools that take keywords only.
    steps = [
        "print(lookup(key='k'), lookup(key='k'), lookup(key='j'), llm_query('q'), llm_query('q'))",
        "SUBMIT(answer='ok')",
    ]
    sub = ScriptedLM(["unused"], sub="s")
    rlm, lm = make_rlm(steps, tools=[lookup], sub_lm=sub)
    ToolCallCache(tools=("lookup",)).install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="t")
    assert result.trajectory[0]["output"] == "K K J s s"
    assert calls == ["k", "j"]
    assert len(sub.history) == 2  # llm_query was not opted in


def test_hits_before_a_budget_are_free_and_denials_are_never_cached(make_rlm):
    sub = ScriptedLM(["unused"], sub="s")
    code = "print(llm_query('x'), llm_query('x'), llm_query('y'), llm_query('y'))"
    rlm, lm = make_rlm([code, "SUBMIT(answer='ok')"], sub_lm=sub)
    events = rlm_events.instrument(rlm)
    ToolCallCache().install(events)
    Budget(max_tool_calls={"llm_query": 1}).install(events)
    seen = states(events)
    with dspy.context(lm=lm):
        result = rlm(text="t")
    assert result.trajectory[0]["output"].startswith("s s [Budget] llm_query was not called")
    cache, spend = seen[0]["tool_cache"], seen[0]["budget"]
    assert len(cache.results) == 1 and cache.hits == 1
    assert (spend.tool_calls, spend.denied_tool_calls) == ({"llm_query": 1}, {"llm_query": 2})
    assert len(sub.history) == 1


def test_bad_options_fail_at_construction_or_install(make_rlm):
    with pytest.raises(TypeError, match="collection of tool names"):
        ToolCallCache(tools="llm_query")
    with pytest.raises(ValueError, match="one or more tool names"):
        ToolCallCache(tools=())
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    with pytest.raises(ValueError, match="no tool named 'lookup'"):
        ToolCallCache(tools=("lookup",)).install(rlm_events.instrument(rlm))
