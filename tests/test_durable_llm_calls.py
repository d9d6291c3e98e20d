"""A resumed or forked durable run counts DSPy's `max_llm_calls` as the uninterrupted run did: the sub-LLM calls
answered from the record count, so the `max_llm_calls + 1`-th call fails in the same place, and no more sub-LLM
calls reach the LM than an uninterrupted run could make.

Real `dspy.RLM`s with the real LiteLLM client: the actions and the sub-LM are served by two local OpenAI-compatible
servers, and the sub-LM server's bill counts the sub-LLM calls that reached an LM. The worker dies as in
tests/test_durable.py (a tool raising a `BaseException`). The patch layer's reading of DSPy's counter
(`rlm_events._patch.llm_calls`) is pinned on the installed release at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pytest
from test_durable import Tools, WorkerDied
from test_durable_combos import interpreters

import rlm_events
from rlm_events.durable import Durable, RecordMismatchError, SQLiteStore
from rlm_events.runtime import counts_llm_calls
from rlm_events.testing import build_rlm

MAX_LLM_CALLS = 3
STEPS = [
    "a = llm_query('p1')\nb = lookup(key='a')\nprint(a, b)",
    "r = llm_query_batched(['p2', 'p3'])\nprint(r)",
    "c = lookup(key='c')\ntry:\n    d = llm_query('p4')\nexcept Exception as e:\n    d = f'refused: {e}'\nprint(d)",
    "SUBMIT(answer=' '.join([a, *r, d]))",
]
REFUSED = f"LLM call limit exceeded: {MAX_LLM_CALLS} + 1 > {MAX_LLM_CALLS}"


def sub(prompt: str) -> str:
    return "S" + prompt.strip()[-2:]


class Servers:
    """The actions' server (playing `steps`) and the sub-LM's (answering `answer(prompt)`), whose bill counts the
    sub-LLM calls that reached an LM."""

    def __init__(
        self, openai_server: Callable[..., Any], steps: list[str] = STEPS, answer: Callable[[str], str] = sub
    ) -> None:
        self.actions = openai_server(steps)
        self.sub = openai_server(["unused"], sub=answer)

    def lm(self) -> dspy.LM:
        return dspy.LM("openai/gpt-4o-mini", api_base=self.actions.base_url, api_key="x", cache=False)

    def sub_lm(self) -> dspy.LM:
        return dspy.LM("openai/gpt-4o-mini", api_base=self.sub.base_url, api_key="x", cache=False)

    def sub_calls(self) -> int:
        return len(self.sub.bill.billed)


def make(
    tools: Tools,
    store: SQLiteStore,
    servers: Servers,
    interpreter: Any,
    cls: type[dspy.RLM] = dspy.RLM,
    max_llm_calls: int = MAX_LLM_CALLS,
    **options: Any,
) -> tuple[dspy.RLM, Durable]:
    """A durable RLM (a Durable with `options`) on the servers' LMs, with at most `max_llm_calls` sub-LLM calls."""
    rlm = build_rlm(
        "text -> answer",
        max_iters=6,
        tools=[tools.lookup],
        interpreter_factory=interpreter,
        sub_lm=servers.sub_lm(),
        max_llm_calls=max_llm_calls,
    )
    if cls is not dspy.RLM:
        rlm.__class__ = cls
    return rlm, Durable(store, **options).install(rlm_events.instrument(rlm))


def call(rlm: dspy.RLM, is_async: bool) -> Any:
    return asyncio.run(rlm.acall(text="t")) if is_async else rlm(text="t")


def resume(durable: Durable, run_id: str, is_async: bool) -> Any:
    return asyncio.run(durable.aresume(run_id)) if is_async else durable.resume(run_id)


def crash_and_resume(
    build: Callable[[Tools], tuple[dspy.RLM, Durable]], servers: Servers, die_on: str, is_async: bool
) -> tuple[Any, int, str]:
    """Run `build(tools)`'s RLM in a worker that dies at `lookup(key=die_on)`, then resume it in another one built
    the same way: the resumed prediction, the sub-LLM calls billed before the resume, and the durable run's id."""
    tools = Tools()
    tools.die_on = die_on
    rlm, durable = build(tools)
    with dspy.context(lm=servers.lm()), pytest.raises(WorkerDied):
        call(rlm, is_async)
    before = servers.sub_calls()
    run_id = durable.last_run_id
    assert run_id is not None
    _, other = build(tools)  # another worker
    with dspy.context(lm=servers.lm()):
        return resume(other, run_id, is_async), before, run_id


def outputs(prediction: Any) -> list[str]:
    return [entry["output"] for entry in prediction.trajectory]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", interpreters())
@pytest.mark.parametrize(
    "die_on",
    [
        pytest.param("a", id="in-flight"),  # iteration 1 in flight: llm_query('p1') is answered from the record
        pytest.param("c", id="replayed"),  # iterations 1-2 replayed (3 calls charged), iteration 3 in flight
    ],
)
def test_a_resumed_run_hits_max_llm_calls_where_the_uninterrupted_run_did(
    tmp_path: Path, openai_server: Callable[..., Any], interpreter: Any, is_async: bool, die_on: str
) -> None:
    servers = Servers(openai_server)
    store = SQLiteStore(tmp_path / "runs.db")
    rlm, _ = make(Tools(), store, servers, interpreter)
    with dspy.context(lm=servers.lm()):
        whole = call(rlm, is_async)
    assert whole.answer.startswith("Sp1 Sp2 Sp3 refused: ") and REFUSED in whole.answer  # the 4th call, in DSPy
    assert servers.sub_calls() == MAX_LLM_CALLS
    servers.sub.reset()

    resumed, before, run_id = crash_and_resume(
        lambda tools: make(tools, store, servers, interpreter), servers, die_on, is_async
    )
    assert before == {"a": 1, "c": 3}[die_on]
    assert resumed.answer == whole.answer
    assert outputs(resumed) == outputs(whole)
    # Over the dead worker and the resuming one, as many sub-LLM calls reached the LM as in the uninterrupted run.
    assert servers.sub_calls() == MAX_LLM_CALLS
    assert store.load(run_id).status == "done"


@pytest.mark.parametrize(("at", "again"), [(1, 2), (2, 0)])
def test_a_fork_counts_the_sub_llm_calls_it_replays(
    tmp_path: Path, openai_server: Callable[..., Any], at: int, again: int
) -> None:
    servers = Servers(openai_server)
    store = SQLiteStore(tmp_path / "runs.db")
    rlm, durable = make(Tools(), store, servers, interpreters()[0].values[0])
    with dspy.context(lm=servers.lm()):
        whole = rlm(text="t")
    servers.sub.reset()
    assert durable.last_run_id is not None
    fork = durable.fork(durable.last_run_id, at=at)
    with dspy.context(lm=servers.lm()):
        forked = durable.resume(fork)
    assert forked.answer == whole.answer and REFUSED in forked.answer
    assert servers.sub_calls() == again  # only the calls after the fork point; 'p4' is refused as it was


class OwnTools(dspy.RLM):
    """An RLM whose `llm_query` is its own function around DSPy's: the counter is out of rlm-events' reach."""

    def _make_llm_tools(self, *args: Any, **kwargs: Any) -> Any:
        return {name: _around(fn) for name, fn in super()._make_llm_tools(*args, **kwargs).items()}


def _around(fn: Callable[..., Any]) -> Callable[..., Any]:
    def tool(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return tool


def test_a_resume_that_cannot_continue_the_counter_is_refused_unless_divergence_is_allowed(
    tmp_path: Path, openai_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    servers = Servers(openai_server)
    store = SQLiteStore(tmp_path / "runs.db")
    interpreter = interpreters()[0].values[0]
    tools = Tools()
    tools.die_on = "c"
    rlm, durable = make(tools, store, servers, interpreter, cls=OwnTools)
    assert not counts_llm_calls(rlm)
    with dspy.context(lm=servers.lm()), pytest.raises(WorkerDied):
        rlm(text="t")
    run_id = durable.last_run_id
    assert run_id is not None
    _, other = make(tools, store, servers, interpreter, cls=OwnTools)
    with pytest.raises(RecordMismatchError, match=r"charged sub-LLM calls against max_llm_calls, and OwnTools keeps"):
        other.resume(run_id)
    assert servers.sub_calls() == 3  # refused before anything ran
    _, tolerant = make(tools, store, servers, interpreter, cls=OwnTools, allow_divergence=True)
    with dspy.context(lm=servers.lm()), caplog.at_level(logging.WARNING, logger="rlm_events.durable"):
        resumed = tolerant.resume(run_id)
    assert "divergence allowed" in caplog.text
    assert "Sp4" in resumed.answer  # as documented: its counter restarted at 0, so 'p4' reached the LM
    assert servers.sub_calls() == 4


def test_the_patch_layer_reads_and_continues_dspys_counter_on_this_release() -> None:
    """Pins `rlm_events._patch.llm_calls` to the installed DSPy: the counter is found in `llm_query`'s closure, reads
    what DSPy charged, and a continued count makes DSPy itself refuse the next call (before any LM is asked)."""
    from rlm_events._patch.llm_calls import counter_of

    rlm = build_rlm("text -> answer", max_llm_calls=2)
    assert counts_llm_calls(rlm)
    tools = rlm._make_llm_tools()
    counter = counter_of(tools["llm_query"])
    assert counter is not None and counter.count == 0
    assert tools["llm_query_batched"]([]) == [] and counter.count == 0
    counter.continue_from(1)
    counter.continue_from(0)  # never goes back
    assert counter.count == 1
    with dspy.context(lm=None), pytest.raises(Exception, match="No LM configured"):
        tools["llm_query"]("x")  # charged (DSPy reserves before it asks the LM), then no LM
    assert counter.count == 2
    with pytest.raises(RuntimeError, match=r"LLM call limit exceeded: 2 \+ 1 > 2"):
        tools["llm_query"]("x")
    assert counter_of(lambda prompt: prompt) is None and counter_of(len) is None


def test_speculate_counts_the_sub_llm_calls_a_resumed_run_replayed(
    tmp_path: Path, openai_server: Callable[..., Any]
) -> None:
    """Speculate never sees the sub-LLM calls a resumed run answers from the record, but DSPy's counter continues
    from them: Speculate counts from DSPy's counter, so it refuses to make ahead the call DSPy would refuse ('p4'),
    as in the uninterrupted run, instead of starting it for DSPy to refuse."""
    from rlm_events.builtins import Speculate

    servers = Servers(openai_server)
    store = SQLiteStore(tmp_path / "runs.db")
    interpreter = interpreters()[0].values[0]
    stats: list[Any] = []

    def speculated(tools: Tools) -> tuple[dspy.RLM, Durable]:
        rlm, durable = make(tools, store, servers, interpreter)
        events = rlm_events.instrumentation_of(rlm)
        assert events is not None
        Speculate(stream=False).install(events)  # inside Durable: replayed calls never reach it
        events.tap(["run_end"], lambda ctx: stats.append(Speculate.stats(ctx)), inline=True)
        return rlm, durable

    rlm, _ = speculated(Tools())
    with dspy.context(lm=servers.lm()):
        whole = rlm(text="t")
    assert REFUSED in whole.answer
    (uninterrupted,) = stats
    assert uninterrupted.refused.get("max_llm_calls") == 1 and uninterrupted.failed == 0
    servers.sub.reset()

    tools = Tools()
    tools.die_on = "c"  # iterations 1-2 (3 sub-LLM calls) committed; iteration 3 in flight
    rlm, durable = speculated(tools)
    with dspy.context(lm=servers.lm()), pytest.raises(WorkerDied):
        rlm(text="t")
    assert durable.last_run_id is not None
    _, other = speculated(tools)
    with dspy.context(lm=servers.lm()):
        resumed = other.resume(durable.last_run_id)
    assert resumed.answer == whole.answer and outputs(resumed) == outputs(whole)
    assert servers.sub_calls() == MAX_LLM_CALLS
    last = stats[-1]
    assert last.refused.get("max_llm_calls") == uninterrupted.refused["max_llm_calls"]
    assert last.failed == uninterrupted.failed == 0  # 'p4' was not made ahead for DSPy to refuse
