"""Helpers for blinker receivers of rlm-events signals."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from middleware import is_async_callable, middleware_name

from ._failures import log_failure

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("rlm_events")


def isolated(receiver: F) -> F:
    """Wrap a signal receiver so that whatever it raises is logged and never reaches the run.

    A plain receiver that raises fails the call (blinker's semantics, which a guard may want); an isolated one is
    telemetry. The first failure of a receiver in a call is logged at WARNING with its traceback, later failures in
    the same call at DEBUG. Works for `def` and `async def` receivers.

    blinker holds receivers weakly: keep the wrapper alive, e.g. by decorating a module-level function (the name then
    refers to the wrapper) or by connecting with `weak=False`:

    ```text
    @signals.run_end.connect_via(rlm)
    @isolated
    def export(sender, ctx): ...
    ```
    """
    name = middleware_name(receiver)
    last_failed: list[str | None] = [None]

    def failed(kwargs: dict[str, Any]) -> None:
        """Log the failure (the receiver returns None, as if it had returned nothing)."""
        ctx = kwargs.get("ctx")
        run_id = getattr(getattr(ctx, "run", None), "id", None)
        first = run_id is None or last_failed[0] != run_id
        last_failed[0] = run_id
        stage = getattr(getattr(ctx, "stage", None), "value", "?")
        log_failure(
            logger,
            logging.WARNING if first else logging.DEBUG,
            "isolated receiver %s failed at stage %r (run %s); the run continues",
            name,
            stage,
            run_id,
            traceback_too=first,
        )

    if is_async_callable(receiver):

        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await receiver(*args, **kwargs)
            except Exception:
                return failed(kwargs)  # type: ignore[func-returns-value]

        return functools.wraps(receiver)(guarded_async)  # type: ignore[return-value]

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return receiver(*args, **kwargs)
        except Exception:
            return failed(kwargs)  # type: ignore[func-returns-value]

    return functools.wraps(receiver)(guarded)  # type: ignore[return-value]
