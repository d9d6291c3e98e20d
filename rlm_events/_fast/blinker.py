"""The fast path over blinker's internals: which receivers hear a sender, read where blinker keeps them.

Every stage asks whether a receiver hears the RLM being called, and which. blinker's `has_receivers_for()` and
`receivers_for()` answer, but compute the sender's id with `make_id()`, whose `inspect.ismethod()` goes through
DSPy's Python-level `__getattribute__` on a `dspy.Module`. For the plain objects RLMs are, that id is
`id(sender)`: `may_hear()` and `receivers()` look it up directly in the signals given to `track()`
(by the first [`Instrumentation`][rlm_events.Instrumentation], not at import).
They rely on:

* `blinker.base.make_id(obj)` is `id(obj)` for an object that is not a bound method, `str` or `int`, and
  `blinker.base.ANY_ID`, an `int`, is the id of `ANY`, the sender of receivers connected to every sender;
* a signal's `_by_sender` maps a sender id to the set of ids of the receivers connected to it, and stays the same
  dict for the signal's life (blinker clears it, never replaces it); `receivers` maps a receiver id to the receiver,
  or to a `weakref.ref` of it (a `WeakMethod` for a bound method) when connected weakly;
* `is_muted` is true inside `signal.muted()`, when `send()` calls no receiver;
* every `connect()` and `disconnect()` of a signal sends its `receiver_connected` / `receiver_disconnected` signal
  once something is connected to them. The only other change to a sender's receivers is the death of a weakly
  connected receiver (or of the sender), which blinker does not announce;
* a signal's `_by_receiver` maps a receiver id to the set of sender ids it is connected to (`ANY_ID` included; an
  empty or missing set: none), and `disconnect(receiver, sender)` removes that sender from it but leaves the
  receiver in `receivers`.

That last point is why `release()` exists: a receiver disconnected sender by sender stays in `signal.receivers`
(a strong reference when it was connected with `weak=False`) until it is disconnected from ANY. `release()` does so
once it is connected to no sender at all; on the fallback it leaves it, as blinker does. A sender that dies leaves
its receivers there the same way: `release(..., dead_sender=...)` disconnects one whose last sender it was.

`receivers()` therefore reads a (signal, sender)'s receivers once and keeps that read until a tracked signal announces
a connection change: on the following sends of a call it returns the kept receivers when all are strongly connected,
else looks each kept id up and dereferences it (a dead one is skipped, as blinker skips it), instead of merging
blinker's sets again. A caller that sends one signal again and again (a plan's stage) keeps such a read itself, in a
`Kept`, with `kept_receivers()`: every announced change bumps `generation` and empties every `Kept`.

Checked against blinker 1.9.0, the newest release tested, and blinker 1.8.0, the lowest supported (CI runs the
suite on it).

`probe()` checks all of the above once at import on a signal of its own, with receivers connected
to senders and to ANY, weakly and strongly (functions and bound methods), some disconnected or dead, comparing with
`receivers_for()` and `has_receivers_for()`. If anything is not as expected, `FAST` is `False`
(`REASON` says why) and both go through those public methods: slower, never different.
`RLM_EVENTS_FAST_PATHS=0` in the environment does so without probing; `fallback()` does so for a while (tests).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from types import MethodType
from typing import Any

from blinker import ANY, Signal
from blinker import base as _blinker

from . import Unexpected, disabled, failure, switched

FAST = True  # set below, from the probe
REASON: str | None = None  # why the public API is used, when it is

_ANY_ID = getattr(_blinker, "ANY_ID", 0)  # the key of receivers connected to every sender
_NONE: frozenset[Any] = frozenset()
_NOT_PLAIN = (str, int, MethodType)  # senders whose blinker id is not id(sender)

# The _by_sender dict of each tracked signal, where this blinker keeps it, while the fast path is in use. Others
# (and every signal on the fallback) go through blinker's public API.
_BY_SENDER: dict[Signal, dict[Any, Any]] = {}
_TRACKED: list[Signal] = []

# The receivers of a (signal, sender id) in blinker's order: (the connection count when read, a weak reference to
# the sender, whether all of them are strongly connected, then the receivers themselves if so, else their ids in
# `signal.receivers`). Blinker's weak references are never kept here: one that outlived blinker's own would have its
# callback run after its death (Python's WeakMethod then prints an ignored AttributeError).
_Read = tuple[int, Callable[[], Any], bool, tuple[Any, ...]]
_READS: dict[tuple[Signal, int], _Read] = {}
# Connects and disconnects announced by the tracked signals (and path switches): a read taken at another
# generation is stale. Public for callers that keep a read between sends (`kept_receivers()`).
generation = 0


def _connection_changed(signal: Any, **kwargs: Any) -> None:
    """A tracked signal's receivers changed: every read is stale (and no disconnected receiver is kept alive)."""
    global generation
    generation += 1
    _READS.clear()
    with _KEPT_LOCK:  # a plan built meanwhile on another thread adds to _KEPT: iterating it must not see that
        for kept in _KEPT:
            kept.read = None


class Kept:
    """Where a caller that sends one signal again and again keeps the read `kept_receivers()` gave it last time
    (`read`, or `None`). Every announced connection change empties every `Kept`, so that none keeps a disconnected
    receiver alive; a read stored by a thread that raced such a change is stale by its generation."""

    __slots__ = ("__weakref__", "read")

    def __init__(self) -> None:
        self.read: _Read | None = None
        with _KEPT_LOCK:
            _KEPT.add(self)


_KEPT: weakref.WeakSet[Kept] = weakref.WeakSet()
# Reentrant: a finalizer run by the garbage collector inside the lock may connect or disconnect a receiver itself.
_KEPT_LOCK = threading.RLock()


def _announce(signal: Signal) -> None:
    """Count `signal`'s connects and disconnects (blinker announces them once something listens)."""
    signal.receiver_connected.connect(_connection_changed, weak=False)
    signal.receiver_disconnected.connect(_connection_changed, weak=False)


def track(signals: Iterable[Signal]) -> None:
    """Answer for `signals` (the stage signals) from blinker's own bookkeeping, while the fast path is in use.
    Idempotent: a signal tracked already is not added again."""
    added = [signal for signal in dict.fromkeys(signals) if signal not in _TRACKED]
    if added:
        for signal in added:
            _announce(signal)
        _TRACKED.extend(added)
        _follow()


def _follow() -> None:
    _connection_changed(None)  # drops every read
    _BY_SENDER.clear()
    if FAST:
        _BY_SENDER.update(
            (signal, by_sender)
            for signal in _TRACKED
            if isinstance(by_sender := getattr(signal, "_by_sender", None), dict)
        )


def receivers(signal: Signal, sender: Any) -> Sequence[Callable[..., Any]]:
    """The receivers `signal.send(sender)` calls, as `list(signal.receivers_for(sender))` has them: the live receivers
    connected to `sender` or to ANY, in blinker's order; none while the signal is muted. A sequence to iterate at once:
    when every receiver is strongly connected, the kept read itself.

    A weakly connected receiver that died is skipped; blinker's weakref callback disconnects it (`receivers_for()`
    also does so itself).
    """
    return kept_receivers(signal, sender)[0]


def kept_receivers(signal: Signal, sender: Any) -> tuple[Sequence[Callable[..., Any]], _Read | None]:
    """`receivers(signal, sender)`, and the read a caller that sends `signal` for `sender` again may keep (or `None`:
    not on the fast path, a receiver weakly connected, the sender not weakly referenceable, or the signal muted).

    A kept read `(generation, sender_ref, True, receivers)` answers for that caller, without asking here, while
    `read[0] == generation`, `read[1]() is sender` and the signal is not muted: its receivers are then exactly
    what `receivers()` returns (only announced connection changes, which bump `generation`, can change a sender's
    strongly connected receivers)."""
    by_sender = _BY_SENDER.get(signal)
    if by_sender is None or issubclass(type(sender), _NOT_PLAIN):
        return ([] if getattr(signal, "is_muted", False) else list(signal.receivers_for(sender))), None
    if signal.is_muted:
        return [], None
    read = _READS.get((signal, id(sender)))
    if read is None or read[0] != generation or read[1]() is not sender:
        read = _read(signal, sender, by_sender)
    if read[2]:  # all strong: as read
        return read[3], (None if read[1] is _nothing else read)
    refs = signal.receivers
    live = []
    for receiver_id in read[3]:
        receiver = refs.get(receiver_id)
        if isinstance(receiver, weakref.ref):  # weakref.WeakMethod is one too
            receiver = receiver()
        if receiver is not None:
            live.append(receiver)
    return live, None


def _read(signal: Signal, sender: Any, by_sender: dict[Any, Any]) -> _Read:
    """Read `sender`'s receivers of `signal` from blinker's bookkeeping; kept while the sender lives (when it can
    be weakly referenced) and no connection changes."""
    counted = generation
    refs = signal.receivers
    ids = tuple(by_sender.get(_ANY_ID, _NONE) | by_sender.get(id(sender), _NONE))
    found = tuple(receiver for receiver_id in ids if (receiver := refs.get(receiver_id)) is not None)
    strong = not any(isinstance(receiver, weakref.ref) for receiver in found)
    kept = found if strong else ids
    key = (signal, id(sender))
    forget = _READS.pop  # bound now: the callback may run at interpreter shutdown, when this module's globals are gone

    def forget_read(_: Any) -> None:
        forget(key, None)

    try:
        owner: Callable[[], Any] = weakref.ref(sender, forget_read)
    except TypeError:  # not weakly referenceable: read on every send
        return (counted, _nothing, strong, kept)
    read = _READS[key] = (counted, owner, strong, kept)
    return read


def _nothing() -> None:
    return None


def release(signal: Signal, receiver: Callable[..., Any], *, dead_sender: int | None = None) -> None:
    """Disconnect `receiver` from `signal` entirely when it is connected to no sender (nor to ANY) any more, so
    that blinker keeps no reference to it; a receiver still connected to any sender is left as it is.

    `dead_sender` is the id of a sender that died, left out of that count: blinker drops a dead sender's bucket but
    keeps its receivers in `signal.receivers` (alive, when strongly connected), whether its own cleanup ran yet or
    not. Pass it from the sender's finalizer (its id is not reused before that runs). On the fallback, nothing:
    blinker's behaviour."""
    by_receiver = getattr(signal, "_by_receiver", None) if FAST else None
    if not isinstance(by_receiver, dict):
        return
    receiver_id = _blinker.make_id(receiver)
    senders = by_receiver.get(receiver_id) or _NONE
    if dead_sender is not None:
        senders = senders - {dead_sender}
    if receiver_id in signal.receivers and not senders:
        signal.disconnect(receiver)


def may_hear(signal: Signal, sender: Any) -> bool:
    """Whether a receiver may be connected for `sender` or for ANY: `signal.has_receivers_for(sender)`, a cheap
    first filter, so that receivers connected only to other RLMs cost next to nothing. Never `False` when
    `receivers()` would return one; may be `True` when it would return none (a dead weak receiver; on the
    fallback also a sender whose receivers were all disconnected, whose bucket blinker keeps)."""
    by_sender = _BY_SENDER.get(signal)
    if by_sender is None or issubclass(type(sender), _NOT_PLAIN):
        return signal.has_receivers_for(sender)
    return bool(by_sender.get(_ANY_ID)) or bool(by_sender.get(id(sender)))


def hears(signal: Signal, sender: Any) -> bool:
    """Whether a live receiver is connected for `sender` or for ANY (muted or not): exact, after the cheap filter."""
    return may_hear(signal, sender) and next(iter(signal.receivers_for(sender)), None) is not None


# -- choosing the path ---------------------------------------------------------------------------------------------


class _Sender:
    """A plain sender, as an RLM is for blinker."""


class _Listener:
    def on(self, sender: Any, **kwargs: Any) -> None:
        pass


def _compare(signal: Signal, senders: dict[str, Any], when: str) -> None:
    for name, sender in senders.items():
        public = list(signal.receivers_for(sender))
        fast = receivers(signal, sender)
        if Counter(fast) != Counter(public):
            raise Unexpected(f"{when}: the fast path finds {len(fast)} receivers for {name}, blinker {len(public)}")
        if public and not may_hear(signal, sender):
            raise Unexpected(f"{when}: the fast path misses the receivers of {name}")
        if hears(signal, sender) != bool(public):
            raise Unexpected(f"{when}: the fast path says {name} is heard: {not public}")


def _check() -> None:
    """Raise `Unexpected` where the fast path would find other receivers than blinker's public API."""
    make_id, plain = getattr(_blinker, "make_id", None), _Sender()
    if not callable(make_id) or make_id(plain) != id(plain):
        raise Unexpected("blinker.base.make_id(obj) is not id(obj) for a plain object")
    if not isinstance(getattr(_blinker, "ANY_ID", None), int) or _blinker.ANY_ID != _ANY_ID:
        raise Unexpected(f"blinker.base.ANY_ID is {getattr(_blinker, 'ANY_ID', None)!r}, not the int {_ANY_ID!r}")
    signal = Signal()
    by_sender = getattr(signal, "_by_sender", None)
    if not isinstance(by_sender, dict) or not isinstance(signal.receivers, dict):
        raise Unexpected("a blinker Signal keeps no _by_sender and receivers dicts")
    one, other, unheard = _Sender(), _Sender(), _Sender()
    senders = {"a sender": one, "another sender": other, "an unheard sender": unheard, "ANY": ANY, "a str": "one"}
    listener = _Listener()

    def to_any(sender: Any, **kwargs: Any) -> None:
        pass

    def to_one(sender: Any, **kwargs: Any) -> None:
        pass

    def to_other(sender: Any, **kwargs: Any) -> None:
        pass

    signal.connect(to_any, weak=False)
    signal.connect(to_one, sender=one)  # weakly: a weakref.ref
    signal.connect(listener.on, sender=one)  # weakly: a WeakMethod
    signal.connect(to_other, sender=other, weak=False)
    signal.connect(to_one, sender="one")
    if by_sender.get(_ANY_ID) != {make_id(to_any)} or by_sender.get(id(one)) != {make_id(to_one), make_id(listener.on)}:
        raise Unexpected("a blinker Signal's _by_sender does not map sender ids to receiver ids")
    _BY_SENDER[signal] = by_sender
    _announce(signal)
    try:
        _compare(signal, senders, "receivers to senders and to ANY")
        signal.connect(to_other, sender=one, weak=False)  # after a read: announced, so read again
        _compare(signal, senders, "after connecting")
        signal.disconnect(to_other, sender=one)
        with signal.muted():
            if not signal.is_muted or receivers(signal, one) or signal.send(one):
                raise Unexpected("signal.muted() does not set is_muted")
        signal.disconnect(to_any)
        signal.disconnect(to_other, sender=other)  # its bucket stays, and so does the receiver
        _compare(signal, senders, "after disconnecting")
        if signal._by_receiver.get(make_id(to_other)) or make_id(to_other) not in signal.receivers:
            raise Unexpected("a receiver disconnected from its only sender is not kept with no senders")
        release(signal, to_other)
        release(signal, to_any)  # disconnected already: nothing to do
        if make_id(to_other) in signal.receivers or make_id(to_other) in signal._by_receiver:
            raise Unexpected("a receiver disconnected from ANY is still kept")
        _compare(signal, senders, "after releasing a receiver")
        del to_one  # dead: blinker's weakref callback disconnects it
        _compare(signal, senders, "after a weak receiver died")
        del listener
        _compare(signal, senders, "after a bound method's owner died")
        del senders["another sender"], other  # blinker drops a dead sender's bucket
        _compare(signal, senders, "after a sender died")
        cleared = getattr(signal, "_clear_state", None)
        if callable(cleared):
            cleared()
        if getattr(signal, "_by_sender", None) is not by_sender:
            raise Unexpected("a blinker Signal replaces its _by_sender dict")
    finally:
        _BY_SENDER.pop(signal, None)
        for key in [key for key in _READS if key[0] is signal]:
            del _READS[key]


def probe() -> str | None:
    """Why the fast path would not find the receivers blinker's public API finds on this blinker, or `None` when
    it would. Runs the fast path itself on a signal of its own: for the import, and for tests."""
    return failure(_check)


def fallback() -> AbstractContextManager[None]:
    """Use blinker's public API inside the block, as when the probe fails (for tests; not thread-safe)."""
    return switched(__name__, False, _follow)


REASON = disabled() or probe()
FAST = REASON is None
