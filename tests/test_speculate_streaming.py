"""Speculate streams generate_action's LM call internally (the real LiteLLM client against the local
OpenAI-compatible server, streaming) and dispatches each call as soon as its statement is written; the action, the
history, the usage and the bill are those of the non-streamed run; anything that cannot stream falls back."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events.builtins import Speculate
from rlm_events.inprocess import InProcessInterpreter
from rlm_events.lm_usage import metered
from rlm_events.local_openai import NO_USAGE, Reply, error
from rlm_events.speculate.streamed import ActionStream, code_in_output, complete_statements
from rlm_events.testing import ScriptedLM, build_rlm

RELEASE = tuple(int(part) for part in re.findall(r"\d+", dspy.__version__)[:2])
INTERPRETER: Any = getattr(dspy, "LocalInterpreter", InProcessInterpreter)
STEPS = [
    "x = 1\nr = [llm_query(f'q{i}') for i in range(3)]\nfirst = r[0]\nsecond = r[1]\nprint(r)",
    "SUBMIT(answer=str(len(r)))",
]


def sub(prompt: str) -> str:
    return "answer " + prompt[-2:]


MODES = ["sync", "async"]  # rlm(...) and await rlm.acall(...): each streams with the same guarantees


def run(
    lm: Any, speculate: Speculate | None, steps: list[str] = STEPS, mode: str = "sync", question: str = "q"
) -> tuple[Any, dict[str, Any]]:
    rlm = build_rlm("question -> answer", max_iters=len(steps) + 1, interpreter_factory=INTERPRETER)
    events = rlm_events.instrument(rlm)
    seen: dict[str, Any] = {}
    if speculate is not None:
        speculate.install(events)
    events.tap(["run_end"], lambda ctx: seen.update(stats=Speculate.stats(ctx), usage=metered(ctx.run)), inline=True)

    async def acall() -> Any:
        with dspy.context(lm=lm):
            return await rlm.acall(question=question)

    if mode == "async":
        return asyncio.run(acall()), seen
    with dspy.context(lm=lm):
        prediction = rlm(question=question)
    return prediction, seen


def steps_of(prediction: Any) -> list[tuple[str, str]]:
    return [(e["code"], e["output"]) for e in prediction.trajectory]


def actions(lm: dspy.LM) -> list[Any]:
    """The main LM's actions in its history: their text and token counts."""
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    return [
        (h["outputs"], [dict(h["usage"])[k] for k in counts])
        for h in lm.history
        if "[[ ## code ## ]]" in str(h["outputs"])
    ]


@pytest.fixture
def lm_for():
    def make(server: Any, **options: Any) -> dspy.LM:
        options.setdefault("cache", False)
        return dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x", **options)

    return make


def test_calls_are_dispatched_while_the_lm_writes_and_everything_else_is_the_bare_runs(openai_server, lm_for):
    server = openai_server(STEPS, sub=sub, time_to_first_token=0.02, tokens_per_second=400)
    lm = lm_for(server)
    bare, _ = run(lm, None)
    bare_bill, bare_actions = server.bill, actions(lm)
    server.reset()
    lm.history.clear()
    fast, seen = run(lm, Speculate())
    stats = seen["stats"]
    assert steps_of(fast) == steps_of(bare) and fast.answer == bare.answer == "3"
    assert stats.stream == "streamed" and stats.streamed_chunks > 0
    assert stats.dispatched_streaming == stats.dispatched == 3 and stats.claimed == 3 and stats.planned == 3
    # The same requests were made and billed; the streamed actions' history (text and usage) is the bare run's.
    assert [r.streamed for r in server.bill.records].count(True) == 2
    assert (server.bill.calls, server.bill.total_tokens) == (bare_bill.calls, bare_bill.total_tokens)
    assert actions(lm) == bare_actions
    assert seen["usage"].tokens == server.bill.total_tokens


@pytest.mark.parametrize("mode", MODES)
def test_the_trace_is_the_non_streamed_runs(openai_server, lm_for, mode):
    # Every stage's record, timings and run-so-far usage aside (calls made ahead finish sooner when streamed), and
    # the final usage, are those of the same run planned when the code is complete; in rlm() and in acall alike.
    import io
    import json

    from rlm_events.trace import JsonlTrace

    timing = {"dt_prev_s", "t_mono", "t_wall", "run_id", "usage", "duration_s", "elapsed_s"}

    def traced(stream: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        server = openai_server(STEPS, sub=sub, time_to_first_token=0.01, tokens_per_second=1000)
        rlm = build_rlm("question -> answer", max_iters=3, interpreter_factory=INTERPRETER)
        events = rlm_events.instrument(rlm)
        out = io.StringIO()
        JsonlTrace(out).install(events)
        Speculate(stream=stream).install(events)
        with dspy.context(lm=lm_for(server)):
            rlm(question="q") if mode == "sync" else asyncio.run(rlm.acall(question="q"))
        rlm_events.flush()  # JsonlTrace writes its lines on the tap delivery worker
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        final = {k: v for k, v in lines[-1]["usage"].items() if "seconds" not in k}
        return [{k: v for k, v in line.items() if k not in timing} for line in lines], final

    complete, complete_usage = traced(False)
    streamed, streamed_usage = traced(True)
    assert streamed == complete and streamed_usage == complete_usage
    assert [line["stage"] for line in streamed].count("tool_call") == 3


@pytest.mark.parametrize("mode", MODES)
def test_stream_false_plans_when_the_code_is_complete(openai_server, lm_for, mode):
    server = openai_server(STEPS, sub=sub)
    _, seen = run(lm_for(server), Speculate(stream=False), mode=mode)
    stats = seen["stats"]
    assert stats.stream == "" and stats.dispatched_streaming == 0 and stats.claimed == 3
    assert not any(r.streamed for r in server.bill.records)


@pytest.mark.parametrize("mode", MODES)
def test_an_error_mid_stream_falls_back_and_usage_is_metered_once(openai_server, lm_for, caplog, mode):
    # The first request (the first action, streamed) fails. DSPy 3.4 raises it: the action is made again without
    # streaming. (LiteLLM under DSPy 3.1-3.3 may retry the stream itself.) Either way the run completes as without
    # speculation and the usage counted is what was billed, once.
    server = openai_server(STEPS, sub=sub, faults={0: error(500)})
    lm = lm_for(server, num_retries=0)
    with caplog.at_level(logging.INFO, logger="rlm_events"):
        prediction, seen = run(lm, Speculate(), mode=mode)
    stats = seen["stats"]
    assert prediction.answer == "3" and stats.claimed + stats.cancelled == 3 and stats.wasted == 0
    assert server.bill.records[0].status == 500
    assert seen["usage"].tokens == server.bill.total_tokens  # the failed request billed nothing, nothing counted
    if stats.stream.startswith("fallback"):
        assert stats.stream.startswith("fallback: the streamed call failed")
        assert server.bill.records[1].streamed is False
        assert sum("planning when the code is complete" in r.getMessage() for r in caplog.records) == 1
    else:
        assert RELEASE < (3, 4) and stats.stream == "streamed"


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_without_usage_is_counted_once_as_unmetered(openai_server, lm_for, mode):
    # The first action's answer comes without usage (streamed: no usage chunk). The run completes as without
    # speculation; the meter counts that call once: as a call whose usage it could not see (DSPy 3.4), or with
    # LiteLLM's estimate (3.1-3.3), and every other call's tokens as billed.
    server = openai_server(STEPS, sub=sub, faults={0: NO_USAGE})
    bare, _ = run(lm_for(server), None, mode=mode)
    server.reset()
    fast, seen = run(lm_for(server), Speculate(), mode=mode)
    assert steps_of(fast) == steps_of(bare) and seen["stats"].claimed + seen["stats"].cancelled == 3
    first = server.bill.records[0]
    assert first.streamed and not first.usage_sent
    usage = seen["usage"]
    assert usage.lm_calls == server.bill.calls
    sent = sum(r.total_tokens for r in server.bill.records if r.usage_sent)
    if RELEASE >= (3, 4):
        assert usage.unmetered_lm_calls == 1 and usage.tokens == sent
    else:  # LiteLLM assembles a stream's usage itself when none came; asked for it, the meter cannot tell that
        # this one is LiteLLM's estimate: it counts it once, as the call's usage (a known limit on DSPy 3.1-3.3)
        assert usage.unmetered_lm_calls == 0 and usage.tokens > sent


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_that_came_whole_but_does_not_parse_is_not_asked_again(openai_server, lm_for, mode):
    # The first action's answer streams in whole but has none of the signature's fields: the error is the
    # answer's, not the stream's. What follows (DSPy's adapter fallback, the RLM's handling) is the bare run's,
    # with the same requests billed: nothing is asked again because it was streamed.
    def play(speculate: Speculate | None) -> tuple[Any, Any, Any]:
        server = openai_server(STEPS, sub=sub, faults={0: Reply(text="no fields in this answer")})
        lm = lm_for(server)
        try:
            prediction, seen = run(lm, speculate, mode=mode)
            outcome: Any = steps_of(prediction)
        except Exception as exc:  # whatever the bare run does, the speculated one must do
            outcome, seen = type(exc).__name__, {}
        return outcome, [(r.status, r.total_tokens) for r in server.bill.records], seen.get("stats")

    bare, bare_bill, _ = play(None)
    fast, fast_bill, _ = play(Speculate())
    assert fast == bare and fast_bill == bare_bill


@pytest.fixture
def fresh_cache(tmp_path):
    """DSPy's cache in memory only, empty; the original cache comes back afterwards."""
    original = dspy.cache
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=str(tmp_path / "cache"))
    yield
    dspy.cache = original


@pytest.mark.parametrize("mode", MODES)
def test_a_cache_hit_falls_back(openai_server, lm_for, fresh_cache, mode):
    server = openai_server(STEPS, sub=sub)
    lm = lm_for(server, cache=True)
    steps = [STEPS[0].replace("x = 1", f"x = 'cache hit {mode}'"), STEPS[1]]
    first, _ = run(lm, Speculate(), steps, mode=mode)
    again, seen = run(lm, Speculate(), steps, mode=mode)
    assert steps_of(again) == steps_of(first)
    stats = seen["stats"]
    assert stats.stream.startswith("fallback: no chunk was streamed") and stats.claimed + stats.cancelled == 3


@pytest.mark.parametrize("mode", MODES)
def test_an_lm_that_cannot_stream_falls_back_logged_once(caplog, mode):
    lm = ScriptedLM(STEPS, sub=sub)
    with caplog.at_level(logging.INFO, logger="rlm_events"):
        _, seen = run(lm, Speculate(), mode=mode)
    assert seen["stats"].stream == "fallback: the main LM is a ScriptedLM, not a dspy.LM"
    assert seen["stats"].claimed + seen["stats"].cancelled == 3
    assert sum("planning when the code is complete" in r.getMessage() for r in caplog.records) == 1


# -- the statement splitter ---------------------------------------------------------------------------------


OUTPUT = (
    "[[ ## reasoning ## ]]\nthink\n\n[[ ## code ## ]]\n```python\nx = 1\nfor i in [1]:\n    y = i\n"
    "if x:\n    z = 2\nelse:\n    z = 3\nprint(z)\n```\n\n[[ ## completed ## ]]"
)


def test_only_complete_statements_are_planned_as_the_text_arrives():
    seen = []
    for end in range(len(OUTPUT) + 1):
        code = code_in_output(OUTPUT[:end])
        if code is not None:
            seen.append(complete_statements(code))
    # In order: nothing, the assignment, the loop with it, the if/else (only once `print` begins), and never a
    # prefix that ends inside a statement.
    assert sorted(set(seen), key=len) == [
        "",
        "x = 1\n",
        "x = 1\nfor i in [1]:\n    y = i\n",
        "x = 1\nfor i in [1]:\n    y = i\nif x:\n    z = 2\nelse:\n    z = 3\n",
    ]
    assert code_in_output("[[ ## reasoning ## ]]\nhm") is None
    assert complete_statements("x = [\n1,\n2]\ny = 1\n") == "x = [\n1,\n2]\n"
    assert complete_statements('s = """\nabc\n"""\nt = 1') == 's = """\nabc\n"""\n'
    assert complete_statements("try:\n    a = 1\nexc") == ""  # `exc` may become `except`


def test_an_action_stream_dispatches_each_new_call_once_and_never_raises(caplog):
    planned: list[str] = []
    dispatched: list[Any] = []

    def plan(code: str) -> list[Any]:
        planned.append(code)
        return [line for line in code.splitlines() if "llm_query" in line]

    stream = ActionStream(plan, dispatched.extend, lambda why: None)
    text = "[[ ## code ## ]]\n```python\na = llm_query('1')\nb = 2\nc = llm_query('3')\nd = 4\n```\n"
    for i in range(0, len(text), 5):
        stream.feed(text[i : i + 5])
    assert dispatched == ["a = llm_query('1')", "c = llm_query('3')"]

    def broken(code: str) -> list[Any]:
        raise RuntimeError("planner bug")

    failing = ActionStream(broken, dispatched.extend, lambda why: None)
    with caplog.at_level(logging.WARNING, logger="rlm_events"):
        for i in range(0, len(text), 5):
            failing.feed(text[i : i + 5])
    assert failing.broken and failing.text == text
    assert sum("could not plan a streamed action" in r.getMessage() for r in caplog.records) == 1


def test_a_generate_action_that_writes_piece_by_piece_can_feed_the_planner():
    # A generate_action that is no streamed dspy.Predict (a scripted or remote model) hands its text over as it is
    # written with rlm_events.runtime.feed_action_text: the calls of each complete statement start then.
    from rlm_events.runtime import feed_action_text

    steps = ["a = llm_query('first')\nb = llm_query('second')\nc = 1\nprint(a, b)", "SUBMIT(answer=a + b)"]
    fed: list[bool] = []

    def writer(rlm: Any) -> Any:
        script = iter(steps)

        def generate_action(**kwargs: Any) -> Any:
            code = next(script)
            fenced = f"```python\n{code}\n```"
            for i in range(0, len(fenced), 8):
                fed.append(feed_action_text(fenced[i : i + 8]))
            return dspy.Prediction(reasoning="r", code=fenced)

        return generate_action

    def once(speculate: Speculate | None) -> tuple[Any, Any]:
        rlm = build_rlm("question -> answer", max_iters=3, interpreter_factory=INTERPRETER)
        events = rlm_events.instrument(rlm)
        rlm.generate_action = writer(rlm)
        seen: dict[str, Any] = {}
        if speculate is not None:
            speculate.install(events)
        events.tap(["run_end"], lambda ctx: seen.update(stats=Speculate.stats(ctx)), inline=True)
        with dspy.context(lm=ScriptedLM(["unused"], sub=sub)):
            return rlm(question="q"), seen.get("stats")

    bare, _ = once(None)
    assert not any(fed)  # nobody reads the action without Speculate
    fast, stats = once(Speculate())
    assert steps_of(fast) == steps_of(bare) and fast.answer == bare.answer
    assert stats.dispatched_streaming == 2 and stats.claimed + stats.cancelled == 2 and stats.stream == "streamed"
    assert feed_action_text("outside any call") is False
