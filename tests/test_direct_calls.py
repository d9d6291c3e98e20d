"""DSPy 3.4's check for direct `forward()` calls on an instrumented RLM's own modules, where DSPy walks the stack
(`rlm_events._patch.direct_calls`, checked against every release from DSPy 3.1.2 to 3.4.1): the same warning in the same
cases, no stack walk under the instrumented loop, the modules' classes given back by `uninstrument()`, and pickles
and copies of the plain class. Where DSPy does not walk, or a class has its own `__getattribute__`, nothing changes."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import cloudpickle
import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events._patch.direct_calls import class_walks_the_stack

WALKS = class_walks_the_stack(dspy.Module)
STEPS = ["print(1)", "SUBMIT(answer='ok')"]
DIRECT = "Calling module.forward(...) on"


def passthrough(ctx: Any, next: Any) -> Any:
    return next(ctx)


def run(rlm: Any, lm: Any) -> Any:
    with dspy.context(lm=lm):
        return rlm(text="q")


def test_the_walk_is_detected_from_dspys_own_source() -> None:
    source = inspect.getsource(dspy.Module.__getattribute__)
    assert ("inspect.stack(" in source) == WALKS
    # Every release up to 3.4.0 walks; 3.4.1 checks its caller's frame instead.
    assert (tuple(int(p) for p in dspy.__version__.split(".")[:3]) < (3, 4, 1)) == WALKS, dspy.__version__


def test_an_instrumented_loop_walks_no_stack_where_dspy_does(make_rlm: Any, monkeypatch: Any) -> None:
    rlm, lm = make_rlm(STEPS)
    fresh_lm = lambda: make_rlm(STEPS)[1]  # noqa: E731  # a ScriptedLM plays its steps once
    bare_walks = _walks_during(monkeypatch, lambda: run(rlm, lm))
    assert (bare_walks > 0) == WALKS  # bare: one walk per predictor call where DSPy walks
    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, passthrough)
    assert _walks_during(monkeypatch, lambda: run(rlm, fresh_lm())) == 0
    rlm_events.uninstrument(rlm)
    assert _walks_during(monkeypatch, lambda: run(rlm, fresh_lm())) == bare_walks  # given back exactly


def _walks_during(monkeypatch: Any, call: Any) -> int:
    walks = 0
    real = inspect.stack

    def counting(context: int = 1) -> Any:
        nonlocal walks
        walks += 1
        return real(context)

    with monkeypatch.context() as patched:
        patched.setattr(inspect, "stack", counting)
        call()
    return walks


def test_the_modules_keep_their_name_and_type_and_get_their_class_back(make_rlm: Any) -> None:
    rlm, _ = make_rlm(STEPS)
    predictors = [rlm.generate_action, rlm.extract]
    classes = [type(p) for p in predictors]
    rlm_events.instrument(rlm)
    for predictor, cls in zip(predictors, classes, strict=True):
        assert isinstance(predictor, cls)
        assert (type(predictor) is not cls) == WALKS
        assert (type(predictor).__name__, type(predictor).__qualname__) == (cls.__name__, cls.__qualname__)
        assert type(predictor).__module__ == cls.__module__
        assert type(cloudpickle.loads(cloudpickle.dumps(predictor))) is cls
        assert type(copy.deepcopy(predictor)) is type(copy.copy(predictor)) is type(predictor.deepcopy()) is cls
    assert type(cloudpickle.loads(cloudpickle.dumps(rlm)).generate_action) is classes[0]
    rlm_events.uninstrument(rlm)
    assert [type(p) for p in predictors] == classes


def test_a_copy_of_the_instrumented_rlm_has_its_own_modules_checked_alike(make_rlm: Any) -> None:
    rlm, _lm = make_rlm(STEPS)
    rlm_events.instrument(rlm)
    clone = copy.deepcopy(rlm)
    assert clone.generate_action is not rlm.generate_action
    assert type(clone.generate_action) is type(rlm.generate_action)
    rlm_events.uninstrument(rlm)
    assert (type(clone.generate_action) is not dspy.Predict) == WALKS  # the copy is still instrumented
    rlm_events.uninstrument(clone)
    assert type(clone.generate_action) is dspy.Predict


def test_a_predictor_assigned_while_instrumented_is_checked_and_the_old_one_given_back(make_rlm: Any) -> None:
    rlm, lm = make_rlm(STEPS)
    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, passthrough)
    old, new = rlm.generate_action, dspy.Predict(rlm.generate_action.signature)
    rlm.generate_action = new
    assert type(old) is dspy.Predict
    assert (type(new) is not dspy.Predict) == WALKS
    assert run(rlm, lm).answer == "ok"
    rlm_events.uninstrument(rlm)
    assert type(new) is dspy.Predict


def test_direct_forward_calls_are_warned_about_as_dspy_does(make_rlm: Any, caplog: Any) -> None:
    rlm, lm = make_rlm(STEPS)
    rlm_events.instrument(rlm)
    predictor = rlm.generate_action
    caplog.set_level(logging.WARNING, logger="dspy.primitives.module")
    with dspy.context(lm=lm):
        predictor.forward  # noqa: B018  # read by anything but __call__: DSPy's warning, word for word
        assert [r.getMessage() for r in caplog.records] == [
            "Calling module.forward(...) on Predict directly is discouraged. Please use module(...) instead."
        ]
        caplog.clear()
        assert run(rlm, lm).answer == "ok"  # the loop calls predictor(...): no warning
    assert not [r for r in caplog.records if DIRECT in r.getMessage()]


class OwnCheck(dspy.Predict):
    def __getattribute__(self, name: str) -> Any:
        return super().__getattribute__(name)


class NoSubclasses(dspy.Predict):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("NoSubclasses is final")


@pytest.mark.parametrize("cls", [OwnCheck, NoSubclasses], ids=["own __getattribute__", "refuses subclasses"])
def test_a_class_left_alone_keeps_dspys_own_check(make_rlm: Any, monkeypatch: Any, cls: Any) -> None:
    rlm, lm = make_rlm(STEPS)
    predictor = cls(rlm.generate_action.signature)
    rlm.generate_action = predictor
    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, passthrough)
    assert type(predictor) is cls
    assert (_walks_during(monkeypatch, lambda: run(rlm, lm)) > 0) == WALKS  # DSPy's own check, walking
    rlm_events.uninstrument(rlm)
    assert type(predictor) is cls
