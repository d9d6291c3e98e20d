"""The stages of one `dspy.RLM` call, in the order they fire."""

from __future__ import annotations

import difflib
from enum import Enum

from .errors import UnknownStageError


class Stage(str, Enum):
    """A point in the RLM loop where middleware fold a context, then signals and taps observe it.

    Per call: `run_start`; per iteration `pre_iteration → pre_execution → post_execution → post_iteration`
    (`tool_call` around each tool the executed code calls); `extract` if the fallback ran; `run_end`.
    """

    RUN_START = "run_start"
    PRE_ITERATION = "pre_iteration"
    PRE_EXECUTION = "pre_execution"
    POST_EXECUTION = "post_execution"
    POST_ITERATION = "post_iteration"
    EXTRACT = "extract"
    TOOL_CALL = "tool_call"
    RUN_END = "run_end"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Stage | str) -> Stage:
        """Return the stage for a [`Stage`][rlm_events.stages.Stage] or its name (`"pre_execution"`, case-insensitive).

        Raises [`UnknownStageError`][rlm_events.errors.UnknownStageError] naming the closest valid stage.
        """
        if isinstance(value, Stage):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        names = [s.value for s in cls]
        close = difflib.get_close_matches(str(value).lower(), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownStageError(f"unknown stage {value!r}{hint} Valid stages: {', '.join(names)}")


STAGES: tuple[Stage, ...] = tuple(Stage)
