"""Deterministic stand-ins for writing tests of RLM middleware without an API key.

* [`ScriptedLM`][rlm_events.scripted.ScriptedLM] — a `dspy.BaseLM` that answers the RLM's action prompts from a script
  of code steps
  (chosen by the iteration number in the prompt, so concurrent calls each follow the script), its extract prompts
  from a dict, and sub-LLM (`llm_query`) prompts from a function. It reports token usage and cost like a real
  LM, so budgets can be tested. It lives in `rlm_events.scripted` (the demo runs on it); re-exported here.
* [`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter] — a real interpreter implementing DSPy's
  `CodeInterpreter` protocol in this
  process: persistent namespace, `SUBMIT` → `FinalOutput`, tools callable from code. Fast, for tests and
  benchmarks; it is no sandbox. What code sees and returns matches `dspy.LocalInterpreter` (DSPy 3.4+), which
  earlier releases lack. It lives in [`rlm_events.inprocess`][rlm_events.inprocess] (the library uses it); re-exported
  here.
* [`build_rlm()`][rlm_events.build.build_rlm] — a `dspy.RLM` built with the DSPy 3.3+ constructor arguments
  (`max_iters`,
  `interpreter_factory`) on every supported release. It lives in `rlm_events.build`; re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .build import build_rlm
from .inprocess import InProcessInterpreter
from .scripted import ScriptedLM, adapter_reply

if TYPE_CHECKING:
    from .local_openai import LocalOpenAIServer


def __getattr__(name: str) -> Any:
    # The local OpenAI-compatible server, imported only when used.
    if name == "LocalOpenAIServer":
        from .local_openai import LocalOpenAIServer

        return LocalOpenAIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["InProcessInterpreter", "LocalOpenAIServer", "ScriptedLM", "adapter_reply", "build_rlm"]
