"""Speculate plans past calls it cannot follow: known side-effect-free library functions are no barrier, pure tools
and sub-LLM calls are made ahead past unknown calls (and mispredictions are counted), the conservative order stays
available, and a tool not marked pure is never called ahead."""

from __future__ import annotations

import ast
import time
from typing import Any

import pytest
from test_speculate import Counter, run, steps_of

from rlm_events.builtins import Speculate
from rlm_events.speculate.library import SIDE_EFFECT_FREE
from rlm_events.speculate.planner import Planner

TOOLS = frozenset({"llm_query", "llm_query_batched", "lookup", "log_event"})
SPECULABLE = frozenset({"llm_query", "llm_query_batched", "lookup"})


def planned(code: str, *, past_unknown_calls: bool = True, values: dict[str, Any] | None = None) -> list[Any]:
    plan = Planner(
        speculable=SPECULABLE,
        tools=TOOLS,
        values=values or {},
        absent=frozenset(),
        past_unknown_calls=past_unknown_calls,
    ).run(ast.parse(code))
    return [(c.name, c.args or tuple(c.kwargs.values()), c.after_unknown) for c in plan.calls]


TIMING = (
    "import time\nimport json\nnow = time.perf_counter\ntimings = {}\n"
    "for name in ['a', 'b']:\n    t0 = now()\n    r = lookup(item=name)\n"
    "    timings[name] = round((now() - t0) * 1000, 1)\n"
    "print('TIMINGS ' + json.dumps(timings))\nx = llm_query('q')\n"
)


@pytest.mark.parametrize("past_unknown_calls", [True, False])
def test_timing_code_and_its_aliases_are_no_barrier(past_unknown_calls):
    expected = [("lookup", ("a",), False), ("lookup", ("b",), False), ("llm_query", ("q",), False)]
    assert planned(TIMING, past_unknown_calls=past_unknown_calls) == expected
    aliased = "from time import perf_counter as pc\nimport json as j\nt = pc()\nj.dumps([t])\nlookup('a')"
    assert planned(aliased, past_unknown_calls=past_unknown_calls) == [("lookup", ("a",), False)]


@pytest.mark.parametrize(
    "barrier",
    [
        "import os\nos.remove('f')",  # a library function not known to be side-effect free
        "def f():\n    pass\nf()",  # a function of the code
        "log_event('x')",  # a tool not marked pure
        "now = perf_counter\nnow()",  # a REPL name, not the code's import: unknown whatever its name says
        "import time as t\nt.sleep_and_write('x')",
    ],
)
def test_calls_it_cannot_follow_stop_pure_tools_only_in_the_conservative_order(barrier):
    code = f"{barrier}\nlookup('a')\nllm_query('q')"
    assert planned(code) == [("lookup", ("a",), True), ("llm_query", ("q",), True)]
    assert planned(code, past_unknown_calls=False) == [("llm_query", ("q",), True)]


def test_an_import_rebinds_and_a_rebinding_forgets():
    # `time` rebound by the code after its import is no longer the library's; a call of it is a barrier.
    code = "import time\ntime = make_clock()\ntime.perf_counter()\nlookup('a')"
    assert planned(code) == [("lookup", ("a",), True)]
    assert "time.perf_counter" in SIDE_EFFECT_FREE


def test_a_side_effect_free_call_keeps_what_it_was_given():
    code = "import json\nitems = ['a', 'b']\njson.dumps(items)\nfor i in items:\n    lookup(i)"
    assert [c[1] for c in planned(code, past_unknown_calls=False)] == [("a",), ("b",)]


@pytest.fixture
def tools(counter: Counter) -> dict[str, Any]:
    state = {"written": "old"}

    def lookup(item: str) -> str:
        """Pure: depends only on its argument."""
        counter.record("lookup", item)
        time.sleep(0.05)
        return f"<{item}>"

    def log_event(message: str) -> str:
        """Not pure: it writes somewhere."""
        counter.record("log_event", message)
        state["written"] = message
        return "logged"

    return {"lookup": lookup, "log_event": log_event}


@pytest.fixture
def counter() -> Counter:
    return Counter()


def test_pure_calls_past_unknown_calls_are_made_ahead_and_results_stay_those_of_the_bare_run(make_rlm, tools, counter):
    code = TIMING.replace("x = llm_query('q')\n", "print(r, sorted(timings))\n").replace("print('TIMINGS", "('TIMINGS")
    steps = [code, "SUBMIT(answer=r)"]
    bare, _, _, _ = run(make_rlm, steps, tools=tools, counter=counter)
    counter.calls.clear()
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
    assert steps_of(fast) == steps_of(bare)
    assert stats.claimed + stats.cancelled == 2 and stats.wasted == 0 and stats.misprediction_rate == 0.0
    assert counter.count("lookup") == 2


def test_a_misprediction_past_an_unknown_call_is_wasted_counted_and_the_real_call_made(make_rlm, tools, counter):
    # The shadow does not follow what the code's function does to a global: it plans lookup('a'), the code calls
    # lookup('b'). The call made ahead is wasted, the real one made; the result is the bare run's.
    steps = [
        "def change():\n    global p\n    p = 'b'\nprint('defined')",
        "p = 'a'\nchange()\nr = lookup(item=p)\nprint(r)",
        "SUBMIT(answer=r)",
    ]
    bare, _, _, _ = run(make_rlm, steps, tools=tools, counter=counter)
    counter.calls.clear()
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
    assert steps_of(fast) == steps_of(bare) and fast.answer == "<b>"
    assert (stats.dispatched, stats.past_unknown, stats.claimed, stats.missed) == (1, 1, 0, 1)
    assert stats.wasted + stats.cancelled == 1 and stats.past_unknown_wasted == stats.wasted
    counter.calls.clear()
    slow, _, stats, _ = run(
        make_rlm, steps, speculate=Speculate(pure=["lookup"], past_unknown_calls=False), tools=tools, counter=counter
    )
    assert steps_of(slow) == steps_of(bare) and stats.dispatched == 0 and counter.ahead("lookup") == 0


def test_the_misprediction_rate_and_wasted_tokens_of_sub_llm_calls(make_rlm, counter):
    steps = [
        "def change():\n    global p\n    p = 'b'\nprint('defined')",
        "p = 'a'\nchange()\nr = llm_query(p)\nok = llm_query('fixed')\nprint(r, ok)",
        "SUBMIT(answer=r)",
    ]
    _, _, stats, state = run(make_rlm, steps, speculate=Speculate(), counter=counter)
    assert stats.past_unknown == 2 and stats.wasted == stats.past_unknown_wasted == 1
    assert stats.misprediction_rate == pytest.approx(stats.wasted / (stats.claimed + stats.wasted))
    assert stats.wasted_tokens == state["usage"].wasted_tokens > 0 and stats.tokens >= stats.wasted_tokens


def test_a_tool_not_marked_pure_is_never_called_ahead_past_anything(make_rlm, tools, counter):
    steps = [
        "import time\nt0 = time.perf_counter()\nfor m in ['x', 'y']:\n    log_event(message=m)\n"
        "lookup(item='z')\nprint('ok')",
        "SUBMIT(answer='done')",
    ]
    _, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
    assert counter.count("log_event") == 2 and counter.ahead("log_event") == 0
    assert stats.planned == 1


def test_the_option_is_checked_and_shown():
    with pytest.raises(TypeError, match=r"past_unknown_calls=\.\.\.\) must be True or False"):
        Speculate(past_unknown_calls="no")  # type: ignore[arg-type]
    assert "past_unknown_calls=False" in repr(Speculate(past_unknown_calls=False))
    assert "past_unknown_calls" not in repr(Speculate())
