"""The hooks' output models, with the field names and defaults of dspy-rlm-hooks 0.1.15."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Union

from dspy import Prediction
from dspy.primitives.repl_types import REPLHistory, REPLVariable
from pydantic import BaseModel, ConfigDict, Field, model_validator

# -- output models (field names and defaults as in dspy-rlm-hooks 0.1.15) ------------------------------------


def _unknown_fields(model: type[BaseModel], unknown: list[str]) -> str:
    fields = list(model.model_fields)
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, fields, n=1)
        described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    return f"{model.__name__} has no field{plural} {', '.join(described)}; its fields are: {', '.join(fields)}"


class _Output(BaseModel):
    """An output model: unknown fields are an error naming them and the fields that exist (not ignored)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        # Hooks build an output every iteration: the usual case (known names only) is one subset test.
        if isinstance(data, dict) and not data.keys() <= _field_names(cls):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(_unknown_fields(cls, unknown))
        return data


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """The field names of an output model, read once (pydantic's `model_fields` is a computed class property)."""
    return frozenset(model.model_fields)


class PreIterationOutput(_Output):
    """What a `pre_iteration` hook changes before the LM writes this iteration's code.

    * `extra_vars` are bound in the REPL for this iteration's code (and listed among the variables the LM sees).
    * `python_code` is prepended to this iteration's code only (after `pre_execution_hook` saw the LM's code),
      so it runs with it and the history records it with it; return it again to have it in a later iteration.
    * `persistent_python_code` replaces the call's persistent prelude: `None` keeps it, a string replaces it,
      `""` clears it. The prelude runs before every execution of the call from this iteration on; the history
      does not record it.
    * `prompt_context` is shown to the LM in this iteration's action prompt only, after the variables'
      descriptions; it is not executed.
    """

    extra_vars: dict[str, Any] = Field(default_factory=dict)
    python_code: str = ""
    persistent_python_code: str | None = None
    prompt_context: str = ""


class PreExecutionOutput(_Output):
    """The code to run instead of the LM's; it is also what the history records."""

    code: str


class PostExecutionOutput(_Output):
    """The execution result to record instead of the raw one (output text, `[Error] …` text or `FinalOutput`)."""

    result: Any


class PostIterationOutput(_Output):
    """The history the next iteration sees; `stop=True` ends the loop through DSPy's extract fallback."""

    history: REPLHistory
    stop: bool = False


PreIterationHook = Callable[
    [int, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PreIterationOutput, Awaitable[Union[PreIterationOutput, None]], None],
]
PreExecutionHook = Callable[
    [int, str, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PreExecutionOutput, Awaitable[Union[PreExecutionOutput, None]], None],
]
PostExecutionHook = Callable[
    [int, str, Any, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PostExecutionOutput, Awaitable[Union[PostExecutionOutput, None]], None],
]
PostIterationHook = Callable[
    [int, Prediction, str, Any, REPLHistory],
    Union[PostIterationOutput, Awaitable[Union[PostIterationOutput, None]], None],
]
RLMHook = Union[PreIterationHook, PreExecutionHook, PostExecutionHook, PostIterationHook]
