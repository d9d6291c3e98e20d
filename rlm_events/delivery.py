"""How tap snapshots reach the taps: off the caller's thread, through one bounded queue and one worker thread.

A run never waits for a tap. When a stage fires, each of its taps gets a read-only snapshot; a tap that does not
declare itself inline has that snapshot put on a queue (a few hundred nanoseconds on the run's thread) and a single
daemon worker thread calls it later, in the order the events happened. This is the shape of OpenTelemetry's
`BatchSpanProcessor`. Guarantees:

* **Never blocks.** When `capacity` snapshots are waiting, a new one is *dropped and counted* (`stats().dropped`;
  the first drop is logged at WARNING, later ones at DEBUG). A `run_end` snapshot may use a second `capacity` of
  room, so a tap that falls behind still closes its runs; past that it is dropped too.
* **Ordered.** One queue, one worker: every tap sees its events in the order they fired.
* **Batched.** The worker wakes once per `BATCH_SIZE` snapshots or `BATCH_DELAY` seconds after the first, not once
  per event, so a busy run does not pay a thread switch per stage; a queued tap lags its events by about that.
* **Flushed.** [`flush(timeout=)`][rlm_events.delivery.flush] waits until everything queued before it was delivered;
  at process exit (`atexit`) the queue is flushed for at most `EXIT_TIMEOUT` seconds.
* **Lazy.** Importing this module starts nothing: the worker starts with the first queued snapshot (and again in a
  forked child).
* **Isolated.** What a tap raises is logged by the tap (see `rlm_events.plan.Tap`), never by the run.

A tap whose work only makes sense at the moment of the event (keeping a span current so that DSPy's own spans nest
under it, timing a stage) is *inline*: it runs on the caller's thread or loop, must do no I/O there, and must have a
bounded cost. It says so with a class attribute `INLINE = True` or `events.tap(stages, fn, inline=True)`. A queued
tap that needs the time of its event reads [`event_time()`][rlm_events.delivery.event_time].

The worker holds the GIL while a tap runs Python code: a tap that computes for long slows every thread a little, as
any thread does; a tap that sleeps or waits on I/O costs the run nothing.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from middleware import run_sync

from ._failures import log_failure

logger = logging.getLogger("rlm_events")

DEFAULT_CAPACITY = 10_000
EXIT_TIMEOUT = 5.0  # seconds the process waits at exit for queued snapshots
BATCH_SIZE = 256  # the worker is woken once per batch of this many snapshots ...
BATCH_DELAY = 0.02  # ... or this many seconds after the first one: a tap lags its event by at most about this


class EventTime(NamedTuple):
    """When an event fired: `time.monotonic()` and `time.time()` read on the run's thread."""

    monotonic: float
    wall: float


class DeliveryStats(NamedTuple):
    """Counters since the process started: snapshots `queued`, `delivered` (tap called, whatever it raised) and
    `dropped` (the queue was full); `pending` are waiting now; `capacity` is the queue's bound."""

    queued: int
    delivered: int
    dropped: int
    pending: int
    capacity: int


Deliver = Callable[[Any], Any]  # a tap's guarded entry point (calls it, logs what it raises), or deferred work


class _Worker(threading.local):
    when: EventTime | None = None  # the event being delivered, on the worker thread


_on_worker = _Worker()


def event_time() -> EventTime:
    """When the event a tap is handling fired. On the delivery worker: the time stamped on the run's thread when the
    snapshot was queued; anywhere else (an inline tap): now."""
    when = _on_worker.when
    return when if when is not None else EventTime(time.monotonic(), time.time())


def stamp() -> EventTime:
    """The time of an event, read now (on the run's thread)."""
    return EventTime(time.monotonic(), time.time())


class Delivery:
    """The bounded queue and its worker thread. One per process (`DELIVERY`); see the module docstring."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._reset(capacity)
        self._exit_hooked = False

    def _reset(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here for snapshots
        self._done = threading.Condition(self._lock)  # flush() waits here for the worker's progress
        self._pending: deque[tuple[Deliver, Any, EventTime]] = deque()
        self._worker: threading.Thread | None = None
        self._flushing = 0
        self._idle = False  # the worker waits for a first snapshot: the next submit wakes it
        self._urgent = False  # a flush waits: deliver the batch now
        self.queued = self.delivered = self.dropped = 0

    # -- the run's side ---------------------------------------------------------------------------------------

    def submit(self, deliver: Deliver, snap: Any, when: EventTime, closing: bool = False) -> bool:
        """Queue `deliver(snap)`; never blocks. Returns False when the snapshot was dropped (queue full).
        `closing` (a `run_end`) may use twice the capacity."""
        with self._lock:
            if len(self._pending) >= (self.capacity * 2 if closing else self.capacity):
                self.dropped += 1
                dropped = self.dropped
            else:
                self._pending.append((deliver, snap, when))
                self.queued += 1
                if self._worker is None:
                    self._start()
                elif self._idle or len(self._pending) == BATCH_SIZE:  # one wake-up per batch, not per snapshot
                    self._work.notify()
                return True
        logger.log(
            logging.WARNING if dropped == 1 else logging.DEBUG,
            "tap delivery queue full (%d waiting): a %s snapshot was dropped (%d dropped so far); a tap is slower "
            "than the runs it observes",
            self.capacity,
            getattr(getattr(snap, "stage", None), "value", "?"),
            dropped,
        )
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every snapshot queued before this call was delivered, at most `timeout` seconds (`None`: no
        limit). Returns whether it was. From a tap on the worker thread it returns False at once (it would wait
        for itself)."""
        if threading.current_thread() is self._worker:
            return False
        with self._lock:
            target = self.queued
            self._flushing += 1
            self._urgent = True
            self._work.notify()
            try:
                return self._done.wait_for(lambda: self.delivered >= target, timeout)
            finally:
                self._flushing -= 1

    def stats(self) -> DeliveryStats:
        with self._lock:
            return DeliveryStats(self.queued, self.delivered, self.dropped, len(self._pending), self.capacity)

    def configure(self, capacity: int) -> None:
        """Set the queue's bound (at least 1); snapshots already waiting stay."""
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"delivery capacity must be an int of at least 1, got {capacity!r}")
        with self._lock:
            self.capacity = capacity

    # -- the worker's side ------------------------------------------------------------------------------------

    def _start(self) -> None:  # under the lock
        if not self._exit_hooked:
            self._exit_hooked = True
            atexit.register(self._flush_at_exit)
            if hasattr(os, "register_at_fork"):  # a forked child has the queue's memory but not its thread
                os.register_at_fork(after_in_child=lambda: self._reset(self.capacity))
        self._worker = threading.Thread(target=self._run, name="rlm-events-taps", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._idle = True
                    self._work.wait()
                self._idle = False
                if not self._urgent and len(self._pending) < BATCH_SIZE:
                    self._work.wait(BATCH_DELAY)  # let a batch gather: a flush or a full batch ends this early
                batch, self._pending, self._urgent = self._pending, deque(), False
            count = len(batch)
            while batch:
                self._deliver(*batch.popleft())  # one at a time, so no snapshot outlives its delivery
            with self._lock:
                self.delivered += count
                if self._flushing:
                    self._done.notify_all()

    @staticmethod
    def _deliver(deliver: Deliver, snap: Any, when: EventTime) -> None:
        _on_worker.when = when
        try:
            out = deliver(snap)
            if out is not None and inspect.isawaitable(out):
                run_sync(out)
        except BaseException:  # the tap logs its own errors; this is a last resort that keeps the worker alive
            log_failure(logger, logging.ERROR, "tap delivery failed; the worker goes on")
        finally:
            _on_worker.when = None

    def _flush_at_exit(self) -> None:
        if not self.flush(EXIT_TIMEOUT):
            logger.warning("tap delivery: %d snapshot(s) not delivered at exit", len(self._pending))


DELIVERY = Delivery()


def flush(timeout: float | None = 30.0) -> bool:
    """Wait until every tap snapshot queued so far was delivered, at most `timeout` seconds (`None`: no limit).

    Returns whether everything was. Call it before reading what a queued tap collected (a list it appends to, a
    file it writes), in tests, and before a short-lived process exits without `atexit` (an `os._exit`). It blocks
    the calling thread: from async code, `await asyncio.to_thread(rlm_events.flush)`.
    """
    return DELIVERY.flush(timeout)


def defer(fn: Deliver, payload: Any, *, closing: bool = False) -> bool:
    """Call `fn(payload)` on the delivery worker, after everything queued before (an inline tap's I/O: it builds
    what to write at the event, bounded, and defers the writing). Never blocks; False when dropped (queue full)."""
    return DELIVERY.submit(fn, payload, stamp(), closing)


def stats() -> DeliveryStats:
    """The delivery counters (queued, delivered, dropped, pending, capacity)."""
    return DELIVERY.stats()


def configure(*, capacity: int) -> None:
    """Set the delivery queue's bound: how many snapshots may wait before new ones are dropped and counted."""
    DELIVERY.configure(capacity)


__all__ = [
    "DEFAULT_CAPACITY",
    "EXIT_TIMEOUT",
    "Delivery",
    "DeliveryStats",
    "EventTime",
    "configure",
    "defer",
    "event_time",
    "flush",
    "stamp",
    "stats",
]
