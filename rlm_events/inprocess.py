"""An in-process code interpreter: [`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter], DSPy's
`CodeInterpreter` protocol in this
process (persistent namespace, `SUBMIT` -> `FinalOutput`, tools callable from code). Fast, for tests and
benchmarks; it is no sandbox. What code sees and returns matches `dspy.LocalInterpreter` (DSPy 3.4+), which
earlier releases lack. Also re-exported by [`rlm_events.testing`][rlm_events.testing].

[`takes_keywords_only()`][rlm_events.inprocess.takes_keywords_only] says how a tool's positional arguments are bound
(shared with the sandbox's
interpreter and speculation, so all three bind them alike).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import json
from collections.abc import Callable
from types import CodeType
from typing import Any

from dspy.primitives.code_interpreter import FinalOutput

from ._ast import converted
from .guard import GuardPolicy
from .guard._runtime import RuntimeGuard
from .guard._runtime_audit import host_code
from .guard._runtime_policy import as_policy, host_setup, run_policy, runtime_guard
from .guard._runtime_rewrite import rewrite
from .runtime import CodeInterpreterError, ExecutionError
from .sandbox._worker import Submission, describe, submitted


def _crossed(value: Any) -> Any:
    """A value as it comes back from `dspy.LocalInterpreter`'s worker: through JSON, or its `repr`."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def takes_keywords_only(fn: Callable[..., Any]) -> bool:
    """Whether a layer of `fn` (following `__wrapped__`) is a `def f(**kwargs)`: DSPy 3.3+ wrap user tools so,
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
    """`fn` as code in the REPL calls it, as `dspy.LocalInterpreter` does: arguments as written, through JSON
    (positional ones bound by the advertised signature for keyword-only wrappers, as DSPy's PythonInterpreter binds
    them), a failure raised in the code as `RuntimeError("Type: message")`, the result JSON-checked."""
    bind = takes_keywords_only(fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        # Arguments that are not JSON raise TypeError in the code, as there.
        positional, keywords = json.loads(json.dumps([args, kwargs], allow_nan=False))
        try:
            if bind and positional:
                keywords = dict(inspect.signature(fn).bind(*positional, **keywords).arguments)
                positional = []
            with host_code():  # the tool is the host's code: the guard's run-time layer does not apply to it
                value = fn(*positional, **keywords)
            json.dumps(value, allow_nan=False)
        except Exception as exc:
            raise RuntimeError(describe(exc)) from None
        return json.loads(json.dumps(value))

    return call


def _compiled(code: str, guarded: bool = False) -> tuple[CodeType, CodeType | None]:
    """`code` as `dspy.LocalInterpreter`'s worker runs it: its statements, and apart its final expression, whose
    value is the result (`guarded`: with the run-time guard's format lookups). Raises `SyntaxError`."""

    def compile_now() -> tuple[CodeType, CodeType | None]:
        tree = ast.parse(code, mode="exec")
        if guarded:
            tree = rewrite(tree)
        tail = tree.body[-1] if tree.body else None
        last = tail if isinstance(tail, ast.Expr) else None
        if last is not None:
            tree.body.pop()
        # dont_inherit: the code gets its own `__future__` imports, not this module's (`annotations` would turn its
        # annotations into strings, which DSPy's interpreters do not).
        body = compile(tree, "<interpreter>", "exec", dont_inherit=True)
        value = compile(ast.Expression(last.value), "<interpreter>", "eval", dont_inherit=True) if last else None
        return body, value

    return converted(compile_now)  # concurrent calls' interpreters compile at once


class InProcessInterpreter:
    """A persistent in-process Python REPL implementing DSPy's `CodeInterpreter` protocol.

    What executed code sees and returns matches `dspy.LocalInterpreter` (DSPy 3.4+), so tests behave the same on
    every DSPy release: the value of a final expression is the result (else the printed output, without the trailing
    newline, or `None`); `SUBMIT` takes the output fields positionally or by keyword and raises `FinalOutput`;
    tools get their arguments as written; errors surface as `"Type: message"` (a failing tool as
    `RuntimeError`); results, submissions and tool results cross as JSON (`repr` for results that are not JSON).
    Unlike it, input variables may be any Python object, nothing runs in a subprocess, and it is no sandbox.

    `print` output is captured per interpreter (not via `sys.stdout`), so concurrent interpreters don't mix.
    `shutdown_count` counts shutdowns, to check that every run released its interpreter.

    `guard`: a [`GuardPolicy`][rlm_events.guard.GuardPolicy] (or a preset's name: `"default"`, `"strict"`,
    `"data"`) the guard's run-time layer enforces while the code runs (see `rlm_events.guard._runtime`). Without
    one, the policy of a [`CodeGuard`][rlm_events.guard.CodeGuard] checking the run executing the code is enforced,
    if any; else nothing is. A refused operation raises `RuntimeRefusal` in the code (the LM reads
    `RuntimeRefusal: CodeGuard refused at run time: ...`).
    """

    shutdown_count = 0

    def __init__(
        self,
        tools: dict[str, Callable[..., Any]] | None = None,
        output_fields: list[dict] | None = None,
        *,
        guard: GuardPolicy | str | None = None,
    ):
        self.tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        self.namespace: dict[str, Any] = {}
        self.started = False
        self.closed = False
        self.guard = as_policy(guard)
        self._runtime: tuple[GuardPolicy, RuntimeGuard] | None = None
        self._hosted: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}  # name: (tool, as code calls it)

    def start(self) -> None:
        if self.closed:
            raise CodeInterpreterError("InProcessInterpreter session has been shut down.")
        self.started = True

    def _submit(self, *args: Any, **kwargs: Any) -> None:
        raise submitted(self.output_fields, args, kwargs)

    def _runtime_guard(self) -> RuntimeGuard | None:
        """The run-time checks for this execution: of `guard`, else of the run's CodeGuard; kept while the policy is
        the same (the classes the code defined stay its own)."""
        policy = self.guard or run_policy()
        if policy is None:
            return None
        if self._runtime is None or self._runtime[0] != policy:
            self._runtime = (policy, runtime_guard(policy, self.namespace))
        return self._runtime[1]

    def _hosted_tools(self) -> dict[str, Callable[..., Any]]:
        """Each tool as code calls it: wrapped once per tool object (`tools` may be replaced between executions)."""
        hosted = self._hosted
        for name, fn in self.tools.items():
            kept = hosted.get(name)
            if kept is None or kept[0] is not fn:
                hosted[name] = (fn, _host_tool(fn))
        return {name: hosted[name][1] for name in self.tools}

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        self.start()
        setup = host_setup(variables)
        guard = None if setup else self._runtime_guard()  # DSPy's own setup is the host's code
        try:
            body, tail = _compiled(code, guarded=guard is not None)
        except SyntaxError as exc:
            raise SyntaxError(str(exc)) from None
        out = io.StringIO()
        ns = self.namespace
        ns.update(variables or {})
        ns.update(self._hosted_tools())
        ns["SUBMIT"] = self._submit
        ns["print"] = lambda *a, **k: print(*a, **{**k, "file": out})
        if guard is None and isinstance(ns.get("__builtins__"), dict):
            ns.pop("__builtins__")  # a guard of an earlier execution no longer applies
        try:
            # DSPy's own setup is the host's code, also where an earlier execution's guard still watches this
            # namespace's frames. (Other unguarded code stays under the watch of guarded code that runs it.)
            with guard.armed() if guard is not None else host_code() if setup else contextlib.nullcontext():
                exec(body, ns)
                value = eval(tail, ns) if tail is not None else None
        except Submission as done:
            return FinalOutput(_crossed(done.value))
        except SyntaxError as exc:  # raised by the code itself (compile, eval, ...): reported like a parse error
            raise SyntaxError(str(exc)) from None
        except (Exception, SystemExit) as exc:
            raise ExecutionError(describe(exc)) from None
        if value is not None:
            return _crossed(value)
        return out.getvalue().rstrip("\n") or None

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            type(self).shutdown_count += 1


__all__ = ["InProcessInterpreter", "takes_keywords_only"]
