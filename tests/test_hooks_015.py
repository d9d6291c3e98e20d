"""The dspy-rlm-hooks 0.1.15 API (rlm_events.hooks) on real dspy.RLM loops: the 0.1.15 page's examples that need
no network, verbatim but for the import line (and the page's `dspy.RLM(...)` placeholders, filled with a scripted
LM), and PreIterationContext's native python_code / persistent_python_code / prompt_context, in sync and async
calls. The 0.1.6 page's examples are in tests/test_hooks.py. The page's "Speculative Execution" examples run on
rlm_events.builtins.Speculate (`streaming` is Speculate's `stream`: the code is streamed while the LM writes it)."""

# The page's imports are kept as the page writes them, unsorted: users paste them as they are.
# ruff: noqa: I001, E402, F811

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import subprocess
import sys
import types

import dspy
import pytest
from pydantic import ValidationError

import rlm_events
from rlm_events import Stage
from rlm_events.installable import Installable, Registrations

# ── The page's "Basic Usage" hook, verbatim except the import line ──────────────────────────────────────────────
# fmt: off
from rlm_events.hooks import enable_rlm_hooks, PreIterationOutput

def inject_math(iteration, variables, history, input_args):
    return PreIterationOutput(
        extra_vars={"tool": "calculator"},
        persistent_python_code="import math",
        prompt_context="Verify the calculation before answering.",
    )

# ── The page's "All Four Hooks" example, verbatim except the import line ──────────────────────────────────────
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
        persistent_python_code="""
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
    async def get(self, key: str) -> str:
        await asyncio.sleep(0)
        return f"cached context for {key!r}"


remote_cache = _RemoteCache()

async def fetch_context(iteration, variables, history, input_args):
    context = await remote_cache.get(input_args["question"])
    return PreIterationOutput(extra_vars={"cached_context": context})

# fmt: on

from rlm_events.hooks import disable_rlm_hooks, enable_rlm_hooks_with_tracing

CODEBASE = "x = 1  # TODO: fix\\ny = 2  # FIXME later\\nz = 3  # HACK"
VERIFY = "Verify the calculation before answering."


def action_prompts(lm) -> list[str]:
    """The text of each action-generation prompt the scripted LM was sent, in order (extract prompts excluded)."""
    prompts = [" ".join(str(m.get("content", "")) for m in h["messages"]) for h in lm.history]
    return [p for p in prompts if "[[ ## code ## ]]" in p and "[[ ## iteration ## ]]" in p]


def run(rlm, lm, entry: str, **inputs):
    with dspy.context(lm=lm):
        if entry == "call":
            return rlm(**inputs)
        return asyncio.run(rlm.acall(**inputs))


ENTRIES = pytest.mark.parametrize("entry", ["call", "acall"])


# -- the page's examples ------------------------------------------------------------------------------------------


@ENTRIES
def test_basic_usage_imports_math_through_the_persistent_prelude(make_rlm, entry):
    # The LM never imports math; the second step even deletes it: the prelude runs before every execution.
    rlm, lm = make_rlm(
        ["print(math.sqrt(1764))\ndel math", 'SUBMIT(answer=f"{tool}: {math.sqrt(1764):g}")'],
        signature="question -> answer",
    )

    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)

    result = run(rlm, lm, entry, question="What is the square root of 1764?")
    assert result.answer == "calculator: 42"
    steps = result.trajectory
    assert steps[0]["output"] == "42.0"  # no NameError: `math` came from persistent_python_code
    assert all("import math" not in step["code"] for step in steps)  # the prelude runs, the history keeps the code
    prompts = action_prompts(lm)
    assert len(prompts) == 2 and all(VERIFY in p for p in prompts)  # prompt_context, returned every iteration
    assert all(VERIFY not in step["code"] + str(step["output"]) for step in steps)  # shown, never executed


def test_all_four_hooks(make_rlm, tmp_path):
    marker = tmp_path / "eval-ran"
    rlm, lm = make_rlm(
        [
            f'hits = grep(search_pattern, "{CODEBASE}")\nprint(hits)\ndel grep',  # the prelude defines it again
            f"status = 'survived'\neval(\"open({str(marker)!r}, 'w').write('ran')\")\nprint(status)",
            f"print(eval(\"open({str(marker)!r}, 'w').write('ran')\"))",
            'SUBMIT(answer=", ".join(grep(search_pattern, "TODO")))',
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
    assert steps[0]["output"] == "['TODO', 'FIXME', 'HACK']"
    assert "# BLOCKED(" in steps[1]["code"] and "eval(" not in steps[1]["code"]
    assert steps[1]["output"] == "survived"
    assert steps[2]["code"].startswith("print(# BLOCKED(")  # the persistent prelude is not in the history
    assert steps[2]["output"].endswith("# Hint: the variable 'search_pattern' is already in scope.")
    assert result.answer == "TODO"
    assert not marker.exists()
    assert len(steps) == 4


@ENTRIES
def test_async_hooks(make_rlm, entry):
    rlm, lm = make_rlm(["SUBMIT(answer=cached_context)"], signature="question -> answer")
    enable_rlm_hooks(rlm, pre_iteration_hook=fetch_context)
    assert run(rlm, lm, entry, question="What?").answer == "cached context for 'What?'"


def test_mlflow_tracing_example(make_rlm, mlflow_store):
    mlflow = mlflow_store
    rlm, lm = make_rlm(["SUBMIT(answer=cached_context)"], signature="question -> answer")

    mlflow.dspy.autolog()
    enable_rlm_hooks(rlm, pre_iteration_hook=fetch_context)

    with dspy.context(lm=lm):
        assert rlm(question="What?").answer == "cached context for 'What?'"
    names = span_names(mlflow)
    assert "rlm_hook/pre_iteration" in names and "rlm/execute_code" in names  # 0.1.15's names
    assert "Predict.forward" in names  # autolog's spans, in the same trace
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM


def test_disabling_hooks(make_rlm):
    rlm, lm = make_rlm(["print(math.pi)", "SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM
    with dspy.context(lm=lm):
        assert "NameError" in rlm(text="x").trajectory[0]["output"]  # no prelude any more


# -- PreIterationOutput's fields, as the page's Basic Usage explains them ----------------------------------------


@ENTRIES
def test_python_code_is_prepended_to_this_iterations_code_only(make_rlm, entry):
    rlm, lm = make_rlm(["print(x)", "print(x)", "SUBMIT(answer=str(x))"])
    seen = []

    def once(iteration, variables, history, input_args):
        return PreIterationOutput(python_code="x = 41\nx += 1") if iteration == 0 else None

    def record(iteration, code, variables, history, input_args):
        seen.append(("pre", code))

    def record_after(iteration, code, result, variables, history, input_args):
        seen.append(("post", code))

    enable_rlm_hooks(rlm, pre_iteration_hook=once, pre_execution_hook=record, post_execution_hook=record_after)
    result = run(rlm, lm, entry, text="?")
    steps = result.trajectory
    assert steps[0]["code"] == "x = 41\nx += 1\nprint(x)"  # part of this iteration's code, as it ran
    assert steps[1]["code"] == "print(x)"  # not prepended again ...
    assert [s["output"] for s in steps[:2]] == ["42", "42"]  # ... but what it defined stays in the REPL
    assert result.answer == "42"
    # As in dspy-rlm-hooks: pre_execution sees the LM's code, post_execution the code that ran.
    assert seen[:2] == [("pre", "print(x)"), ("post", "x = 41\nx += 1\nprint(x)")]


@ENTRIES
def test_persistent_python_code_none_keeps_a_string_replaces_empty_clears(make_rlm, entry):
    code = "print(greeting)\ndel greeting"
    rlm, lm = make_rlm([code, code, code, code, "SUBMIT(answer='done')"], max_iters=5)
    preludes = {0: "greeting = 'hi'", 1: None, 2: "greeting = 'hello'", 3: ""}

    def steer(iteration, variables, history, input_args):
        return PreIterationOutput(persistent_python_code=preludes.get(iteration))

    enable_rlm_hooks(rlm, pre_iteration_hook=steer)
    steps = run(rlm, lm, entry, text="?").trajectory
    outputs = [str(s["output"]) for s in steps]
    assert outputs[:3] == ["hi", "hi", "hello"]  # set; None kept it (it ran again); replaced
    assert "NameError" in outputs[3]  # "" cleared it
    assert all(s["code"] == code for s in steps[:4])  # never recorded in the history


def test_the_persistent_prelude_belongs_to_one_call(make_rlm):
    rlm, lm = make_rlm(["print(seeded)", "SUBMIT(answer='done')"])

    def first_call_only(iteration, variables, history, input_args):
        if input_args["text"] == "first" and iteration == 0:
            return PreIterationOutput(persistent_python_code="seeded = 1")
        return None

    enable_rlm_hooks(rlm, pre_iteration_hook=first_call_only)
    with dspy.context(lm=lm):
        assert rlm(text="first").trajectory[0]["output"] == "1"
        assert "NameError" in rlm(text="second").trajectory[0]["output"]  # a new call starts without a prelude


@ENTRIES
def test_prompt_context_is_in_this_iterations_prompt_only(make_rlm, entry):
    rlm, lm = make_rlm(["print(1)", "print(2)"], max_iters=2, extract={"answer": "extracted"})

    def steer(iteration, variables, history, input_args):
        return PreIterationOutput(prompt_context="Only now: check units.") if iteration == 0 else None

    enable_rlm_hooks(rlm, pre_iteration_hook=steer)
    result = run(rlm, lm, entry, text="?")
    first, second = action_prompts(lm)
    assert "Only now: check units." in first
    assert "Only now: check units." not in second  # the next iteration's prompt does not have it
    assert all("Only now" not in " ".join(str(m["content"]) for m in h["messages"]) for h in lm.history[2:])
    assert "Only now" not in str(result.trajectory)  # nor the history


def test_the_seed_pages_python_code_keeps_working(make_rlm):
    """0.1.6's python_code (its "persistent code"): returned on the first iteration only, what it defines is usable
    in every later iteration, as before."""
    rlm, lm = make_rlm(["print(helper(2))", "print(helper(3))", "SUBMIT(answer=str(helper(21)))"])

    def seed(iteration, variables, history, input_args):
        return PreIterationOutput(python_code="def helper(n):\n    return n * 2") if iteration == 0 else None

    enable_rlm_hooks(rlm, pre_iteration_hook=seed)
    with dspy.context(lm=lm):
        result = rlm(text="?")
    assert [s["output"] for s in result.trajectory[:2]] == ["4", "6"]
    assert result.answer == "42"


def test_failing_python_code_is_this_iterations_error_result(make_rlm):
    rlm, lm = make_rlm(["print('lm code')", "SUBMIT(answer='done')"])

    def broken(iteration, variables, history, input_args):
        return PreIterationOutput(python_code="1 / 0") if iteration == 0 else None

    enable_rlm_hooks(rlm, pre_iteration_hook=broken)
    with dspy.context(lm=lm):
        result = rlm(text="?")
    assert (
        result.trajectory[0]["output"].startswith("[Error]") and "ZeroDivisionError" in result.trajectory[0]["output"]
    )
    assert result.answer == "done"  # the LM saw the error and went on


# -- output models reject unknown fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "wrong", "meant"),
    [
        (PreIterationOutput, {}, "promt_context", "prompt_context"),
        (PreIterationOutput, {}, "persistent_code", "persistent_python_code"),
        (PreExecutionOutput, {"code": "x"}, "cod", "code"),
        (PostExecutionOutput, {"result": "x"}, "results", "result"),
        (PostIterationOutput, {"history": REPLHistory()}, "stopp", "stop"),
    ],
)
def test_output_models_reject_unknown_fields_naming_them_and_the_fields(model, fields, wrong, meant):
    with pytest.raises(ValidationError) as raised:
        model(**fields, **{wrong: "x"})
    message = str(raised.value)
    assert f"{model.__name__} has no field {wrong!r} (did you mean {meant!r}?)" in message
    assert f"its fields are: {', '.join(model.model_fields)}" in message


def test_an_unknown_field_in_a_hook_fails_the_call_naming_hook_and_stage(make_rlm):
    rlm, lm = make_rlm(["print(1)"])

    def typo(iteration, variables, history, input_args):
        return PreIterationOutput(promt_context="check units")

    enable_rlm_hooks(rlm, pre_iteration_hook=typo)
    with dspy.context(lm=lm), pytest.raises(ValidationError) as raised:
        rlm(text="?")
    described = "\n".join([str(raised.value), *getattr(raised.value, "__notes__", [])])
    assert "'promt_context' (did you mean 'prompt_context'?)" in described
    assert "pre_iteration_hook[" in described and "typo" in described and "pre_iteration" in described
    assert lm.history == []  # it failed before the LM was asked


# -- MLflow ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_mlflow(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError


class _FakeMlflowTap(Installable):
    """Stands in for rlm_events.taps.mlflow.MlflowTap: records the stages it sees."""

    INLINE = True  # as the real one (a span tap)
    made: list[_FakeMlflowTap] = []

    def __init__(self, **options) -> None:
        self.options = options
        self.seen: list[str] = []
        self.installs = 0
        self.tap = self.record  # one bound method: uninstall removes the very callable install registered
        self.made.append(self)

    def record(self, ctx) -> None:
        self.seen.append(ctx.stage.value)

    def registrations(self) -> Registrations:
        return Registrations(taps=[(list(Stage), self.tap)])

    def install(self, events):
        self.installs += 1
        return super().install(events)


@pytest.fixture
def fake_mlflow(monkeypatch):
    fake = types.ModuleType("mlflow")
    fake.is_tracking_uri_set = lambda: True  # type: ignore[attr-defined]  # the user turned MLflow on
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    module = types.ModuleType("rlm_events.taps.mlflow")
    module.MlflowTap = _FakeMlflowTap  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rlm_events.taps.mlflow", module)
    _FakeMlflowTap.made.clear()
    return _FakeMlflowTap.made


def test_with_tracing_raises_import_error_without_mlflow_and_changes_nothing(make_rlm, no_mlflow):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    with pytest.raises(ImportError, match=r'pip install "rlm-events\[mlflow\]"'):
        enable_rlm_hooks_with_tracing(rlm, pre_iteration_hook=inject_math)
    assert type(rlm) is dspy.RLM and rlm_events.instrumentation_of(rlm) is None


def test_without_mlflow_the_hooks_run_untraced(make_rlm, no_mlflow):
    rlm, lm = make_rlm(["SUBMIT(answer=str(math.floor(math.pi)))"])
    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)
    assert rlm_events.instrument(rlm).plan.all_taps == ()
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "3"


@pytest.mark.parametrize("enable", [enable_rlm_hooks, enable_rlm_hooks_with_tracing])
def test_with_mlflow_the_mlflow_tap_records_the_run_once_and_goes_with_the_hooks(make_rlm, fake_mlflow, enable):
    rlm, lm = make_rlm(["SUBMIT(answer=str(math.floor(math.pi)))"])
    enable(rlm, pre_iteration_hook=inject_math)
    enable(rlm, pre_iteration_hook=inject_math, pre_execution_hook=pre_execution)  # again: the same tap
    assert len(fake_mlflow) == 1 and fake_mlflow[0].installs == 1
    assert fake_mlflow[0].options == {"span_names": {"execute_code": "rlm/execute_code"}}
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "3"
    assert fake_mlflow[0].seen[0] == "run_start" and "pre_iteration" in fake_mlflow[0].seen
    assert fake_mlflow[0].seen[-1] == "run_end"
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM  # the tap went with the hooks: nothing kept the instrumentation


# -- MLflow only when the user turned it on, into a temporary store -------------------------------------------

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="MLflow is not installed (the mlflow extra)"
)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """MLflow turned on with a temporary tracking URI (a SQLite store: reading traces back needs the full mlflow
    package); everything is put back afterwards. Yields the ``mlflow`` module."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("rlm_events.taps.mlflow")
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package (SQLite store)")
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")  # traces readable when the call returns
    monkeypatch.chdir(tmp_path)  # the store's artifact root (./mlruns) is resolved in the working directory
    previous = utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow
    mlflow.dspy.autolog(disable=True)
    mlflow.set_tracking_uri(previous)


def span_names(mlflow) -> list[str]:
    trace = mlflow.get_trace(mlflow.get_last_active_trace_id())
    return [span.name for span in trace.data.spans]


@pytest.fixture
def mlflow_off(monkeypatch):
    """MLflow importable but not turned on (the state a program that never configured it is in)."""
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking._tracking_service import utils

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "RLM_EVENTS_MLFLOW"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    assert mlflow_turned_on() is None
    return mlflow


from rlm_events.hooks.tracing import mlflow_turned_on


@needs_mlflow
def test_mlflow_not_turned_on_adds_no_spans(make_rlm, mlflow_off):
    rlm, lm = make_rlm(["SUBMIT(answer=str(math.floor(math.pi)))"])
    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)
    assert rlm_events.instrument(rlm).plan.all_taps == ()
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "3"


@pytest.mark.parametrize("how", ["set_tracking_uri", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "autolog"])
def test_each_way_of_turning_mlflow_on_is_recognised(mlflow_off, monkeypatch, tmp_path, how):
    mlflow = mlflow_off
    uri = (tmp_path / "mlruns").as_uri()
    if how == "set_tracking_uri":
        monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", uri)
        expected = "tracking URI"
    elif how == "MLFLOW_TRACKING_URI":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        expected = "tracking URI"
    elif how == "MLFLOW_EXPERIMENT_NAME":
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rlm")
        expected = "experiment"
    else:
        mlflow.dspy.autolog(log_traces=False)
        expected = "autolog"
    try:
        assert mlflow_turned_on() == expected
    finally:
        if how == "autolog":
            mlflow.dspy.autolog(disable=True)
    assert mlflow_turned_on() is None or how != "autolog"


def test_the_real_mlflow_tap_records_0115_span_names(make_rlm, mlflow_store):
    mlflow = mlflow_store
    rlm, lm = make_rlm(["print(math.pi)", "SUBMIT(answer='done')"])

    def sanitize(iteration, code, variables, history, input_args):
        return PreExecutionOutput(code=code)

    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math, pre_execution_hook=sanitize)
    assert rlm_events.instrument(rlm).plan.all_taps  # MlflowTap's: a tracking URI is set
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "done"
    trace = mlflow.get_trace(mlflow.get_last_active_trace_id())
    names = [span.name for span in trace.data.spans]
    assert names.count("rlm_hook/pre_iteration") == 2 and names.count("rlm_hook/pre_execution") == 2
    assert names.count("rlm/execute_code") == 2 and "execute_code" not in names
    (pre_execution,) = [s for s in trace.data.spans if s.name == "rlm_hook/pre_execution"][:1]
    assert pre_execution.inputs == {"iteration": 0, "original_code": "```python\nprint(math.pi)\n```"}
    assert pre_execution.outputs == {"modified_code": "```python\nprint(math.pi)\n```"}
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM


@pytest.mark.parametrize("opt_out", ["tracing=False", "RLM_EVENTS_MLFLOW=0"])
def test_mlflow_opt_out(make_rlm, mlflow_store, monkeypatch, opt_out):
    rlm, lm = make_rlm(["SUBMIT(answer='done')"])
    if opt_out == "tracing=False":
        enable_rlm_hooks(rlm, pre_iteration_hook=inject_math, tracing=False)
    else:
        monkeypatch.setenv("RLM_EVENTS_MLFLOW", "0")
        enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)
    assert rlm_events.instrument(rlm).plan.all_taps == ()
    with dspy.context(lm=lm):
        assert rlm(text="?").answer == "done"


def test_enabling_again_with_tracing_false_removes_the_tap(make_rlm, mlflow_store):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math)
    assert rlm_events.instrument(rlm).plan.all_taps
    enable_rlm_hooks(rlm, pre_iteration_hook=inject_math, tracing=False)
    assert rlm_events.instrument(rlm).plan.all_taps == ()
    disable_rlm_hooks(rlm)
    assert type(rlm) is dspy.RLM


def test_tracing_must_be_a_bool_or_none(make_rlm):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    with pytest.raises(TypeError, match=r"tracing=\.\.\.\) must be True, False or None, got 'yes'"):
        enable_rlm_hooks(rlm, pre_iteration_hook=inject_math, tracing="yes")
    assert type(rlm) is dspy.RLM


def test_tracing_true_without_mlflow_raises_import_error(make_rlm, no_mlflow):
    rlm, _ = make_rlm(["SUBMIT(answer='done')"])
    with pytest.raises(ImportError, match=r'pip install "rlm-events\[mlflow\]"'):
        enable_rlm_hooks(rlm, pre_iteration_hook=inject_math, tracing=True)
    assert type(rlm) is dspy.RLM


_PROGRAM = """
import sys, dspy
{mlflow}
from rlm_events.hooks import enable_rlm_hooks, PreIterationOutput
from rlm_events.testing import ScriptedLM, build_rlm, InProcessInterpreter

rlm = build_rlm("text -> answer", max_iters=3, interpreter_factory=InProcessInterpreter)
enable_rlm_hooks(rlm, pre_iteration_hook=lambda i, v, h, a: PreIterationOutput(persistent_python_code="n = 41"))
with dspy.context(lm=ScriptedLM(["SUBMIT(answer=str(n + 1))"])):
    print(rlm(text="?").answer, "mlflow" in sys.modules)
"""


@pytest.mark.parametrize("imports_mlflow", [False, True], ids=["no-import", "import-mlflow"])
def test_a_migrated_program_writes_nothing_into_its_working_directory(tmp_path, imports_mlflow):
    """A program that migrated to rlm_events.hooks and never turned MLflow on: no MLflow import it did not make,
    no store in its working directory, nothing on stderr (no sqlparse warning, no exit-time flush)."""
    if imports_mlflow and importlib.util.find_spec("mlflow") is None:
        pytest.skip("MLflow is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RLM_EVENTS_MLFLOW"))}
    program = _PROGRAM.format(mlflow="import mlflow" if imports_mlflow else "")
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", str(imports_mlflow)]
    assert "mlflow" not in done.stderr.lower() and "sqlparse" not in done.stderr
    assert list(tmp_path.iterdir()) == []


# -- the native PreIterationContext fields ---------------------------------------------------------------------


@ENTRIES
@pytest.mark.parametrize("style", ["def", "async def"])
def test_native_preludes_and_prompt_context(make_rlm, entry, style):
    rlm, lm = make_rlm(
        ["print(n)\ndel n", "print(n, twice(n))", "print(n)", "SUBMIT(answer='done')"],
        max_iters=4,
    )
    events = rlm_events.instrument(rlm)
    on_entry = []

    def steer(ctx):
        on_entry.append(ctx.persistent_python_code)
        if ctx.iteration == 0:
            ctx.persistent_python_code = "n = 21"
            ctx.prompt_context = "Iteration one only."
        if ctx.iteration == 1:
            ctx.python_code = "def twice(k):\n    return 2 * k"
        if ctx.iteration == 2:
            ctx.persistent_python_code += "\nn += 1"  # extend the prelude in force

    if style == "def":

        @events.middleware(Stage.PRE_ITERATION)
        def native(ctx, next):
            steer(ctx)
            return next(ctx)

    else:

        @events.middleware(Stage.PRE_ITERATION)
        async def native(ctx, next):
            steer(ctx)
            return await next(ctx)

    steps = run(rlm, lm, entry, text="?").trajectory
    assert on_entry == ["", "n = 21", "n = 21", "n = 21\nn += 1"]  # the prelude in force, as each iteration starts
    assert [s["output"] for s in steps[:3]] == ["21", "21 42", "22"]
    assert steps[0]["code"] == "print(n)\ndel n"  # the persistent prelude is not recorded ...
    assert steps[1]["code"] == "def twice(k):\n    return 2 * k\nprint(n, twice(n))"  # ... this iteration's is
    prompts = action_prompts(lm)
    assert "Iteration one only." in prompts[0] and all("Iteration one only." not in p for p in prompts[1:])


def test_native_skip_runs_no_prelude(make_rlm):
    rlm, lm = make_rlm(["print('never')", "SUBMIT(answer=str(ran))"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_ITERATION)
    def preludes(ctx, next):
        ctx.persistent_python_code = "ran = globals().get('ran', 0) + 1"
        ctx.python_code = "print('this iteration')"
        return next(ctx)

    @events.middleware(Stage.PRE_EXECUTION)
    def skip_first(ctx, next):
        if ctx.iteration == 0:
            ctx.skip("skipped")
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="?")
    assert result.trajectory[0] == {**result.trajectory[0], "code": "print('never')", "output": "skipped"}
    assert result.answer == "1"  # the prelude ran once: in the iteration that executed


def test_native_persistent_prelude_rejects_none(make_rlm):
    rlm, lm = make_rlm(["print(1)"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_ITERATION)
    def clear_wrongly(ctx, next):
        ctx.persistent_python_code = None  # "" clears it; None is the hooks' "keep"
        return next(ctx)

    with dspy.context(lm=lm), pytest.raises(ValidationError, match="persistent_python_code"):
        rlm(text="?")


def test_prompt_context_goes_after_the_variables_info_or_is_reported_unshown(caplog):
    from rlm_events._patch.call import Call

    frame = types.SimpleNamespace(prompt="Check units.", index=0)
    assert Call.shown(frame, {"variables_info": ["[a]"], "x": 1}) == {
        "variables_info": ["[a]", "Check units."],
        "x": 1,
    }
    assert frame.prompt == ""  # shown once
    frame.prompt = "Check units."
    assert Call.shown(frame, {"variables_info": "[a]"}) == {"variables_info": "[a]\n\nCheck units."}
    frame.prompt = "Check units."
    assert Call.shown(frame, {"other": 1}) == {"other": 1} and frame.prompt == "Check units."  # not shown
    call = types.SimpleNamespace(module=type("SomeRLM", (), {})())  # any object that can be weakly referenced
    Call.unshown(call, frame)  # type: ignore[arg-type]
    Call.unshown(call, frame)  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if "prompt_context was not shown in iteration 1" in r.getMessage()]
    assert len(warnings) == 1  # said once, never dropped silently


# -- PredictRLM (the page's "PredictRLM Support"; predict-rlm needs DSPy 3.4+) -----------------------------------

try:
    import predict_rlm
except ImportError:
    predict_rlm = None

needs_predict_rlm = pytest.mark.skipif(
    predict_rlm is None or not hasattr(dspy, "LocalInterpreter"), reason="needs the predict-rlm extra (DSPy 3.4+)"
)
PROMPTS: list[str] = []  # PredictRLM copies its LM per run: the scripted LM records its prompts here


def _json_lm(codes: list[str]):
    from dspy.utils import DummyLM

    class JsonLM(DummyLM):
        def forward(self, prompt=None, messages=None, **kwargs):
            PROMPTS.append(" ".join(str(m.get("content", "")) for m in messages))
            return super().forward(prompt=prompt, messages=messages, **kwargs)

    PROMPTS.clear()
    return JsonLM([{"plan": "next", "code": f"```repl\n{code}\n```"} for code in codes], adapter=dspy.JSONAdapter())


def _predict_rlm(signature: str, codes: list[str]):
    # The page's PredictRLM(signature), given a scripted LM and the local interpreter (its sandbox needs a network).
    return predict_rlm.PredictRLM(
        signature, lm=_json_lm(codes), max_iterations=4, interpreter=dspy.LocalInterpreter(), verbose=False
    )


@needs_predict_rlm
def test_predict_rlm_quick_example():
    rlm = _predict_rlm("query -> answer", ["import os\nos.system('echo hacked')\nprint('ok')", "SUBMIT(answer='done')"])

    def sanitize_code(iteration, code, variables, history, input_args):
        """Block dangerous code patterns."""
        if "os.system" in code:
            code = code.replace("os.system", "# BLOCKED")
        return PreExecutionOutput(code=code)

    enable_rlm_hooks(rlm, pre_execution_hook=sanitize_code)
    result = rlm(query="...")
    assert result.answer == "done"
    assert result.trajectory[0]["code"] == "import os\n# BLOCKED('echo hacked')\nprint('ok')"
    assert result.trajectory[0]["output"].strip() == "ok"


@needs_predict_rlm
@pytest.mark.parametrize("entry", ["call", "acall"])
def test_predict_rlm_preludes_and_prompt_context(entry):
    rlm = _predict_rlm("query -> answer", ["print(n)\ndel n", "print(n, twice(n))", "SUBMIT(answer=str(n))"])

    def steer(iteration, variables, history, input_args):
        return PreIterationOutput(
            persistent_python_code="n = 21" if iteration == 0 else None,
            python_code="def twice(k):\n    return 2 * k" if iteration == 1 else "",
            prompt_context="First iteration only." if iteration == 0 else "",
        )

    enable_rlm_hooks(rlm, pre_iteration_hook=steer)
    result = rlm(query="?") if entry == "call" else asyncio.run(rlm.acall(query="?"))
    steps = result.trajectory
    assert result.answer == "21" and [s["output"].strip() for s in steps[:2]] == ["21", "21 42"]
    assert steps[0]["code"] == "print(n)\ndel n"  # the persistent prelude ran, unrecorded
    assert steps[1]["code"] == "def twice(k):\n    return 2 * k\nprint(n, twice(n))"
    assert "First iteration only." in PROMPTS[0] and all("First iteration only." not in p for p in PROMPTS[1:])


# -- the page's "Speculative Execution" examples ---------------------------------------------------------------

from rlm_events.hooks import enable_rlm_speculation, SpecTool
from rlm_events.speculate import Speculate


def lookup_price(symbol: str) -> float:
    """Read-only price lookup."""
    PRICE_CALLS.append(symbol)
    return {"AAPL": 190.5, "MSFT": 410.0}.get(symbol, 0.0)


PRICE_CALLS: list[str] = []


def speculation_stats(rlm):
    stats = []
    rlm_events.instrumentation_of(rlm).tap([Stage.RUN_END], lambda ctx: stats.append(Speculate.stats(ctx)), inline=True)
    return stats


def test_speculation_quick_start(make_rlm):
    steps = ["out = [llm_query('part ' + str(i)) for i in range(3)]\nprint(out)", "SUBMIT(answer=str(len(out)))"]
    rlm, lm = make_rlm(steps, sub="summary")
    enable_rlm_speculation(rlm)
    stats = speculation_stats(rlm)
    with dspy.context(lm=lm):
        result = rlm(text="...")
    assert result.answer == "3" and stats[0].claimed >= 1  # made ahead and claimed (a call the code reaches
    assert stats[0].claimed + stats[0].cancelled == 3  # before it started is cancelled and made by the code)


def test_speculating_your_own_tools(make_rlm):
    PRICE_CALLS.clear()
    steps = ["print([lookup_price(symbol=s) for s in ['AAPL', 'MSFT']])", "SUBMIT(answer='ok')"]
    rlm, lm = make_rlm(steps, tools=[lookup_price])
    enable_rlm_speculation(rlm, tools=[SpecTool(lookup_price, deterministic=True, latency_hint_ms=250)])
    stats = speculation_stats(rlm)
    with dspy.context(lm=lm):
        result = rlm(text="What is the current price of AAPL?")
    assert "190.5" in result.trajectory[0]["output"] and stats[0].claimed >= 1
    assert stats[0].claimed + stats[0].cancelled == 2
    assert sorted(PRICE_CALLS) == ["AAPL", "MSFT"]  # each made once: ahead, then claimed


def test_speculation_composes_with_hooks(make_rlm):
    def sanitize_code(iteration, code, variables, history, input_args):
        return PreExecutionOutput(code=code.replace("part", "chunk"))

    steps = ["print([llm_query('part ' + str(i)) for i in range(2)])", "SUBMIT(answer='done')"]
    rlm, lm = make_rlm(steps, sub=lambda prompt: prompt.upper())
    enable_rlm_hooks(rlm, pre_execution_hook=sanitize_code)
    enable_rlm_speculation(rlm)
    with dspy.context(lm=lm):
        result = rlm(text="...")
    assert result.trajectory[0]["output"].strip() == "['CHUNK 0', 'CHUNK 1']"


@pytest.mark.parametrize("streaming", [True, False])
def test_streaming_means_what_it_meant_in_0115(openai_server, streaming):
    # 0.1.15: True streams generate_action's code and dispatches while the LM writes it; False plans the assembled
    # code. The real LiteLLM client against the local streaming server, which records which requests streamed.
    from rlm_events.testing import InProcessInterpreter, build_rlm

    steps = ["out = [llm_query('part ' + str(i)) for i in range(3)]\nprint(out)", "SUBMIT(answer=str(len(out)))"]
    server = openai_server(steps, sub="summary", time_to_first_token=0.02, tokens_per_second=400)
    interpreter = getattr(dspy, "LocalInterpreter", InProcessInterpreter)  # one whose REPL Speculate reads
    rlm = build_rlm("text -> answer", max_iters=3, interpreter_factory=interpreter)
    speculate = enable_rlm_speculation(rlm, streaming=streaming)
    assert speculate.stream is streaming
    stats = speculation_stats(rlm)
    lm = dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x", cache=False)
    with dspy.context(lm=lm):
        assert rlm(text="...").answer == "3"
    streamed = [record.streamed for record in server.bill.records]
    if streaming:
        assert stats[0].stream == "streamed" and stats[0].dispatched_streaming == 3 and streamed.count(True) == 2
    else:
        assert stats[0].stream == "" and stats[0].dispatched_streaming == 0 and not any(streamed)
    assert stats[0].claimed == 3


# -- the persistent prelude runs on its own: the LM's errors keep their line numbers ---------------------------


def _interpreters():
    from rlm_events.sandbox import Sandboxed, SandboxUnavailable
    from rlm_events.testing import InProcessInterpreter

    found = [pytest.param(InProcessInterpreter, id="in-process")]
    if hasattr(dspy, "LocalInterpreter"):
        found.append(pytest.param(dspy.LocalInterpreter, id="LocalInterpreter"))
    try:
        found.append(pytest.param(Sandboxed(), id="sandbox"))
    except SandboxUnavailable as missing:
        found.append(pytest.param(None, id="sandbox", marks=pytest.mark.skip(reason=f"no sandbox here: {missing}")))
    return found


PRELUDE = "import math\n\ndef helper():\n    return 1\n\nready = True"  # six lines before the LM's code


@pytest.mark.parametrize("factory", _interpreters())
def test_a_prelude_leaves_the_lms_line_numbers_alone(make_rlm, factory):
    steps = [
        "x = 1\ny = (\n",  # a syntax error on line 2
        "import sys\nprint(sys._getframe().f_lineno, ready, helper())",  # the line number the code sees
        "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    print(traceback.format_exc())",
        "SUBMIT(answer='done')",
    ]
    rlm, lm = make_rlm(steps, interpreter_factory=factory)

    def prelude(iteration, variables, history, input_args):
        return PreIterationOutput(persistent_python_code=PRELUDE) if iteration == 0 else None

    enable_rlm_hooks(rlm, pre_iteration_hook=prelude)
    with dspy.context(lm=lm):
        result = rlm(text="?")
    syntax, line, traceback = (str(step["output"]) for step in result.trajectory[:3])
    assert syntax.startswith("[Error]") and "line 2" in syntax and "line 8" not in syntax
    assert line == "2 True 1"
    assert "line 3, in <module>" in traceback and "ZeroDivisionError" in traceback
    assert result.answer == "done"


def test_a_prelude_runs_first_and_its_output_and_errors_are_kept(make_rlm):
    steps = ["print('code')", "print('code')", "print('never')", "SUBMIT(answer=str(count))"]
    rlm, lm = make_rlm(steps)
    preludes = {0: "count = 1\nprint('prelude')", 1: "count += 1", 2: "count += 1\nundefined_name", 3: "count += 1"}

    def steer(iteration, variables, history, input_args):
        return PreIterationOutput(persistent_python_code=preludes.get(iteration))

    enable_rlm_hooks(rlm, pre_iteration_hook=steer)
    with dspy.context(lm=lm):
        result = rlm(text="?")
    outputs = [str(step["output"]) for step in result.trajectory]
    assert outputs[:2] == ["prelude\ncode", "code"]  # as if written before the code
    assert outputs[2].startswith("[Error]") and "undefined_name" in outputs[2]  # the prelude failed: no code ran
    assert "never" not in outputs[2]
    assert result.answer == "4"  # the prelude ran before each execution: 1, 2, 3 (then failed after += 1), 4


@needs_predict_rlm
def test_predict_rlm_errors_keep_their_line_numbers_after_a_prelude():
    rlm = _predict_rlm(
        "query -> answer", ["x = 1\ny = (\n", "import sys\nprint(sys._getframe().f_lineno)", "SUBMIT(answer='done')"]
    )

    def prelude(iteration, variables, history, input_args):
        return PreIterationOutput(persistent_python_code=PRELUDE) if iteration == 0 else None

    enable_rlm_hooks(rlm, pre_iteration_hook=prelude)
    result = rlm(query="?")
    syntax, line = (str(step["output"]) for step in result.trajectory[:2])
    assert "line 2" in syntax and "line 8" not in syntax
    assert line.strip() == "2"
    assert result.answer == "done"
