"""An iteration's action in the format its loop's predictor returns it, for a resumed run to record and serve again.

DSPy's `generate_action` returns `reasoning` and `code`; PredictRLM's action predictor (predict-rlm 0.13, on DSPy
3.4) returns `plan` (its reasoning), `code` and an optional `execution_timeout_seconds`, and its loop refuses an
action without a string `plan`. [`action_fields()`][rlm_events._patch.action_format.action_fields] reads the fields
the predictor returned beside the code and the reasoning (recorded as they are), and
[`served_action()`][rlm_events._patch.action_format.served_action] builds the action the running call's loop reads,
with the reasoning under its loop's name. PredictRLM's loop is told by its kernel's seams (`KernelSeams`), never by
importing predict-rlm.

PredictRLM also builds a per-run action predictor (`_configure_run_predictors` puts it in its run context's
`state["generate_action"]`, read by the loop instead of `generate_action`) when its inputs or outputs add
instructions; [`serve_per_run_predictor()`][rlm_events._patch.action_format.serve_per_run_predictor] puts the
resumed call's stand-in in front of that one too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspy import Prediction

from ..context import Run
from .call import CURRENT
from .predict_rlm import KernelSeams


def reasoning_field(seams: Any) -> str:
    """The name of the action's reasoning field in the loop these seams describe."""
    return "plan" if isinstance(seams, KernelSeams) else "reasoning"


def action_fields(run: Run) -> dict[str, Any]:
    """The fields of the action of `run`'s current iteration besides its code and reasoning (e.g. PredictRLM's
    `execution_timeout_seconds`), as the predictor returned them; empty outside an iteration or before its action."""
    call = CURRENT.get()
    frame = call.frame if call is not None and call.run is run else None
    action = frame.action if frame is not None else None
    if call is None or not isinstance(action, Prediction):
        return {}
    skipped = {"code", reasoning_field(call.seams)}
    return {name: value for name, value in action.items() if name not in skipped}


def served_action(reasoning: str, code: str, fields: dict[str, Any]) -> Prediction:
    """The action the running call's loop reads: the recorded `fields`, `code`, and `reasoning` under the name its
    loop reads it by."""
    call = CURRENT.get()
    name = reasoning_field(call.seams if call is not None else None)
    return Prediction(**{**fields, name: reasoning, "code": code})


def serve_per_run_predictor(rlm: Any, wrap: Callable[[Any], Any]) -> None:
    """From now on, the per-run action predictor a PredictRLM-shaped `rlm` builds for a call is replaced by
    `wrap(predictor)` (the stand-in serving recorded actions), until
    [`unserve_per_run_predictor()`][rlm_events._patch.action_format.unserve_per_run_predictor]; a no-op for other
    RLMs."""
    configure = getattr(type(rlm), "_configure_run_predictors", None)
    if not callable(configure):
        return

    def configured(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        done = configure(rlm, ctx, *args, **kwargs)
        state = getattr(ctx, "state", None)
        predictor = state.get("generate_action") if isinstance(state, dict) else None
        if predictor is not None and predictor is not rlm.__dict__.get("generate_action"):
            state["generate_action"] = wrap(predictor)  # type: ignore[index]
        return done

    rlm.__dict__["_configure_run_predictors"] = configured


def unserve_per_run_predictor(rlm: Any) -> None:
    """Undo [`serve_per_run_predictor()`][rlm_events._patch.action_format.serve_per_run_predictor]."""
    rlm.__dict__.pop("_configure_run_predictors", None)


__all__ = [
    "action_fields",
    "reasoning_field",
    "serve_per_run_predictor",
    "served_action",
    "unserve_per_run_predictor",
]
