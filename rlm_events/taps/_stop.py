"""Why an RLM call's loop ended, as the MLflow and OpenTelemetry taps report it (`rlm.stop_reason`)."""

from __future__ import annotations

from typing import Any

from ..builtins.budget import Budget

STOP_REASONS = ("submit", "max_iters", "budget", "middleware", "error")
"""`submit` (the code's SUBMIT, or a middleware's prediction, ended it), `max_iters` (DSPy's extract fallback
after the last iteration), `budget` (a Budget limit), `middleware` (a middleware set `stop`), `error`."""


def stop_reason(ctx: Any, middleware_stopped: bool) -> str:
    """The stop reason of the call whose `run_end` context is `ctx`: `ctx.stop_reason` where this rlm-events
    records it, else derived from the context, the Budget's `Spend` (`Budget.spent(run).stopped_by`) and
    whether a `post_iteration` of the call had `stop` set (`middleware_stopped`)."""
    reason = getattr(ctx, "stop_reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if ctx.error is not None:
        return "error"
    if not ctx.forced_extract:
        return "submit"
    if getattr(Budget.spent(ctx.run), "stopped_by", None):
        return "budget"
    return "middleware" if middleware_stopped else "max_iters"


__all__ = ["STOP_REASONS", "stop_reason"]
