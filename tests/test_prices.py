"""Prices: register_prices / Budget(prices=...) give DSPy's real client a cost for an unpriced model; a dollar cap on
an unpriced model stops the run with UnknownCostError (never a silent no-op); bad price tables are refused.

Money goes through the real LiteLLM client (``dspy.LM("openai/<model>", api_base=...)``) against the local
OpenAI-compatible server, which bills each model at the price the test gives it. Registration is process-wide: each
test prices a model name of its own, never one another test relies on being unpriced.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER

import rlm_events
from rlm_events import UnknownCostError, register_prices, registered_prices
from rlm_events.builtins import Budget, Spend
from rlm_events.taps import JsonlTrace
from rlm_events.testing import LocalOpenAIServer, build_rlm

STEPS = ["x = 6 * 7\nprint(x)", "print(llm_query('say hi'))", "SUBMIT(answer=str(x))"]
ENGINES = ["default", "litellm"] if "engine" in inspect.signature(dspy.LM.__init__).parameters else ["default"]


def fresh_model() -> str:
    """A model name no price map knows, and no other test prices (registration is process-wide)."""
    return f"rlm-events-test-{uuid.uuid4().hex[:10]}"


def client(server: LocalOpenAIServer, model: str, engine: str = "default", **options: Any) -> dspy.LM:
    if engine != "default":
        options["engine"] = engine
    options.setdefault("cache", False)
    return dspy.LM(f"openai/{model}", api_base=server.base_url, api_key="x", **options)


def rlm_with(*taps: Any, **budget: Any) -> tuple[dspy.RLM, dict[str, Spend]]:
    rlm = build_rlm("text -> answer", max_iters=6, interpreter_factory=REAL_INTERPRETER)
    events = rlm_events.instrument(rlm)
    Budget(**budget).install(events)
    for tap in taps:
        tap.install(events)
    spent: dict[str, Spend] = {}
    events.tap(["run_end"], lambda ctx: spent.__setitem__("run", Budget.spent(ctx)), inline=True)
    return rlm, spent


# -- registration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_registered_prices_give_the_real_clients_history_a_cost(engine):
    model = fresh_model()
    with LocalOpenAIServer(["[[ ## answer ## ]]\nhi\n\n[[ ## completed ## ]]"], prices={model: (0.5, 1.5)}) as server:
        lm = client(server, model, engine)
        lm("before")
        assert lm.history[-1]["cost"] is None  # unpriced: unknown, and DSPy says so
        register_prices({f"openai/{model}": (0.5, 1.5)})
        lm("after")
        lm("again")
        bill = list(server.bill)
    assert [entry["cost"] for entry in lm.history[1:]] == pytest.approx([r.cost_usd for r in bill[1:]], rel=1e-9)
    assert all(r.cost_usd and r.cost_usd > 0 for r in bill[1:])


def test_registration_is_idempotent_process_wide_and_a_later_price_wins():
    model = f"openai/{fresh_model()}"
    register_prices({model: (1, 2)})
    register_prices({model: (1.0, 2.0)})  # the same prices: nothing changes
    assert registered_prices()[model] == (1.0, 2.0)
    with LocalOpenAIServer(["[[ ## answer ## ]]\nhi\n\n[[ ## completed ## ]]"]) as server:
        lm = client(server, model.split("/", 1)[1])
        lm("a")
        first = lm.history[-1]
        register_prices({model: (10, 20)})
        other = client(server, model.split("/", 1)[1])  # another LM instance: the price is the process's
        other("a")
        second = other.history[-1]
    tokens = (first["usage"]["prompt_tokens"], first["usage"]["completion_tokens"])
    assert first["cost"] == pytest.approx((tokens[0] * 1 + tokens[1] * 2) / 1e6)
    assert second["cost"] == pytest.approx(10 * first["cost"])
    assert registered_prices()[model] == (10.0, 20.0)


@pytest.mark.parametrize(
    ("prices", "match"),
    [
        ({"my-model": (1, 2)}, r"'my-model'.*'provider/model'"),
        ({"openai/": (1, 2)}, r"'openai/'.*'provider/model'"),
        ({"/my-model": (1, 2)}, r"'/my-model'.*'provider/model'"),
        ({"no-such-provider/my-model": (1, 2)}, r"'no-such-provider/my-model'.*no provider 'no-such-provider'"),
        ({"openai/my model": (1, 2)}, r"'openai/my model'.*whitespace"),
        ({7: (1, 2)}, r"7.*'provider/model'"),
        ({"openai/m": (-1, 2)}, r"'openai/m'.*input price.*>= 0.*-1"),
        ({"openai/m": (1, "2")}, r"'openai/m'.*output price.*'2'"),
        ({"openai/m": (1, float("nan"))}, r"'openai/m'.*output price"),
        ({"openai/m": (True, 1)}, r"'openai/m'.*input price.*True"),
        ({"openai/m": (1,)}, r"'openai/m'.*\(input, output\)"),
        ({"openai/m": "1,2"}, r"'openai/m'.*\(input, output\)"),
        ({"openai/m": 1.5}, r"'openai/m'.*\(input, output\)"),
    ],
)
def test_a_bad_price_table_is_refused_naming_the_entry(prices, match):
    before = registered_prices()
    with pytest.raises(ValueError, match=match):
        register_prices({"openai/fine": (1, 1), **prices} if 7 not in prices else prices)
    with pytest.raises(ValueError, match=match):
        Budget(max_cost_usd=1.0, prices=prices)
    assert registered_prices() == before  # nothing registered, not even the good entry


def test_prices_must_be_a_mapping():
    with pytest.raises(TypeError, match="register_prices"):
        register_prices([("openai/m", (1, 2))])  # type: ignore[arg-type]


# -- a dollar cap on the real client --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dollar_cap_on_an_unpriced_model_stops_at_the_first_call(tmp_path: Path, caplog, mode):
    import asyncio

    trace = JsonlTrace(tmp_path / "t.jsonl")
    rlm, spent = rlm_with(trace, max_cost_usd=1.0)
    with LocalOpenAIServer.scripted(STEPS, sub="hi") as server, dspy.context(lm=client(server, "any-model")):
        with pytest.raises(UnknownCostError) as raised:
            if mode == "sync":
                rlm(text="t")
            else:
                asyncio.run(rlm.acall(text="t"))
        bill = server.bill
    trace.close()
    message = str(raised.value)
    assert raised.value.models == ("openai/any-model",)
    assert "'openai/any-model'" in message and "prices={'openai/any-model': (input_usd, output_usd)}" in message
    assert "register_prices" in message and "max_cost_usd=1.0" in message
    # the first action call was unpriced: its code's llm_query was denied, no other call was made
    assert bill.calls == 1
    spend = spent["run"]
    assert (spend.lm_calls, spend.unpriced_lm_calls, spend.stopped_by) == (1, 1, "cost_usd")
    assert spend.denied_tool_calls == {}  # the first iteration's code makes no sub-LLM call
    end = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[-1])
    assert end["stage"] == "run_end" and "UnknownCostError" in end["error"]
    assert end["usage"]["cost_usd"] is None and end["usage"]["unpriced_lm_calls"] == 1


def test_a_sub_llm_call_after_an_unpriced_one_is_denied():
    steps = ["print(llm_query('say hi'))\nprint(llm_query('again'))", "SUBMIT(answer='x')"]
    rlm, spent = rlm_with(max_cost_usd=1.0)
    priced = fresh_model()
    register_prices({f"openai/{priced}": (1, 1)})
    with LocalOpenAIServer.scripted(steps, sub="hi") as server:
        main, sub = client(server, priced), client(server, "any-model")
        rlm.sub_lm = sub
        with dspy.context(lm=main), pytest.raises(UnknownCostError, match="'openai/any-model'"):
            rlm(text="t")
        bill = server.bill
    assert [r.model for r in bill] == [priced, "any-model"]  # the second llm_query was not sent
    assert spent["run"].denied_tool_calls == {"llm_query": 1}


def test_budget_prices_make_the_dollar_cap_hold_and_match_the_servers_bill():
    model = fresh_model()
    rlm, spent = rlm_with(max_cost_usd=1.0, prices={f"openai/{model}": (3.0, 15.0)})
    with LocalOpenAIServer.scripted(STEPS, sub="hi", prices={model: (3.0, 15.0)}) as server:
        with dspy.context(lm=client(server, model)):
            assert rlm(text="t").answer == "42"
        bill = server.bill
    spend = spent["run"]
    assert spend.cost_known and spend.stopped_by is None
    assert (spend.lm_calls, spend.tokens) == (bill.calls, bill.total_tokens) == (4, bill.total_tokens)
    assert bill.cost_usd is not None and spend.cost_usd == pytest.approx(bill.cost_usd, rel=1e-9)

    # a cap below one run's cost stops it, by cost, at the end of the first iteration
    rlm, spent = rlm_with(max_cost_usd=bill.cost_usd / 10)
    with LocalOpenAIServer.scripted(STEPS, sub="hi", extract={"answer": "x"}, prices={model: (3.0, 15.0)}) as server:
        with dspy.context(lm=client(server, model)):
            rlm(text="t")
        capped = server.bill
    assert spent["run"].stopped_by == "cost_usd" and spent["run"].iterations == 1
    assert spent["run"].cost_usd == pytest.approx(capped.cost_usd, rel=1e-9)


def test_an_unpriced_run_that_submits_returns_and_warns(caplog):
    rlm, spent = rlm_with(max_cost_usd=1.0)
    server = LocalOpenAIServer.scripted(["SUBMIT(answer='done')"])
    with server, dspy.context(lm=client(server, "any-model")), caplog.at_level(logging.WARNING, logger="rlm_events"):
        assert rlm(text="t").answer == "done"
    assert spent["run"].stopped_by is None and not spent["run"].cost_known
    (warning,) = [r.getMessage() for r in caplog.records if "Budget" in r.getMessage()]
    assert "'openai/any-model'" in warning and "register_prices" in warning


def test_a_budget_without_a_dollar_cap_runs_an_unpriced_model():
    rlm, spent = rlm_with(max_tokens=1_000_000)
    with LocalOpenAIServer.scripted(STEPS, sub="hi") as server, dspy.context(lm=client(server, "any-model")):
        assert rlm(text="t").answer == "42"
        bill = server.bill
    spend = spent["run"]
    assert (spend.lm_calls, spend.unpriced_lm_calls, spend.tokens) == (bill.calls, bill.calls, bill.total_tokens)
    assert spend.record()["cost_usd"] is None


# -- every reporter: an unknown cost is unknown, a cached call is a saving ------------------------------------


def reporters(tmp_path: Path, name: str) -> tuple[list[Any], dict[str, Any]]:
    """A JSONL trace, the progress display (plain lines) and OpenTelemetry spans (in memory), to install."""
    import io

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rlm_events.taps import OpenTelemetryTap, ProgressTap

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out = io.StringIO()
    trace = JsonlTrace(tmp_path / f"{name}.jsonl")
    found = {"trace": trace, "path": tmp_path / f"{name}.jsonl", "spans": exporter, "progress": out}
    return [trace, ProgressTap(out, live=False), OpenTelemetryTap(provider)], found


def reported(found: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The run_end record's usage, the progress display's last line and the call span's attributes."""
    found["trace"].close()
    end = json.loads(found["path"].read_text().splitlines()[-1])
    (span,) = [s for s in found["spans"].get_finished_spans() if s.name.startswith("invoke_agent")]
    found["spans"].clear()
    return end["usage"], found["progress"].getvalue().splitlines()[-1], dict(span.attributes)


def test_an_unknown_cost_is_reported_unknown_never_zero(tmp_path: Path):
    taps, found = reporters(tmp_path, "unpriced")
    rlm, spent = rlm_with(*taps)
    with LocalOpenAIServer.scripted(STEPS, sub="hi") as server, dspy.context(lm=client(server, "any-model")):
        rlm(text="t")
        bill = server.bill
    usage, line, attributes = reported(found)
    assert bill.calls == 4 and bill.cost_usd is None
    assert usage["cost_usd"] is None and usage["unpriced_lm_calls"] == 4 and usage["total_tokens"] == bill.total_tokens
    assert line.endswith(f"{bill.total_tokens:,} tokens, cost unknown") and "$" not in line
    assert "rlm.cost_usd" not in attributes
    assert attributes["rlm.cost_known"] is False
    assert attributes["rlm.unpriced_lm_calls"] == attributes["rlm.lm_calls"] == 4
    assert not spent["run"].cost_known


def test_a_known_cost_is_reported_by_every_reporter(tmp_path: Path):
    taps, found = reporters(tmp_path, "priced")
    rlm, _ = rlm_with(*taps)
    with LocalOpenAIServer.scripted(STEPS, sub="hi", prices={"gpt-4o-mini": (0.15, 0.6)}) as server:
        with dspy.context(lm=client(server, "gpt-4o-mini")):
            rlm(text="t")
        bill = server.bill
    usage, line, attributes = reported(found)
    assert bill.cost_usd is not None and usage["cost_usd"] == pytest.approx(bill.cost_usd, rel=1e-6)
    assert "unpriced_lm_calls" not in usage and "cached_lm_calls" not in usage
    assert line.endswith(f"{bill.total_tokens:,} tokens, ${bill.cost_usd:.4f}")
    assert attributes["rlm.cost_usd"] == pytest.approx(bill.cost_usd, rel=1e-6) and "rlm.cost_known" not in attributes


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_calls_cost_nothing_consume_no_budget_and_every_reporter_reports_the_saving(tmp_path: Path, cache):
    from dspy.clients.cache import Cache

    memory = cache == "memory"
    own_cache = Cache(
        enable_disk_cache=not memory,
        enable_memory_cache=memory,
        disk_cache_dir=str(tmp_path / "dspy-cache"),
        disk_size_limit_bytes=10_000_000,
        memory_max_entries=1000,
    )
    previous, dspy.cache = dspy.cache, own_cache
    try:
        with LocalOpenAIServer.scripted(STEPS, sub="hi", prices={"gpt-4o-mini": (0.15, 0.6)}) as server:
            lm = client(server, "gpt-4o-mini", cache=True)
            taps, found = reporters(tmp_path, "first")
            rlm, spent = rlm_with(*taps)
            with dspy.context(lm=lm):
                rlm(text="t")
            first = server.bill
            first_usage, _, _ = reported(found)
            # the same run again, under a dollar cap one tenth of what the first run cost: cached calls use none of it
            taps, found = reporters(tmp_path, "again")
            rlm, spent = rlm_with(*taps, max_cost_usd=first.cost_usd / 10)
            with dspy.context(lm=lm):
                assert rlm(text="t").answer == "42"
            assert server.bill.calls == first.calls == 4  # no request: every call came from DSPy's cache
    finally:
        dspy.cache = previous
    usage, line, attributes = reported(found)
    spend = spent["run"]
    assert (spend.lm_calls, spend.cached_lm_calls, spend.tokens, spend.cost_usd) == (4, 4, 0, 0.0)
    assert spend.stopped_by is None and spend.iterations == 3
    assert spend.saved_cost_usd == pytest.approx(first.cost_usd, rel=1e-6)
    assert usage["cost_usd"] == 0.0 and usage["cached_lm_calls"] == 4 and usage["total_tokens"] == 0
    assert usage["saved_cost_usd"] == pytest.approx(first_usage["cost_usd"], rel=1e-6)
    assert line.endswith(f"0 tokens, 4 cached (saved ${first.cost_usd:.4f})")
    assert attributes["rlm.cost_usd"] == 0.0 and attributes["rlm.cached_lm_calls"] == 4
    assert attributes["rlm.saved_cost_usd"] == pytest.approx(first.cost_usd, rel=1e-6)


def test_a_dollar_cap_refuses_a_call_whose_usage_it_cannot_see():
    from rlm_events.local_openai import NO_USAGE

    rlm, spent = rlm_with(max_cost_usd=1.0)
    server = LocalOpenAIServer.scripted(STEPS, sub="hi", faults={0: NO_USAGE}, prices={"gpt-4o-mini": (0.15, 0.6)})
    with server, dspy.context(lm=client(server, "gpt-4o-mini")), pytest.raises(UnknownCostError) as raised:
        rlm(text="t")
    assert server.bill.calls == 1 and server.bill.unmetered_calls == 1
    assert raised.value.models == () and "without usage" in str(raised.value)
    assert spent["run"].unmetered_lm_calls == 1 and spent["run"].stopped_by == "cost_usd"
