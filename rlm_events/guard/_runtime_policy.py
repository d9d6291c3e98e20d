"""Which policy the run-time layer ([`rlm_events.guard._runtime`][rlm_events.guard._runtime]) enforces, and the
form it travels in: a [`GuardPolicy`][rlm_events.guard.GuardPolicy]'s rules as plain data
([`runtime_rules()`][rlm_events.guard._runtime_policy.runtime_rules]), and, for the sandbox's worker, with the
sources of the layer's modules ([`worker_guard()`][rlm_events.guard._runtime_policy.worker_guard]).

The layer is tied to a [`CodeGuard`][rlm_events.guard.CodeGuard]: a guard checking a run records its policy in the
run's state (`CodeGuard(runtime=False)` does not), and the interpreters this library controls enforce the policy
of the run executing in their context ([`run_policy()`][rlm_events.guard._runtime_policy.run_policy]). The
in-process interpreter also takes one of its own (`InProcessInterpreter(guard=...)`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..runtime import current_run
from . import _runtime, _runtime_audit, _runtime_rewrite, _runtime_rules
from ._policy import GuardPolicy
from ._violation import REASONS

RUNTIME_POLICY_KEY = "guard_runtime"  # run.state key: the policy the run-time layer enforces for that run
# DSPy (3.4) sets an interpreter up (its sub-agent facade) with executions that carry this variable: the host's
# code, not the LM's (only the host passes variables), run without the run-time layer.
DSPY_SETUP_VARIABLE = "__dspy_host_token"
# The run-time layer's modules, each importing only the ones before it (relatively): what the sandbox's worker loads,
# in this order, as a package of their own ({module's name in the package: its source}).
_SOURCES = {
    module.__name__.rpartition(".")[2]: Path(module.__file__).read_text(encoding="utf-8") if module.__file__ else ""
    for module in (_runtime_rules, _runtime_rewrite, _runtime_audit, _runtime)
}


@functools.lru_cache(maxsize=32)
def runtime_rules(policy: GuardPolicy) -> dict[str, Any]:
    """`policy`'s rules as JSON-compatible data: the names the run-time checks read, and the reasons they give."""
    rules: dict[str, Any] = {name: sorted(getattr(policy, name)) for name in _runtime_rules.RULE_FIELDS}
    rules["reasons"] = dict(REASONS)
    return rules


def as_policy(guard: GuardPolicy | str | None) -> GuardPolicy | None:
    """`guard` as a policy: a preset's name (`"default"`, `"strict"`, `"data"`), a policy, or `None`."""
    if guard is None or isinstance(guard, GuardPolicy):
        return guard
    if isinstance(guard, str):
        return GuardPolicy.named(guard)
    raise TypeError(f"guard= takes a GuardPolicy, 'default', 'strict', 'data' or None; got {guard!r}")


def host_setup(variables: dict[str, Any] | None) -> bool:
    """Whether an execution with these variables is DSPy setting the interpreter up (the host's own code)."""
    return bool(variables) and DSPY_SETUP_VARIABLE in variables  # type: ignore[operator]


def run_policy() -> GuardPolicy | None:
    """The policy a [`CodeGuard`][rlm_events.guard.CodeGuard] recorded for the run executing in this context, if
    any."""
    run = current_run()
    policy = run.state.get(RUNTIME_POLICY_KEY) if run is not None else None
    return policy if isinstance(policy, GuardPolicy) else None


def runtime_guard(policy: GuardPolicy, namespace: dict[str, Any]) -> _runtime.RuntimeGuard:
    """The run-time checks of `policy` for one REPL namespace."""
    return _runtime.RuntimeGuard(_runtime_rules.Rules(runtime_rules(policy)), namespace)


def worker_guard(variables: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What the sandbox's worker needs to enforce the run's policy on an execution with `variables` (`None`: no
    guard, also for DSPy's own setup): the rules, and the sources of the layer's modules, which the worker loads
    (the sandbox exposes only the worker script, not this package)."""
    policy = run_policy()
    if policy is None or host_setup(variables):
        return None
    return {"rules": runtime_rules(policy), "sources": _SOURCES}


__all__ = [
    "DSPY_SETUP_VARIABLE",
    "RUNTIME_POLICY_KEY",
    "as_policy",
    "host_setup",
    "run_policy",
    "runtime_guard",
    "runtime_rules",
    "worker_guard",
]
