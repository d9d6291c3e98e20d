"""The dspy-rlm-hooks API (rlm_events.hooks) on real dspy.RLM loops: the page's examples, verbatim but for the
import line, plus replacement, coexistence, error and restore guarantees."""

# The page's imports are kept as the page writes them, unsorted: users paste them as they are.
# ruff: noqa: I001

from __future__ import annotations

import sys

import asyncio
import copy

import dspy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlm_events
from rlm_events import Stage, signals
from rlm_events.hooks import disable_rlm_speculation, enable_rlm_speculation
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

# ── The page's "All Four Hooks" example, verbatim except the import line ──────────────────────────────────────
# fmt: off
from rlm_events.hooks import (
    enable_rlm_hooks,
    PreIterationOutput,
    PreExecutionOutput,
    PostExecutionOutput,
    PostIterationOutput,
)
from dspy.primitives.repl_types import REPLHistory
import re

# ── Pre-iteration: seed interpreter with a regex toolkit ──

def pre_iteration(iteration, variables, history, input_args):
    """Inject a regex helper and seed variables before every iteration."""
    return PreIterationOutput(
        extra_vars={"search_pattern": r"TODO|FIXME|HACK"},
        python_code="""
import re

def grep(pattern, text):
    return re.findall(pattern, text)
""",
    )

# ── Pre-execution: block dangerous code ──

FORBIDDEN = re.compile(r"\b(eval|exec|compile|__import__)\b")

def pre_execution(iteration, code, variables, history, input_args):
    """Sanitise generated code before it reaches the interpreter."""
    if FORBIDDEN.search(code):
        safe_code = FORBIDDEN.sub("# BLOCKED", code)
        return PreExecutionOutput(code=safe_code)
    return PreExecutionOutput(code=code)

# ── Post-execution: retry on error ──

def post_execution(iteration, code, result, variables, history, input_args):
    """If execution raised an error, wrap a hint so the LLM retries next round."""
    if isinstance(result, str) and result.startswith("[Error]"):
        return PostExecutionOutput(
            result=f"{result}\n# Hint: the variable 'search_pattern' is already in scope."
        )
    return PostExecutionOutput(result=result)

# ── Post-iteration: enforce a price budget ──

MAX_COST_USD = 0.50

def _estimate_cost(pred):
    # In production, derive this from response.usage or similar.
    return 0.015

def make_budget_hook(max_cost=MAX_COST_USD):
    """Return a post_iteration hook with isolated, per-request state.

    Create a new hook for every RLM session so budgets don't leak
    across concurrent requests on a multi-threaded or async server.
    """
    accumulated_cost = 0.0

    def post_iteration(iteration, pred, code, result, history: REPLHistory):
        nonlocal accumulated_cost
        accumulated_cost += _estimate_cost(pred)
        if accumulated_cost >= max_cost:
            return PostIterationOutput(history=history, stop=True)
        return PostIterationOutput(history=history)

    return post_iteration

# ── The page's "Async Hooks" example, verbatim; `remote_cache` is the page's placeholder, faked here ─────────


class _RemoteCache:
    """A tiny async cache: answers after yielding to the loop, and remembers which loop awaited it."""

    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def get(self, key: str) -> str:
        self.loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return f"cached context for {key!r}"


remote_cache = _RemoteCache()

async def fetch_context(iteration, variables, history, input_args):
    context = await remote_cache.get(input_args["question"])
    return PreIterationOutput(extra_vars={"cached_context": context})

# fmt: on

from rlm_events.hooks import disable_rlm_hooks  # noqa: E402  (the page's "Disabling Hooks" import)

CODEBASE = "x = 1  # TODO: fix\\ny = 2  # FIXME later\\nz = 3  # HACK"


def test_basic_usage(make_rlm):
    rlm, lm = make_rlm(['SUBMIT(answer=f"{tool}: {math.sqrt(1764):g}")'], signature="question -> answer")

    def inject_math(iteration, variables, history, input_args):
        return PreIterationOutput(
            extra_vars={"tool": "calculator"},
            python_code="import math",
        )

    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)

    with dspy.context(lm=lm):
        result = rlm(question="What is the square root of 1764?")
    assert result.answer == "calculator: 42"  # `math` (python_code) and `tool` (extra_vars) reached the REPL


def test_all_four_hooks(make_rlm, tmp_path):
    marker = tmp_path / "eval-ran"
    rlm, lm = make_rlm(
        [
            f'hits = grep(search_pattern, "{CODEBASE}")\nprint(hits)',
            # The eval line is commented out whole: the rest of the code still runs.
            f"status = 'survived'\neval(\"open({str(marker)!r}, 'w').write('ran')\")\nprint(status)",
            # Here blocking breaks the line: the error result gets the hint.
            f"print(eval(\"open({str(marker)!r}, 'w').write('ran')\"))",
            'SUBMIT(answer=", ".join(hits))',
        ],
        signature="question -> answer",
    )

    enable_rlm_hooks(
        rlm,
        pre_iteration_hook=pre_iteration,
        pre_execution_hook=pre_execution,
        post_execution_hook=post_execution,
        post_iteration_hook=make_budget_hook(max_cost=0.50),
    )

    with dspy.context(lm=lm):
        result = rlm(question="Find all TODO comments in the codebase")

    steps = result.trajectory
    assert result.answer == "TODO, FIXME, HACK"  # the injected grep + search_pattern, used across iterations
    assert steps[0]["output"] == "['TODO', 'FIXME', 'HACK']"
    assert "# BLOCKED(" in steps[1]["code"] and "eval(" not in steps[1]["code"]  # history records the rewrite
    assert steps[1]["output"] == "survived"
    # python_code is prepended to each iteration's code; the history records it with it (dspy-rlm-hooks 0.1.15)
    assert steps[2]["code"].lstrip().startswith("import re\n\ndef grep(") and "\nprint(# BLOCKED(" in steps[2]["code"]
    assert steps[2]["output"].startswith("[Error]")
    assert steps[2]["output"].endswith("# Hint: the variable 'search_pattern' is already in scope.")
    assert not marker.exists()  # no eval ever ran
    assert len(steps) == 4  # the 0.50 budget was never reached


def test_retry_hint_is_appended_to_error_results_only(make_rlm):
    rlm, lm = make_rlm(["print(undefined_name)", "print('fine')", "SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, post_execution_hook=post_execution)
    with dspy.context(lm=lm):
        steps = rlm(text="x").trajectory
    assert steps[0]["output"].startswith("[Error]") and "NameError" in steps[0]["output"]
    assert steps[0]["output"].endswith("\n# Hint: the variable 'search_pattern' is already in scope.")
    assert steps[1]["output"] == "fine"


def test_budget_stop_ends_the_loop_through_the_extract_fallback(make_rlm):
    rlm, lm = make_rlm(["print('working')"], max_iters=10, extract={"answer": "best effort"})
    ends = []
    rlm_events.instrument(rlm).tap([Stage.RUN_END], ends.append, inline=True)
    seen_preds = []

    def budget_and_record(iteration, pred, code, result, history):
        seen_preds.append((pred.code, code, result))
        return budget(iteration, pred, code, result, history)

    budget = make_budget_hook(max_cost=0.03)  # 0.015 per iteration: stops after the second
    enable_rlm_hooks(rlm, post_iteration_hook=budget_and_record)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.answer == "best effort"
    assert len(result.trajectory) == 2
    assert ends[0].forced_extract and ends[0].iterations == 2
    assert seen_preds[0][1:] == ("print('working')", "working")
    assert "print('working')" in seen_preds[0][0]  # pred is the LM's action Prediction


@pytest.mark.parametrize("entry", ["call", "acall"])
@pytest.mark.parametrize("declared", ["async def", "def returning a coroutine"])
def test_async_hook_variable_reaches_the_repl(make_rlm, entry, declared):
    rlm, lm = make_rlm(["SUBMIT(answer=cached_context)"], signature="question -> answer")
    hook = fetch_context if declared == "async def" else (lambda *args: fetch_context(*args))

    enable_rlm_hooks(rlm, pre_iteration_hook=hook)

    remote_cache.loops.clear()
    with dspy.context(lm=lm):
        if entry == "call":
            result = rlm(question="What?")
        else:

            async def main():
                return await rlm.acall(question="What?"), asyncio.get_running_loop()

            result, caller_loop = asyncio.run(main())
    assert result.answer == "cached context for 'What?'"
    if entry == "acall" and declared == "async def":
        assert remote_cache.loops == [caller_loop]  # awaited on the caller's own loop


def test_async_hook_in_a_sync_call_made_inside_a_running_loop(make_rlm):
    """dspy-rlm-hooks runs a second loop in the caller's thread here, which asyncio forbids; we use a private one."""
    rlm, lm = make_rlm(["SUBMIT(answer=cached_context)"], signature="question -> answer")
    enable_rlm_hooks(rlm, pre_iteration_hook=fetch_context)

    async def sync_call_from_async_code():
        with dspy.context(lm=lm):
            return rlm(question="nested?"), asyncio.get_running_loop()

    remote_cache.loops.clear()
    result, caller_loop = asyncio.run(sync_call_from_async_code())
    assert result.answer == "cached context for 'nested?'"
    assert remote_cache.loops and caller_loop not in remote_cache.loops


def test_disabling_hooks_restores_the_instance_exactly(make_rlm):
    rlm, lm = make_rlm(["print(search_pattern)", "SUBMIT(answer='done')"])
    before_type, before_dict = type(rlm), dict(rlm.__dict__)
    predictor_type = type(rlm.generate_action)
    enable_rlm_hooks(rlm, pre_iteration_hook=pre_iteration, post_iteration_hook=make_budget_hook())
    with dspy.context(lm=lm):
        assert rlm(text="x").trajectory[0]["output"] == "TODO|FIXME|HACK"

    disable_rlm_hooks(rlm)

    assert type(rlm) is before_type is dspy.RLM
    assert type(rlm.generate_action) is predictor_type
    assert rlm.__dict__.keys() == before_dict.keys()
    assert all(rlm.__dict__[k] is v for k, v in before_dict.items())
    assert rlm_events.instrumentation_of(rlm) is None
    with dspy.context(lm=lm):
        first = rlm(text="x").trajectory[0]["output"]
    assert first.startswith("[Error]") and "search_pattern" in first  # nothing is injected any more
    disable_rlm_hooks(rlm)  # idempotent


def test_execution_hooks_get_the_iterations_variables_and_input_args(make_rlm):
    rlm, lm = make_rlm(["print(text)", "SUBMIT(answer=text)"])
    calls = []

    def record_pre(iteration, code, variables, history, input_args):
        calls.append(("pre", iteration, code, [v.name for v in variables], input_args, len(history)))

    def record_post(iteration, code, result, variables, history, input_args):
        calls.append(("post", iteration, result, [v.name for v in variables], input_args, len(history)))

    enable_rlm_hooks(
        rlm, pre_iteration_hook=pre_iteration, pre_execution_hook=record_pre, post_execution_hook=record_post
    )
    with dspy.context(lm=lm):
        assert rlm(text="hello").answer == "hello"
    args = {"text": "hello", "search_pattern": "TODO|FIXME|HACK"}
    assert calls[0] == ("pre", 0, "print(text)", ["text"], args, 0)
    assert calls[1] == ("post", 0, "hello", ["text"], args, 0)
    assert calls[2][:2] == ("pre", 1) and calls[2][-1] == 1


def test_post_iteration_is_not_called_for_the_final_iteration(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='done')"])
    iterations = []

    def record(iteration, pred, code, result, history):
        iterations.append(iteration)

    enable_rlm_hooks(rlm, post_iteration_hook=record)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "done"
    assert iterations == [0]


def test_concurrent_calls_do_not_mix_per_call_state(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer=echo)"])
    seen = []

    async def inject_echo(iteration, variables, history, input_args):
        await asyncio.sleep(0)  # let the other call interleave
        return PreIterationOutput(extra_vars={"echo": input_args["text"].upper()})

    def check(iteration, code, variables, history, input_args):
        seen.append((input_args["text"], input_args["echo"]))

    enable_rlm_hooks(rlm, pre_iteration_hook=inject_echo, pre_execution_hook=check)

    async def both():
        with dspy.context(lm=lm):
            return await asyncio.gather(rlm.acall(text="one"), rlm.acall(text="two"))

    first, second = asyncio.run(both())
    assert (first.answer, second.answer) == ("ONE", "TWO")
    assert sorted(seen) == [("one", "ONE"), ("two", "TWO")]


def test_wrong_return_type_raises_a_type_error_naming_hook_and_model(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='done')"])

    def returns_code_string(iteration, code, variables, history, input_args):
        return code.upper()

    enable_rlm_hooks(rlm, pre_execution_hook=returns_code_string)
    with dspy.context(lm=lm), pytest.raises(TypeError) as raised:
        rlm(text="x")
    message = str(raised.value)
    assert "pre_execution_hook" in message and "returns_code_string" in message
    assert "returned str" in message and "PreExecutionOutput or None" in message


def test_bad_registrations_fail_at_enable_time(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    with pytest.raises(TypeError, match="pre_iteration_hook must be callable"):
        enable_rlm_hooks(rlm, pre_iteration_hook="inject")
    with pytest.raises(TypeError, match=r"post_iteration_hook .*\(iteration, pred, code, result, history\)"):
        enable_rlm_hooks(rlm, post_iteration_hook=lambda iteration, pred: None)
    with pytest.raises(TypeError, match=r"enable_rlm_hooks\(\) expects a dspy.RLM instance, got Predict"):
        enable_rlm_hooks(dspy.Predict("q -> a"), pre_iteration_hook=pre_iteration)
    assert type(rlm) is dspy.RLM  # nothing was instrumented by the failed calls


def test_enabling_twice_replaces_the_hooks(make_rlm):
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='done')"])
    first, second = [], []
    enable_rlm_hooks(rlm, pre_iteration_hook=lambda i, v, h, a: first.append(i))
    enable_rlm_hooks(rlm, pre_iteration_hook=lambda i, v, h, a: second.append(i))
    with dspy.context(lm=lm):
        rlm(text="x")
    assert first == [] and second == [0, 1]

    enable_rlm_hooks(rlm)  # no hooks at all: like disable_rlm_hooks
    assert type(rlm) is dspy.RLM


def test_enabling_again_swaps_all_hooks_in_one_plan_change(make_rlm, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # the hooks alone: no MLflow spans
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, pre_iteration_hook=lambda i, v, h, a: None, post_iteration_hook=lambda i, p, c, r, h: None)
    events = rlm_events.instrumentation_of(rlm)
    plans = []
    original = type(events)

    class Recording(original):  # records every plan a call starting meanwhile could take
        @property
        def _plan(self):
            return self.__dict__["_plan"]

        @_plan.setter
        def _plan(self, plan):
            plans.append(plan)
            self.__dict__["_plan"] = plan

    events.__class__ = Recording
    try:
        enable_rlm_hooks(rlm, pre_execution_hook=lambda i, c, v, h, a: None)
    finally:
        events.__class__ = original
    assert len(plans) == 1  # never a plan with some old hooks gone and the new ones not there yet
    assert {s for s, chain in plans[0].chains.items() if chain} == {Stage.PRE_ITERATION, Stage.PRE_EXECUTION}


def test_hooks_coexist_with_middleware_and_listeners_in_registration_order(make_rlm):
    rlm, lm = make_rlm(["print(eval('6*7'))", "SUBMIT(answer='done')"])
    events = rlm_events.instrument(rlm)
    order = []

    @events.middleware(Stage.PRE_EXECUTION)
    def outer(ctx, next):
        order.append(("outer saw", ctx.code))
        ctx = next(ctx)
        order.append(("outer got back", ctx.code))
        return ctx

    enable_rlm_hooks(rlm, pre_execution_hook=pre_execution)
    heard = []

    def listener(sender, ctx):
        heard.append(ctx.code)

    signals.pre_execution.connect(listener, sender=rlm)
    try:
        with dspy.context(lm=lm):
            rlm(text="x")
        assert order[:2] == [("outer saw", "print(eval('6*7'))"), ("outer got back", "print(# BLOCKED('6*7'))")]
        assert heard[0] == "print(# BLOCKED('6*7'))"  # listeners see the chain's result

        disable_rlm_hooks(rlm)  # leaves the user's middleware, listener and instrumentation alone
        assert rlm_events.instrumentation_of(rlm) is events
        order.clear()
        heard.clear()
        with dspy.context(lm=lm):
            rlm(text="x")
        assert order[:2] == [("outer saw", "print(eval('6*7'))"), ("outer got back", "print(eval('6*7'))")]
        assert heard[0] == "print(eval('6*7'))"
    finally:
        signals.pre_execution.disconnect(listener, sender=rlm)


def test_disable_keeps_the_instrumentation_a_listener_of_this_rlm_needs(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, post_iteration_hook=make_budget_hook())
    ends = []

    def on_end(sender, ctx):
        ends.append(ctx.iterations)

    signals.run_end.connect(on_end, sender=rlm)
    try:
        disable_rlm_hooks(rlm)
        with dspy.context(lm=lm):
            rlm(text="x")
        assert ends == [1]  # still instrumented: the receiver connected for this RLM keeps hearing it
    finally:
        signals.run_end.disconnect(on_end, sender=rlm)
    enable_rlm_hooks(rlm, post_iteration_hook=make_budget_hook())
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM  # once nothing needs it, the instance is restored


def test_a_deep_copy_keeps_its_hooks_and_can_be_unhooked(make_rlm):
    rlm, lm = make_rlm(["print(search_pattern)", "SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, pre_iteration_hook=pre_iteration)
    clone = copy.deepcopy(rlm)
    try:
        with dspy.context(lm=lm):
            assert clone(text="x").trajectory[0]["output"] == "TODO|FIXME|HACK"
        disable_rlm_hooks(clone)
        assert type(clone) is dspy.RLM
        assert rlm_events.instrumentation_of(rlm) is not None  # the original keeps its hooks
    finally:
        rlm_events.uninstrument(clone)


# -- hooks and speculation, enabled and disabled in any order: the RLM exactly restored ---------------------------

OPERATIONS = ("enable hooks", "enable speculation", "disable hooks", "disable speculation")


def _seed(iteration, variables, history, input_args):
    return PreIterationOutput(persistent_python_code="seeded = 41")


def _answer(rlm) -> str:
    with dspy.context(lm=ScriptedLM(["SUBMIT(answer=str(globals().get('seeded')))"], sub="ok")):
        return str(rlm(text="?").answer)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(OPERATIONS), max_size=8),
    st.sampled_from([("disable hooks", "disable speculation"), ("disable speculation", "disable hooks")]),
)
def test_any_order_of_enabling_and_disabling_restores_the_rlm_exactly(operations, last):
    rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
    before = dict(vars(rlm))
    hooks = False
    for operation in operations:
        if operation == "enable hooks":
            enable_rlm_hooks(rlm, pre_iteration_hook=_seed, tracing=False)
        elif operation == "enable speculation":
            enable_rlm_speculation(rlm)
        elif operation == "disable hooks":
            disable_rlm_hooks(rlm)
        else:
            disable_rlm_speculation(rlm)
        hooks = operation == "enable hooks" or (hooks and operation != "disable hooks")
    assert _answer(rlm) == ("41" if hooks else "None")  # the hooks run exactly while enabled
    for operation in last:
        disable_rlm_hooks(rlm) if operation == "disable hooks" else disable_rlm_speculation(rlm)
    assert type(rlm) is dspy.RLM
    assert vars(rlm).keys() == before.keys() and all(vars(rlm)[k] is v for k, v in before.items())
    assert rlm_events.instrumentation_of(rlm) is None
    assert _answer(rlm) == "None"  # and it still runs, bare


def test_disabling_speculation_keeps_an_instrumentation_the_user_made(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='done')"])
    events = rlm_events.instrument(rlm)
    enable_rlm_speculation(rlm)
    disable_rlm_speculation(rlm)
    assert rlm_events.instrumentation_of(rlm) is events and not any(events.plan.chains[s] for s in Stage)
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "done"


def test_disabling_speculation_on_a_bare_rlm_changes_nothing(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    before = dict(vars(rlm))
    disable_rlm_speculation(rlm)
    assert type(rlm) is dspy.RLM and vars(rlm) == before and rlm_events.instrumentation_of(rlm) is None
