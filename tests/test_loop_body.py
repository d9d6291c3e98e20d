"""The fast path that runs DSPy's loop body with the stages in place (`rlm_events._patch.loop_body`), pinned against
the seams around DSPy's own body: the same iterations, seen and changed by the same middleware, give the same
trajectory, the same stage contexts, the same predictor calls and the same log lines, on every DSPy; and the body
is used exactly where its source is a checked release's."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events._fast import disabled
from rlm_events._patch import loop_body
from rlm_events._patch.detect import Seams
from rlm_events._patch.direct_calls import class_walks_the_stack

CODES = [
    "```python\nprint(seeded + y)\n```",  # fenced: stripped once; the prelude and python_code run first
    "```sql\nSELECT 1\n```",  # a fence DSPy rejects: reported, nothing runs
    "print('never runs')",  # pre_execution gives the result
    "print(1)",  # pre_execution rewrites it, post_execution changes its result
    "```\nSUBMIT(answer=str(seeded))\n```",
]


def _run(make_rlm: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """One instrumented call over `CODES` with middleware on every iteration stage; what everyone saw."""
    rlm, lm = make_rlm(["unused"], max_iters=len(CODES) + 1)
    rlm.verbose = True
    seen: list[tuple[Any, ...]] = []
    predictor_calls: list[tuple[str, dict[str, Any]]] = []

    def predictor(**kwargs: Any) -> dspy.Prediction:
        caller = os.path.basename(sys._getframe(1).f_code.co_filename)
        shown = {k: v for k, v in kwargs.items() if k not in ("repl_history", "signature")}
        if "signature" in kwargs:  # each RLM has its own signature class: compared by what it says
            shown["signature"] = (kwargs["signature"].instructions, list(kwargs["signature"].fields))
        predictor_calls.append((caller, shown))
        index = len(predictor_calls) - 1
        return dspy.Prediction(reasoning=f"step {index}", code=CODES[min(index, len(CODES) - 1)])

    rlm.generate_action = predictor

    def pre_iteration(ctx: Any, next: Callable[[Any], Any]) -> Any:
        if ctx.iteration == 0:
            ctx.persistent_python_code = "seeded = 41"
            ctx.python_code = "y = 1"
            ctx.prompt_context = "Check the sum."
        return next(ctx)

    def pre_execution(ctx: Any, next: Callable[[Any], Any]) -> Any:
        seen.append(("pre_execution", ctx.iteration, ctx.code, ctx.reasoning))
        if "never runs" in ctx.code:
            ctx.result = "given"
        ctx.code = ctx.code.replace("print(1)", "print(2)")
        return next(ctx)

    def post_execution(ctx: Any, next: Callable[[Any], Any]) -> Any:
        seen.append(("post_execution", ctx.iteration, ctx.code, str(ctx.result)))
        if isinstance(ctx.result, str):  # not SUBMIT's final output
            ctx.result = f"{ctx.result}!"
        return next(ctx)

    def post_iteration(ctx: Any, next: Callable[[Any], Any]) -> Any:
        seen.append(("post_iteration", ctx.iteration, ctx.code, str(ctx.result), len(ctx.history.entries)))
        return next(ctx)

    events = rlm_events.instrument(rlm)
    events.use(Stage.PRE_ITERATION, pre_iteration)
    events.use(Stage.PRE_EXECUTION, pre_execution)
    events.use(Stage.POST_EXECUTION, post_execution)
    events.use(Stage.POST_ITERATION, post_iteration)
    return {**_called(rlm, lm, caplog, predictor_calls), "seen": seen}


def _called(
    rlm: Any, lm: Any, caplog: pytest.LogCaptureFixture, predictor_calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Call `rlm`; what came out, who called the predictor with what, and DSPy's log lines."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dspy.predict.rlm"), dspy.context(lm=lm):
        prediction = rlm(text="q")
    return {
        "answer": prediction.answer,
        "trajectory": prediction.trajectory,
        "callers": [caller for caller, _ in predictor_calls],
        "predictor_kwargs": [kwargs for _, kwargs in predictor_calls],
        "logs": [r.getMessage() for r in caplog.records if r.name == "dspy.predict.rlm"],
    }


def test_the_loop_body_run_by_rlm_events_does_what_dspys_own_does_between_the_seams(make_rlm, caplog, monkeypatch):
    runs_own = loop_body.FAST and loop_body.source_release(dspy.RLM._execute_iteration) is not None
    own = _run(make_rlm, caplog)
    monkeypatch.setattr(loop_body, "FAST", False)
    seams = _run(make_rlm, caplog)

    assert own["answer"] == seams["answer"] == "41"
    assert own["trajectory"] == seams["trajectory"]
    assert own["seen"] == seams["seen"]
    assert own["predictor_kwargs"] == seams["predictor_kwargs"]
    assert own["logs"] == seams["logs"] and len(own["logs"]) >= len(CODES)
    # What the stages did reached the loop (each path got there on its own).
    trajectory = own["trajectory"]
    assert trajectory[0]["code"].startswith("y = 1\n") and trajectory[0]["output"].startswith("42")
    assert "```sql" in trajectory[1]["code"] and "[Error]" in trajectory[1]["output"]
    assert trajectory[2]["output"].startswith("given!")
    assert trajectory[3]["code"] == "print(2)"
    assert any("Check the sum." in str(info) for info in own["predictor_kwargs"][0]["variables_info"])
    # Which path called the predictor: the body where its source is a checked release's, else the stand-in.
    assert ("loop_body.py" in own["callers"]) is runs_own
    if runs_own:
        assert set(own["callers"]) == {"loop_body.py"}
    assert "loop_body.py" not in seams["callers"]


def test_the_body_is_used_exactly_for_dspys_own_source_of_a_checked_release():
    release = loop_body.source_release(dspy.RLM._execute_iteration)
    assert release == (dspy.__version__ if dspy.__version__ in loop_body.CHECKED.values() else None)
    walks = class_walks_the_stack(dspy.RLM)
    used = release is not None and not walks and disabled() is None  # RLM_EVENTS_FAST_PATHS=0: never
    assert (loop_body.body_for(dspy.RLM, Seams(dspy.RLM)) is not None) == used

    class OwnLoop(dspy.RLM):  # an override: its source is not DSPy's, so DSPy's seams run around it
        def _execute_iteration(self, *args: Any, **kwargs: Any) -> Any:
            return super()._execute_iteration(*args, **kwargs)

    assert loop_body.source_release(OwnLoop._execute_iteration) is None
    assert loop_body.body_for(OwnLoop, Seams(OwnLoop)) is None
    assert loop_body.source_release(len) is None  # no Python source: never the fast path


def _codes_seen_by_pre_execution(rlm: Any) -> list[str]:
    """Instrument `rlm` with a pre_execution middleware; the list it records each iteration's code in."""
    codes: list[str] = []

    def seen(ctx: Any, next: Callable[[Any], Any]) -> Any:
        codes.append(ctx.code)
        return next(ctx)

    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, seen)
    return codes


def _answer(rlm: Any, lm: Any) -> str:
    with dspy.context(lm=lm):
        return str(rlm(text="q").answer)


def test_an_override_of_the_loop_body_runs_as_its_own_with_the_stand_in(make_rlm, caplog):
    class Counting(dspy.RLM):
        ran = 0

        def _execute_iteration(self, *args: Any, **kwargs: Any) -> Any:
            Counting.ran += 1
            return super()._execute_iteration(*args, **kwargs)

    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    rlm.__class__ = Counting
    codes = _codes_seen_by_pre_execution(rlm)
    assert _answer(rlm, lm) == "ok"
    assert Counting.ran == 2 and codes == ["print(1)", "SUBMIT(answer='ok')"]


def test_a_loop_body_patched_in_after_instrumenting_runs_as_itself(make_rlm, monkeypatch):
    """Another library (or a test) that replaces DSPy's loop body after the RLM was instrumented: its body runs,
    with the stages around it, not rlm-events' copy of the one it replaced."""
    original = dspy.RLM._execute_iteration
    patched: list[int] = []

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        patched.append(1)
        return original(self, *args, **kwargs)

    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    codes = _codes_seen_by_pre_execution(rlm)
    assert _answer(rlm, lm) == "ok"  # instrumented first: the class is built, its body checked
    assert not patched and codes == ["print(1)", "SUBMIT(answer='ok')"]
    monkeypatch.setattr(dspy.RLM, "_execute_iteration", counting)
    codes.clear()
    assert _answer(rlm, lm) == "ok"
    assert len(patched) == 2 and codes == ["print(1)", "SUBMIT(answer='ok')"]


def test_methods_set_on_the_instance_are_called_as_dspys_own_body_calls_them(make_rlm):
    """`rlm._execute_code = ...` or `rlm._process_execution_result = ...` on the instance (a test double, a timing
    wrapper): DSPy's body calls them through `self`, and so does an instrumented loop, whichever body runs. (DSPy
    3.1 has no `_execute_code`: its body runs the code inline.)"""
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    calls: list[str] = []
    names = [name for name in ("_execute_code", "_process_execution_result") if hasattr(rlm, name)]

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed_method(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return method(*args, **kwargs)

        return timed_method

    for name in names:
        setattr(rlm, name, timed(name, getattr(rlm, name)))
    with dspy.context(lm=lm):
        assert rlm(text="q").answer == "ok"
    bare = list(calls)
    assert bare == names * 2
    seen: list[str] = []
    rlm_events.instrument(rlm).use(Stage.POST_ITERATION, lambda ctx, next: seen.append(ctx.code) or next(ctx))
    calls.clear()
    with dspy.context(lm=lm):
        assert rlm(text="q").answer == "ok"
    assert calls == bare and len(seen) == 2


def _unobserved_run(make_rlm: Callable[..., Any], caplog: pytest.LogCaptureFixture, how: str) -> dict[str, Any]:
    """One call over `CODES` (SUBMIT in the last) that no iteration stage observes: `how` is "bare" (never
    instrumented), "idle" (instrumented, nothing registered) or "run_end" (only a run_end middleware: the call is
    instrumented, its iterations are not)."""
    codes = [c.replace("seeded + y", "7 + 1").replace("seeded", "7") for c in CODES]
    rlm, lm = make_rlm(["unused"], max_iters=len(codes) + 1)
    rlm.verbose = True
    predictor_calls: list[tuple[str, dict[str, Any]]] = []

    def predictor(**kwargs: Any) -> dspy.Prediction:
        caller = os.path.basename(sys._getframe(1).f_code.co_filename)
        shown = {k: v for k, v in kwargs.items() if k not in ("repl_history", "signature")}
        predictor_calls.append((caller, shown))
        return dspy.Prediction(reasoning="r", code=codes[min(len(predictor_calls) - 1, len(codes) - 1)])

    rlm.generate_action = predictor
    ended: list[str] = []
    if how != "bare":
        events = rlm_events.instrument(rlm)
        if how == "run_end":
            events.use(Stage.RUN_END, lambda ctx, next: ended.append(ctx.stop_reason) or next(ctx))
    return {**_called(rlm, lm, caplog, predictor_calls), "ended": ended}


@pytest.mark.parametrize("how", ["idle", "run_end"])
def test_an_iteration_nothing_observes_runs_as_dspys_own(make_rlm, caplog, how):
    """Where the body is used, an unobserved iteration runs its lines without the seams: the same trajectory,
    predictor calls and log lines as the bare RLM's (a fenced block, a fence DSPy rejects, SUBMIT)."""
    runs_own = loop_body.FAST and loop_body.source_release(dspy.RLM._execute_iteration) is not None
    runs_own = runs_own and not class_walks_the_stack(dspy.RLM)
    bare = _unobserved_run(make_rlm, caplog, "bare")
    instrumented = _unobserved_run(make_rlm, caplog, how)

    assert instrumented["answer"] == bare["answer"] == "7"
    assert instrumented["trajectory"] == bare["trajectory"]
    assert "[Error]" in bare["trajectory"][1]["output"] and bare["trajectory"][0]["output"].startswith("8")
    assert instrumented["predictor_kwargs"] == bare["predictor_kwargs"]
    assert instrumented["logs"] == bare["logs"] and len(bare["logs"]) >= len(CODES)
    assert set(instrumented["callers"]) == ({"loop_body.py"} if runs_own else set(bare["callers"]))
    assert instrumented["ended"] == (["submit"] if how == "run_end" else [])


def test_a_loop_body_wrapped_before_instrumenting_runs_as_wrapped(make_rlm, monkeypatch):
    """A tracing library that wraps DSPy's loop body (`functools.wraps`, so `inspect.getsource` sees DSPy's source
    through it) before the RLM class is instrumented: the wrapper runs on every iteration, observed or not."""
    original = dspy.RLM._execute_iteration
    wrapped: list[int] = []
    # Defined where DSPy's loop body is (as a wrapt proxy looks): its globals have the helpers the copy reads.
    where = {**vars(sys.modules[original.__module__]), "original": original, "wrapped": wrapped}
    exec("def traced(self, *args, **kwargs):\n    wrapped.append(1)\n    return original(self, *args, **kwargs)", where)
    traced = functools.wraps(original)(where["traced"])
    monkeypatch.setattr(dspy.RLM, "_execute_iteration", traced)

    class Traced(dspy.RLM):  # a class not instrumented yet: its loop body is the wrapper
        pass

    assert loop_body.body_for(Traced, Seams(Traced)) is None
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"], max_iters=3)
    rlm.__class__ = Traced
    rlm_events.instrument(rlm)
    assert _answer(rlm, lm) == "ok" and len(wrapped) == 2  # instrumented with nothing subscribed
    codes = _codes_seen_by_pre_execution(rlm)
    assert _answer(rlm, lm) == "ok" and len(wrapped) == 4 and codes == ["print(1)", "SUBMIT(answer='ok')"]
