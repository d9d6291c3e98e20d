"""A resumed durable run pays no sub-agent call again: the predictors the REPL's code builds and calls through DSPy's
sandbox `dspy` facade (DSPy 3.4.1+: `p = dspy.Predict("q -> a"); p(q=...)`), whose calls never pass the `tool_call`
stage, are answered from the record like the tools are; building them (free, host-side) runs again.

Real `dspy.RLM`s with the real LiteLLM client: the actions and the sub-LM are served by two local OpenAI-compatible
servers, and the sub-LM server's bill counts the sub-agent calls that reached an LM. The worker dies as in
tests/test_durable.py (a tool raising a `BaseException`). The patch layer's routing of the facade's calls
(`rlm_events._patch.facade`) is pinned on the installed release first."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER
from test_durable import Tools, WorkerDied
from test_durable_combos import interpreters, steps_of
from test_durable_llm_calls import Servers, call, crash_and_resume
from test_durable_llm_calls import make as make_durable

import rlm_events
from rlm_events.durable import DivergenceError, Durable, SQLiteStore
from rlm_events.runtime import around_facade_calls
from rlm_events.testing import ScriptedLM, build_rlm

HAS_FACADE = importlib.util.find_spec("dspy.primitives.facade") is not None
needs_facade = pytest.mark.skipif(not HAS_FACADE, reason="DSPy's sandbox dspy facade is DSPy 3.4.1+")

NONDETERMINISTIC = [
    "import uuid\np = dspy.Predict('q -> a')\nr = p(q=uuid.uuid4().hex)\nprint(len(r.a))",
    "k = lookup(key='c')\nprint(k)",
    "SUBMIT(answer=k)",
]
PAST_THE_LIMIT = [  # with max_llm_calls=2
    "p = dspy.Predict('q -> a')\nr1 = p(q='x1')\nr2 = p(q='x2')\nprint(r1.a, r2.a)",
    "k = lookup(key='c')\ntry:\n    r3 = p(q='x3').a\nexcept Exception:\n    r3 = 'refused'\nprint(r3)",
    "SUBMIT(answer=r1.a + r2.a + k + r3)",
]
STEPS = [
    "p = dspy.Predict('q -> a')\nr1 = p(q='x1')\nprint(r1.a)",
    "r2 = p(q='x2')\nk = lookup(key='b')\nprint(r2.a, k)",
    "c = lookup(key='c')\nprint(c)",
    "SUBMIT(answer=r1.a + r2.a + k + c)",
]


def sub(prompt: str) -> str:
    """The sub-agent's answer, in the ChatAdapter's format: its input `q`, marked."""
    found = re.search(r"\[\[ ## q ## \]\]\n(.*?)\n", prompt)
    return f"[[ ## a ## ]]\nA{found.group(1) if found else '?'}\n\n[[ ## completed ## ]]"


def make(
    tools: Tools, store: SQLiteStore, servers: Servers, interpreter: Any, max_llm_calls: int = 20
) -> tuple[dspy.RLM, Durable]:
    return make_durable(tools, store, servers, interpreter, max_llm_calls=max_llm_calls)


def test_the_patch_layer_routes_the_facades_predictor_calls_on_this_release(
    openai_server: Callable[..., Any],
) -> None:
    """Pins `rlm_events._patch.facade` to the installed DSPy: from 3.4.1 each predictor call the code makes goes
    through the function routed around it (with the handle and inputs, and the real call's fields); before 3.4.1
    there is no facade and routing answers `False`."""
    servers = Servers(openai_server, STEPS, sub)
    tools = Tools()
    rlm = build_rlm(
        "text -> answer",
        max_iters=6,
        tools=[tools.lookup],
        sub_lm=servers.sub_lm(),
        interpreter_factory=REAL_INTERPRETER,
    )
    events = rlm_events.instrument(rlm)
    seen: list[tuple[Any, Any]] = []
    routed: list[bool] = []
    runs: list[Any] = []

    def around(real: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = real(*args, **kwargs)
        seen.append((args, kwargs))
        return result

    def route(ctx: Any, next: Any) -> Any:
        routed.append(around_facade_calls(ctx.run, around))
        routed.append(around_facade_calls(ctx.run, around))  # once: the second changes nothing
        runs.append(ctx.run)
        return next(ctx)

    events.use("pre_iteration", route)
    actions: Any = servers.lm() if HAS_FACADE else ScriptedLM(["print(1)", "SUBMIT(answer='a')"])
    with dspy.context(lm=actions):
        prediction = rlm(text="t")
    if not HAS_FACADE:
        assert routed and not any(routed) and not seen
        return
    assert routed and all(routed)
    assert prediction.answer == "Ax1Ax2BBCC"
    assert [kwargs.get("inputs") for _, kwargs in seen] == [{"q": "x1"}, {"q": "x2"}]  # each call once
    assert servers.sub_calls() == 2
    assert around_facade_calls(runs[0], around) is False  # outside an iteration of the run


@needs_facade
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", interpreters())
@pytest.mark.parametrize(
    "die_on",
    [
        pytest.param("b", id="in-flight"),  # iteration 2 in flight: p(q='x2') is answered from the record
        pytest.param("c", id="replayed"),  # iterations 1-2 replayed, each sub-agent call answered from the record
    ],
)
def test_a_resumed_run_pays_no_sub_agent_call_again(
    tmp_path: Path, openai_server: Callable[..., Any], interpreter: Any, is_async: bool, die_on: str
) -> None:
    servers = Servers(openai_server, STEPS, sub)
    store = SQLiteStore(tmp_path / "runs.db")
    rlm, _ = make(Tools(), store, servers, interpreter)
    with dspy.context(lm=servers.lm()):
        whole = call(rlm, is_async)
    assert whole.answer == "Ax1Ax2BBCC"
    assert servers.sub_calls() == 2
    servers.sub.reset()

    resumed, before, run_id = crash_and_resume(
        lambda tools: make(tools, store, servers, interpreter), servers, die_on, is_async
    )
    assert before == 2  # both sub-agent calls were made before the worker died
    assert resumed.answer == whole.answer
    assert steps_of(resumed) == steps_of(whole)
    assert servers.sub_calls() == 2  # over the dead worker and the resuming one: as in the uninterrupted run
    assert store.load(run_id).status == "done"


@needs_facade
def test_a_replayed_sub_agent_call_the_record_lacks_is_a_divergence(
    tmp_path: Path, openai_server: Callable[..., Any]
) -> None:
    """Code that calls its sub-agent with other inputs on replay (non-determinism) is reported with the iteration,
    never paid again silently."""
    servers = Servers(openai_server, NONDETERMINISTIC, sub)
    tools = Tools()
    tools.die_on = "c"
    store = SQLiteStore(tmp_path / "runs.db")
    rlm, durable = make(tools, store, servers, REAL_INTERPRETER)
    lm = servers.lm()
    with dspy.context(lm=lm), pytest.raises(WorkerDied):
        rlm(text="t")
    run_id = durable.last_run_id
    assert run_id is not None and servers.sub_calls() == 1
    _, other = make(tools, store, servers, REAL_INTERPRETER)
    with dspy.context(lm=lm), pytest.raises(DivergenceError, match="iteration 1"):
        other.resume(run_id)
    assert servers.sub_calls() == 1  # the call with other inputs was not made


@needs_facade
def test_a_resumed_run_counts_its_replayed_sub_agent_calls_against_max_llm_calls(
    tmp_path: Path, openai_server: Callable[..., Any]
) -> None:
    """The facade charges DSPy's `max_llm_calls`: the sub-agent calls answered from the record count as they did,
    so the call past the limit is refused after a resume as in the uninterrupted run, and never reaches the LM."""
    servers = Servers(openai_server, PAST_THE_LIMIT, sub)
    store = SQLiteStore(tmp_path / "runs.db")

    def build(tools: Tools) -> tuple[dspy.RLM, Durable]:
        return make(tools, store, servers, REAL_INTERPRETER, max_llm_calls=2)

    rlm, _ = build(Tools())
    with dspy.context(lm=servers.lm()):
        whole = rlm(text="t")
    assert whole.answer == "Ax1Ax2CCrefused" and servers.sub_calls() == 2
    servers.sub.reset()
    resumed, before, _ = crash_and_resume(build, servers, "c", is_async=False)
    assert before == 2
    assert resumed.answer == whole.answer and steps_of(resumed) == steps_of(whole)
    assert servers.sub_calls() == 2
