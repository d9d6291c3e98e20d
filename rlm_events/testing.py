"""Deterministic stand-ins for writing tests of RLM middleware without an API key.

* :class:`ScriptedLM` — a ``dspy.BaseLM`` that answers the RLM's action prompts from a script of code steps
  (chosen by the iteration number in the prompt, so concurrent calls each follow the script), its extract prompts
  from a dict, and sub-LLM (``llm_query``) prompts from a function. It reports token usage and cost like a real
  LM, so budgets can be tested.
* :class:`InProcessInterpreter` — a real interpreter implementing DSPy's ``CodeInterpreter`` protocol in this
  process: persistent namespace, ``SUBMIT`` → ``FinalOutput``, tools callable from code. Fast, for tests and
  benchmarks; it is no sandbox.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import dspy
from dspy.primitives import code_interpreter as _ci

# The BaseLM.forward() interface is the one every supported DSPy release (3.1 → 3.4) accepts.
warnings.filterwarnings("ignore", message=r"Implementing custom LMs through BaseLM", category=DeprecationWarning)

_ITERATION = re.compile(r"\[\[ ## iteration ## \]\]\s*(\d+)\s*/\s*(\d+)")
Step = str | tuple[str, str] | Callable[[int], "str | tuple[str, str]"]


def _fields(values: Mapping[str, Any]) -> str:
    parts = [f"[[ ## {name} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for name, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


class ScriptedLM(dspy.BaseLM):
    """An LM that plays a script.

    Args:
        steps: the code of each iteration, in order. A step is a code string, a ``(reasoning, code)`` pair, or a
            function of the 0-based iteration returning either. Iterations past the end repeat the last step.
        extract: outputs the extract fallback returns (e.g. ``{"answer": "42"}``), or a function of the prompt
            text returning such a dict.
        sub: the answer to ``llm_query(prompt)``: a string, or a function of the prompt.
        cost_per_1k_tokens: USD charged per 1000 tokens (recorded in ``history[i]["cost"]``).
    """

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        extract: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
        sub: str | Callable[[str], str] = "ok",
        cost_per_1k_tokens: float = 0.0,
        model: str = "scripted",
    ) -> None:
        super().__init__(model=model, model_type="chat", temperature=0.0, max_tokens=1000, cache=False)
        if not steps:
            raise ValueError("ScriptedLM needs at least one step")
        self.steps = list(steps)
        self.extract = extract
        self.sub = sub
        self.cost_per_1k_tokens = cost_per_1k_tokens

    def step(self, index: int) -> tuple[str, str]:
        """The ``(reasoning, code)`` of iteration ``index`` (0-based)."""
        step = self.steps[min(index, len(self.steps) - 1)]
        if callable(step):
            step = step(index)
        return step if isinstance(step, tuple) else (f"Step {index + 1}.", step)

    def answer(self, messages: list[dict[str, Any]]) -> str:
        """The raw completion text for ``messages``."""
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        last = str(messages[-1].get("content", "")) if messages else ""
        if "[[ ## code ## ]]" in system:
            found = _ITERATION.search(last)
            reasoning, code = self.step(int(found.group(1)) - 1 if found else 0)
            return _fields({"reasoning": reasoning, "code": f"```python\n{code}\n```"})
        if "[[ ## repl_history ## ]]" in system:
            outputs = self.extract(last) if callable(self.extract) else self.extract
            if outputs is None:
                names = re.findall(r"\[\[ ## (\w+) ## \]\]", system.split("[[ ## repl_history ## ]]")[-1])
                outputs = {n: "extracted" for n in names if n not in ("completed", "variables_info", "repl_history")}
            return _fields(outputs)
        return self.sub(last) if callable(self.sub) else self.sub

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        messages = messages or [{"role": "user", "content": prompt or ""}]
        text = self.answer(messages)
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
        completion_tokens = max(1, len(text) // 4)
        total = prompt_tokens + completion_tokens
        message = SimpleNamespace(content=text, role="assistant", tool_calls=None)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=message, finish_reason="stop", index=0)],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
            model=self.model,
            _hidden_params={"response_cost": total / 1000 * self.cost_per_1k_tokens},
        )

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        return self.forward(prompt=prompt, messages=messages, **kwargs)


# DSPy 3.2 split CodeExecutionError out of CodeInterpreterError; 3.1 only has the latter.
_ExecutionError: type[Exception] = getattr(_ci, "CodeExecutionError", _ci.CodeInterpreterError)


class _Submitted(BaseException):
    def __init__(self, output: dict[str, Any]) -> None:
        self.output = output


def _by_keyword(fn: Callable[..., Any]) -> Callable[..., Any]:
    """DSPy's tool shims take keywords only (``invoke(**kwargs)``); bind positional calls by the signature, as
    DSPy's own interpreters do."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(**signature.bind(*args, **kwargs).arguments)

    return call


class InProcessInterpreter:
    """A persistent in-process Python REPL implementing DSPy's ``CodeInterpreter`` protocol.

    ``print`` output is captured per interpreter (not via ``sys.stdout``), so concurrent interpreters don't mix.
    ``shutdown_count`` counts shutdowns, to check that every run released its interpreter.
    """

    shutdown_count = 0

    def __init__(self, tools: dict[str, Callable[..., Any]] | None = None, output_fields: list[dict] | None = None):
        self.tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        self.namespace: dict[str, Any] = {}
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def _submit(self, *args: Any, **kwargs: Any) -> None:
        names = [f["name"] for f in self.output_fields or []]
        if args and len(args) > len(names):
            raise TypeError(f"SUBMIT takes at most {len(names)} positional arguments ({', '.join(names)})")
        raise _Submitted({**dict(zip(names, args, strict=False)), **kwargs})

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        if self.closed:
            raise _ci.CodeInterpreterError("interpreter was shut down")
        self.start()
        out = io.StringIO()
        ns = self.namespace
        ns.update(variables or {})
        ns.update({name: _by_keyword(fn) for name, fn in self.tools.items()})
        ns["SUBMIT"] = self._submit
        ns["print"] = lambda *a, **k: print(*a, **{**k, "file": out})
        try:
            compiled = compile(code, "<rlm>", "exec")
        except SyntaxError:
            raise
        try:
            exec(compiled, ns)
        except _Submitted as done:
            return _ci.FinalOutput(done.output)
        except Exception as exc:
            lines = traceback.format_exception_only(type(exc), exc)
            raise _ExecutionError("".join(lines).strip()) from None
        text = out.getvalue().rstrip("\n")  # as LocalInterpreter reports it
        return text or None

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            type(self).shutdown_count += 1


__all__ = ["InProcessInterpreter", "ScriptedLM"]
