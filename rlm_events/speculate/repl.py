"""What [`Speculate`][rlm_events.speculate.Speculate] needs of the running iteration, and how it reads the REPL.

* `iteration_of()`: the REPL and the variables this iteration's code will run with. They are arguments of
  DSPy's loop body, which only the patch layer holds: read through [`rlm_events.runtime`][rlm_events.runtime], never
  changed.
* `raw_tools()`: the functions the real calls end in (the interpreter's tools, unwrapped from rlm-events'
  `tool_call` wrapper only when the outer layer is that wrapper).
* `NamespaceReader` / `ProbeReader`: the REPL's current variables, as plain-data copies, without
  side effects on it (see their docstrings); `reader_for()` picks one, or says why none fits.
* `normalizer_for()`: the arguments a tool will see for a call written in the code, as the interpreter
  passes them (through JSON, and for [`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter] bound to
  keyword-only
  wrappers as it binds them).

Whatever this needs of DSPy's private API (the interpreter's worker, its execute without callbacks) it reads
through [`rlm_events.runtime`][rlm_events.runtime].
"""

from __future__ import annotations

import inspect
import json
import keyword
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dspy

from .._ast import Limits, plain
from ..context import Run
from ..inprocess import InProcessInterpreter, takes_keywords_only
from ..runtime import current_iteration, execute_without_callbacks, raw_tool, worker_started

LocalInterpreter: Any = getattr(dspy, "LocalInterpreter", None)


# -- the running iteration ------------------------------------------------------------------------------------


def iteration_of(run: Run) -> tuple[Any, dict[str, Any]] | None:
    """`(repl, variables)` of the iteration of `run` executing in this context, or `None`."""
    return current_iteration(run)


def raw_tools(repl: Any, names: frozenset[str]) -> dict[str, Callable[..., Any]]:
    """The functions behind the REPL's tools `names`: what the innermost `tool_call` `next` calls."""
    tools = vars(repl).get("tools") if hasattr(repl, "__dict__") else None
    if not isinstance(tools, dict):
        return {}
    return {name: raw_tool(tools[name]) for name in names if name in tools}


# -- reading the REPL -----------------------------------------------------------------------------------------


class Values(Mapping[str, Any]):
    """What the code's free names hold when it starts: the execution's variables (DSPy binds them anew for every
    execution, so they win), then the REPL's variables. Plain-data copies, made once per planning pass."""

    def __init__(self, variables: Mapping[str, Any], repl: Mapping[str, Any], limits: Limits) -> None:
        self._variables, self._repl, self._limits = variables, repl, limits
        self._copies: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._copies:
            source = self._variables if name in self._variables else self._repl
            self._copies[name] = plain(source[name], self._limits)
        return self._copies[name]

    def __contains__(self, name: object) -> bool:
        return name in self._variables or name in self._repl

    def __iter__(self) -> Iterator[str]:
        return iter({**self._repl, **self._variables})

    def __len__(self) -> int:
        return len({**self._repl, **self._variables})


class Absent:
    """`name in absent`: the name is bound neither in the REPL nor by the execution's variables."""

    def __init__(self, values: Mapping[str, Any], known: frozenset[str] | None) -> None:
        self.values, self.known = values, known

    def __contains__(self, name: object) -> bool:
        if name in self.values:
            return False
        return self.known is None or name in self.known


class NamespaceReader:
    """[`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter]: its namespace is a dict in this process.

    Reading it runs no code at all: a lookup in an exact `dict` by an exact `str`, and `plain()` copies of
    values of exact builtin types (anything else reads as unknown). Nothing is executed in the REPL."""

    kind = "namespace"

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    # Bound by the interpreter itself before every execution (print captures output): not the code's values.
    OWN = frozenset({"__builtins__", "SUBMIT", "print"})

    def values(self, variables: Mapping[str, Any], limits: Limits) -> tuple[Values, Absent]:
        # A snapshot of the keys and values: copying the dict's items runs no code of theirs.
        snapshot = {k: v for k, v in list(self.namespace.items()) if type(k) is str and k not in self.OWN}
        values = Values(variables, snapshot, limits)
        return values, Absent(values, None)


# The expression ProbeReader evaluates in dspy.LocalInterpreter's worker (the eval of a final expression; the
# statement part is empty). It reads the worker's globals through ``(lambda: 0).__globals__`` (no name is
# looked up, so nothing the code rebound is used) and uses only: type() of a value (``().__class__.__class__``,
# taken from a literal), ``is`` comparisons with the exact builtin types (taken from literals), the exact types'
# own C methods (``__len__``, ``items``, ``append``, ``__setitem__``), comparisons of exact ints and floats,
# iteration over exact lists, tuples and dicts, and lambdas and comprehensions, whose variables are local. It
# assigns no global, prints nothing, calls no tool, imports nothing and runs no code of any other class: what
# it returns is built only from values of exact builtin types, which json.dumps serialises without calling any
# other code. It returns [{name: value} for the names asked that hold plain data, [every name asked that is bound]].
_PROBE = """(lambda T, S, g, names, c, t: (lambda ok: [
    {k: v for k, v in g.items() if T(k) is S and k in names and ok(ok, v, 0)},
    [k for k in g if T(k) is S and k in names],
])(lambda ok, v, d: c.append(1) is None and c.__len__() <= MAX_NODES and (
    (T(v) is S and v.__len__() <= MAX_CHARS and t.__setitem__(0, t[0] + v.__len__()) is None and t[0] <= MAX_TOTAL)
    or (T(v) is (0).__class__ and -MAX_INT <= v <= MAX_INT)
    or T(v) is True.__class__ or v is None
    or (T(v) is (0.0).__class__ and v == v and v - v == 0.0)
    or (d < 8 and (T(v) is [].__class__ or T(v) is ().__class__) and v.__len__() <= MAX_ITEMS
        and not [1 for e in v if not ok(ok, e, d + 1)])
    or (d < 8 and T(v) is {}.__class__ and v.__len__() <= MAX_ITEMS
        and not [1 for kk, vv in v.items() if not (T(kk) is S and ok(ok, vv, d + 1))])
)))(().__class__.__class__, ''.__class__, (lambda: 0).__globals__, NAMES, [], [0])"""


def probe_code(names: list[str], limits: Limits) -> str:
    """The read-only expression `ProbeReader` runs for `names` (identifiers only)."""
    wanted = tuple(n for n in names if n.isidentifier() and not keyword.iskeyword(n))
    code = _PROBE
    for token, value in (
        ("MAX_NODES", limits.max_items),
        ("MAX_CHARS", limits.max_chars),
        ("MAX_TOTAL", limits.max_alloc),
        ("MAX_INT", 2**53),
        ("MAX_ITEMS", limits.max_items),
        ("NAMES", wanted),
    ):
        code = code.replace(token, repr(value))
    return code


class ProbeReader:
    """`dspy.LocalInterpreter`: its namespace lives in a worker process; it is read by one execution of
    `probe_code()`, a read-only expression (see there), through the interpreter's own `execute` (without its
    DSPy callbacks, so no trace records it).

    That execution changes nothing the next real one would not: `execute` registers the same tools and output
    fields again (it does so before every execution) and captures output in an anonymous temporary file (as for
    every execution); the expression assigns nothing. A worker that has not started yet holds no variables and is
    not started: nothing is read from it."""

    kind = "probe"

    def __init__(self, repl: Any) -> None:
        self.repl = repl
        self.executions = 0

    def started(self) -> bool:
        return worker_started(self.repl)

    def read(self, names: list[str], limits: Limits) -> tuple[dict[str, Any], frozenset[str]]:
        """`({name: value}, bound names)` for `names`; raises when the worker did not answer as expected."""
        if not names or not self.started():
            return {}, frozenset()
        self.executions += 1
        return self.fetch(names, limits)

    def fetch(self, names: list[str], limits: Limits) -> tuple[dict[str, Any], frozenset[str]]:
        """One read of the started worker (the probe's execution)."""
        result = execute_without_callbacks(self.repl, probe_code(names, limits), {})
        if not (isinstance(result, list) and len(result) == 2 and isinstance(result[0], dict)):
            raise RuntimeError(f"the REPL probe returned {type(result).__name__}, not its [values, names] pair")
        values, bound = result
        return {k: v for k, v in values.items() if isinstance(k, str)}, frozenset(n for n in bound if type(n) is str)


class SandboxReader(ProbeReader):
    """[`SandboxedInterpreter`][rlm_events.sandbox.SandboxedInterpreter]: its namespace lives in the sandbox's worker;
    it is read by one `read` request of the worker's protocol (plain-data copies and the bound names; no
    execution, nothing assigned, printed or called: see `rlm_events.sandbox._reader`), never while an execution
    runs. A worker that has not started holds no variables and is not started."""

    kind = "sandbox"

    def started(self) -> bool:
        return vars(self.repl).get("_resources") is not None and self.repl._resources.worker is not None

    def fetch(self, names: list[str], limits: Limits) -> tuple[dict[str, Any], frozenset[str]]:
        from ..sandbox._reader import read_variables

        return read_variables(
            self.repl, names, max_items=limits.max_items, max_chars=limits.max_chars, max_total=limits.max_alloc
        )


class ReadOnce(ProbeReader):
    """A reader for one iteration's plannings: a name read once is not read again (the REPL does not change
    between the LM's answer and the code's execution)."""

    def __init__(self, reader: ProbeReader) -> None:
        super().__init__(reader.repl)
        self.inner, self.kind = reader, reader.kind
        self.known: dict[str, Any] = {}
        self.bound: set[str] = set()
        self.asked: set[str] = set()

    def started(self) -> bool:
        return self.inner.started()

    def read(self, names: list[str], limits: Limits) -> tuple[dict[str, Any], frozenset[str]]:
        wanted = [n for n in names if n not in self.asked]
        if wanted:
            got, bound = self.inner.read(wanted, limits)
            self.known.update(got)
            self.bound.update(bound)
            self.asked.update(wanted)
        return {n: self.known[n] for n in names if n in self.known}, frozenset(n for n in names if n in self.bound)


def reader_for(repl: Any) -> NamespaceReader | ProbeReader | str:
    """How to read `repl`'s variables without side effects, or why that cannot be done."""
    if isinstance(repl, InProcessInterpreter):
        namespace = vars(repl).get("namespace")
        if type(namespace) is dict:
            return NamespaceReader(namespace)
        return f"{type(repl).__qualname__} has no namespace dict"
    if LocalInterpreter is not None and isinstance(repl, LocalInterpreter):
        if type(repl).execute is not LocalInterpreter.execute:
            return f"{type(repl).__qualname__} overrides LocalInterpreter.execute, whose effects it knows"
        return ProbeReader(repl)
    if _is_sandboxed(type(repl)):
        return SandboxReader(repl)
    return unsupported_reason(type(repl)) or f"{type(repl).__qualname__} is not an interpreter it can read"


def unsupported_reason(cls: Any) -> str | None:
    """Why the shadow cannot read the variables of interpreters of class `cls` (`None`: it can)."""
    if issubclass(cls, InProcessInterpreter):
        return None
    if LocalInterpreter is not None and issubclass(cls, LocalInterpreter):
        if cls.execute is not LocalInterpreter.execute:
            return f"{cls.__qualname__} overrides LocalInterpreter.execute, whose effects the probe relies on"
        return None
    if _is_sandboxed(cls):
        return None
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__name__ == "PythonInterpreter":
        return (
            f"{name} runs the code in a Deno/Pyodide sandbox whose every execution also syncs files and tools; "
            "the shadow has no read of its variables it can prove side-effect free"
        )
    return f"{name} is not an interpreter whose variables the shadow can read without side effects"


def _is_sandboxed(cls: Any) -> bool:
    """Whether `cls` is the sandbox's interpreter (imported only when the sandbox package already is)."""
    sandbox = sys.modules.get("rlm_events.sandbox")
    return sandbox is not None and isinstance(cls, type) and issubclass(cls, sandbox.SandboxedInterpreter)


# -- what a tool sees -----------------------------------------------------------------------------------------


def _through_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    positional, keywords = json.loads(json.dumps([list(args), kwargs], allow_nan=False))
    return positional, keywords


def normalizer_for(repl: Any) -> Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]:
    """`normalize(tool, args, kwargs) -> (args, kwargs)`: what `tool_call` will see for a call the code writes
    as `name(*args, **kwargs)`, where `tool` is the REPL's tool of that name. Raises if the call cannot be made.
    """
    if isinstance(repl, InProcessInterpreter):

        def in_process(tool: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            positional, keywords = _through_json(args, kwargs)
            if positional and takes_keywords_only(tool):  # as InProcessInterpreter's _host_tool binds them
                keywords = dict(inspect.signature(tool).bind(*positional, **keywords).arguments)
                positional = []
            return tuple(positional), keywords

        return in_process

    def json_only(tool: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        positional, keywords = _through_json(args, kwargs)  # dspy.LocalInterpreter: arguments cross as JSON
        return tuple(positional), keywords

    return json_only


def call_key(name: str, args: Any, kwargs: Any) -> str | None:
    """The identity of a call: name and arguments as exact JSON (types, order and dict order kept)."""
    try:
        return json.dumps([name, list(args), kwargs], ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None


__all__ = [
    "Absent",
    "NamespaceReader",
    "ProbeReader",
    "ReadOnce",
    "SandboxReader",
    "Values",
    "call_key",
    "iteration_of",
    "normalizer_for",
    "probe_code",
    "raw_tools",
    "reader_for",
    "unsupported_reason",
]
