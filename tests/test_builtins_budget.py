"""Budget: stops by each limit kind on real loops, meters real LM usage per call (also concurrently), caps tools."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import Budget, Spend
from rlm_events.runtime import batched_queries_keep_context
from rlm_events.testing import ScriptedLM

PRINTS = [f"print('step {i}', len(text))" for i in range(8)]


def tokens(lm: ScriptedLM) -> int:
    return sum(entry["usage"]["total_tokens"] for entry in lm.history)


def cost(lm: ScriptedLM) -> float:
    return sum(entry["cost"] for entry in lm.history)


def spends(events) -> dict[str, Spend]:
    """The final Spend of every call, by its ``text`` input."""
    found: dict[str, Spend] = {}
    events.tap(["run_end"], lambda ctx: found.__setitem__(ctx.input_args["text"], Budget.spent(ctx)), inline=True)
    return found


def cumulative(make_rlm, measure: str, **lm_options) -> list[float]:
    """What a run has spent (``tokens`` or ``cost_usd``) after each iteration, measured by an unlimited Budget."""
    rlm, lm = make_rlm(PRINTS, max_iters=4, extract={"answer": "x"}, **lm_options)
    events = rlm_events.instrument(rlm)
    Budget().install(events)
    seen: list[float] = []
    events.tap(["post_iteration"], lambda ctx: seen.append(getattr(Budget.spent(ctx), measure)), inline=True)
    with dspy.context(lm=lm):
        rlm(text="some text")
    return seen


def test_stops_at_the_iteration_limit_through_the_extract_fallback(make_rlm):
    rlm, lm = make_rlm(PRINTS, max_iters=6, extract={"answer": "extracted"})
    events = rlm_events.instrument(rlm)
    Budget(max_iterations=2).install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        result = rlm(text="abc")
    assert result.answer == "extracted"
    assert len(result.trajectory) == 2
    spend = spent["abc"]
    assert (spend.iterations, spend.stopped_by, spend.reason) == (2, "iterations", "iterations: 2 spent, limit 2")
    assert spend.lm_calls == 3 == len(lm.history)  # two actions and the extract call, all metered


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stops_when_the_recorded_tokens_reach_the_limit(make_rlm, mode):
    after = cumulative(make_rlm, "tokens")
    assert after == sorted(after) and after[0] > 0
    rlm, lm = make_rlm(PRINTS, max_iters=6, extract={"answer": "x"})
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=int(after[1])).install(events)  # reached exactly at the end of the second iteration
    spent = spends(events)
    with dspy.context(lm=lm):
        result = rlm(text="some text") if mode == "sync" else asyncio.run(rlm.acall(text="some text"))
    spend = spent["some text"]
    assert len(result.trajectory) == 2 and spend.stopped_by == "tokens"
    assert spend.tokens == tokens(lm)  # every call of the run, extract included, from DSPy's own records
    assert spend.prompt_tokens + spend.completion_tokens == spend.tokens
    assert spend.unmetered_lm_calls == 0


def test_stops_when_the_recorded_cost_reaches_the_limit(make_rlm):
    after = cumulative(make_rlm, "cost_usd", cost_per_1k_tokens=0.25)
    rlm, lm = make_rlm(PRINTS, max_iters=6, extract={"answer": "x"}, cost_per_1k_tokens=0.25)
    events = rlm_events.instrument(rlm)
    Budget(max_cost_usd=after[2]).install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        result = rlm(text="some text")
    spend = spent["some text"]
    assert len(result.trajectory) == 3 and spend.stopped_by == "cost_usd"
    assert spend.cost_usd == pytest.approx(cost(lm)) and spend.cost_usd > 0
    assert spend.reason is not None and spend.reason.startswith("cost_usd: $")


def test_stops_on_wall_time(make_rlm):
    rlm, lm = make_rlm(PRINTS, max_iters=6, extract={"answer": "x"})
    events = rlm_events.instrument(rlm)
    Budget(max_seconds=1e-9).install(events)  # any real iteration takes longer
    spent = spends(events)
    with dspy.context(lm=lm):
        result = rlm(text="t")
    assert len(result.trajectory) == 1 and spent["t"].stopped_by == "seconds"
    assert spent["t"].seconds > 0


@pytest.mark.skipif(
    not batched_queries_keep_context(dspy.RLM),
    reason="before DSPy 3.3 llm_query_batched runs prompts in threads without the caller's context: not attributable",
)
def test_sub_lm_usage_is_counted(make_rlm):
    sub = ScriptedLM(["unused"], sub="a sub-LLM answer " * 30, model="cheap-sub", cost_per_1k_tokens=1.0)
    steps = ["print(llm_query('summarise ' + text))", "print(llm_query_batched(['a', 'b']))", "SUBMIT(answer='ok')"]
    rlm, lm = make_rlm(steps, sub_lm=sub, model="main", cost_per_1k_tokens=0.1)
    events = rlm_events.instrument(rlm)
    Budget().install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        assert rlm(text="doc").answer == "ok"
    spend = spent["doc"]
    assert len(sub.history) == 3
    assert spend.tokens_by_model == {"main": tokens(lm), "cheap-sub": tokens(sub)}
    assert spend.lm_calls == len(lm.history) + len(sub.history)
    assert spend.cost_usd == pytest.approx(cost(lm) + cost(sub))
    assert spend.tool_calls == {"llm_query": 1, "llm_query_batched": 1}


def test_tool_cap_denies_with_a_message_and_the_run_goes_on(make_rlm):
    sub = ScriptedLM(["unused"], sub="answer")
    steps = ["for i in range(3):\n    print(llm_query(f'q{i}'))", "SUBMIT(answer='done')"]
    rlm, lm = make_rlm(steps, sub_lm=sub)
    events = rlm_events.instrument(rlm)
    Budget(max_tool_calls={"llm_query": 2}).install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        result = rlm(text="t")
    lines = result.trajectory[0]["output"].splitlines()
    assert lines[:2] == ["answer", "answer"]
    assert lines[2].startswith("[Budget] llm_query was not called: this run may call it at most 2 time(s).")
    assert len(sub.history) == 2  # the third call was never made
    assert result.answer == "done"
    assert (spent["t"].tool_calls, spent["t"].denied_tool_calls) == ({"llm_query": 2}, {"llm_query": 1})


def test_tool_calls_are_denied_once_the_budget_is_spent(make_rlm):
    sub = ScriptedLM(["unused"], sub="answer")
    steps = ["print(llm_query_batched(['a', 'b']))", "SUBMIT(answer='done')"]
    rlm, lm = make_rlm(steps, sub_lm=sub)
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=1).install(events)  # the first action already spent more
    with dspy.context(lm=lm):
        result = rlm(text="t")
    assert result.trajectory[0]["output"].count("[Budget] llm_query_batched was not called") == 2  # one per prompt
    assert sub.history == []


def test_a_successful_submit_is_never_stopped(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    Budget(max_iterations=1, max_tokens=1).install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "ok"
    assert spent["t"].stopped_by is None and spent["t"].iterations == 1


def test_concurrent_async_calls_sharing_one_budget_and_one_lm_each_count_their_own(make_rlm):
    texts = ["a", "b" * 200, "c" * 500, "d" * 900]  # under the 1,000-char preview: distinct prompts
    steps = ["print(len(text))", "print(llm_query(text[:50]))", "SUBMIT(answer=str(len(text)))"]

    def build():
        sub = ScriptedLM(["unused"], sub=lambda prompt: "x" * len(prompt), model="sub")
        rlm, lm = make_rlm(steps, sub_lm=sub, model="main")
        events = rlm_events.instrument(rlm)
        Budget().install(events)
        return rlm, lm, sub, spends(events)

    rlm, lm, _, alone = build()
    with dspy.context(lm=lm):
        for text in texts:
            rlm(text=text)
    solo = {t: (s.tokens, s.lm_calls, s.tokens_by_model) for t, s in alone.items()}
    assert len({tokens for tokens, _, _ in solo.values()}) == len(texts)  # each call's usage is distinct

    rlm, lm, sub, together = build()
    boundaries: list[str] = []
    rlm_events.instrumentation_of(rlm).tap(
        ["run_start", "run_end"], lambda ctx: boundaries.append(ctx.stage.value), inline=True
    )

    async def all_at_once():
        return await asyncio.gather(*(rlm.acall(text=t) for t in texts))

    with dspy.context(lm=lm):
        results = asyncio.run(all_at_once())
    assert [r.answer for r in results] == [str(len(t)) for t in texts]
    assert boundaries[: len(texts)] == ["run_start"] * len(texts)  # the calls really overlapped
    assert {t: (s.tokens, s.lm_calls, s.tokens_by_model) for t, s in together.items()} == solo
    assert sum(s.tokens for s in together.values()) == tokens(lm) + tokens(sub)


def test_concurrent_threads_sharing_one_budget_each_count_their_own(make_rlm):
    texts = ["short", "m" * 300, "l" * 800]
    rlm, lm = make_rlm(["print(len(text))", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    budget = Budget().install(events)
    spent = spends(events)
    with dspy.context(lm=lm):
        for text in texts:
            rlm(text=text)
    solo = {t: s.tokens for t, s in spent.items()}
    spent.clear()

    def call(text):
        with dspy.context(lm=lm):
            return rlm(text=text)

    with ThreadPoolExecutor(len(texts)) as pool:
        list(pool.map(call, texts))
    assert {t: s.tokens for t, s in spent.items()} == solo
    assert budget.max_tokens is None


def test_without_history_calls_are_counted_as_unmetered(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=10).install(events)
    spent = spends(events)
    with dspy.context(lm=lm, disable_history=True):
        assert rlm(text="t").answer == "ok"
    spend = spent["t"]
    assert (spend.lm_calls, spend.unmetered_lm_calls, spend.tokens, spend.stopped_by) == (2, 2, 0, None)


def test_the_meter_is_shared_by_copies_and_idle_outside_runs(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    Budget().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        rlm(text="t")
        rlm(text="t")
    assert len(lm.callbacks) == 1  # attached once
    meter = lm.callbacks[0]
    assert lm.copy().callbacks[0] is meter
    lm("a call outside any run")  # ignored, no error
    assert meter._pending == {}


def test_bad_budgets_fail_at_construction_or_install(make_rlm):
    with pytest.raises(ValueError, match="max_tokens"):
        Budget(max_tokens=0)
    with pytest.raises(TypeError, match=r"max_iterations=\.\.\.\) must be an int"):
        Budget(max_iterations=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_cost_usd"):
        Budget(max_cost_usd="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tool_calls"):
        Budget(max_tool_calls={"llm_query": -1})
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    with pytest.raises(ValueError, match="no tool named 'llm_qery'; did you mean 'llm_query'"):
        Budget(max_tool_calls={"llm_qery": 1}).install(rlm_events.instrument(rlm))


# -- hard caps -------------------------------------------------------------------------------------------------

HARD_STEPS = ["print(llm_query('summarise part ' + str(len(text))))"]  # every iteration: one action, one sub call


def hard_run(make_rlm, limit: int, *, hard: bool) -> Any:
    rlm, lm = make_rlm(HARD_STEPS, max_iters=30, sub="a summary " * 20, extract={"answer": "enough"})
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=limit, hard=hard).install(events)
    spent: list[Any] = []
    events.tap([Stage.RUN_END], lambda ctx: spent.append(Budget.spent(ctx)), inline=True)
    with dspy.context(lm=lm):
        rlm(text="x" * 400)
    return spent[0]


@pytest.mark.parametrize("limit", [1_500, 3_000, 5_000, 8_000, 12_000])
def test_a_hard_budget_exceeds_its_cap_by_at_most_one_lm_call(make_rlm, limit):
    spend = hard_run(make_rlm, limit, hard=True)
    assert spend.stopped_by == "tokens" and "(hard)" in (spend.reason or "")
    assert spend.tokens <= limit + spend.largest_call_tokens  # the extract call, after the stop
    soft = hard_run(make_rlm, limit, hard=False)
    assert soft.tokens > spend.tokens  # the soft budget stops only after the limit was reached


def test_a_hard_budget_denies_sub_llm_calls_it_cannot_cover(make_rlm):
    rlm, lm = make_rlm(["print(llm_query_batched(['q'] * 40))", "SUBMIT(answer='done')"], sub="word " * 50, max_iters=3)
    events = rlm_events.instrument(rlm)
    Budget(max_tokens=4_000, hard=True).install(events)
    with dspy.context(lm=lm):
        result = rlm(text="t")
    output = result.trajectory[0]["output"]
    assert "[Budget] llm_query_batched was not called: this run's hard budget cannot cover 40 more LM call(s)" in output
    sub_calls = [e for e in lm.history if "word word" in str(e.get("outputs"))]
    assert sub_calls == []  # none of the 40 was made


def test_hard_must_be_a_bool():
    with pytest.raises(TypeError, match="hard"):
        Budget(max_tokens=10, hard="yes")  # type: ignore[arg-type]
