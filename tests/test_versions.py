"""DSPy 3.1.2 → 3.4.x: the adapter chosen for the installed DSPy, the error for a loop we do not know, and what
differs between releases. Everything else is covered by running the whole suite on each supported release."""

from __future__ import annotations

import inspect
import re
import threading
from typing import Any

import dspy
import pytest

import rlm_events
import rlm_events.scripted
import rlm_events.testing
from rlm_events import Stage, UnsupportedDSPyError
from rlm_events._patch.call import CURRENT
from rlm_events._patch.detect import Seams
from rlm_events.runtime import batched_queries_keep_context, constructor_of, iteration_limit
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

RELEASE = tuple(int(part) for part in re.findall(r"\d+", dspy.__version__)[:3])
FORWARD = inspect.signature(dspy.RLM.forward).parameters


def test_the_installed_dspy_is_a_supported_release():
    assert (3, 1, 2) <= RELEASE < (3, 5), dspy.__version__


# -- the adapter chosen for the installed DSPy ---------------------------------------------------------------

# What each release's loop looks like (read off its source): execution seam, whether _process_execution_result takes
# the code, the call options of forward, the constructor's iteration limit, interpreter argument and tools shape,
# and whether llm_query_batched runs its prompts with the caller's context variables.
KNOWN = {
    (3, 1, 2): (False, False, set(), "max_iterations", False, True, False),
    (3, 1, 3): (False, False, set(), "max_iterations", False, False, False),
    (3, 2): (True, True, set(), "max_iterations", False, False, False),
    (3, 3): (True, True, set(), "max_iters", True, False, True),  # forward's interpreter is positional-only
    (3, 4): (True, True, {"interpreter_factory"}, "max_iters", True, False, True),
}


def test_the_adapter_detected_for_the_installed_dspy_is_the_known_one():
    expected = KNOWN.get(RELEASE) or KNOWN[RELEASE[:2]]
    seams, constructor = Seams(dspy.RLM), constructor_of(dspy.RLM)
    detected = (
        seams.has_execute_code,
        seams.result_takes_code,
        set(seams.call_options),
        constructor.limit,
        constructor.takes_factory,
        constructor.tools_as_dict,
        batched_queries_keep_context(dspy.RLM),
    )
    assert detected == expected


# -- an RLM loop we do not know ------------------------------------------------------------------------------


def unsupported(cls: type) -> str:
    rlm = cls("text -> answer")
    with pytest.raises(UnsupportedDSPyError) as info:
        rlm_events.instrument(rlm)
    assert type(rlm) is cls and type(rlm.generate_action) is dspy.Predict  # nothing was patched
    message = str(info.value)
    assert f"DSPy {dspy.__version__}" in message and f"instrument {cls.__qualname__}" in message
    return message


def test_a_renamed_seam_parameter_is_refused_naming_the_subclass_and_its_method():
    class Renamed(dspy.RLM):
        def _process_execution_result(self, action, outcome, history, output_field_names):  # type: ignore[override]
            raise AssertionError("never runs")

    message = unsupported(Renamed)
    assert "Renamed._process_execution_result() has no parameter pred, result" in message
    assert "report this DSPy version" not in message  # DSPy is fine: the subclass differs


def test_a_removed_seam_is_refused_naming_it():
    class WithoutExtract(dspy.RLM):
        _extract_fallback = None

    assert "WithoutExtract._extract_fallback() is missing" in unsupported(WithoutExtract)


def test_a_loop_that_no_longer_asks_generate_action_for_code_is_refused():
    class OtherPredictor(dspy.RLM):
        def _execute_iteration(self, repl, variables, history, iteration, input_args, output_field_names, *rest):
            action = self.planner(repl_history=history)  # pre_execution would never fire
            return self._process_execution_result(action, repl.execute(action.code), history, output_field_names)

    assert "OtherPredictor._execute_iteration() does not call self.generate_action(...)" in unsupported(OtherPredictor)


def test_only_a_change_in_dspys_own_class_asks_to_report_the_dspy_version(monkeypatch):
    def renamed(self, action, outcome, history, output_field_names):
        raise AssertionError("never runs")

    monkeypatch.setattr(dspy.RLM, "_process_execution_result", renamed)
    with pytest.raises(UnsupportedDSPyError) as info:
        Seams(dspy.RLM)
    message = str(info.value)
    assert f"RLM on DSPy {dspy.__version__}: RLM._process_execution_result() has no parameter pred" in message
    assert message.endswith("please report this DSPy version.")


def test_a_subclass_that_delegates_to_dspys_loop_is_instrumented(make_rlm):
    calls: list[str] = []

    class Logged(dspy.RLM):
        def _execute_iteration(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("iteration")
            return super()._execute_iteration(*args, **kwargs)

    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    rlm.__class__ = Logged  # the constructor is dspy.RLM's; only the loop differs
    events = rlm_events.instrument(rlm)
    stages: list[str] = []
    events.tap(lambda ctx: stages.append(ctx.stage.value), inline=True)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert calls == ["iteration", "iteration"]
    assert stages.count("post_execution") == 2 and stages[-1] == "run_end"


def test_a_constructor_without_an_iteration_limit_is_refused():
    class NoLimit(dspy.RLM):
        def __init__(self, signature: Any) -> None:
            super().__init__(signature)

    with pytest.raises(UnsupportedDSPyError, match=r"NoLimit\.__init__\(\) takes neither max_iters nor max_iterations"):
        constructor_of(NoLimit)


# -- what differs between releases, made the same ----------------------------------------------------------------


def test_contexts_see_the_code_as_it_runs_and_the_history_stays_dspys_own(make_rlm, monkeypatch):
    # An LM that fences its code even where the prompt does not ask for it (3.1.2): 3.1 passes no stripped code to
    # _process_execution_result, which records pred.code (on 3.1.2 with the fence).
    monkeypatch.setattr(rlm_events.scripted, "_FENCED", re.compile(""))
    steps = ["print('a')", "SUBMIT(answer='ok')"]
    plain, lm = make_rlm(steps)
    with dspy.context(lm=lm):
        expected = plain(text="x").trajectory

    rlm, lm = make_rlm(steps)
    events = rlm_events.instrument(rlm)
    codes: list[tuple[str, str]] = []
    for stage in (Stage.PRE_EXECUTION, Stage.POST_EXECUTION):
        events.use(stage, lambda ctx, next: next(ctx))  # the deferred path, changing nothing
    events.tap(
        [Stage.PRE_EXECUTION, Stage.POST_EXECUTION], lambda ctx: codes.append((ctx.stage.value, ctx.code)), inline=True
    )
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory == expected  # instrumenting changes nothing, on every release
    assert codes == [(stage, code) for code in steps for stage in ("pre_execution", "post_execution")]


def test_pre_execution_skips_execution_on_every_release(make_rlm):
    made: list[InProcessInterpreter] = []

    def factory() -> InProcessInterpreter:
        made.append(InProcessInterpreter())
        return made[-1]

    rlm, lm = make_rlm(["ran = True", "SUBMIT(answer=str('ran' in globals()))"], interpreter_factory=factory)
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_EXECUTION)
    def refuse_first(ctx, next):
        if ctx.iteration == 0:
            ctx.skip("skipped")
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "skipped" and result.answer == "False"
    assert "ran" not in made[0].namespace


@pytest.mark.skipif(
    FORWARD.get("interpreter", None) is None or FORWARD["interpreter"].kind is not inspect.Parameter.POSITIONAL_ONLY,
    reason="forward() takes a positional caller-owned interpreter on DSPy 3.3 only",
)
def test_a_caller_owned_interpreter_is_a_call_option_not_an_input(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"])
    events = rlm_events.instrument(rlm)
    seen: list[dict[str, Any]] = []
    events.tap([Stage.RUN_START, Stage.RUN_END], lambda ctx: seen.append(ctx.input_args), inline=True)
    mine = InProcessInterpreter()
    with dspy.context(lm=lm):
        assert rlm(mine, text="x").answer == "x"
    assert seen == [{"text": "x"}, {"text": "x"}]
    assert mine.started and not mine.closed  # caller-owned: DSPy leaves it open


@pytest.mark.skipif("interpreter_factory" not in FORWARD, reason="forward() takes interpreter_factory on DSPy 3.4+")
def test_a_per_call_interpreter_factory_is_a_call_option_not_an_input(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer=text)"])
    events = rlm_events.instrument(rlm)
    made: list[InProcessInterpreter] = []
    seen: list[dict[str, Any]] = []

    @events.middleware(Stage.RUN_START)
    def redact(ctx, next):
        ctx.input_args["text"] = "changed"
        return next(ctx)

    events.tap([Stage.RUN_END], lambda ctx: seen.append(ctx.input_args), inline=True)
    with dspy.context(lm=lm):
        result = rlm(text="x", interpreter_factory=lambda: made.append(InProcessInterpreter()) or made[-1])
    assert result.answer == "changed" and seen == [{"text": "changed"}]
    assert len(made) == 1 and made[0].closed  # the call option survived run_start's change of the inputs


def test_batched_sub_lm_calls_see_the_run_exactly_where_detected(make_rlm):
    seen: list[bool] = []
    sub = ScriptedLM(["unused"], sub=lambda prompt: seen.append(CURRENT.get() is not None) or prompt)
    rlm, lm = make_rlm(["print(llm_query_batched(['a', 'b']))", "SUBMIT(answer='ok')"], sub_lm=sub)
    rlm_events.instrument(rlm).tap(lambda ctx: None, inline=True)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert seen == [batched_queries_keep_context(dspy.RLM)] * 2  # False before DSPy 3.3: a documented limitation


# -- build_rlm: the 3.3+ constructor on every release ---------------------------------------------------------


def test_build_rlm_creates_and_shuts_down_one_interpreter_per_call_on_every_release():
    made: list[InProcessInterpreter] = []
    lock = threading.Lock()

    def factory() -> InProcessInterpreter:
        with lock:
            made.append(InProcessInterpreter())
            return made[-1]

    rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=factory)
    assert type(rlm) is dspy.RLM and iteration_limit(rlm) == 2
    lm = ScriptedLM(["counter = globals().get('counter', 0) + 1", "SUBMIT(answer=str(counter))"])
    with dspy.context(lm=lm):
        assert [rlm(text="x").answer for _ in range(3)] == ["1", "1", "1"]  # nothing leaks between calls
        assert all(i.closed for i in made) and len(made) == 3

        answers: list[str] = []

        def call() -> None:
            with dspy.context(lm=lm):
                answers.append(rlm(text="y").answer)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert answers == ["1"] * 8 and len(made) == 11 and all(i.closed for i in made)


def test_build_rlm_honours_the_iteration_limit_on_every_release():
    rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    ends: list[Any] = []
    events.tap([Stage.RUN_END], ends.append, inline=True)
    with dspy.context(lm=ScriptedLM(["print(1)"], extract={"answer": "forced"})):
        assert rlm(text="x").answer == "forced"
    assert ends[0].iterations == 2 and ends[0].forced_extract


def test_build_rlm_takes_tools_as_a_list_on_every_release():
    def lookup(key: str) -> str:
        """Look a key up."""
        return key.upper()

    def shout(word: str) -> str:
        return word + "!"

    rlm = build_rlm(
        "text -> answer",
        max_iters=2,
        interpreter_factory=InProcessInterpreter,
        tools=[lookup, dspy.Tool(shout, name="exclaim")],
    )
    events = rlm_events.instrument(rlm)
    names: list[str] = []
    events.tap([Stage.TOOL_CALL], lambda ctx: names.append(ctx.name), inline=True)
    with dspy.context(lm=ScriptedLM(["SUBMIT(answer=exclaim(word=lookup(key=text)))"])):
        assert rlm(text="hi").answer == "HI!"
    assert names == ["lookup", "exclaim"]


def test_build_rlm_refuses_an_interpreter_factory_that_is_not_callable():
    with pytest.raises(TypeError, match="interpreter_factory"):
        build_rlm("text -> answer", interpreter_factory=InProcessInterpreter())  # an interpreter, not a factory
    with pytest.raises(TypeError, match="interpreter_factory"):
        build_rlm("text -> answer", interpreter_factory="InProcessInterpreter")


def test_build_rlm_copies_keep_their_own_interpreter_per_call():
    rlm = build_rlm("text -> answer", max_iters=2, interpreter_factory=InProcessInterpreter)
    copy = rlm.deepcopy()
    with dspy.context(lm=ScriptedLM(["SUBMIT(answer=text)"])):
        assert copy(text="copy").answer == "copy" and rlm(text="original").answer == "original"


# -- InProcessInterpreter behaves like dspy.LocalInterpreter (the suite's interpreter before DSPy 3.4) ----------


def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


def failing(reason: str) -> str:
    raise ValueError(reason)


SNIPPETS = {
    "printed output": "print('a')\nprint('b')",
    "final expression": "x = 2\nx * 21",
    "expression after print": "print('dropped')\n{'k': (1, 2)}",
    "nothing": "y = 1",
    "not JSON": "object",
    "runtime error": "undefined_name",
    "syntax error": "def (:",
    "compile error": "return 1",
    "tool as written": "echo('p', 2, k=(3,))",
    "failing tool": "failing('nope')",
    "caught tool error": "try:\n    failing('x')\nexcept RuntimeError as e:\n    print(e)",
    "submit by keyword": "SUBMIT(answer='a', score=1)",
    "submit positionally": "SUBMIT('a', 1)",
    "submit mismatch": "SUBMIT(answer='a')",
    "submit mixed": "SUBMIT('a', score=1)",
}


def outcome(interpreter: Any, code: str) -> tuple[str, Any]:
    interpreter.tools.update({"echo": echo, "failing": failing})
    interpreter.output_fields = [{"name": "answer", "type": "str"}, {"name": "score", "type": "int"}]
    try:
        result = interpreter.execute(code, variables={"text": "hi"})
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return type(result).__name__, getattr(result, "output", result)


@pytest.mark.skipif(not hasattr(dspy, "LocalInterpreter"), reason="dspy.LocalInterpreter ships with DSPy 3.4+")
def test_in_process_interpreter_matches_local_interpreter():
    local = dspy.LocalInterpreter()
    try:
        for name, code in SNIPPETS.items():
            assert outcome(InProcessInterpreter(), code) == outcome(local, code), name
    finally:
        local.shutdown()


def test_tools_given_by_name_are_translated_once_on_every_release():
    """A `{name: function}` mapping (3.1.2's form, e.g. constructor arguments translated once already) gives the
    same tools as a list, under the mapping's names, on every release."""

    def look(key: str) -> str:
        return key.upper()

    kwargs, _ = constructor_of(dspy.RLM).arguments(tools={"lookup": look})
    rlm = dspy.RLM("text -> answer", **kwargs)
    steps = ["print(lookup(key='a'))", "SUBMIT(answer=lookup(key='b'))"]
    rlm_built = build_rlm("text -> answer", tools={"lookup": look}, interpreter_factory=InProcessInterpreter)
    with dspy.context(lm=ScriptedLM(steps)):
        assert rlm_built(text="t").answer == "B"
    assert "lookup" in (rlm.tools if isinstance(rlm.tools, dict) else {t.name: t for t in rlm.tools})


def test_the_in_process_interpreter_calls_the_tools_it_has_now():
    """Each tool is wrapped for the code once, and again only when it is replaced: a tool replaced (or added)
    between executions is the one the next execution calls."""
    interpreter = InProcessInterpreter(tools={"tool": lambda: "first"})
    assert interpreter.execute("tool()") == "first"
    assert interpreter.execute("tool()") == "first"
    interpreter.tools["tool"] = lambda: "second"
    interpreter.tools["other"] = lambda x: x * 2
    assert interpreter.execute("tool()") == "second"
    assert interpreter.execute("other(x=21)") == 42
    interpreter.shutdown()
