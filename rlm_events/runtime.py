"""What taps, built-ins and record/replay may know about the RLM call they run in, in one place.

The patch layer (`rlm_events._patch`) owns the per-call state; everything else in rlm-events reads it through
these functions, never through the patch layer's private names.
"""

from __future__ import annotations

# The patch layer's runtime API, whole: one list of names (`exposed.__all__`), re-exported here.
from ._patch import exposed
from ._patch.action_format import action_fields
from ._patch.exposed import *  # noqa: F403
from ._patch.facade import FacadeCall, around_facade_calls
from ._patch.llm_calls import LLMCallCounter, counts_llm_calls, llm_call_counter
from ._patch.streaming import ACTION_STREAM, ActionSink, Opener, feed_action_text
from .context import Run
from .lm_history import lms_of


def stream_actions(run: Run, opener: Opener | None) -> None:
    """Stream `generate_action`'s LM call in `run` (when the predictor and its LM can stream) to the
    `ActionSink` `opener(iteration)` returns (`None`: not this
    iteration); `opener=None` stops. The call's result, history and usage are those of the non-streamed call; see
    `rlm_events._patch.streaming`."""
    if opener is None:
        run.state.pop(ACTION_STREAM, None)
    else:
        run.state[ACTION_STREAM] = opener


__all__ = [
    *exposed.__all__,
    "ActionSink",
    "FacadeCall",
    "LLMCallCounter",
    "action_fields",
    "around_facade_calls",
    "counts_llm_calls",
    "feed_action_text",
    "llm_call_counter",
    "lms_of",
    "stream_actions",
]
