"""CPython 3.11 keeps one AST conversion depth per interpreter: a conversion that starts inside another (a
finalizer run by the garbage collector mid-compile, or another thread formatting a traceback, which 3.11+ does by
parsing the source line) made the outer one fail with `SystemError: AST constructor recursion depth mismatch`.
A CI run failed on it (a raising tap logged on the delivery worker while the in-process interpreter compiled).
On releases without the race these tests pass either way; on 3.11 they fail without `rlm_events._ast.converted`."""

from __future__ import annotations

import ast
import contextlib
import gc
import logging
import sys
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events._ast import converted
from rlm_events._failures import log_failure
from rlm_events.builtins import CodeGuard
from rlm_events.inprocess import InProcessInterpreter


class ParsesWhenCollecting:
    """A garbage-collector callback that parses: the collector runs in the middle of whatever allocates, so this
    starts a conversion inside any conversion long enough to trigger a collection (as a finalizer that parses, or
    another thread formatting a traceback, would)."""

    def __init__(self) -> None:
        self.parsed = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            ast.parse("a + b[c] * d.e")
            self.parsed += 1


@contextlib.contextmanager
def parses_when_collecting() -> Iterator[ParsesWhenCollecting]:
    """Only around the code under test: pytest parses too when it reports (it would meet the race itself)."""
    thresholds = gc.get_threshold()
    callback = ParsesWhenCollecting()
    gc.set_threshold(50, 10, 10)
    gc.callbacks.append(callback)
    try:
        yield callback
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*thresholds)


LONG_CODE = "\n".join(f"x{i} = [a + b * {i} for a in range(3) for b in range(2) if a > b]" for i in range(40))


def test_code_is_guarded_compiled_and_run_while_other_conversions_start_mid_way(make_rlm: Any) -> None:
    steps = [LONG_CODE + "\nprint(x39[-1])", LONG_CODE + "\nSUBMIT(answer=str(x0[-1]))"]
    rlm, lm = make_rlm(steps, interpreter_factory=InProcessInterpreter)
    CodeGuard("default").install(rlm_events.instrument(rlm))  # the guard parses the code too
    with dspy.context(lm=lm), parses_when_collecting() as collecting:
        try:
            prediction = rlm(text="t")
        except Exception as exc:  # reported below, once the collector is quiet again
            prediction = exc
    assert not isinstance(prediction, Exception), repr(prediction)
    assert prediction.trajectory[0]["output"].strip() == "41"
    assert prediction.answer == "2"
    assert collecting.parsed > 0


def test_a_failure_logged_from_any_thread_carries_its_traceback_formatted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("rlm_events")
    with caplog.at_level(logging.WARNING, logger="rlm_events"):
        try:
            {}["missing"]
        except KeyError:
            log_failure(logger, logging.WARNING, "tap %s failed", "t")
        log_failure(logger, logging.WARNING, "no exception here")
        try:
            raise ValueError("quiet")
        except ValueError:
            log_failure(logger, logging.WARNING, "without traceback", traceback_too=False)
    first, plain, quiet = caplog.records
    assert first.filename == "test_ast_race.py" and first.funcName.startswith("test_a_failure_logged")  # the caller
    assert first.getMessage() == "tap t failed" and first.exc_text and "KeyError: 'missing'" in first.exc_text
    assert first.exc_info is not None and first.exc_info[0] is KeyError
    assert plain.exc_info is None and plain.exc_text is None
    assert quiet.exc_info is None and quiet.exc_text is None
    assert "KeyError: 'missing'" in caplog.text


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the depth race is CPython 3.11's")
def test_the_race_is_real_here() -> None:
    """Pins the premise on the release that has it: a plain ast.parse fails where `converted` does not."""
    failed: list[str] = []
    with parses_when_collecting():
        for _ in range(20):
            try:
                ast.parse(LONG_CODE)
            except SystemError as exc:
                failed.append(str(exc))
        trees = [converted(lambda: ast.parse(LONG_CODE)) for _ in range(20)]
    assert failed and "recursion depth mismatch" in failed[0]
    assert all(isinstance(tree, ast.Module) for tree in trees)
