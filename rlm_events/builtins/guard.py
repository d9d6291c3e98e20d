"""``CodeGuard``: refuse generated code that breaks a :class:`GuardPolicy`, and tell the LM why."""

from __future__ import annotations

from typing import Any, ClassVar

from ..context import PreExecutionContext
from ..stages import Stage
from ._base import Builtin
from .policy import GuardPolicy, Violation

MAX_LISTED = 5  # violations listed to the LM; more would only bury the first ones


class CodeGuard(Builtin):
    """A ``pre_execution`` middleware that checks each iteration's code against a policy before it runs.

    ``CodeGuard()`` and ``CodeGuard("default")`` use :meth:`GuardPolicy.default`; ``CodeGuard("strict")`` uses
    :meth:`GuardPolicy.strict`; ``CodeGuard(policy=GuardPolicy(...))`` a policy of your own.

    Guarantees: code with a violation is not executed: the iteration's result is an ``[Error] CodeGuard refused
    …`` text listing what was refused (line, construct) and why, which DSPy records in the history so the LM can
    rewrite the code in the next iteration. Each refusal is appended to ``ctx.run.state["guard"]`` as
    ``{"iteration": int, "code": str, "violations": list[Violation]}``. Code that does not parse is passed on
    unchanged, so the interpreter reports the syntax error. The code is checked before the rest of the chain (which
    sees the refusal as ``ctx.skipped``) and again if the rest of the chain rewrote it, so what runs complies.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.PRE_EXECUTION,)

    def __init__(self, policy: GuardPolicy | str = "default") -> None:
        if isinstance(policy, str):
            policy = GuardPolicy.named(policy)
        elif not isinstance(policy, GuardPolicy):
            raise TypeError(f"CodeGuard(policy=...) takes a GuardPolicy, 'default' or 'strict'; got {policy!r}")
        self.policy = policy

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
        # Inputs and tools are REPL variables: an input named `input` or `code` is not the built-in or module.
        shadowed = [*ctx.input_args, *(getattr(ctx.run.module, "tools", {}) or {})]
        violations = self.policy.check(ctx.code, shadowed=shadowed)
        if violations:
            ctx.run.state.setdefault("guard", []).append(
                {"iteration": ctx.iteration, "code": ctx.code, "violations": violations}
            )
            ctx.skip(refusal(violations))

    def __repr__(self) -> str:
        return f"CodeGuard(policy={self.policy!r})"


def refusal(violations: list[Violation]) -> str:
    """The ``[Error]`` text the LM sees instead of the output of refused code."""
    lines = [f"- {v}" for v in violations[:MAX_LISTED]]
    if len(violations) > MAX_LISTED:
        lines.append(f"- … and {len(violations) - MAX_LISTED} more")
    return "\n".join(
        [
            "[Error] CodeGuard refused to run this code; nothing was executed.",
            *lines,
            "Rewrite the step without these constructs, using plain Python, your variables and the provided tools.",
        ]
    )


__all__ = ["CodeGuard", "refusal"]
