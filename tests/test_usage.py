"""One LM-usage parser and one attribution policy: every meter (Budget, JsonlTrace, OpenTelemetry, Recorder, the
progress display) reports the same totals for the same LM history, whatever spelling the LM's usage uses."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rlm_events
from rlm_events.builtins import Budget
from rlm_events.lm_usage import entry_usage, metered, usage_of
from rlm_events.replay import Recorder
from rlm_events.taps.jsonl import JsonlTrace
from rlm_events.taps.otel import OpenTelemetryTap
from rlm_events.taps.progress import ProgressTap
from rlm_events.testing import ScriptedLM

SPELLINGS = {
    "chat completions": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    "responses api": {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
    "no total": {"prompt_tokens": 12, "completion_tokens": 5},
    "object": SimpleNamespace(input_tokens=12, output_tokens=5, total_tokens=17),
}


@pytest.mark.parametrize("usage", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_every_usage_spelling_parses_the_same(usage):
    assert entry_usage({"usage": usage, "cost": 0.01}) == (12, 5, 17, 0.01, False)
    assert usage_of([{"usage": usage, "cost": 0.01}] * 2) == (24, 10, 0.02)


def test_a_cached_or_unpriced_call():
    cached = {"usage": {}, "response": SimpleNamespace(cache_hit=True)}
    assert entry_usage(cached)[4] is True
    assert entry_usage({"usage": {"prompt_tokens": 3}, "cost": None})[3] is None


class ResponsesLM(ScriptedLM):
    """Reports usage as the Responses API spells it (input/output tokens), as some LiteLLM providers do."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        response = super().forward(*args, **kwargs)
        usage = response.usage
        response.usage = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
        return response


STEPS = ["x = 1", "print(llm_query('hello'))", "SUBMIT(answer=str(x))"]


@pytest.mark.parametrize("lm_class", [ScriptedLM, ResponsesLM], ids=["chat", "responses"])
def test_every_meter_reports_the_same_totals(make_rlm, tmp_path: Path, lm_class):
    rlm, _ = make_rlm(STEPS)
    lm = lm_class(STEPS, sub="hi", cost_per_1k_tokens=0.5)
    events = rlm_events.instrument(rlm)
    Budget(max_iterations=10).install(events)
    trace = JsonlTrace(tmp_path / "trace.jsonl").install(events)
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OpenTelemetryTap(provider).install(events)
    recorder = Recorder().install(events)
    progress_out = io.StringIO()
    ProgressTap(progress_out, live=False).install(events)
    spent: list[Any] = []
    events.tap(["run_end"], lambda ctx: spent.extend([Budget.spent(ctx), metered(ctx), metered(ctx.run)]), inline=True)

    with dspy.context(lm=lm):
        rlm(text="t")
    trace.close()
    assert spent[0] is spent[1] is spent[2]  # the Budget's Spend is the run's one Usage, from a context or a run

    tokens_in, tokens_out, _ = usage_of(lm.history)  # the LM's own record
    assert tokens_in > 0 and tokens_out > 0
    spend = spent[0]
    assert (spend.prompt_tokens, spend.completion_tokens, spend.tokens) == (
        tokens_in,
        tokens_out,
        tokens_in + tokens_out,
    )
    last = json.loads((tmp_path / "trace.jsonl").read_text().splitlines()[-1])
    assert last["usage"]["prompt_tokens"] == tokens_in and last["usage"]["completion_tokens"] == tokens_out
    assert last["usage"]["total_tokens"] == spend.tokens and last["usage"]["cost_usd"] == round(spend.cost_usd, 8)
    (run_span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent")]
    assert (run_span.attributes["gen_ai.usage.input_tokens"], run_span.attributes["gen_ai.usage.output_tokens"]) == (
        tokens_in,
        tokens_out,
    )
    assert recorder.recordings[-1].usage()[:2] == (tokens_in, tokens_out)
    printed = re.findall(r"([\d,]+) tokens", progress_out.getvalue())[-1]
    assert int(printed.replace(",", "")) == spend.tokens


def test_concurrent_calls_on_one_lm_each_count_their_own(make_rlm, tmp_path: Path):
    """The one policy: each LM call belongs to the run current where it was made, shared LM or not."""
    rlm, lm = make_rlm(STEPS, sub="hi")
    events = rlm_events.instrument(rlm)
    trace = JsonlTrace(tmp_path / "trace.jsonl").install(events)

    async def main() -> None:
        with dspy.context(lm=lm):
            await asyncio.gather(*(rlm.acall(text=f"t{i}") for i in range(3)))

    asyncio.run(main())
    trace.close()
    ends = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    totals = [r["usage"]["total_tokens"] for r in ends if r["stage"] == "run_end"]
    tokens_in, tokens_out, _ = usage_of(lm.history)
    assert len(totals) == 3 and len(set(totals)) == 1 and sum(totals) == tokens_in + tokens_out
