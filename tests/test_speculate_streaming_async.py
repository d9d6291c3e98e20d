"""Speculate streams generate_action's LM call in `await rlm.acall(...)` too (DSPy's aforward): the same guarantees
as the sync path (tests/test_speculate_streaming.py, whose trace test runs acall too), with the real LiteLLM client
against the local OpenAI-compatible server: calls start while the LM writes; the action, history, usage and bill are
those of the non-streamed call; anything that cannot stream (a cache hit, an LM that cannot, an error or a malformed
chunk mid-stream, no usage) falls back, logged once, metered once; concurrent acalls on one event loop each stream
their own action."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import dspy
import pytest
import test_speculate_streaming as sync_tests
from test_speculate_streaming import INTERPRETER, STEPS, actions, steps_of, sub

import rlm_events
from rlm_events.builtins import Speculate
from rlm_events.lm_usage import metered
from rlm_events.testing import ScriptedLM, build_rlm

lm_for, fresh_cache = sync_tests.lm_for, sync_tests.fresh_cache  # the sync tests' fixtures


def instrumented(speculate: Speculate | None, iterations: int, seen: dict[str, Any]) -> Any:
    rlm = build_rlm("question -> answer", max_iters=iterations, interpreter_factory=INTERPRETER)
    events = rlm_events.instrument(rlm)
    if speculate is not None:
        speculate.install(events)

    def ended(ctx: Any) -> None:
        seen.setdefault("runs", []).append((ctx.run, Speculate.stats(ctx), metered(ctx.run)))
        seen.update(stats=Speculate.stats(ctx), usage=metered(ctx.run))

    events.tap(["run_end"], ended, inline=True)
    return rlm


FILLER = "".join(f"pad{i} = {i} * 2  # more code\n" for i in range(24))


@pytest.mark.parametrize("mode", sync_tests.MODES)
def test_calls_start_while_the_lm_writes_and_everything_else_is_the_bare_runs(openai_server, lm_for, mode):
    # Proof by order, not by time: when each sub-LM request reaches the server, the main LM's call for that action
    # has not returned yet (its history entry is not there), because the action still has two dozen lines to
    # stream. Planned when the code is complete (stream=False), every sub-request comes after that entry.
    steps = [STEPS[0].replace("first = r[0]\n", "first = r[0]\n" + FILLER), STEPS[1]]
    play = functools.partial(sync_tests.run, mode=mode)
    arrivals: list[int] = []
    lm_box: list[dspy.LM] = []

    def counted(prompt: str) -> str:
        arrivals.append(len(actions(lm_box[0])))  # actions the main LM had finished when this request arrived
        return sub(prompt)

    server = openai_server(steps, sub=counted, time_to_first_token=0.02, tokens_per_second=200)
    lm = lm_for(server)
    lm_box.append(lm)
    bare, _ = play(lm, None, steps)
    bare_bill, bare_actions = server.bill, actions(lm)
    for stream, finished_first in ((False, [1, 1, 1]), (True, [0, 0, 0])):
        server.reset()
        lm.history.clear()
        arrivals.clear()
        fast, seen = play(lm, Speculate(stream=stream), steps)
        stats = seen["stats"]
        assert arrivals == finished_first
        assert steps_of(fast) == steps_of(bare) and fast.answer == bare.answer == "3"
        assert stats.claimed == stats.planned == 3
        assert stats.dispatched_streaming == (3 if stream else 0)
        assert stats.stream == ("streamed" if stream else "")
        # The same requests were made and billed; the actions' history (text and usage) is the bare run's.
        assert [r.streamed for r in server.bill.records].count(True) == (2 if stream else 0)
        assert (server.bill.calls, server.bill.total_tokens) == (bare_bill.calls, bare_bill.total_tokens)
        assert actions(lm) == bare_actions
        assert seen["usage"].tokens == server.bill.total_tokens


def test_twenty_concurrent_acalls_on_one_loop_stream_their_own_actions(openai_server, lm_for):
    # One RLM, one event loop, 20 runs at once: each streams its own actions, gets its own answer (its sub-calls
    # carry its question), and meters its own usage: what a solo run of the same shape costs, summing to the bill.
    steps = [
        "r = [llm_query(f'{question} q{i}') for i in range(3)]\nfirst = r[0]\nprint(r)",
        "SUBMIT(answer=' | '.join(r))",
    ]
    server = openai_server(steps, sub=lambda prompt: "re " + prompt[-5:], time_to_first_token=0.01)
    lm = lm_for(server)
    seen: dict[str, Any] = {}
    rlm = instrumented(Speculate(), 3, seen)
    questions = [f"question-{i:02d}" for i in range(20)]

    async def main() -> list[Any]:
        with dspy.context(lm=lm):
            return await asyncio.gather(*(rlm.acall(question=q) for q in questions))

    solo, _ = sync_tests.run(lm, None, steps, mode="async", question="question-99")
    solo_tokens = server.bill.total_tokens
    server.reset()
    results = asyncio.run(main())
    assert [r.answer for r in results] == [" | ".join(f"re {q[-2:]} q{i}" for i in range(3)) for q in questions]
    runs = seen["runs"]
    assert len(runs) == 20 and server.bill.calls == 20 * 5
    for _, stats, usage in runs:
        assert stats.stream == "streamed" and stats.dispatched_streaming == stats.claimed == 3
        assert usage.tokens == solo_tokens and usage.lm_calls == 5
    assert sum(usage.tokens for _, _, usage in runs) == server.bill.total_tokens
    assert solo.answer.startswith("re 99 q0")


def test_an_async_generate_action_that_writes_piece_by_piece_can_feed_the_planner():
    from rlm_events.runtime import feed_action_text

    steps = ["a = llm_query('first')\nb = llm_query('second')\nc = 1\nprint(a, b)", "SUBMIT(answer=a + b)"]

    class Writer:
        def __init__(self) -> None:
            self.script = iter(steps)

        async def acall(self, **kwargs: Any) -> Any:
            fenced = f"```python\n{next(self.script)}\n```"
            for i in range(0, len(fenced), 8):
                await asyncio.sleep(0)
                assert feed_action_text(fenced[i : i + 8])
            return dspy.Prediction(reasoning="r", code=fenced)

    seen: dict[str, Any] = {}
    rlm = instrumented(Speculate(), 3, seen)
    rlm.generate_action = Writer()

    async def main() -> Any:
        with dspy.context(lm=ScriptedLM(["unused"], sub=sub)):
            return await rlm.acall(question="q")

    prediction = asyncio.run(main())
    stats = seen["stats"]
    assert prediction.answer == "answer stanswer nd"
    assert stats.dispatched_streaming == 2 and stats.claimed + stats.cancelled == 2 and stats.stream == "streamed"


class BreakingProxy:
    """An OpenAI-compatible endpoint in front of `upstream` whose first streamed answer sends one good chunk, then a
    malformed one, and ends; every other request is the upstream server's (and only those are billed)."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        import urllib.request

        proxy = self
        self.broken = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if json.loads(body).get("stream") and not proxy.broken:
                    proxy.broken += 1
                    good = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
                    good["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": "[[ ## "}}]
                    data = b"data: " + json.dumps(good).encode() + b"\n\ndata: {not json at all\n\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                request = urllib.request.Request(
                    upstream + self.path.removeprefix("/v1"), body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request) as answer:
                    data, kind = answer.read(), answer.headers.get("Content-Type", "application/json")
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("mode", sync_tests.MODES)
def test_malformed_chunks_mid_stream_fall_back_and_usage_is_metered_once(openai_server, mode, caplog):
    # The first action's stream sends a good chunk, then one that is not JSON: the call is made again without
    # streaming; the run is the bare run's, and the usage counted is the upstream bill (the broken stream billed
    # nothing), counted once.
    server = openai_server(STEPS, sub=sub)
    bare, _ = sync_tests.run(dspy.LM("openai/m", api_base=server.base_url, api_key="x", cache=False), None)
    server.reset()
    proxy = BreakingProxy(server.base_url)
    try:
        lm = dspy.LM("openai/m", api_base=proxy.base_url, api_key="x", cache=False, num_retries=0)
        with caplog.at_level(logging.INFO, logger="rlm_events"):
            fast, seen = sync_tests.run(lm, Speculate(), mode=mode)
    finally:
        proxy.stop()
    stats = seen["stats"]
    assert proxy.broken == 1 and steps_of(fast) == steps_of(bare)
    assert stats.stream.startswith("fallback: the streamed call failed"), stats.stream
    assert sum("planning when the code is complete" in r.getMessage() for r in caplog.records) == 1
    assert stats.claimed + stats.cancelled == 3 and stats.wasted == 0
    assert seen["usage"].tokens == server.bill.total_tokens and seen["usage"].lm_calls == server.bill.calls
