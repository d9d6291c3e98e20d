"""What the patch layer needs of the object [`rlm_events.instrument()`][rlm_events.instrument] attaches to an RLM: the
patch layer
imports nothing of `rlm_events.instrumentation`, and calls only these public methods."""

from __future__ import annotations

from typing import Any, Protocol

from ..plan import Plan


class Handle(Protocol):
    """The registrations an instrumented RLM runs with ([`rlm_events.Instrumentation`][rlm_events.Instrumentation] is
    one)."""

    @property
    def plan(self) -> Plan:
        """The registrations a call takes when it starts (immutable)."""
        ...

    def copy(self) -> Handle:
        """A handle with the same registrations and no RLMs (for a deep copy of an instrumented RLM)."""
        ...

    def attached(self, rlm: Any) -> None:
        """`rlm` now runs with this handle."""
        ...

    def detached(self, rlm: Any) -> None:
        """`rlm` no longer runs with this handle."""
        ...
