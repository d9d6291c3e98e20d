"""Serving a resumed run's recorded actions to DSPy's loop instead of asking the LM again.

A resumed durable run re-executes its recorded iterations in a fresh interpreter. Each iteration's action (reasoning,
code and the predictor's other fields, in the format the loop reads: `_patch.action_format`) comes from the record:
while a resumed call runs, the RLM's `generate_action` predictor (and PredictRLM's per-run one) is a
`RecordedActions` stand-in that answers a call whose run has a recorded action for its iteration, and passes every
other call (other runs, and this run once the record is used up) to the real predictor, unchanged. The stand-in is
put in place for the resumed call only (counted, so overlapping resumed calls on one RLM share it) and the real
predictor is put back when the last one ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dspy import Prediction

from .action_format import serve_per_run_predictor, served_action, unserve_per_run_predictor
from .call import CURRENT

ActionSource = Callable[[Any], "tuple[str, str, dict[str, Any]] | None"]
"""`source(run)`: the recorded `(reasoning, code, other fields)` of the iteration `run` is in, or `None` to ask the
LM."""

_LOCK = threading.Lock()
_ACTIVE: dict[int, tuple[RecordedActions, int]] = {}  # id(rlm) -> (stand-in, resumed calls using it)


class RecordedActions:
    """`generate_action` while a resumed call runs: the recorded action for a call whose run has one, else the real
    predictor's answer (sync `__call__`/`forward`, async `acall`/`aforward`; any other attribute is the real one)."""

    def __init__(self, predictor: Any, source: ActionSource) -> None:
        self._predictor, self._source = predictor, source

    def _recorded(self) -> Prediction | None:
        call = CURRENT.get()
        found = self._source(call.run) if call is not None else None
        if found is None:
            return None
        return served_action(*found)  # in the format the loop reads (PredictRLM's has a `plan`)

    def live_predictor(self) -> Any:
        """The real predictor when the current call has no recorded action (the LM is asked: it may be streamed, see
        `rlm_events._patch.streaming`); `None` when it has one."""
        return self._predictor if self._recorded() is None else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._recorded()
        return recorded if recorded is not None else self._predictor(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._recorded()
        return recorded if recorded is not None else self._predictor.forward(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._recorded()
        return recorded if recorded is not None else await self._predictor.acall(*args, **kwargs)

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._recorded()
        return recorded if recorded is not None else await self._predictor.aforward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


@contextmanager
def serving_recorded_actions(rlm: Any, source: ActionSource) -> Iterator[None]:
    """While the block runs, `rlm`'s calls whose run `source` has a recorded action for get it without an LM call."""
    key = id(rlm)
    with _LOCK:
        active = _ACTIVE.get(key)
        if active is None:
            stand_in = RecordedActions(rlm.__dict__["generate_action"], source)
            rlm.__dict__["generate_action"] = stand_in
            serve_per_run_predictor(rlm, lambda predictor: RecordedActions(predictor, source))
            _ACTIVE[key] = (stand_in, 1)
        else:
            _ACTIVE[key] = (active[0], active[1] + 1)
    try:
        yield
    finally:
        with _LOCK:
            stand_in, users = _ACTIVE[key]
            if users == 1:
                del _ACTIVE[key]
                unserve_per_run_predictor(rlm)
                if rlm.__dict__.get("generate_action") is stand_in:
                    rlm.__dict__["generate_action"] = stand_in._predictor
            else:
                _ACTIVE[key] = (stand_in, users - 1)


__all__ = ["ActionSource", "RecordedActions", "serving_recorded_actions"]
