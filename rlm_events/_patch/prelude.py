"""The persistent prelude (pre_iteration's `persistent_python_code`) run as its own execution before the code.

Prepending the prelude to the code would shift every line number the interpreter reports for the LM's code (a
syntax error on its line 2 reported on line 7) and that the code sees (`sys._getframe().f_lineno`, tracebacks it
formats). Instead the interpreter is handed to DSPy (or PredictRLM) wrapped in a `PreludeREPL`, whose first
execution runs the prelude, then the code, each as its own execution of the same persistent REPL — so the code's
line numbers are its own on every interpreter (`dspy.LocalInterpreter`, DSPy's Deno `PythonInterpreter`, the
sandbox, the in-process test interpreter, PredictRLM's backends).

What the pair returns is what the prelude and code written one after the other return:

* the prelude's error (`SyntaxError`, `CodeExecutionError`, ...) propagates and the code does not run — the
  loop reports it as it reports any execution error (its line numbers are the prelude's);
* a `SUBMIT` in the prelude ends the execution there;
* the printed output of the prelude comes before the code's (joined by a newline, as the interpreters strip a
  trailing one); the code's `SUBMIT` or final-expression value wins, as it would;
* the input variables are bound by the prelude's execution; the code's execution binds none, so what the prelude
  did to them stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspy.primitives import code_interpreter as _ci

# PredictRLM asks its REPL to defer the next SUBMIT's finalization just before the code runs: that request is meant
# for the code's execution, not the prelude's, so it is held until then.
_DEFERRED_REQUESTS = frozenset({"defer_next_submit_finalization"})


def joined(before: Any, after: Any) -> Any:
    """What the prelude's execution (`before`) and the code's (`after`) return, as one execution would."""
    if isinstance(after, _ci.FinalOutput) or not isinstance(before, str) or not before:
        return after
    if after is None:
        return before
    if isinstance(after, str):
        return f"{before}\n{after}" if after else before
    return after


class PreludeREPL:
    """`repl` with `prelude` run as its own execution before the first code executed through it.

    Every other attribute is `repl`'s (read and written through). One instance serves one iteration's execution.
    """

    def __init__(self, repl: Any, prelude: str) -> None:
        object.__setattr__(self, "_repl", repl)
        object.__setattr__(self, "_prelude", prelude)
        object.__setattr__(self, "_held", [])

    def _release_held(self) -> None:
        held: list[str] = self._held
        while held:
            getattr(self._repl, held.pop(0))()

    def _take_prelude(self) -> str:
        prelude: str = self._prelude
        object.__setattr__(self, "_prelude", "")
        return prelude

    def execute(self, code: str, variables: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run the prelude (binding `variables`), then `code`, on the wrapped REPL; see the module docstring."""
        prelude = self._take_prelude()
        if not prelude:
            self._release_held()
            return self._repl.execute(code, variables=variables, **options)
        before = self._repl.execute(prelude, variables=variables, **options)
        if isinstance(before, _ci.FinalOutput):
            return before
        self._release_held()
        return joined(before, self._repl.execute(code, variables={}, **options))

    async def _aexecute(self, code: str, variables: dict[str, Any] | None = None, **options: Any) -> Any:
        prelude = self._take_prelude()
        aexecute = self._repl.aexecute
        if not prelude:
            self._release_held()
            return await aexecute(code, variables=variables, **options)
        before = await aexecute(prelude, variables=variables, **options)
        if isinstance(before, _ci.FinalOutput):
            return before
        self._release_held()
        return joined(before, await aexecute(code, variables={}, **options))

    def __call__(self, code: str, variables: dict[str, Any] | None = None, **options: Any) -> Any:
        return self.execute(code, variables, **options)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._repl, name)  # AttributeError when the REPL has none: hasattr() stays truthful
        if name == "aexecute":
            return self._aexecute
        if name in _DEFERRED_REQUESTS and callable(attribute):
            return self._holder(name)
        return attribute

    def _holder(self, name: str) -> Callable[[], None]:
        def hold() -> None:
            self._held.append(name)

        return hold

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._repl, name, value)


__all__ = ["PreludeREPL", "joined"]
