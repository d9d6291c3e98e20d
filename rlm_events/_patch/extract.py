"""The extract fallback a stop runs: the loop's own, without DSPy's "RLM reached max iterations" line.

DSPy's `RLM._extract_fallback` (and its async twin) logs that line, then asks `self.extract` for the outputs.
When a budget or a middleware stopped the run, the line is wrong: rlm-events logs one line of its own instead (who
stopped the run, after which iteration: `announce_stop()`) and runs the same
extraction without DSPy's line. Only DSPy's own definitions are replaced so, and PredictRLM's
`_aextract_fallback_for_run` around them. Every release from 3.1.2 to 3.4.1 defines DSPy's alike;
`tests/test_stop_reason.py` checks on each that both give the same prediction from the same LM call, and
`tests/test_predict_rlm_stops.py` that a stopped PredictRLM ends as a bare one at its limit. A subclass's own
override runs as it is (with whatever it logs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy
from dspy import Prediction

from .detect import owner_of

_DSPY_EXTRACT = dspy.RLM._extract_fallback
_DSPY_AEXTRACT = dspy.RLM._aextract_fallback
_RUN_METHODS = ("_copy_with_run_extract", "_extract_fallback_for_run", "_aextract_fallback_for_run")


def _extracted(extract_pred: Any, history: Any, output_field_names: list[str]) -> Prediction:
    """The prediction DSPy's extract fallback returns for `extract_pred`."""
    return Prediction(
        trajectory=[e.model_dump() for e in history],
        final_reasoning="Extract forced final output",
        **{name: getattr(extract_pred, name) for name in output_field_names},
    )


def extract_quietly(module: Any, variables: list[Any], history: Any, output_field_names: list[str]) -> Prediction:
    """DSPy's `RLM._extract_fallback` on `module`, without its log line."""
    variables_info = [variable.format() for variable in variables]
    extract_pred = module.extract(variables_info=variables_info, repl_history=history)
    return _extracted(extract_pred, history, output_field_names)


async def aextract_quietly(
    module: Any, variables: list[Any], history: Any, output_field_names: list[str]
) -> Prediction:
    """DSPy's `RLM._aextract_fallback` on `module`, without its log line."""
    variables_info = [variable.format() for variable in variables]
    extract_pred = await module.extract.acall(variables_info=variables_info, repl_history=history)
    return _extracted(extract_pred, history, output_field_names)


async def _arun_extract(self: Any, variables: list[Any], history: Any, output_field_names: list[str]) -> Prediction:
    """PredictRLM's `_aextract_fallback_for_run`: the fallback on a copy of the module with the run's extractor;
    an overridden sync `_extract_fallback` runs as is, as PredictRLM runs it."""
    run = self._copy_with_run_extract()
    if type(run)._extract_fallback is not _DSPY_EXTRACT:
        return run._extract_fallback(variables, history, output_field_names)  # type: ignore[no-any-return]
    if type(run)._aextract_fallback is _DSPY_AEXTRACT:
        return await aextract_quietly(run, variables, history, output_field_names)
    return await run._aextract_fallback(variables, history, output_field_names)  # type: ignore[no-any-return]


def stop_extracts(cls: Any, extract_name: str, aextract_name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The methods that produce a stopped run's answer, for the seams `extract_name` and `aextract_name` of
    `cls` (called as they are, with `self` first): quiet twins where `cls` runs DSPy's (or PredictRLM's own
    `_aextract_fallback_for_run` around DSPy's), else `cls`'s own methods."""
    extract, aextract = getattr(cls, extract_name), getattr(cls, aextract_name)
    if extract_name == "_extract_fallback":
        return (
            extract_quietly if extract is _DSPY_EXTRACT else extract,
            aextract_quietly if aextract is _DSPY_AEXTRACT else aextract,
        )
    # PredictRLM's own wrappers, none overridden: one class of predict-rlm defines all three. Only the async one
    # can follow a stop: its sync loop (a subclass's legacy _forward_traced) has no post_iteration seam.
    owners = {owner_of(cls, name) if callable(getattr(cls, name, None)) else None for name in _RUN_METHODS}
    owner = owners.pop() if len(owners) == 1 else None
    if owner is not None and owner.__module__.partition(".")[0] == "predict_rlm":
        return extract, _arun_extract
    return extract, aextract
