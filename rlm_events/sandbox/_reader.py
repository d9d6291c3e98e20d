"""Reading a [`SandboxedInterpreter`][rlm_events.sandbox.SandboxedInterpreter]'s variables without side effects: what
[`Speculate`][rlm_events.speculate.Speculate] needs to plan calls over the REPL's values.

`read_variables()` sends the worker one `read` request (names, size bounds) between executions. The worker
answers from its namespace with plain-data copies (exact builtin types only; no code of any other class runs,
nothing is assigned, printed or called: see `read` in the worker) and the names that are bound. Nothing else of
the sandbox changes: no execution happens, no tool is registered, no output is captured. The host trusts the
answer no more than any other message of the worker: it must be tagged with the request's tag, and only values of
plain types are kept (checked again here). A read that times out costs nothing later: its tag is remembered, and
its answer, if it comes after all, is dropped where it arrives (the next execution never sees it).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

READ_TIMEOUT = 5.0
"""Seconds the worker has to answer a read (it does nothing else meanwhile: it is between executions)."""


class NotReadable(Exception):
    """The variables could not be read now: an execution runs, the worker is not started or broke the protocol."""


def read_variables(
    interpreter: Any, names: list[str], *, max_items: int, max_chars: int, max_total: int
) -> tuple[dict[str, Any], frozenset[str]]:
    """`({name: value}, bound names)` for `names` in `interpreter`'s namespace. `({}, frozenset())` while its worker
    has not started (it holds no variables, and is not started for this). Raises `NotReadable`."""
    worker = interpreter._resources.worker
    if worker is None:
        return {}, frozenset()
    lock = interpreter._lock
    if not lock.acquire(blocking=False):
        raise NotReadable("an execution is running")
    try:
        tag = secrets.token_hex(16)
        bounds = {"max_items": max_items, "max_chars": max_chars, "max_total": max_total}
        deadline = time.monotonic() + READ_TIMEOUT
        try:
            worker.resume()  # stopped between requests (see Worker.pause)
            try:
                worker.send({"type": "read", "execution": tag, "names": names, "limits": bounds}, deadline)
                message = worker.receive(deadline)
            finally:
                # The worker is the code's: it is stopped again, and whatever it started while it answered (it may
                # have replaced the answering function) is killed, as at the end of an execution.
                worker.pause()
        except TimeoutError:  # its answer may still come: tagged, the worker's next receive drops it
            worker.abandoned_reads.add(tag)
            raise NotReadable("the worker did not answer the read in time") from None
        except Exception as exc:  # lost, or a forged message: the next execution deals with the worker
            raise NotReadable(f"the worker did not answer the read ({type(exc).__name__})") from None
    finally:
        lock.release()
    if message.get("type") != "values" or message.get("execution") != tag:
        raise NotReadable(f"the worker answered the read with {str(message.get('type'))[:40]!r}")
    values, bound = message.get("values"), message.get("bound")
    if not isinstance(values, dict) or not isinstance(bound, list):
        raise NotReadable("the worker's answer to the read is malformed")
    kept = {}
    for name, value in values.items():
        try:
            kept[name] = _plain(value, 0)
        except ValueError:
            continue
    return kept, frozenset(n for n in bound if type(n) is str and n in names)


def _plain(value: Any, depth: int) -> Any:
    """`value` as the worker meant it (tuples decoded), checked to be plain data; `ValueError` if it is not."""
    kind = type(value)
    if kind in (str, bool, int) or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    if depth > 8:
        raise ValueError
    if kind is list:
        return [_plain(item, depth + 1) for item in value]
    if kind is dict:
        if list(value) == ["\u0000tuple"] and type(value["\u0000tuple"]) is list:
            return tuple(_plain(item, depth + 1) for item in value["\u0000tuple"])
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    raise ValueError


__all__ = ["READ_TIMEOUT", "NotReadable", "read_variables"]
