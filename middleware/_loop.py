"""Run a coroutine to completion from synchronous code without touching the caller's event loop.

A sync caller may sit inside a running event loop (a notebook, an async server calling sync code). Nesting a
second loop in that thread is an error, and blocking it on its own loop deadlocks, so coroutines always run on a
private loop owned by one daemon thread. The caller's `contextvars` travel with the coroutine, so
`dspy.context(...)` settings and rlm-events' own per-call state stay visible inside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _private_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="middleware-private-loop", daemon=True)
            _thread.start()
        return _loop


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_sync(awaitable: Awaitable[T]) -> T:
    """Block the calling thread until `awaitable` completes on the private loop; return or raise its outcome.

    Guarantees: the caller's event loop (if any) is neither nested nor used; the caller's context variables are
    copied into the coroutine; called from the private loop's own thread (a sync step inside an async middleware
    that itself needs a coroutine), the coroutine runs on a fresh loop in a one-off thread instead of deadlocking.
    """
    loop = _private_loop()
    if threading.current_thread() is _thread:
        return _run_in_fresh_thread(awaitable)
    # call_soon_threadsafe copies this thread's context into the handle, so the task inherits it.
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(_await(awaitable), loop)
    return future.result()


def _run_in_fresh_thread(awaitable: Awaitable[T]) -> T:
    import contextvars

    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.set_result(context.run(asyncio.run, _await(awaitable)))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=target, name="middleware-nested-loop", daemon=True).start()
    return outcome.result()
