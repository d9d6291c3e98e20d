"""Speculate: sub-LLM and pure tool calls made ahead, claimed by exact match; results identical to the bare run."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER

import rlm_events
from rlm_events import Stage
from rlm_events._ast import LIMITS, UNKNOWN, plain
from rlm_events.builtins import Budget, CodeGuard, Speculate, SpeculateStats
from rlm_events.context import Run
from rlm_events.lm_usage import Usage
from rlm_events.speculate.planner import Planner
from rlm_events.speculate.repl import ProbeReader, probe_code
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm
from rlm_events.trace import JsonlTrace

HAS_LOCAL = hasattr(dspy, "LocalInterpreter")
INTERPRETERS = [pytest.param(InProcessInterpreter, id="inprocess")]
if HAS_LOCAL:
    INTERPRETERS.append(pytest.param(dspy.LocalInterpreter, id="local"))

SLEEP = 0.08


class Counter:
    """Tools that sleep and count their calls (by thread: ahead of the code, or from it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def record(self, name: str, arg: Any) -> None:
        with self.lock:
            self.calls.append((name, arg, threading.current_thread().name))

    def working(self, seconds: float) -> None:
        """Sleep as a call that takes `seconds`, counting how many calls were inside at once (the evidence that
        calls overlapped, without comparing clocks)."""
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.in_flight -= 1

    def count(self, name: str) -> int:
        return sum(1 for n, _, _ in self.calls if n == name)

    def ahead(self, name: str) -> int:
        return sum(1 for n, _, t in self.calls if n == name and t.startswith("rlm-speculate"))


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def tools(counter: Counter) -> dict[str, Any]:
    def lookup(item: str) -> str:
        """A pure lookup."""
        counter.record("lookup", item)
        counter.working(SLEEP)
        return f"<{item}>"

    def log_event(message: str) -> str:
        """Not pure: it writes somewhere."""
        counter.record("log_event", message)
        time.sleep(SLEEP / 4)
        return "logged"

    return {"lookup": lookup, "log_event": log_event}


def sub(counter: Counter) -> Any:
    def answer(prompt: str) -> str:
        counter.record("llm", prompt)
        counter.working(SLEEP)
        return f"answer to {prompt.strip()[-24:]}"

    return answer


def run(make_rlm, steps, *, speculate=None, tools=None, counter=None, interpreter=None, install=(), text="t"):
    """Run ``steps``; return (prediction, seconds, stats, run_state)."""
    rlm, lm = make_rlm(
        steps,
        tools=list(tools.values()) if tools else None,
        sub=sub(counter) if counter is not None else "ok",
        interpreter_factory=interpreter,
        max_iters=len(steps) + 1,
    )
    events = rlm_events.instrument(rlm)
    for builtin in install:
        builtin.install(events)
    if speculate is not None:
        speculate.install(events)
    state: dict[str, Any] = {}
    events.tap([Stage.RUN_END], lambda ctx: state.update(ctx.run.state), inline=True)
    started = time.perf_counter()
    with dspy.context(lm=lm):
        prediction = rlm(text=text)
    return prediction, time.perf_counter() - started, state.get("speculate"), state


def steps_of(prediction) -> list[tuple[str, str]]:
    return [(e["code"], e["output"]) for e in prediction.trajectory]


LOOP_STEPS = [
    'out = {}\nfor item in ["a", "b", "c", "d"]:\n    out[item] = lookup(item=item)\nprint(out)',
    'keys = sorted(out)\nreplies = [llm_query(f"about {out[k]}") for k in keys]\nprint(replies)',
    "SUBMIT(answer=' '.join(replies))",
]


# -- results identical, sooner --------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_claimed_results_are_the_real_calls_results_and_the_run_finishes_sooner(make_rlm, tools, counter, interpreter):
    bare, _, _, _ = run(make_rlm, LOOP_STEPS, tools=tools, counter=counter, interpreter=interpreter)
    bare_calls = sorted((n, a) for n, a, _ in counter.calls)
    assert counter.most_in_flight == 1  # the bare run makes its calls one after another
    counter.calls.clear()
    fast, _, stats, state = run(
        make_rlm, LOOP_STEPS, speculate=Speculate(pure=[tools["lookup"]]), tools=tools, counter=counter,
        interpreter=interpreter,
    )  # fmt: skip
    assert steps_of(fast) == steps_of(bare) and fast.answer == bare.answer
    assert sorted((n, a) for n, a, _ in counter.calls) == bare_calls  # each call made once, none extra
    assert isinstance(stats, SpeculateStats)
    # A call whose dispatch had not started yet when the code asked for it is cancelled and made there instead.
    assert (stats.dispatched, stats.claimed + stats.cancelled, stats.wasted, stats.missed) == (8, 8, 0, 0), stats
    assert counter.ahead("lookup") + counter.ahead("llm") == stats.claimed == stats.speculated
    assert stats.repl in ("namespace", "probe")
    assert counter.most_in_flight >= 2  # sequential calls ran concurrently (how much sooner: benchmarks/latency.py)
    usage = state["usage"]
    assert usage.speculative_lm_calls == counter.ahead("llm") and usage.wasted_lm_calls == 0


def test_async_calls_speculate_too(make_rlm, tools, counter):
    rlm, lm = make_rlm(LOOP_STEPS, tools=list(tools.values()), sub=sub(counter), max_iters=4)
    events = rlm_events.instrument(rlm)
    Speculate(pure=["lookup"]).install(events)
    state: dict[str, Any] = {}
    events.tap([Stage.RUN_END], lambda ctx: state.update(ctx.run.state), inline=True)
    ctxs: list[Any] = []
    events.tap([Stage.RUN_END], ctxs.append, inline=True)

    async def main() -> Any:
        with dspy.context(lm=lm):
            return await rlm.acall(text="t")

    prediction = asyncio.run(main())
    assert prediction.answer.startswith("answer to about <a>")
    stats = state["speculate"]
    assert Speculate.stats(ctxs[0]) is Speculate.stats(ctxs[0].run) is stats  # the accessor: from a context or a run
    assert Speculate.stats(Run(id="bare", module=rlm, started_at=datetime.now(tz=timezone.utc))) is None
    assert stats.claimed + stats.cancelled == 8 and stats.wasted == 0 and stats.claimed >= 6


def test_fan_out_over_a_list_an_earlier_iteration_built_in_the_repl(make_rlm, counter):
    steps = [
        "chunks = [text[i:i + 5] for i in range(0, len(text), 5)]\nprint(len(chunks))",
        "summaries = []\nfor chunk in chunks:\n    summaries.append(llm_query('Summarize: ' + chunk))\n"
        "print(summaries)",
        "SUBMIT(answer='|'.join(summaries))",
    ]
    bare, _, _, _ = run(make_rlm, steps, counter=counter, text="x" * 40)
    assert counter.most_in_flight == 1
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(), counter=counter, text="x" * 40)
    assert steps_of(fast) == steps_of(bare)
    assert stats.claimed + stats.cancelled == 8 and stats.wasted == 0
    assert counter.most_in_flight >= 2


def test_literals_only_mode_plans_without_reading_the_repl(make_rlm, tools, counter):
    _fast, _, stats, _ = run(
        make_rlm, LOOP_STEPS, speculate=Speculate(pure=["lookup"], repl_state=False), tools=tools, counter=counter
    )
    assert stats.repl == "off" and stats.repl_reads == 0
    assert stats.claimed + stats.cancelled == 4  # the literal loop; the second iteration's arguments come from the REPL


# -- safety ---------------------------------------------------------------------------------------------------


def test_an_unmarked_tool_is_never_called_ahead_nor_twice(make_rlm, tools, counter):
    steps = [
        'for m in ["x", "y"]:\n    log_event(message=m)\nr = [lookup(item=i) for i in ["p", "q"]]\nprint(r)',
        "SUBMIT(answer=str(r))",
    ]
    bare, _, _, _ = run(make_rlm, steps, tools=tools, counter=counter)
    assert counter.count("log_event") == 2
    counter.calls.clear()
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
    assert steps_of(fast) == steps_of(bare)
    assert counter.count("log_event") == 2 and counter.ahead("log_event") == 0
    # Past the unmarked tool, the pure one is planned (its result depends only on its arguments) and counted so.
    assert stats.dispatched == stats.past_unknown == 2 and stats.past_unknown_wasted == 0
    assert counter.count("lookup") == 2  # each claimed, or cancelled and made by the code: never twice
    counter.calls.clear()
    slow, _, stats, _ = run(
        make_rlm, steps, speculate=Speculate(pure=["lookup"], past_unknown_calls=False), tools=tools, counter=counter
    )
    assert steps_of(slow) == steps_of(bare)
    assert counter.count("log_event") == 2 and counter.ahead("log_event") == 0
    # The conservative order: a pure tool called after an unmarked one is not called ahead.
    assert counter.ahead("lookup") == 0 and stats.dispatched == 0


def test_pure_tool_calls_before_an_unmarked_one_are_made_ahead(make_rlm, tools, counter):
    steps = ['r = [lookup(item=i) for i in ["p", "q"]]\nlog_event(message="done")\nprint(r)', "SUBMIT(answer=str(r))"]
    _, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
    assert stats.claimed + stats.cancelled == 2 and counter.ahead("lookup") == stats.claimed
    assert counter.ahead("log_event") == 0


def test_a_misprediction_is_wasted_and_the_real_call_is_made(make_rlm, counter):
    # The shadow does not follow what a function of the code does to a global: it predicts llm_query('a').
    steps = [
        "def change():\n    global p\n    p = 'b'\nprint('defined')",
        "p = 'a'\nchange()\nr = llm_query(p)\nprint(r)",
        "SUBMIT(answer=r)",
    ]
    bare, _, _, _ = run(make_rlm, steps, counter=counter)
    fast, _, stats, state = run(make_rlm, steps, speculate=Speculate(), counter=counter)
    assert steps_of(fast) == steps_of(bare) and fast.answer == "answer to b"
    assert (stats.dispatched, stats.claimed, stats.wasted, stats.missed) == (1, 0, 1, 1)
    usage = state["usage"]
    assert usage.wasted_lm_calls == 1 and usage.wasted_tokens > 0
    assert stats.wasted_tokens == usage.wasted_tokens
    record = usage.record()
    assert record["wasted_tokens"] == usage.wasted_tokens and record["speculative_lm_calls"] == 1


def test_only_an_exact_match_after_normalisation_is_claimed(make_rlm, counter):
    # The code calls llm_query(prompt=...) while the plan saw the same prompt positionally elsewhere: the keyword
    # form and the positional form are different calls, so only the matching one is claimed.
    steps = ["a = llm_query('same')\nb = llm_query(prompt='same')\nprint(a, b)", "SUBMIT(answer=a + b)"]
    bare, _, _, _ = run(make_rlm, steps, counter=counter)
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(), counter=counter)
    assert steps_of(fast) == steps_of(bare)
    assert stats.claimed + stats.cancelled == 2 and stats.wasted == 0  # each dispatched call matched its own form


def test_json_normalisation_matches_what_the_tool_sees(make_rlm, counter):
    seen: list[Any] = []

    def pick(values: list, index: int) -> str:
        """Pure."""
        seen.append(values)
        return str(values[index])

    steps = ["r = pick(values=(1, 2.0, 'x'), index=2)\nprint(r)", "SUBMIT(answer=r)"]
    _, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=[pick]), tools={"pick": pick}, counter=counter)
    assert stats.claimed + stats.cancelled == 1 and seen == [[1, 2.0, "x"]]  # a tuple crosses as a JSON list, once


def test_a_failed_call_made_ahead_is_not_claimed(make_rlm, counter):
    attempts: list[int] = []

    def flaky(n: int) -> int:
        """Pure, but fails the first time."""
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return n * 2

    steps = ["r = flaky(n=21)\nprint(r)", "SUBMIT(answer=str(r))"]
    fast, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=[flaky]), tools={"flaky": flaky}, counter=counter)
    assert fast.answer == "42" and stats.failed == 1 and stats.wasted == 1 and stats.claimed == 0


# -- caps, timeout, budget ------------------------------------------------------------------------------------


def test_per_iteration_cap_and_in_flight_cap(make_rlm, tools, counter):
    fast, _, stats, _ = run(
        make_rlm, LOOP_STEPS, speculate=Speculate(pure=["lookup"], max_per_iteration=3, max_in_flight=1),
        tools=tools, counter=counter,
    )  # fmt: skip
    assert stats.dispatched == 6 and stats.refused == {"per_iteration": 2}
    assert fast.answer.startswith("answer to about <a>")


def test_after_the_timeout_the_real_run_makes_the_call(make_rlm, counter):
    def slow(n: int) -> int:
        """Pure and slow ahead of time."""
        counter.record("slow", threading.current_thread().name)
        time.sleep(0.5 if threading.current_thread().name.startswith("rlm-speculate") else 0.01)
        return n + 1

    steps = ["r = slow(n=1)\nprint(r)", "SUBMIT(answer=str(r))"]
    fast, _seconds, stats, _ = run(
        make_rlm, steps, speculate=Speculate(pure=[slow], timeout=0.05), tools={"slow": slow}, counter=counter
    )
    assert fast.answer == "2" and stats.timeouts == 1 and stats.wasted == 1 and counter.count("slow") == 2


def test_a_hard_budget_refuses_dispatches_past_its_limit(make_rlm, counter):
    steps = ["r = [llm_query('q' + str(i)) for i in range(6)]\nprint(r)", "SUBMIT(answer=str(len(r)))"]
    budget = Budget(max_tokens=3_000, hard=True)
    _, _, stats, state = run(make_rlm, steps, speculate=Speculate(), counter=counter, install=[budget])
    spend = state["budget"]
    assert stats.refused.get("budget", 0) >= 1 and stats.dispatched < 6
    assert spend.reserved == (0, 0.0)  # every reservation was given back
    assert spend.speculative_lm_calls == stats.lm_calls  # the Budget's Spend is the run's one Usage


def test_a_tool_cap_limits_dispatches(make_rlm, tools, counter):
    budget = Budget(max_tool_calls={"lookup": 2})
    _fast, _, stats, _ = run(
        make_rlm, [*LOOP_STEPS[:1], "SUBMIT(answer=str(out))"], speculate=Speculate(pure=["lookup"]), tools=tools,
        counter=counter, install=[budget],
    )  # fmt: skip
    assert stats.dispatched == 2 and stats.refused == {"tool_cap": 2}
    assert counter.count("lookup") == 2  # the capped calls were denied by the Budget, not made


# -- composition ----------------------------------------------------------------------------------------------


def test_code_the_guard_refuses_is_not_speculated(make_rlm, counter):
    steps = ["import os\nr = llm_query('x')", "SUBMIT(answer='ok')"]
    _, _, stats, _ = run(make_rlm, steps, speculate=Speculate(), counter=counter, install=[CodeGuard()])
    assert stats.dispatched == 0 and counter.count("llm") == 0


def test_the_trace_counts_speculated_and_wasted_tokens(make_rlm, counter):
    steps = ["def change():\n    global p\n    p = 'b'", "p = 'a'\nchange()\nr = llm_query(p)", "SUBMIT(answer=r)"]
    out = io.StringIO()
    trace = JsonlTrace(out)
    _, _, stats, _state = run(make_rlm, steps, speculate=Speculate(), counter=counter, install=[trace])
    rlm_events.flush()  # the trace writes on the tap delivery worker
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    end = records[-1]
    assert end["stage"] == "run_end"
    assert end["usage"]["wasted_lm_calls"] == 1 and end["usage"]["wasted_tokens"] == stats.wasted_tokens > 0


# -- install-time errors --------------------------------------------------------------------------------------


def test_pure_must_name_tools_of_this_rlm(make_rlm, tools):
    rlm, _ = make_rlm(["SUBMIT(answer='x')"], tools=list(tools.values()))
    events = rlm_events.instrument(rlm)

    def lookup(item: str) -> str:
        return item

    with pytest.raises(ValueError, match=r"'nope' is not a tool of this RLM\. Tools of this RLM: log_event, lookup"):
        Speculate(pure=["nope"]).install(events)
    with pytest.raises(ValueError, match=r"is not the function of this RLM's tool 'lookup'"):
        Speculate(pure=[lookup]).install(events)
    with pytest.raises(TypeError, match="collection of tools"):
        Speculate(pure="lookup")
    Speculate(pure=[tools["lookup"], "llm_query"]).install(events)


def test_an_interpreter_the_shadow_cannot_read_is_refused_at_install_time(make_rlm):
    from dspy.primitives.python_interpreter import PythonInterpreter

    rlm, _ = make_rlm(["SUBMIT(answer='x')"], interpreter_factory=PythonInterpreter)
    events = rlm_events.instrument(rlm)
    with pytest.raises(
        ValueError, match=r"PythonInterpreter runs the code in a Deno/Pyodide sandbox.*repl_state=False"
    ):
        Speculate().install(events)
    Speculate(repl_state=False).install(events)  # planning from literals needs no read of the REPL


class OpaqueInterpreter:
    """An interpreter the install-time check cannot see (made by a lambda), and the shadow cannot read."""

    def __init__(self) -> None:
        self.inner = InProcessInterpreter()
        self.tools = self.inner.tools
        self.output_fields = None

    def start(self) -> None:
        self.inner.start()

    def execute(self, code: str, variables: dict | None = None) -> Any:
        self.inner.output_fields = self.output_fields
        return self.inner.execute(code, variables)

    def __call__(self, code: str, variables: dict | None = None) -> Any:
        return self.execute(code, variables)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_an_unreadable_repl_at_run_time_is_said_once_and_literals_still_plan(make_rlm, tools, counter, caplog):
    with caplog.at_level(logging.WARNING, logger="rlm_events"):
        fast, _, stats, _ = run(
            make_rlm, LOOP_STEPS, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter,
            interpreter=lambda: OpaqueInterpreter(),
        )  # fmt: skip
    assert stats.repl.startswith("unavailable: ") and "OpaqueInterpreter" in stats.repl
    assert sum("cannot read the REPL's variables" in r.getMessage() for r in caplog.records) == 1
    assert stats.claimed + stats.cancelled == 4 and fast.answer.startswith("answer to about <a>")


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_in_flight"):
        Speculate(max_in_flight=0)
    with pytest.raises(ValueError, match="timeout"):
        Speculate(timeout=0)
    with pytest.raises(TypeError, match="repl_state"):
        Speculate(repl_state="yes")  # type: ignore[arg-type]
    assert repr(Speculate(pure=["a"], max_in_flight=2)).startswith("Speculate(pure=['a'], max_in_flight=2")


def test_stages(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    builtin = Speculate().install(events)
    registered = {stage for stage, chain in events.plan.chains.items() if builtin in list(chain)}
    assert registered == {Stage.RUN_START, Stage.PRE_EXECUTION, Stage.TOOL_CALL, Stage.POST_EXECUTION, Stage.RUN_END}
    builtin.uninstall(events)
    assert not any(builtin in list(chain) for chain in events.plan.chains.values())


# -- isolation of the shadow ----------------------------------------------------------------------------------


class Trap:
    """An object every hook of which records that it ran (the shadow must run none)."""

    touched: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        Trap.touched.append(name)
        return object.__getattribute__(self, name)

    def __eq__(self, other: object) -> bool:
        Trap.touched.append("__eq__")
        return True

    def __hash__(self) -> int:
        Trap.touched.append("__hash__")
        return 1

    def __iter__(self) -> Any:
        Trap.touched.append("__iter__")
        return iter([1, 2])

    def __len__(self) -> int:
        Trap.touched.append("__len__")
        return 2

    def __repr__(self) -> str:
        Trap.touched.append("__repr__")
        return "Trap()"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        Trap.touched.append("__format__")
        return "Trap"


class TrapList(list):
    def __iter__(self) -> Any:
        Trap.touched.append("TrapList.__iter__")
        return super().__iter__()


class TrapStr(str):
    def __eq__(self, other: object) -> bool:
        Trap.touched.append("TrapStr.__eq__")
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_the_shadow_runs_no_code_of_the_values_it_sees():
    Trap.touched.clear()
    namespace = {"t": Trap(), "items": TrapList(["a", "b"]), "s": TrapStr("x"), "ok": ["p"], TrapStr("k"): 1}
    code = (
        "for x in t:\n    llm_query(x)\nfor y in items:\n    llm_query(y)\nllm_query(f'{t} {s} {len(t)}')\n"
        "llm_query(str(t) + repr(items))\nfor z in ok:\n    llm_query(z)\nllm_query(t == 1)\nd = {t: 1}"
    )
    values = {k: plain(v) for k, v in namespace.items() if type(k) is str}
    plan = Planner(
        speculable=frozenset({"llm_query"}), tools=frozenset({"llm_query"}), values=values, absent=frozenset()
    ).run(ast.parse(code))
    assert Trap.touched == []
    assert [c.args for c in plan.calls] == [("p",)]  # only the plain list was usable
    assert values["t"] is UNKNOWN and values["items"] is UNKNOWN and values["s"] is UNKNOWN


def test_planning_opens_no_file_socket_process_and_runs_no_code(make_rlm, tools, counter):
    """An audit hook records what happens while the shadow plans (after the code was parsed)."""
    events_seen: list[str] = []
    watching = threading.local()

    def hook(event: str, args: tuple) -> None:
        if getattr(watching, "on", False) and not event.startswith(("object.__getattr__", "sys._getframe")):
            events_seen.append(event)

    sys.addaudithook(hook)
    original = Planner.run

    def watched(self: Planner, tree: ast.Module) -> Any:
        watching.on = True
        try:
            return original(self, tree)
        finally:
            watching.on = False

    Planner.run = watched  # type: ignore[method-assign]
    try:
        code = (
            "import os\nimport socket\nwith open('/tmp/x', 'w') as f:\n    f.write('no')\nos.system('true')\n"
            "eval('1')\nexec('y = 1')\nsocket.socket()\n__import__('subprocess')\n"
            "r = [lookup(item=i) for i in ['a']]"
        )
        steps = [code.replace("os.system('true')", "pass").replace("socket.socket()", "pass"), "SUBMIT(answer='x')"]
        conservative = Speculate(pure=["lookup"], past_unknown_calls=False)
        _, _, stats, _ = run(make_rlm, steps, speculate=conservative, tools=tools, counter=counter)
        assert stats.planned == 0  # the unmarked work before the lookup is a barrier
        _, _, stats, _ = run(make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter)
        assert stats.planned == stats.past_unknown == 1  # planned past it, and counted as such
        direct = Planner(
            speculable=frozenset({"llm_query"}), tools=frozenset({"llm_query"}), values={}, absent=frozenset()
        )
        watched(direct, ast.parse(code.replace("lookup(item=i)", "llm_query(i)")))
    finally:
        Planner.run = original  # type: ignore[method-assign]
    assert events_seen == [], events_seen


def test_size_limits_keep_the_shadow_small():
    code = (
        "a = 'x' * 10**12\nb = 10 ** 10 ** 9\nc = f'{1:>999999999}'\nd = '%999999999d' % 1\n"
        "e = list(range(10**12))\nllm_query(a)\nllm_query(str(b))\nllm_query(c)\nllm_query(d)\nllm_query(str(e))\n"
        "llm_query('fine')"
    )
    plan = Planner(  # without the limits, this would not finish (10 ** 10 ** 9) or exhaust memory
        speculable=frozenset({"llm_query"}), tools=frozenset({"llm_query"}), values={}, absent=frozenset()
    ).run(ast.parse(code))
    assert [c.args for c in plan.calls] == [("fine",)]


@pytest.mark.parametrize(
    ("code", "calls"),
    [
        ("for i in range(3):\n    llm_query(f'q{i}')", [("q0",), ("q1",), ("q2",)]),
        ("xs = [1, 2]\nxs.append(3)\nllm_query_batched([str(x) for x in xs])", [(["1", "2", "3"],)]),
        ("for i in range(5):\n    if i == 2:\n        break\n    llm_query(str(i))", [("0",), ("1",)]),
        ("r = llm_query('a')\nif r == 'x':\n    llm_query('b')\nllm_query('c')", [("a",), ("c",)]),
        ("for i in range(3):\n    r = llm_query(str(i))\n    if r:\n        break", [("0",)]),
        ("while True:\n    llm_query('w')\n    break\nllm_query('after')", [("after",)]),
        ("llm_query('x')\nSUBMIT(answer=1)\nllm_query('never')", [("x",)]),
        ("d = {'k': [1, 2]}\nllm_query(prompt=' '.join(str(v) for v in d['k']))", [()]),
        ("x = 'A b'\nllm_query(x.lower().split()[1].upper())", [("B",)]),
    ],
)
def test_planner_follows_the_code(code, calls):
    plan = Planner(
        speculable=frozenset({"llm_query", "llm_query_batched"}),
        tools=frozenset({"llm_query", "llm_query_batched"}),
        values={},
        absent=frozenset(),
    ).run(ast.parse(code))
    assert [c.args for c in plan.calls] == calls
    if calls == [()]:
        assert plan.calls[0].kwargs == {"prompt": "1 2"}


# -- the REPL probe of dspy.LocalInterpreter ------------------------------------------------------------------


TRAP_CLASSES = (
    "touched = []\n"
    "class Trap:\n"
    "    def __repr__(self):\n        touched.append('repr'); return 'T'\n"
    "    def __eq__(self, o):\n        touched.append('eq'); return True\n"
    "    __hash__ = object.__hash__\n"
    "    def __iter__(self):\n        touched.append('iter'); return iter([])\n"
    "    def __len__(self):\n        touched.append('len'); return 0\n"
    "class S(str):\n"
    "    def __eq__(self, o):\n        touched.append('S.eq'); return str.__eq__(self, o)\n"
    "    __hash__ = str.__hash__\n"
    "class L(list):\n"
    "    def __iter__(self):\n        touched.append('L.iter'); return list.__iter__(self)\n"
)
"""Classes whose every hook records that it ran (in `touched`): a REPL reader must run none of them."""
GLOBALS_SNAPSHOT = (
    "sorted((str.__str__(k), id(v)) for k, v in globals().items() if k not in ('__builtins__', 'SUBMIT'))"
)
"""What every global of a REPL is bound to (identities; str.__str__ gives exact names); SUBMIT is bound anew."""


@pytest.mark.skipif(not HAS_LOCAL, reason="dspy.LocalInterpreter needs DSPy 3.4+")
def test_the_local_interpreter_probe_reads_plain_values_and_changes_nothing():
    repl = dspy.LocalInterpreter()
    try:
        setup = (
            TRAP_CLASSES + "globals()[S('sneaky')] = 0\n"
            "chunks = ['a', 'b']\nnested = {'k': [1, 2.5, None, True]}\nt = Trap()\nl = L([1])\ns = S('x')\n"
            "big = 10 ** 100\nnan = float('nan')\nlen = lambda x: touched.append('len()')\ntype = len\n"
            "print('ready')"
        )
        assert repl.execute(setup) == "ready"
        # What every global is bound to (identities; str.__str__ gives exact names): reading it runs no code of theirs.
        # SUBMIT is the interpreter's, bound anew by every execution.
        snapshot = GLOBALS_SNAPSHOT
        before = repl.execute(snapshot)
        assert repl.execute("touched.clear()") is None
        reader = ProbeReader(repl)
        for _ in range(3):
            values, bound = reader.read(["chunks", "nested", "t", "l", "s", "big", "nan", "missing", "sneaky"], LIMITS)
        assert values == {"chunks": ["a", "b"], "nested": {"k": [1, 2.5, None, True]}}
        assert bound == {"chunks", "nested", "t", "l", "s", "big", "nan"}  # a key of type S is skipped, unread
        assert repl.execute("touched") == []
        assert repl.execute(snapshot) == before
    finally:
        repl.shutdown()


def test_the_probe_is_one_expression_that_assigns_nothing():
    tree = ast.parse(probe_code(["a", "b"], LIMITS))
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    params = {a.arg for n in ast.walk(tree) if isinstance(n, ast.Lambda) for a in n.args.args}
    comprehension_targets = {
        n.id for c in ast.walk(tree) if isinstance(c, ast.comprehension) for n in ast.walk(c.target)
        if isinstance(n, ast.Name)
    }  # fmt: skip
    assert names <= params | comprehension_targets  # no global name is looked up: nothing rebound can run
    assert not any(isinstance(n, (ast.Assign, ast.AugAssign, ast.NamedExpr, ast.Delete)) for n in ast.walk(tree))
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert attributes <= {"__class__", "__globals__", "__len__", "items", "append", "__setitem__"}


def test_usage_record_is_unchanged_without_speculation():
    assert set(Usage().record()) == {"lm_calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"}


def test_speculated_lm_calls_are_the_runs(make_rlm, counter):
    _fast, _, stats, state = run(make_rlm, [*LOOP_STEPS[1:2], "SUBMIT(answer='x')"], speculate=Speculate(),
                                counter=counter)  # fmt: skip
    usage = metered_of(state)
    assert usage.lm_calls >= 2 + stats.lm_calls  # the actions and the calls made ahead, all the run's


def metered_of(state: dict[str, Any]) -> Usage:
    usage = state["usage"]
    assert isinstance(usage, Usage)
    return usage


def test_build_rlm_on_every_release_keeps_speculating():
    rlm = build_rlm("text -> answer", max_iters=3, interpreter_factory=REAL_INTERPRETER)
    events = rlm_events.instrument(rlm)
    try:
        Speculate().install(events)
    finally:
        rlm_events.uninstrument(rlm)


def test_print_in_process_is_no_barrier(make_rlm, tools, counter):
    steps = ["print('start')\nr = [lookup(item=i) for i in ['p', 'q']]\nprint(r)", "SUBMIT(answer=str(r))"]
    _, _, stats, _ = run(
        make_rlm, steps, speculate=Speculate(pure=["lookup"]), tools=tools, counter=counter,
        interpreter=InProcessInterpreter,
    )  # fmt: skip
    assert stats.dispatched == 2 and stats.claimed + stats.cancelled == 2


def test_calls_made_ahead_have_spans_marked_claimed_or_wasted(make_rlm, counter):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rlm_events.taps import OpenTelemetryTap

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    steps = [
        "def change():\n    global p\n    p = 'b' * 40",
        "p = 'a' * 40\nchange()\nr = llm_query(p)\ns = [llm_query(x) for x in ['u', 'v']]",
        "SUBMIT(answer=r)",
    ]
    _, _, stats, _ = run(
        make_rlm, steps, speculate=Speculate(tracer_provider=provider, max_in_flight=1), counter=counter,
        install=[OpenTelemetryTap(provider)],
    )  # fmt: skip
    spans = exporter.get_finished_spans()
    ahead = [s for s in spans if s.name == "speculate llm_query"]
    outcomes = sorted(s.attributes["rlm.speculate.outcome"] for s in ahead)
    assert len(ahead) == stats.dispatched == 3
    assert outcomes.count("wasted") == stats.wasted == 1
    assert outcomes.count("claimed") == stats.claimed and stats.claimed + stats.cancelled == 2
    wasted = next(s for s in ahead if s.attributes["rlm.speculate.outcome"] == "wasted")
    assert wasted.attributes["gen_ai.usage.input_tokens"] > 0 and wasted.attributes["rlm.speculative"] is True
    claimed_tools = [
        s for s in spans if s.name == "execute_tool llm_query" and s.attributes.get("rlm.speculate.claimed")
    ]
    assert len(claimed_tools) == stats.claimed


def test_the_latency_benchmark_runs_and_compares_every_step(tmp_path):
    """benchmarks/latency.py keeps working: one round of the fan-out scenario, its report and its identity check."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "latency.py"
    spec = importlib.util.spec_from_file_location("latency_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    out = tmp_path / "latency.json"
    assert (
        bench.main(["--repeats", "1", "--interpreter", "inprocess", "--scenario", "fan-out", "--json", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    scenario = report["scenarios"]["fan-out"]
    variants = {"bare", "speculate", "literals", "composed", "conservative"}
    assert report["identical"] and set(scenario["variants"]) == variants
    speculate = scenario["variants"]["speculate"]
    assert speculate["claimed"] + speculate["cancelled"] == 10 and speculate["wasted"] == 0
    # The speed-up itself is the benchmark's to judge (benchmarks/latency.py, ratios measured in one run), not a
    # timed assertion here: on a loaded 2-core CI machine one round is noise.
    assert isinstance(speculate["wall_speedup"], float) and speculate["wall_speedup"] > 0


def test_no_call_is_dispatched_past_dspys_max_llm_calls(counter):
    steps = ["r = [llm_query(str(i)) for i in range(5)]\nprint(r)", "SUBMIT(answer='done')"]
    outcomes = []
    for speculate in (None, Speculate()):
        lm = ScriptedLM(steps, sub=sub(counter))
        rlm = build_rlm("text -> answer", max_iters=3, interpreter_factory=REAL_INTERPRETER, max_llm_calls=3)
        events = rlm_events.instrument(rlm)
        if speculate is not None:
            speculate.install(events)
        state: dict[str, Any] = {}
        events.tap([Stage.RUN_END], lambda ctx, state=state: state.update(ctx.run.state), inline=True)
        with dspy.context(lm=lm):
            prediction = rlm(text="t")
        outcomes.append((steps_of(prediction), state.get("speculate")))
        rlm_events.uninstrument(rlm)
    (bare, _), (fast, stats) = outcomes
    assert fast == bare and "LLM call limit exceeded" in bare[0][1]
    assert stats.dispatched == 3 and stats.refused == {"max_llm_calls": 2}


def test_concurrent_runs_keep_their_own_speculation(make_rlm, tools, counter):
    from concurrent.futures import ThreadPoolExecutor

    rlm, lm = make_rlm(LOOP_STEPS, tools=list(tools.values()), sub=sub(counter), max_iters=4)
    events = rlm_events.instrument(rlm)
    Speculate(pure=["lookup"]).install(events)
    ends: list[Any] = []
    events.tap([Stage.RUN_END], lambda ctx: ends.append(ctx.run.state), inline=True)

    def one(text: str) -> Any:
        with dspy.context(lm=lm):
            return rlm(text=text)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(one, ["first", "second"]))
    assert all(a.answer.startswith("answer to about <a>") for a in answers)
    for state in ends:
        stats, usage = state["speculate"], state["usage"]
        assert stats.dispatched == 8 and stats.claimed + stats.cancelled == 8 and stats.wasted == 0
        assert usage.speculative_lm_calls == stats.lm_calls <= 4  # its own calls made ahead, not the other run's
