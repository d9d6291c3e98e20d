"""`CodeGuard`: refuse generated code that breaks a [`GuardPolicy`][rlm_events.guard._policy.GuardPolicy], and tell
the LM why."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal, TypedDict

from ..builtin import Builtin
from ..context import PreExecutionContext, Run, StageContext
from ..stages import Stage
from . import allowlist
from ._grammar import interpreter_python
from ._policy import GuardPolicy, imports_of
from ._runtime_policy import RUNTIME_POLICY_KEY
from ._violation import Violation

MAX_LISTED = 5  # violations listed to the LM; more would only bury the first ones
# Where a run's refusals, and what the steps the guard let run imported, live in run.state. Other modules read the
# refusals only through CodeGuard.refusals(); the imports are the guard's own.
_REFUSALS_KEY = "guard"
_IMPORTS_KEY = "guard_imports"


class Refusal(TypedDict):
    """One step [`CodeGuard`][rlm_events.guard._middleware.CodeGuard] refused: its iteration, its code, and what in
    it broke the policy."""

    iteration: int | None
    code: str
    violations: list[Violation]


class CodeGuard(Builtin):
    """A `pre_execution` middleware that checks each iteration's code against a policy before it runs.

    `CodeGuard()` and `CodeGuard("default")` use
    [`GuardPolicy.default()`][rlm_events.guard._policy.GuardPolicy.default]; `CodeGuard("strict")` uses
    [`GuardPolicy.strict()`][rlm_events.guard._policy.GuardPolicy.strict]; `CodeGuard(policy=GuardPolicy(...))` a policy
    of your own.

    Guarantees: code with a violation is not executed: the iteration's result is an `[Error] CodeGuard refused …` text
    listing what was refused (line, construct), why, and what to do instead, which DSPy records in the
    history so the LM can rewrite the code in the next iteration. Each refusal is appended to
    `ctx.run.state["guard"]` as a [`Refusal`][rlm_events.guard._middleware.Refusal]
    `{"iteration": int, "code": str, "violations": list[Violation]}` (read them with
    [`CodeGuard.refusals()`][rlm_events.guard._middleware.CodeGuard.refusals]); what the steps
    it let run imported is kept in `ctx.run.state["guard_imports"]` and later steps are checked against it
    (`j.codecs` after an earlier `import json as j`; a bare `html` no step imported is a variable). Code the guard
    cannot parse is refused too (it cannot be checked), with the parser's message. The code is checked before the
    rest of the chain (which sees the refusal as `ctx.skipped`) and again if the rest of the chain rewrote it, so
    what runs complies.

    `target_python` is the grammar the code is parsed with: `(major, minor)`; `None` for the guard's own
    Python; `"auto"` (the default) for the policy's
    [`target_python`][rlm_events.guard._policy.GuardPolicy.target_python] if it has one, else the
    RLM's interpreter where it is known (DSPy's `PythonInterpreter`:
    [`PYODIDE_PYTHON`][rlm_events.guard.PYODIDE_PYTHON]),
    else the guard's.

    `runtime` (default `True`): the run-time layer. The interpreters this library controls
    ([`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter] and the sandbox's) then also check the
    code's attribute access, `getattr`/`vars`/format-field lookups, imports, file writes, processes and network as
    they happen, against the same policy (see `rlm_events.guard._runtime`); a refused operation raises
    `RuntimeRefusal` in the code, which the LM reads as the step's error. Other interpreters (DSPy's) get the
    static check only.
    """

    # Middleware are named module.qualname in errors, notes and telemetry: name the public home, not this module.
    __module__ = "rlm_events.guard"
    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.PRE_EXECUTION,)

    def __init__(
        self,
        policy: GuardPolicy | str = "default",
        *,
        target_python: tuple[int, int] | Literal["auto"] | None = "auto",
        runtime: bool = True,
    ) -> None:
        if isinstance(policy, str):
            policy = GuardPolicy.named(policy)
        elif not isinstance(policy, GuardPolicy):
            raise TypeError(f"CodeGuard(policy=...) takes a GuardPolicy, 'default' or 'strict'; got {policy!r}")
        if target_python != "auto":
            policy = policy.with_target(target_python)  # validates it
        self.policy = policy
        self.infer_target = target_python == "auto" and policy.target_python is None
        self.runtime = runtime

    @staticmethod
    def refusals(run: Run | StageContext) -> list[Refusal]:
        """The steps the guard refused in a run (or in a context's run) so far, in order (`[]` if none, or if no
        CodeGuard checked it): how taps and other built-ins read the guard's per-run state. A new list each call."""
        found = (run.run if isinstance(run, StageContext) else run).state.get(_REFUSALS_KEY)
        return list(found) if isinstance(found, list) else []

    def __call__(self, ctx: Any, next: Any) -> Any:
        if not isinstance(ctx, PreExecutionContext):
            raise self._wrong_stage(ctx)
        checked = ctx.code
        self._enforce(ctx)
        ctx = next(ctx)
        if ctx.code != checked:  # a later middleware rewrote the code: what runs must comply too
            self._enforce(ctx)
        return ctx

    def _enforce(self, ctx: PreExecutionContext) -> None:
        if ctx.skipped:  # the result is already decided; nothing will run
            return
        if self.runtime:  # what our interpreters enforce while the code runs
            ctx.run.state[RUNTIME_POLICY_KEY] = self.policy
        # Inputs and tools are REPL variables: an input named `input` or `code` is not the built-in or module.
        shadowed = [*ctx.input_args, *(getattr(ctx.run.module, "tools", {}) or {})]
        target = interpreter_python(ctx.run.module) if self.infer_target else None
        # What the steps that ran imported: their names are modules in the REPL (`j` after `import json as j`).
        imported: dict[str, str] = ctx.run.state.setdefault(_IMPORTS_KEY, {})
        violations = list(checked(self.policy, ctx.code, frozenset(shadowed), target, frozenset(imported.items())))
        if violations:
            refused: Refusal = {"iteration": ctx.iteration, "code": ctx.code, "violations": violations}
            ctx.run.state.setdefault(_REFUSALS_KEY, []).append(refused)
            ctx.skip(refusal(violations, self.policy))
        else:
            imported.update(imports_of(ctx.code))

    def __repr__(self) -> str:
        return f"CodeGuard(policy={self.policy!r})"


@functools.lru_cache(maxsize=256)
def checked(
    policy: GuardPolicy,
    code: str,
    shadowed: frozenset[str],
    target: tuple[int, int] | None,
    imported: frozenset[tuple[str, str]],
) -> tuple[Violation, ...]:
    """`policy.check(code, ...)`, remembered for the last 256 distinct checks (a step sent again, a retry, the
    same code in concurrent calls): the same arguments give the same violations."""
    return tuple(policy.check(code, shadowed=shadowed, target_python=target, imported=dict(imported)))


def refusal(violations: list[Violation], policy: GuardPolicy | None = None) -> str:
    """The `[Error]` text the LM sees instead of the output of refused code."""
    lines = [f"- {v}" for v in violations[:MAX_LISTED]]
    if len(violations) > MAX_LISTED:
        lines.append(f"- … and {len(violations) - MAX_LISTED} more")
    modules = (policy or GuardPolicy.default()).modules
    # the usual ones, and every module the policy adds to the presets' (numpy, pandas after .allow(...))
    shown = [m for m in _SHOWN_MODULES if m in modules] + sorted(modules - allowlist.DEFAULT_MODULES)
    allowed = f", the allowed modules ({', '.join(shown)}, …)" if shown else ""
    return "\n".join(
        [
            "[Error] CodeGuard refused to run this code; nothing was executed.",
            *lines,
            f"Rewrite the step without these constructs, using plain Python, your variables{allowed} and the provided "
            "tools.",
        ]
    )


_SHOWN_MODULES = (
    "re",
    "json",
    "math",
    "statistics",
    "collections",
    "itertools",
    "functools",
    "datetime",
    "dataclasses",
    "concurrent.futures",
)


__all__ = ["MAX_LISTED", "CodeGuard", "Refusal", "checked", "refusal"]
