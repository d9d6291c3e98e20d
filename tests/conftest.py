"""Shared fixtures: a scripted LM and the real interpreter (dspy.LocalInterpreter where DSPy ships it, 3.4+;
rlm_events.testing.InProcessInterpreter, which behaves like it, before)."""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tempfile

# Hypothesis keeps its example database and constants cache under ./.hypothesis by default: the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="rlm-events-hypothesis-"))

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

REAL_INTERPRETER: Callable[[], Any] = getattr(dspy, "LocalInterpreter", InProcessInterpreter)


def import_litellm() -> Any:
    """LiteLLM, the tests' reference for prices. DSPy 3.4.0 leaves lazy proxies of LiteLLM's dependencies (`openai`,
    ...) in `sys.modules`, and a later `import litellm` fails on a circular import (DSPy 3.4.1 keeps them out): reading
    an attribute of the proxy loads the real module first. Nothing to do on other releases."""
    getattr(importlib.import_module("openai"), "OpenAI", None)
    return importlib.import_module("litellm")


@pytest.fixture
def make_rlm() -> Iterator[Callable[..., tuple[dspy.RLM, ScriptedLM]]]:
    """Build ``(rlm, lm)``: a real dspy.RLM on the real interpreter, and a ScriptedLM playing ``steps``.

    Works on every supported DSPy (3.1.2+): the RLM is built with :func:`rlm_events.testing.build_rlm`, so each call
    gets a fresh interpreter from ``interpreter_factory`` that is shut down when the call ends, on every release.
    """
    made: list[dspy.RLM] = []

    def make(
        steps: Sequence[Any],
        *,
        signature: str | type[dspy.Signature] = "text -> answer",
        max_iters: int = 6,
        interpreter_factory: Callable[[], Any] | None = None,
        tools: list[Any] | None = None,
        sub_lm: Any = None,
        **lm_options: Any,
    ) -> tuple[dspy.RLM, ScriptedLM]:
        lm = ScriptedLM(steps, **lm_options)
        rlm = build_rlm(
            signature,
            max_iters=max_iters,
            tools=tools,
            sub_lm=sub_lm,
            interpreter_factory=interpreter_factory or REAL_INTERPRETER,
        )
        made.append(rlm)
        return rlm, lm

    yield make
    for rlm in made:
        rlm_events.uninstrument(rlm)


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _mlflow_left_as_found() -> Iterator[None]:
    """Each test leaves MLflow's global settings as it found them (tracking URI, experiment, DSPy autologging): a
    test that set them would otherwise turn MLflow on for the next, whose ``enable_rlm_hooks`` would then trace into
    MLflow's default store in the working directory (``mlflow.db``, ``mlruns/``: the checkout)."""
    environment = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    yield
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    from mlflow.tracking import fluent
    from mlflow.utils.autologging_utils import autologging_is_disabled

    if not autologging_is_disabled("dspy"):
        mlflow.dspy.autolog(disable=True)
    fluent._active_experiment_id = None  # set_experiment() has no public undo
    mlflow.set_tracking_uri(environment["MLFLOW_TRACKING_URI"])  # None: back to "not set"


@pytest.fixture
def openai_server() -> Iterator[Callable[..., Any]]:
    """Start :class:`rlm_events.local_openai.LocalOpenAIServer` instances on 127.0.0.1: ``make(steps, **options)``
    plays ``steps`` as :class:`ScriptedLM` does (options: ``extract``, ``sub``, and the server's ``faults``,
    ``prices``, ...); every server started is stopped after the test."""
    from rlm_events.local_openai import LocalOpenAIServer

    started: list[LocalOpenAIServer] = []

    def make(steps: Sequence[Any], **options: Any) -> LocalOpenAIServer:
        server = LocalOpenAIServer.scripted(steps, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
