"""Deterministic stand-ins for writing tests of RLM middleware without an API key.

* :class:`ScriptedLM` — a ``dspy.BaseLM`` that answers the RLM's action prompts from a script of code steps
  (chosen by the iteration number in the prompt, so concurrent calls each follow the script), its extract prompts
  from a dict, and sub-LLM (``llm_query``) prompts from a function. It reports token usage and cost like a real
  LM, so budgets can be tested.
* :class:`InProcessInterpreter` — a real interpreter implementing DSPy's ``CodeInterpreter`` protocol in this
  process: persistent namespace, ``SUBMIT`` → ``FinalOutput``, tools callable from code. Fast, for tests and
  benchmarks; it is no sandbox. What code sees and returns matches ``dspy.LocalInterpreter`` (DSPy 3.4+), which
  earlier releases lack.
* :func:`build_rlm` — a ``dspy.RLM`` built with the DSPy 3.3+ constructor arguments (``max_iters``,
  ``interpreter_factory``) on every supported release.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import dspy
from dspy.primitives import code_interpreter as _ci

from .runtime import constructor_of

if TYPE_CHECKING:
    from .local_openai import LocalOpenAIServer

# The BaseLM.forward() interface is the one every supported DSPy release (3.1 → 3.4) accepts; DSPy 3.4 calls it
# legacy (a DeprecationWarning per call, hidden by Python's default filters): the user's filters are theirs.

_ITERATION = re.compile(r"\[\[ ## iteration ## \]\]\s*(\d+)\s*/\s*(\d+)")
_FENCED = re.compile(r"`code`[^\n]*```")  # the code field's description asks for a markdown code block
Step = str | tuple[str, str] | Callable[[int], "str | tuple[str, str]"]


def adapter_reply(values: Mapping[str, Any]) -> str:
    """A completion in DSPy's ChatAdapter format giving each output field its value (non-strings as JSON):
    ``[[ ## reasoning ## ]]`` ... ``[[ ## completed ## ]]``. What :class:`ScriptedLM` answers, and what a
    :class:`~rlm_events.local_openai.LocalOpenAIServer` must answer a ``dspy.LM`` with."""
    parts = [f"[[ ## {name} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for name, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


_fields = adapter_reply


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
        if not isinstance(getattr(self, "callbacks", None), list):  # BaseLM sets it from DSPy 3.3 on, dspy.LM always
            self.callbacks: list[Any] = []
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
            # As the prompt asks: DSPy 3.1.3+ describe the code field as a markdown block, 3.1.2 as plain code.
            return _fields(
                {"reasoning": reasoning, "code": f"```python\n{code}\n```" if _FENCED.search(system) else code}
            )
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
        await asyncio.sleep(0)  # a real LM call suspends the caller (so concurrent calls interleave) on any DSPy
        return self.forward(prompt=prompt, messages=messages, **kwargs)


# DSPy 3.3 split CodeExecutionError (recoverable, shown to the LM) out of CodeInterpreterError; 3.1/3.2 only have
# the latter, which their loop shows to the LM.
_ExecutionError: type[Exception] = getattr(_ci, "CodeExecutionError", _ci.CodeInterpreterError)


class _Submitted(BaseException):
    def __init__(self, output: dict[str, Any]) -> None:
        self.output = output


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _crossed(value: Any) -> Any:
    """A value as it comes back from ``dspy.LocalInterpreter``'s worker: through JSON, or its ``repr``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def _takes_keywords_only(fn: Callable[..., Any]) -> bool:
    """Whether a layer of ``fn`` (following ``__wrapped__``) is a ``def f(**kwargs)``: DSPy 3.3+ wrap user tools so,
    and advertise the tool's own signature."""
    seen: set[int] = set()
    layer: Any = fn
    while layer is not None and id(layer) not in seen:
        seen.add(id(layer))
        code = getattr(getattr(layer, "__func__", layer), "__code__", None)
        if code is not None:
            positional = code.co_argcount - (1 if inspect.ismethod(layer) else 0)
            if positional <= 0 and not code.co_flags & inspect.CO_VARARGS and code.co_flags & inspect.CO_VARKEYWORDS:
                return True
            if code.co_flags & inspect.CO_VARARGS == 0:
                return False
        layer = getattr(layer, "__wrapped__", None)
    return False


def _host_tool(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as code in the REPL calls it, as ``dspy.LocalInterpreter`` does: arguments as written, through JSON
    (positional ones bound by the advertised signature for keyword-only wrappers, as DSPy's PythonInterpreter binds
    them), a failure raised in the code as ``RuntimeError("Type: message")``, the result JSON-checked."""
    bind = _takes_keywords_only(fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        # Arguments that are not JSON raise TypeError in the code, as there.
        positional, keywords = json.loads(json.dumps([args, kwargs], allow_nan=False))
        try:
            if bind and positional:
                keywords = dict(inspect.signature(fn).bind(*positional, **keywords).arguments)
                positional = []
            value = fn(*positional, **keywords)
            json.dumps(value, allow_nan=False)
        except Exception as exc:
            raise RuntimeError(_described(exc)) from None
        return json.loads(json.dumps(value))

    return call


# Converting between source, Python AST objects and code objects is not thread-safe in some CPython releases
# (SystemError: AST constructor recursion depth mismatch), and interpreters of concurrent calls compile at once.
_AST_LOCK = threading.Lock()


def _compiled(code: str) -> tuple[CodeType, CodeType | None]:
    """``code`` as ``dspy.LocalInterpreter``'s worker runs it: its statements, and apart its final expression, whose
    value is the result. Raises ``SyntaxError``."""
    with _AST_LOCK:
        tree = ast.parse(code, mode="exec")
        tail = tree.body[-1] if tree.body else None
        last = tail if isinstance(tail, ast.Expr) else None
        if last is not None:
            tree.body.pop()
        body = compile(tree, "<interpreter>", "exec")
        value = compile(ast.Expression(last.value), "<interpreter>", "eval") if last is not None else None
    return body, value


class InProcessInterpreter:
    """A persistent in-process Python REPL implementing DSPy's ``CodeInterpreter`` protocol.

    What executed code sees and returns matches ``dspy.LocalInterpreter`` (DSPy 3.4+), so tests behave the same on
    every DSPy release: the value of a final expression is the result (else the printed output, without the trailing
    newline, or ``None``); ``SUBMIT`` takes the output fields positionally or by keyword and raises ``FinalOutput``;
    tools get their arguments as written; errors surface as ``"Type: message"`` (a failing tool as
    ``RuntimeError``); results, submissions and tool results cross as JSON (``repr`` for results that are not JSON).
    Unlike it, input variables may be any Python object, nothing runs in a subprocess, and it is no sandbox.

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
        if self.closed:
            raise _ci.CodeInterpreterError("InProcessInterpreter session has been shut down.")
        self.started = True

    def _submit(self, *args: Any, **kwargs: Any) -> None:
        if self.output_fields is None:
            if len(args) != 1 or kwargs:
                raise TypeError("SUBMIT requires one output value")
            raise _Submitted({"output": args[0]})
        names = [f["name"] for f in self.output_fields]
        if args and kwargs:
            raise TypeError("SUBMIT accepts positional or keyword values, not both")
        values = dict(zip(names, args, strict=False)) if args else dict(kwargs)
        if set(values) != set(names) or len(args) > len(names):
            raise TypeError("SUBMIT fields do not match the configured output fields")
        raise _Submitted(values)

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        self.start()
        try:
            body, tail = _compiled(code)
        except SyntaxError as exc:
            raise SyntaxError(str(exc)) from None
        out = io.StringIO()
        ns = self.namespace
        ns.update(variables or {})
        ns.update({name: _host_tool(fn) for name, fn in self.tools.items()})
        ns["SUBMIT"] = self._submit
        ns["print"] = lambda *a, **k: print(*a, **{**k, "file": out})
        try:
            exec(body, ns)
            value = eval(tail, ns) if tail is not None else None
        except _Submitted as done:
            return _ci.FinalOutput(_crossed(done.output))
        except SyntaxError as exc:  # raised by the code itself (compile, eval, ...): reported like a parse error
            raise SyntaxError(str(exc)) from None
        except (Exception, SystemExit) as exc:
            raise _ExecutionError(_described(exc)) from None
        if value is not None:
            return _crossed(value)
        return out.getvalue().rstrip("\n") or None

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            type(self).shutdown_count += 1


def build_rlm(
    signature: str | type[dspy.Signature],
    *,
    max_iters: int | None = None,
    interpreter_factory: Callable[[], Any] | None = None,
    tools: Sequence[Any] | None = None,
    **options: Any,
) -> dspy.RLM:
    """A ``dspy.RLM`` built with the DSPy 3.3+ constructor arguments on every supported DSPy release (3.1.2+).

    ``max_iters`` is passed as ``max_iterations`` before 3.3; ``tools`` (functions or ``dspy.Tool``) as a dict on
    3.1.2. ``interpreter_factory`` is called once per call and what it returns is shut down when the call ends, as
    on 3.3+ (before 3.3, where the constructor takes one interpreter shared by every call, the instance is given
    that behaviour). Other ``options`` (``sub_lm``, ``max_llm_calls``, ``verbose``, ...) are passed as they are.
    The result is a plain ``dspy.RLM``.
    """
    constructor = constructor_of(dspy.RLM)
    kwargs, factory = constructor.arguments(
        max_iters=max_iters, interpreter_factory=interpreter_factory, tools=tools, **options
    )
    rlm = dspy.RLM(signature, **kwargs)
    constructor.finish(rlm, factory)
    return rlm


def __getattr__(name: str) -> Any:
    # The local OpenAI-compatible server, imported only when used.
    if name == "LocalOpenAIServer":
        from .local_openai import LocalOpenAIServer

        return LocalOpenAIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["InProcessInterpreter", "LocalOpenAIServer", "ScriptedLM", "adapter_reply", "build_rlm"]
