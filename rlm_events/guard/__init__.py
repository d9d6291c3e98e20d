"""The code guard: [`CodeGuard`][rlm_events.guard._middleware.CodeGuard] refuses generated code that breaks a
[`GuardPolicy`][rlm_events.guard._policy.GuardPolicy], and tells the LM
why and what to do instead.

```pycon
>>> from rlm_events.guard import CodeGuard, GuardPolicy
>>> # CodeGuard("strict").install(events); CodeGuard(policy=GuardPolicy.default().allow(modules={"numpy"}))

```

The policy is an allowlist checked on the syntax tree (see [`GuardPolicy`][rlm_events.guard._policy.GuardPolicy]); its
data is
[`rlm_events.guard.allowlist`][rlm_events.guard.allowlist]. It is a policy check, not a sandbox: run untrusted code in a
real one
([`rlm_events.sandbox`][rlm_events.sandbox], or DSPy's Deno/Pyodide `PythonInterpreter`).

How the package is laid out, one concern a module: `_middleware` ([`CodeGuard`][rlm_events.guard._middleware.CodeGuard],
the refusal text),
`_policy` ([`GuardPolicy`][rlm_events.guard._policy.GuardPolicy]), `_violation`
([`Violation`][rlm_events.guard._violation.Violation]), `allowlist` (the data, by modules, calls
and attributes), `_grammar` (which Python the code is parsed as, and parsing it), `_bindings` (what the code
binds), `_scopes` (which binding each use of a name means, scope by scope), `_namespaces` (what each scope binds, read
off the tree; Python's `symtable` where the tree cannot tell), `_certain` (whether a name is certainly bound
before a use), `_host`
(what the guard's Python knows about modules), `_fold` (what string expressions hold: a bounded
evaluator), `_resolve` (what names refer to), `_owners` (which objects are the code's own), the rules
`_rules_imports`, `_rules_names`, `_rules_attributes`, `_rules_files`, `_rules_library` (library functions that
reach attributes, formats, annotations or files for the code), `_rules_calls`, `_rules_strings`, put together in
`_scanner` (one pass over the tree), and `_hints` (what to do instead). The run-time layer (standard library only,
so the sandbox's worker loads it too): `_runtime` (the checks while the code runs: the guarded built-ins),
`_runtime_rules` (the rules they read, and the refusal), `_runtime_rewrite` (attribute accesses compiled into checked
lookups) and `_runtime_audit` (the audit hook and the process-wide patches); and `_runtime_policy` (which policy the
layer enforces, as plain data).
"""

from ._grammar import HOST_PYTHON, PYODIDE_PYTHON, interpreter_python
from ._middleware import CodeGuard, Refusal, refusal
from ._policy import GuardPolicy, imports_of
from ._runtime import RuntimeRefusal
from ._violation import Violation, ViolationKind

__all__ = [
    "HOST_PYTHON",
    "PYODIDE_PYTHON",
    "CodeGuard",
    "GuardPolicy",
    "Refusal",
    "RuntimeRefusal",
    "Violation",
    "ViolationKind",
    "imports_of",
    "interpreter_python",
    "refusal",
]
