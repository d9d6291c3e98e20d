"""RetryHint: hint content on real interpreter errors, and that the LM sees it in the next iteration."""

from __future__ import annotations

import asyncio

import dspy
import pytest

import rlm_events
from rlm_events.builtins import CodeGuard, RetryHint


def run(make_rlm, steps, *, mode="sync", guard=False, **options):
    rlm, lm = make_rlm([*steps, "SUBMIT(answer='ok')"], **options)
    events = rlm_events.instrument(rlm)
    if guard:
        CodeGuard().install(events)
    RetryHint().install(events)
    with dspy.context(lm=lm):
        result = rlm(text="hello") if mode == "sync" else asyncio.run(rlm.acall(text="hello"))
    return result, lm


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_name_error_hint_quotes_the_line_and_suggests_the_close_name(make_rlm, mode):
    result, lm = run(make_rlm, ["values = [1, 2]\nprint(sum(valuez))"], mode=mode)
    output = result.trajectory[0]["output"]
    assert output == (
        "[Error] NameError: name 'valuez' is not defined\n"
        "[Hint] NameError on line 2 `print(sum(valuez))`: 'valuez' is not defined. Did you mean 'values'?"
    )
    assert "Did you mean 'values'?" in str(lm.history[1]["messages"])  # the LM sees it when writing the fix


def test_names_from_earlier_iterations_and_inputs_are_in_scope(make_rlm):
    result, _ = run(make_rlm, ["records = [1, 2]", "print(len(record))", "print(txt)"])
    assert "Did you mean 'records'?" in result.trajectory[1]["output"]
    assert "Did you mean 'text'?" in result.trajectory[2]["output"]


def test_attribute_errors_suggest_members_of_the_type_or_module(make_rlm):
    result, _ = run(make_rlm, ["s = 'ab'\nprint(s.uper())", "import re\nprint(re.findal('a', 'aa'))"])
    first, second = (e["output"] for e in result.trajectory[:2])
    assert first.endswith(
        "[Hint] AttributeError on line 2 `print(s.uper())`: str has no attribute 'uper'. "
        "Did you mean 'upper' or 'isupper'?"
    )
    assert "re has no attribute 'findal'. Did you mean 'findall'?" in second


def test_attribute_of_a_class_the_code_defined(make_rlm):
    code = "class Acc:\n    def __init__(self):\n        self.total = 0\na = Acc()\nprint(a.totl)"
    result, _ = run(make_rlm, [code])
    assert "Acc has no attribute 'totl'. Did you mean 'total'?" in result.trajectory[0]["output"]


def test_syntax_errors_get_the_parsers_line_and_message(make_rlm):
    result, _ = run(make_rlm, ["x = 1\ny = (x +\n"])
    hint = result.trajectory[0]["output"].splitlines()[-1]
    assert hint.startswith("[Hint] SyntaxError on line 2 `y = (x +`: '(' was never closed.")


def test_other_errors_name_the_exception_and_the_single_line(make_rlm):
    result, _ = run(make_rlm, ["print(1 / 0)", "d = {'a': 1}\nprint(d['b'])"])
    assert result.trajectory[0]["output"].endswith(
        "[Hint] ZeroDivisionError on line 1 `print(1 / 0)`: guard the divisor against zero."
    )
    assert "[Hint] KeyError on line 2 `print(d['b'])`: key 'b' is missing" in result.trajectory[1]["output"]


def test_guard_refusals_and_successes_get_no_hint(make_rlm):
    result, _ = run(make_rlm, ["import os", "print('fine')"], guard=True)
    assert "[Hint]" not in result.trajectory[0]["output"]
    assert result.trajectory[1]["output"] == "fine"


def test_hint_unit_cases():
    hint = RetryHint()
    assert hint.hint("[Error] ModuleNotFoundError: No module named 'jsno'", "import jsno") == (
        "[Hint] ModuleNotFoundError on line 1 `import jsno`: no module 'jsno' here; use the standard library. "
        "Did you mean 'json'?"
    )
    assert hint.hint("[Error] something odd", "print(1)") is None
    assert hint.hint("[Error] NameError: name 'zzz' is not defined", "print(zzz)") == (
        "[Hint] NameError on line 1 `print(zzz)`: 'zzz' is not defined."
    )
    long = RetryHint(max_chars=60).hint("[Error] NameError: name 'valuez' is not defined", "print(valuez)")
    assert long is not None and len(long) == 60 and long.endswith("…")


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="max_chars"):
        RetryHint(max_chars=10)
    with pytest.raises(ValueError, match="max_matches"):
        RetryHint(max_matches=-1)
