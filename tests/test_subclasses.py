"""A ``dspy.RLM`` subclass whose overrides delegate to ``super()`` (before or after their own work) or reimplement a
loop method keeps working instrumented, with every stage firing; what cannot fire is named in one WARNING."""

from __future__ import annotations

import asyncio
import inspect
import logging
import textwrap
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage

PROCESS = set(inspect.signature(dspy.RLM._process_execution_result).parameters)


class Reimplemented(dspy.RLM):
    """``_execute_iteration`` written anew: its own prompt arguments, fence handling and ``repl.execute`` call."""

    def _execute_iteration(self, repl, variables, history, iteration, input_args, output_field_names, *rest):
        action = self.generate_action(
            variables_info=[v.format() for v in variables], repl_history=history, iteration=f"{iteration + 1}/6"
        )
        code = action.code.strip().removeprefix("```python").removesuffix("```").strip()
        try:
            result = repl.execute(code, variables=dict(input_args))
        except Exception as exc:
            result = f"[Error] {exc}"
        arguments = {"pred": action, "result": result, "history": history, "code": code}
        arguments["output_field_names"] = output_field_names
        return self._process_execution_result(**{k: v for k, v in arguments.items() if k in PROCESS})


class PostProcessing(dspy.RLM):
    """Overrides that call ``super()`` and look at what it returned before returning it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: list[str] = []

    def _execute_iteration(self, *args: Any, **kwargs: Any) -> Any:
        outcome = super()._execute_iteration(*args, **kwargs)
        self.outcomes.append(type(outcome).__name__)
        return outcome

    async def _aexecute_iteration(self, *args: Any, **kwargs: Any) -> Any:
        outcome = await super()._aexecute_iteration(*args, **kwargs)
        self.outcomes.append(type(outcome).__name__)
        return outcome


def guarded(rlm: dspy.RLM) -> list[str]:
    """Instrument ``rlm``: pre_execution refuses ``import os``, post_execution tags results, a tap logs stages."""
    events = rlm_events.instrument(rlm)
    stages: list[str] = []

    @events.middleware(Stage.PRE_EXECUTION)
    def refuse(ctx, next):
        if "import os" in ctx.code:
            ctx.skip("[Error] refused")
        return next(ctx)

    @events.middleware(Stage.POST_EXECUTION)
    def tag(ctx, next):
        if "SUBMIT" not in ctx.code:  # keep the final output
            ctx.result = f"{str(ctx.result or '').strip()} (seen)".lstrip()
        return next(ctx)

    events.tap(lambda ctx: stages.append(ctx.stage.value), inline=True)
    return stages


STEPS = ["import os", "print(6 * 7)", "SUBMIT(answer='done')"]


def call(rlm: dspy.RLM, lm: Any, use_async: bool) -> dspy.Prediction:
    with dspy.context(lm=lm):
        return asyncio.run(rlm.acall(text="t")) if use_async else rlm(text="t")


def test_a_subclass_that_reimplements_execute_iteration_fires_every_stage(make_rlm):
    rlm, lm = make_rlm(STEPS)
    rlm.__class__ = Reimplemented  # built with dspy.RLM's constructor on every release; only the loop differs
    stages = guarded(rlm)
    result = call(rlm, lm, use_async=False)
    assert result.answer == "done"
    assert [e["output"] for e in result.trajectory[:2]] == ["[Error] refused (seen)", "42 (seen)"]
    assert stages.count("pre_execution") == stages.count("post_execution") == 3
    assert stages[0] == "run_start" and stages[-1] == "run_end"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_overrides_that_look_at_super_s_outcome_see_dspy_s_outcome(make_rlm, use_async):
    rlm, lm = make_rlm(STEPS)
    rlm.__class__ = PostProcessing
    rlm.outcomes = []
    stages = guarded(rlm)
    result = call(rlm, lm, use_async=use_async)
    assert rlm.outcomes == ["REPLHistory", "REPLHistory", "Prediction"]  # never a stand-in of ours
    assert [e["output"] for e in result.trajectory[:2]] == ["[Error] refused (seen)", "42 (seen)"]
    assert stages.count("post_execution") == 3


def test_async_post_execution_middleware_on_such_a_subclass_still_run_and_are_named(make_rlm, caplog):
    rlm, lm = make_rlm(STEPS)
    rlm.__class__ = PostProcessing
    rlm.outcomes = []
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.POST_EXECUTION)
    async def tag(ctx, next):
        await asyncio.sleep(0)
        if "SUBMIT" not in ctx.code:
            ctx.result = "tagged"
        return await next(ctx)

    with caplog.at_level(logging.WARNING, logger="rlm_events"):
        result = call(rlm, lm, use_async=True)
        call(rlm, lm, use_async=True)
    assert [e["output"] for e in result.trajectory][:2] == ["tagged"] * 2
    warnings = [r.getMessage() for r in caplog.records if "private event loop" in r.getMessage()]
    assert len(warnings) == 1 and "PostProcessing" in warnings[0]


def test_a_loop_that_reads_its_predictor_another_way_warns_once_and_runs(make_rlm, caplog):
    # Defined without source (as compiled code would be), so instrument() cannot read that it bypasses the seam.
    namespace: dict[str, Any] = {"dspy": dspy}
    exec(
        textwrap.dedent(
            """
            class Opaque(dspy.RLM):
                def _execute_iteration(self, repl, variables, history, iteration, input_args, output_field_names, *a):
                    action = vars(self)["generate_action"](
                        variables_info=[v.format() for v in variables],
                        repl_history=history,
                        iteration=f"{iteration + 1}/6",
                    )
                    return self._process_execution_result(**{
                        k: v for k, v in dict(
                            pred=action, code=action.code, history=history, output_field_names=output_field_names,
                            result=repl.execute(action.code.strip("`").removeprefix("python").strip()),
                        ).items() if k in PROCESS
                    })
            """
        ),
        {**namespace, "PROCESS": PROCESS},
        namespace,
    )
    rlm, lm = make_rlm(["print(1)", "SUBMIT(answer='ok')"])
    rlm.__class__ = namespace["Opaque"]
    events = rlm_events.instrument(rlm)
    stages: list[str] = []
    events.tap(lambda ctx: stages.append(ctx.stage.value), inline=True)
    with caplog.at_level(logging.WARNING, logger="rlm_events"):
        assert call(rlm, lm, use_async=False).answer == "ok"
    warnings = [r.getMessage() for r in caplog.records if "pre_execution did not fire" in r.getMessage()]
    assert len(warnings) == 1 and "Opaque" in warnings[0] and "Predict" in warnings[0]
    assert "pre_execution" not in stages and stages.count("post_execution") == 2
