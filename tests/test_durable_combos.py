"""Durable composes with the other built-ins that touch the same calls: `Speculate(stream=True)`, whose
`generate_action` call is streamed (sync and async calls) and whose `llm_query` calls are made ahead, with the real
LiteLLM client against the local OpenAI-compatible server (which bills every request it answers).

A run whose worker dies and is resumed ends with the uninterrupted run's answer and history, and the server billed
the uninterrupted run's requests, plus, when the worker died between an LM call and its commit, that one call (the
documented repeat). The worker's death is a `BaseException` as in tests/test_durable.py: raised by a tool, or by a
DSPy LM callback once the LM answered (so the answer is billed, not committed). On the real interpreter and in the
library's sandbox (`Sandboxed`, whose REPL Speculate reads; Durable alone in it: tests/test_durable.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER
from dspy.utils.callback import BaseCallback
from test_durable import Tools, WorkerDied

import rlm_events
from rlm_events.builtins import Speculate
from rlm_events.durable import Durable, SQLiteStore
from rlm_events.testing import build_rlm

STEPS = [
    "x = lookup(key='a')\nr = [llm_query(f'q{i}') for i in range(3)]\nprint(r)",
    "s = llm_query('more')\ny = lookup(key='b')\nprint(len(r), s, y)",
    "z = lookup(key='c')\nprint(z)",
    "SUBMIT(answer=x + y + z + s)",
]


class DieAfterAction(BaseCallback):
    """Dies (as a worker does) once the LM answered the action of iteration `iteration` (1-based): the answer is
    billed, not committed. DSPy's callbacks let a `BaseException` through."""

    def __init__(self, iteration: int) -> None:
        self.iteration, self.seen = iteration, 0

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if exception is None and "[[ ## code ## ]]" in str(outputs):
            self.seen += 1
            if self.seen == self.iteration:
                raise WorkerDied(f"after the action of iteration {self.iteration}")


def sub(prompt: str) -> str:
    return "S" + prompt[-2:].strip()


def make(tools: Tools, store: SQLiteStore, interpreter: Any) -> tuple[dspy.RLM, Durable]:
    rlm = build_rlm("text -> answer", max_iters=6, tools=[tools.lookup], interpreter_factory=interpreter)
    events = rlm_events.instrument(rlm)
    durable = Durable(store).install(events)  # first: the outermost middleware
    Speculate(stream=True).install(events)
    return rlm, durable


def interpreters() -> list[Any]:
    """The real interpreter, and the library's sandbox where it can run (required where
    `RLM_EVENTS_REQUIRE_SANDBOX=1`)."""
    from rlm_events.sandbox import Sandboxed, SandboxUnavailable

    found = [pytest.param(REAL_INTERPRETER, id="real")]
    try:
        found.append(pytest.param(Sandboxed(), id="sandbox"))
    except SandboxUnavailable as missing:
        if os.environ.get("RLM_EVENTS_REQUIRE_SANDBOX") == "1":
            raise
        found.append(pytest.param(None, id="sandbox", marks=pytest.mark.skip(reason=f"no sandbox here: {missing}")))
    return found


def call(rlm: dspy.RLM, is_async: bool) -> Any:
    return asyncio.run(rlm.acall(text="t")) if is_async else rlm(text="t")


def steps_of(prediction: Any) -> list[tuple[str, str]]:
    return [(entry["code"], entry["output"]) for entry in prediction.trajectory]


def requests(server: Any) -> list[tuple[int, int]]:
    """The billed requests, as their token counts (the same request is billed the same), in a stable order."""
    return sorted((r.prompt_tokens, r.completion_tokens) for r in server.bill.billed)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", interpreters())
@pytest.mark.parametrize(
    ("die", "repeated"),
    [
        pytest.param(lambda tools, lm: setattr(tools, "die_on", "b"), 0, id="in-a-tool"),
        pytest.param(lambda tools, lm: lm.callbacks.append(DieAfterAction(3)), 1, id="between-lm-call-and-commit"),
    ],
)
def test_a_streamed_speculated_run_resumes_as_if_uninterrupted_and_is_billed_once(
    tmp_path: Path,
    openai_server: Callable[..., Any],
    die: Callable[[Tools, dspy.LM], None],
    repeated: int,
    interpreter: Any,
    is_async: bool,
) -> None:
    server = openai_server(STEPS, sub=sub, time_to_first_token=0.01, tokens_per_second=800)

    def lm() -> dspy.LM:
        return dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x", cache=False)

    store = SQLiteStore(tmp_path / "runs.db")
    tools = Tools()
    rlm, _ = make(tools, store, interpreter)
    seen: list[Any] = []
    rlm_events.instrumentation_of(rlm).tap(["run_end"], lambda ctx: seen.append(Speculate.stats(ctx)), inline=True)  # type: ignore[union-attr]
    with dspy.context(lm=lm()):
        whole = call(rlm, is_async)
    assert whole.answer == "AABBCCSre" and tools.calls == ["a", "b", "c"]
    assert seen[0].stream == "streamed" and seen[0].claimed == 4  # streamed, and the sub-calls made ahead
    uninterrupted = requests(server)
    server.reset()

    tools = Tools()
    rlm, durable = make(tools, store, interpreter)
    dying = lm()
    die(tools, dying)
    with dspy.context(lm=dying), pytest.raises(WorkerDied):
        call(rlm, is_async)
    assert durable.last_run_id is not None
    resumer, other = make(tools, store, interpreter)  # another worker resumes it
    rlm_events.instrumentation_of(resumer).tap(["run_end"], lambda ctx: seen.append(Speculate.stats(ctx)), inline=True)  # type: ignore[union-attr]
    crashed = len(server.bill.records)
    with dspy.context(lm=lm()):
        run_id = durable.last_run_id
        resumed = asyncio.run(other.aresume(run_id)) if is_async else other.resume(run_id)
    assert resumed.answer == whole.answer and steps_of(resumed) == steps_of(whole)
    # The actions asked of the LM after the resume (prompts of 100+ tokens) are streamed too.
    actions = [r for r in server.bill.records[crashed:] if r.prompt_tokens > 100]
    assert seen[-1].stream == "streamed" and actions and all(r.streamed for r in actions)
    assert sorted(tools.calls) == ["a", "b", "c"]  # lookup('b'), which died in-a-tool, had not returned
    billed = requests(server)
    assert len(billed) == len(uninterrupted) + repeated
    for request in uninterrupted:
        billed.remove(request)  # every request of the uninterrupted run, billed once
    if repeated:  # the action of iteration 3, answered but not committed, was asked for again
        (again,) = billed
        assert again == sorted(uninterrupted, key=lambda tokens: tokens[0])[-2]  # the prompt of iteration 3
