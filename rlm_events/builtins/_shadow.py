"""The shadow planner of :class:`~rlm_events.builtins.Speculate`: which speculable calls will this code make?

A pure-AST evaluator over plain data. It walks the code's statements in order, keeping its own environment of
values, and records each call of a speculable tool (``llm_query``, ``llm_query_batched``, the tools marked pure)
whose arguments it can compute. It never runs the code, never compiles it, never imports, and never calls anything
but the fixed table of operations below on values of the exact types ``str``, ``int``, ``float``, ``bool``,
``None``, ``list``, ``tuple``, ``dict`` and ``range``:

* Values enter the shadow only as literals of the code, or as copies made by :func:`plain` (exact-type checks,
  ``type(v) is list`` and so on, which run no code of the value's class): no object of the user's or the REPL's
  ever enters it, so no ``__eq__``, ``__hash__``, ``__iter__``, ``__format__``, property or descriptor of theirs
  can run. Containers are copied, so the shadow's ``list.append`` never touches a REPL object.
* Operations are Python's own on those exact types (C code without side effects), after size checks that keep
  every result small (:data:`LIMITS`): no ``"x" * 10**12``, no ``10**10**9``, no ``f"{x:>999999999}"``.
* Whatever it cannot model is :class:`Unknown`: a call of anything not in the table (user functions, modules,
  unmarked tools), attribute access, ``while`` loops, branches on unknown conditions. Unknown values carry the
  free names they depend on, so the caller knows which REPL variables would make a blocked call computable.

Predictions may be wrong (the REPL may hold other values than the shadow thinks, the code may raise half-way): a
prediction is only ever a guess, claimed by the real call only on an exact match of name and arguments.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# -- limits ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds on the shadow's work: every result and all of them together stay small."""

    max_items: int = 100_000
    """Elements of one list, tuple, dict or range the shadow builds or iterates."""
    max_chars: int = 1_000_000
    """Characters of one string the shadow builds."""
    max_alloc: int = 20_000_000
    """Characters and elements built in one planning, all together."""
    max_steps: int = 200_000
    """Statements and expressions evaluated in one planning."""
    max_int_bits: int = 4096
    max_seconds: float = 0.05
    """Wall time of one planning; past it the planning stops with what it found."""
    max_width: int = 10_000
    """Widths and precisions in format specs and ``%`` formats."""


LIMITS = Limits()

_SCALARS = (str, int, float, bool, type(None))
_NONE = type(None)


class Unknown:
    """A value the shadow cannot know. ``needs``: free names whose values might make it known."""

    __slots__ = ("needs",)

    def __init__(self, needs: frozenset[str] = frozenset()) -> None:
        self.needs = needs

    def __repr__(self) -> str:
        return f"Unknown({sorted(self.needs)})" if self.needs else "Unknown()"


UNKNOWN = Unknown()


class _Ref:
    """A callable the shadow knows by name: a tool, a pure builtin, ``print`` or ``SUBMIT``."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name


class _UserCallable(Unknown):
    """A function or class defined by the code (or a callable found in the REPL): unknown, and a barrier."""

    __slots__ = ()


class _Stop(Exception):
    """The code stops here (``SUBMIT``, ``raise``, a failed ``assert``) or the planning ran out of budget."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Uncertain(Exception):
    """Control flow depends on something unknown (a ``break`` under an unknown condition): stop the loop."""


class _TooBig(Exception):
    pass


def _is_unknown(value: Any) -> bool:
    return type(value) is Unknown or type(value) is _UserCallable


def needs_of(value: Any, _depth: int = 0) -> frozenset[str] | None:
    """``None`` if ``value`` is concrete plain data all the way down; else the free names its unknown parts need
    to become known, or an empty set when some part cannot become known whatever the REPL holds."""
    if _is_unknown(value):
        return value.needs  # type: ignore[no-any-return]
    kind = type(value)
    if kind in _SCALARS or kind is range:
        return None
    if _depth > 50:
        return frozenset()
    if kind is list or kind is tuple:
        items: Iterable[Any] = value
    elif kind is dict:
        items = [*value.keys(), *value.values()]
    else:
        return frozenset()
    found: frozenset[str] | None = None
    for item in items:
        needs = needs_of(item, _depth + 1)
        if needs is not None:
            if not needs:
                return needs  # hopeless: no REPL value makes it known
            found = needs if found is None else found | needs
    return found


def _unknown_of(*values: Any) -> Unknown:
    """The unknown result of an operation on ``values``: it needs what they need, unless one cannot be known."""
    needs: frozenset[str] = frozenset()
    for value in values:
        found = needs_of(value)
        if found is not None:
            if not found:
                return UNKNOWN
            needs |= found
    return Unknown(needs) if needs else UNKNOWN


def plain(value: Any, limits: Limits = LIMITS, _budget: list[int] | None = None, _depth: int = 0) -> Any:
    """A copy of ``value`` if it is plain data of exact builtin types (within ``limits``), else :data:`UNKNOWN`.

    Only ``type(x) is ...`` checks and the exact types' own C methods run: never code of another class."""
    budget = _budget if _budget is not None else [limits.max_alloc]
    kind = type(value)
    if kind is str:
        budget[0] -= len(value)
        return value if len(value) <= limits.max_chars and budget[0] >= 0 else UNKNOWN
    if kind is bool or kind is _NONE:
        return value
    if kind is int:
        return value if value.bit_length() <= limits.max_int_bits else UNKNOWN
    if kind is float:
        return value if math.isfinite(value) else UNKNOWN
    if _depth >= 20:
        return UNKNOWN
    if kind is list or kind is tuple:
        budget[0] -= len(value)
        if len(value) > limits.max_items or budget[0] < 0:
            return UNKNOWN
        items = [plain(v, limits, budget, _depth + 1) for v in list(value)]
        return items if kind is list else tuple(items)
    if kind is dict:
        budget[0] -= len(value)
        if len(value) > limits.max_items or budget[0] < 0:
            return UNKNOWN
        copied = {}
        for k, v in list(value.items()):
            if type(k) not in (str, int, float, bool, _NONE):  # exact scalar keys: their hash and == are C
                return UNKNOWN
            copied[k] = plain(v, limits, budget, _depth + 1)
        return copied
    if kind is range:
        return value
    return UNKNOWN


# -- what the planner finds -----------------------------------------------------------------------------------


@dataclass
class Predicted:
    """One call the code is expected to make: tool name and concrete arguments, as the code writes them."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    line: int = 0


@dataclass
class Plan:
    calls: list[Predicted] = field(default_factory=list)
    needs: set[str] = field(default_factory=set)
    """Free names whose values would have made a blocked call (or loop) computable."""
    assumed_builtins: set[str] = field(default_factory=set)
    """Builtin names the planning assumed not to be rebound in the REPL."""
    stopped: str | None = None
    """Why the planning stopped early (``"budget"``, ``"time"``), if it did."""


# -- pure operations ------------------------------------------------------------------------------------------

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BIG_NUMBER = re.compile(r"\d{5,}")
_PERCENT_FIELD = re.compile(r"%[^a-zA-Z%]*[a-zA-Z%]")
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
_SIMPLE_FORMAT_FIELD = re.compile(r"\{(\d*|[A-Za-z_]\w*)\}")

_STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "center",
        "ljust",
        "rjust",
        "zfill",
        "format",
    ]
)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_LIST_READ = frozenset({"index", "count", "copy"})
_LIST_WRITE = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "reverse", "sort"})
_DICT_READ = frozenset({"get", "keys", "values", "items", "copy"})
_DICT_WRITE = frozenset({"update", "setdefault", "pop", "clear"})

BUILTIN_NAMES = frozenset(
    [
        "len",
        "range",
        "str",
        "repr",
        "int",
        "float",
        "bool",
        "abs",
        "round",
        "min",
        "max",
        "sum",
        "sorted",
        "reversed",
        "enumerate",
        "zip",
        "list",
        "tuple",
        "dict",
        "any",
        "all",
        "divmod",
        "chr",
        "ord",
        "format",
        "print",
    ]
)


def _escapes(stmts: Iterable[ast.stmt]) -> bool:
    """Whether these statements may leave their block early: break, continue, return, raise or SUBMIT."""
    for stmt in stmts:
        for node in _walk_local(stmt):
            if isinstance(node, (ast.Break, ast.Continue, ast.Return, ast.Raise)):
                return True
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SUBMIT":
                return True
    return False


def _walk_local(node: ast.AST) -> Iterable[ast.AST]:
    """``ast.walk`` without descending into nested function, lambda or class bodies."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.append(child)


def assigned_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Names these nodes may rebind or mutate: stored names, bases of subscript/attribute stores, method-call
    receivers, and names defined by ``def``/``class``/``import``."""
    names: set[str] = set()
    for top in nodes:
        for node in _walk_local(top):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
                base = _base_name(node)
                if base:
                    names.add(base)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = _base_name(node.func.value)
                if base:
                    names.add(base)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        for node in _walk_local(top):  # def/class bodies were skipped; their names were added above
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not top:
                names.add(node.name)
    return names


def _base_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


# -- the planner ----------------------------------------------------------------------------------------------


class Planner:
    """Walk one iteration's code in the shadow and record the speculable calls it will make.

    Args:
        speculable: names of the tools that may be called ahead (``llm_query``, ``llm_query_batched``, pure tools).
        tools: every tool name the code can call (calls of the others are unknown, and barriers for pure tools).
        values: what the code's free names hold when it starts: plain data or :class:`Unknown`.
        absent: names known to be unbound in the REPL (builtins of that name are the real builtins).
        llm_tools: the speculable names that are the sub-LLM tools (not stopped by a barrier).
    """

    def __init__(
        self,
        *,
        speculable: frozenset[str],
        tools: frozenset[str],
        values: Mapping[str, Any],
        absent: frozenset[str] | None = None,
        llm_tools: frozenset[str] = frozenset({"llm_query", "llm_query_batched"}),
        limits: Limits = LIMITS,
    ) -> None:
        self.speculable, self.tools, self.values, self.llm_tools = speculable, tools, values, llm_tools
        self.absent = absent
        self.limits = limits
        self.scopes: list[dict[str, Any]] = [{}]
        self.plan = Plan()
        self.steps = 0
        self.alloc = 0
        self.barrier = False  # an unmarked tool or a user function was called: pure tools after it may read its work
        self.deadline = 0.0
        self.line = 0

    # -- driver

    def run(self, tree: ast.Module) -> Plan:
        self.deadline = time.perf_counter() + self.limits.max_seconds
        try:
            self.block(tree.body)
        except _Stop as stop:
            if stop.args:
                self.plan.stopped = str(stop.args[0])
        except (_Break, _Continue, _Uncertain):
            pass
        except RecursionError:
            self.plan.stopped = "depth"
        return self.plan

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise _Stop("budget")
        if self.steps % 256 == 0 and time.perf_counter() > self.deadline:
            raise _Stop("time")

    def grew_by(self, count: int) -> None:
        self.alloc += count
        if self.alloc > self.limits.max_alloc:
            raise _Stop("budget")

    def grew(self, value: Any) -> Any:
        """Count what ``value`` (a new str or container) allocated; fail when it or the total is too large."""
        kind = type(value)
        if kind is str or kind is list or kind is tuple or kind is dict:
            size = len(value)
            limit = self.limits.max_chars if kind is str else self.limits.max_items
            self.alloc += size
            if size > limit:
                raise _TooBig
            if self.alloc > self.limits.max_alloc:
                raise _Stop("budget")
        elif kind is int and value.bit_length() > self.limits.max_int_bits:
            raise _TooBig
        return value

    # -- names

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.tools:  # the interpreter binds its tools anew for every execution
            return _Ref("tool", name)
        if name == "SUBMIT":
            return _Ref("submit", name)
        if name in self.values:
            return self.values[name]
        if name in BUILTIN_NAMES:
            if self.absent is None or name not in self.absent:
                self.plan.assumed_builtins.add(name)
            return _Ref("builtin", name)
        if self.absent is not None and name in self.absent:
            return UNKNOWN  # a NameError in the real run
        return Unknown(frozenset({name}))

    def store(self, name: str, value: Any) -> None:
        self.scopes[-1][name] = value

    def invalidate(self, nodes: Iterable[ast.AST]) -> None:
        for name in assigned_names(nodes):
            self.forget(name)

    def forget(self, name: str) -> None:
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = UNKNOWN
                return
        self.scopes[0][name] = UNKNOWN

    # -- statements

    def block(self, stmts: Iterable[ast.stmt]) -> None:
        for stmt in stmts:
            self.stmt(stmt)

    def stmt(self, node: ast.stmt) -> None:
        self.tick()
        self.line = getattr(node, "lineno", self.line)
        try:
            self._stmt(node)
        except (_TooBig, ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError):
            self.invalidate([node])  # a statement the shadow could not follow: what it assigns is unknown

    def _stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr):
            self.ev(node.value)
        elif isinstance(node, ast.Assign):
            value = self.ev(node.value)
            for target in node.targets:
                self.bind(target, value)
        elif isinstance(node, ast.AugAssign):
            current = self.ev(_as_load(node.target))
            self.bind(node.target, self.binop(node.op, current, self.ev(node.value)))
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.bind(node.target, self.ev(node.value))
        elif isinstance(node, ast.For):
            self.for_loop(node)
        elif isinstance(node, ast.If):
            test = self.truth(self.ev(node.test))
            if test is None:
                self.invalidate([*node.body, *node.orelse])
                if _escapes(node.body) or _escapes(node.orelse):
                    raise _Uncertain
            else:
                self.block(node.body if test else node.orelse)
        elif isinstance(node, ast.Break):
            raise _Break
        elif isinstance(node, ast.Continue):
            raise _Continue
        elif isinstance(node, (ast.Raise, ast.Return)):
            raise _Stop
        elif isinstance(node, ast.Assert):
            if self.truth(self.ev(node.test)) is False:
                raise _Stop
        elif isinstance(node, ast.Pass):
            return
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            try_node: Any = node
            self.block(try_node.body)  # predicted as if nothing raises
            self.invalidate(try_node.handlers)
            self.block(try_node.orelse)
            self.block(try_node.finalbody)
        elif isinstance(node, ast.With):
            for item in node.items:
                self.ev(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, UNKNOWN)
            self.block(node.body)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.store(node.name, _UserCallable())
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                self.store((alias.asname or alias.name).split(".")[0], UNKNOWN)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            return
        elif isinstance(node, ast.Delete):
            self.invalidate([node])
        else:  # while, match, async statements...: whatever they assign is unknown, their calls not predicted
            self.invalidate([node])
            if _escapes([node]) and not isinstance(node, (ast.While,)):
                raise _Uncertain

    def for_loop(self, node: ast.For) -> None:
        iterable = self.ev(node.iter)
        items = self.items(iterable)
        if items is None:
            needs = needs_of(iterable)
            if needs:
                self.plan.needs.update(needs)
            self.invalidate([node])
            return
        broke = False
        try:
            for item in items:
                self.tick()
                self.bind(node.target, item)
                try:
                    self.block(node.body)
                except _Continue:
                    continue
                except _Break:
                    broke = True
                    break
        except _Uncertain:
            self.invalidate([node])
            return
        if not broke:
            self.block(node.orelse)

    def bind(self, target: ast.AST, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.store(target.id, value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = target.elts
            items = self.items(value) if not any(isinstance(e, ast.Starred) for e in elements) else None
            if items is not None and len(items) == len(elements):
                for element, item in zip(elements, items, strict=True):
                    self.bind(element, item)
            else:
                unknown = _unknown_of(value)
                for element in elements:
                    self.bind(element.value if isinstance(element, ast.Starred) else element, unknown)
        elif isinstance(target, ast.Subscript):
            container = self.ev(target.value)
            key = self.ev(target.slice)
            if type(container) is dict and needs_of(key) is None and _hashable(key):
                container[key] = value
                self.grew_by(1)
            elif type(container) is list and type(key) is int and -len(container) <= key < len(container):
                container[key] = value
            else:
                base = _base_name(target)
                if base:
                    self.forget(base)
        else:  # attributes, starred: the object changes in ways the shadow does not follow
            base = _base_name(target)
            if base:
                self.forget(base)

    # -- expressions

    def ev(self, node: ast.AST) -> Any:
        self.tick()
        try:
            return self._ev(node)
        except (_Stop, _Break, _Continue, _Uncertain):
            raise
        except (_TooBig, ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError):
            return UNKNOWN

    def _ev(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value if type(node.value) in _SCALARS else UNKNOWN
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, (ast.List, ast.Tuple)):
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    spread = self.items(self.ev(element.value))
                    if spread is None:
                        return UNKNOWN
                    items.extend(spread)
                else:
                    items.append(self.ev(element))
            self.grew(items)
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            result: dict[Any, Any] = {}
            for key_node, value_node in zip(node.keys, node.values, strict=True):
                if key_node is None:
                    merged = self.ev(value_node)
                    if type(merged) is not dict:
                        return _unknown_of(merged)
                    result.update(merged)
                    continue
                key = self.ev(key_node)
                if needs_of(key) is not None or not _hashable(key):
                    return _unknown_of(key)
                result[key] = self.ev(value_node)
            return self.grew(result)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for part in node.values:
                value = self.ev(part)
                if type(value) is not str:
                    return _unknown_of(value)
                parts.append(value)
            return self.grew("".join(parts))
        if isinstance(node, ast.FormattedValue):
            return self.formatted(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.ev(node.left), self.ev(node.right))
        if isinstance(node, ast.UnaryOp):
            operand = self.ev(node.operand)
            if isinstance(node.op, ast.Not):
                truth = self.truth(operand)
                return _unknown_of(operand) if truth is None else not truth
            if needs_of(operand) is not None or type(operand) not in (int, float, bool):
                return _unknown_of(operand)
            unary = _UNARY[type(node.op)]
            return unary(operand)
        if isinstance(node, ast.BoolOp):
            last: Any = None
            for value_node in node.values:
                last = self.ev(value_node)
                truth = self.truth(last)
                if truth is None:
                    return _unknown_of(last)
                if truth is isinstance(node.op, ast.Or):
                    return last
            return last
        if isinstance(node, ast.Compare):
            left = self.ev(node.left)
            for cmp, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.ev(right_node)
                if needs_of(left) is not None or needs_of(right) is not None:
                    return _unknown_of(left, right)
                if isinstance(cmp, (ast.Is, ast.IsNot)) and not (left is None or right is None):
                    return UNKNOWN  # identity of anything but None is an implementation detail
                if not _CMPOPS[type(cmp)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            test = self.truth(self.ev(node.test))
            if test is None:
                return UNKNOWN
            return self.ev(node.body if test else node.orelse)
        if isinstance(node, ast.Subscript):
            return self.subscript(self.ev(node.value), node.slice)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            if isinstance(node, ast.SetComp):
                self.comprehension(node.generators, lambda: self.ev(node.elt))
                return UNKNOWN
            return self.grew(self.comprehension(node.generators, lambda: self.ev(node.elt)))
        if isinstance(node, ast.DictComp):
            pairs = self.comprehension(node.generators, lambda: (self.ev(node.key), self.ev(node.value)))
            result = {}
            for key, value in pairs:
                if needs_of(key) is not None or not _hashable(key):
                    return _unknown_of(key)
                result[key] = value
            return self.grew(result)
        if isinstance(node, ast.NamedExpr):
            value = self.ev(node.value)
            self.scopes[0][node.target.id] = value
            return value
        if isinstance(node, ast.Attribute):
            return _unknown_of(self.ev(node.value))
        if isinstance(node, ast.Lambda):
            return _UserCallable()
        return UNKNOWN

    def comprehension(self, generators: list[ast.comprehension], element: Callable[[], Any]) -> list[Any]:
        out: list[Any] = []
        self.scopes.append({})
        try:
            self._generate(generators, 0, element, out)
        finally:
            self.scopes.pop()
        return out

    def _generate(self, generators: list[ast.comprehension], i: int, element: Callable[[], Any], out: list) -> None:
        if i == len(generators):
            out.append(element())
            self.grew(out)
            return
        generator = generators[i]
        iterable = self.ev(generator.iter)
        items = self.items(iterable)
        if items is None:
            needs = needs_of(iterable)
            if needs:
                self.plan.needs.update(needs)
            raise _TooBig  # the whole comprehension is unknown
        for item in items:
            self.tick()
            self.bind(generator.target, item)
            keep = True
            for condition in generator.ifs:
                truth = self.truth(self.ev(condition))
                if truth is None:
                    raise _TooBig
                if not truth:
                    keep = False
                    break
            if keep:
                self._generate(generators, i + 1, element, out)

    def truth(self, value: Any) -> bool | None:
        kind = type(value)
        if kind in _SCALARS or kind is range:
            return bool(value)
        if kind is list or kind is tuple or kind is dict:
            return len(value) > 0  # known even when elements are not
        return None

    def items(self, value: Any) -> list[Any] | None:
        """The elements iterating ``value`` yields, or ``None`` when that is not known."""
        kind = type(value)
        if kind is list or kind is tuple:
            return list(value)
        if kind is dict:
            return list(value.keys())
        if kind is str:
            return self.grew(list(value))
        if kind is range:
            if len(value) > self.limits.max_items:
                return None
            return self.grew(list(value))
        return None

    def binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        if needs_of(left) is not None and type(left) not in (list, tuple):
            return _unknown_of(left, right)
        if needs_of(right) is not None and type(right) not in (list, tuple):
            return _unknown_of(left, right)
        kind = type(op)
        lk, rk = type(left), type(right)
        if kind is ast.Mult:
            sized, count = (left, right) if rk in (int, bool) else (right, left)
            if type(sized) in (str, list, tuple) and type(count) in (int, bool):
                limit = self.limits.max_chars if type(sized) is str else self.limits.max_items
                if len(sized) * max(int(count), 0) > limit:
                    raise _TooBig
        big = lk in (int, bool) and rk in (int, bool) and right > 0
        if kind is ast.Pow and big and max(abs(left), 2).bit_length() * right > self.limits.max_int_bits:
            raise _TooBig
        if kind is ast.LShift and rk in (int, bool) and right > self.limits.max_int_bits:
            raise _TooBig
        if kind is ast.Mod and lk is str:
            self._check_percent(left)
            self.check_size(right)
        if kind is ast.Add and lk in (list, tuple) and rk is lk and len(left) + len(right) > self.limits.max_items:
            raise _TooBig
        if (lk in (list, tuple) or rk in (list, tuple)) and kind not in (ast.Add, ast.Mult):
            return UNKNOWN
        if lk not in (*_SCALARS, list, tuple) or rk not in (*_SCALARS, list, tuple):
            return UNKNOWN
        return self.grew(_BINOPS[kind](left, right))

    def _check_percent(self, template: str) -> None:
        for found in _PERCENT_FIELD.finditer(template):
            if "*" in found.group() or _BIG_NUMBER.search(found.group()):
                raise _TooBig

    def _check_spec(self, spec: str) -> None:
        for number in re.findall(r"\d+", spec):
            if len(number) > 5 or int(number) > self.limits.max_width:
                raise _TooBig

    def formatted(self, node: ast.FormattedValue) -> Any:
        value = self.ev(node.value)
        if needs_of(value) is not None:
            return _unknown_of(value)
        spec = ""
        if node.format_spec is not None:
            spec = self.ev(node.format_spec)
            if type(spec) is not str:
                return _unknown_of(spec)
            self._check_spec(spec)
        self.check_size(value)
        if node.conversion == ord("r"):
            value = self.grew(repr(value))
        elif node.conversion == ord("s"):
            value = self.grew(str(value))
        elif node.conversion == ord("a"):
            value = self.grew(ascii(value))
        return self.grew(format(value, spec))

    def subscript(self, container: Any, index_node: ast.AST) -> Any:
        if isinstance(index_node, ast.Slice):
            bounds = (index_node.lower, index_node.upper, index_node.step)
            parts = [self.ev(p) if p is not None else None for p in bounds]
            if any(p is not None and type(p) not in (int, bool) for p in parts):
                return _unknown_of(*parts)
            index: Any = slice(*parts)
        else:
            index = self.ev(index_node)
            if needs_of(index) is not None:
                return _unknown_of(index)
        kind = type(container)
        if kind is dict:
            if not _hashable(index):
                return UNKNOWN
            return container[index]
        if kind in (list, tuple, str, range):
            if type(index) not in (int, bool, slice):
                return UNKNOWN
            return self.grew(container[index])
        return _unknown_of(container, index)

    # -- calls

    def arguments(self, node: ast.Call) -> tuple[list[Any], dict[str, Any]] | Unknown:
        args: list[Any] = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                spread = self.items(self.ev(arg.value))
                if spread is None:
                    return UNKNOWN
                args.extend(spread)
            else:
                args.append(self.ev(arg))
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            value = self.ev(keyword.value)
            if keyword.arg is None:
                if type(value) is not dict or not all(type(k) is str for k in value):
                    return _unknown_of(value)
                kwargs.update(value)
            else:
                kwargs[keyword.arg] = value
        return args, kwargs

    def call(self, node: ast.Call) -> Any:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = self.ev(func.value)
            arguments = self.arguments(node)
            return self.method(node, func, receiver, arguments)
        target = self.ev(func)
        arguments = self.arguments(node)
        if isinstance(target, _Ref):
            if target.kind == "tool":
                return self.tool(target.name, arguments, node)
            if target.kind == "submit":
                raise _Stop
            if isinstance(arguments, Unknown):
                return arguments
            if target.kind == "builtin":
                return self.builtin(target.name, *arguments)
        # Anything else: a user function, a class, something from the REPL or a module. Unknown, and a barrier.
        if type(target) is _UserCallable or (type(target) is Unknown and isinstance(func, ast.Name)):
            self.barrier = True
        if not isinstance(arguments, Unknown):
            for arg in node.args:
                base = _base_name(arg)
                if base:
                    self.forget(base)  # the callee may change what it was given
        return UNKNOWN

    def tool(self, name: str, arguments: Any, node: ast.Call) -> Any:
        if name not in self.speculable:
            self.barrier = True  # an unmarked tool may change what pure tools read
            return UNKNOWN
        if self.barrier and name not in self.llm_tools:
            return UNKNOWN
        if isinstance(arguments, Unknown):
            if arguments.needs:
                self.plan.needs.update(arguments.needs)
            return UNKNOWN
        args, kwargs = arguments
        needs = needs_of([args, kwargs])
        if needs is not None:
            self.plan.needs.update(needs)
            return Unknown(needs)
        self.plan.calls.append(Predicted(name, tuple(args), dict(kwargs), self.line))
        return UNKNOWN

    def method(self, node: ast.Call, func: ast.Attribute, receiver: Any, arguments: Any) -> Any:
        name = func.attr
        kind = type(receiver)
        base = _base_name(func.value)
        mutating = (kind is list and name in _LIST_WRITE) or (kind is dict and name in _DICT_WRITE)
        if isinstance(arguments, Unknown):
            if mutating and base:
                self.forget(base)
            return _unknown_of(arguments)
        args, kwargs = arguments
        if kind is str and name in _STR_METHODS:
            return self.str_method(receiver, name, args, kwargs)
        if kind is list and name in _LIST_READ | _LIST_WRITE:
            return self.list_method(receiver, name, args, kwargs, base)
        if kind is dict and name in _DICT_READ | _DICT_WRITE:
            return self.dict_method(receiver, name, args, kwargs, base)
        if base and kind not in _SCALARS:
            self.forget(base)  # an unknown method may change its object, and what it was given
        for value_node in node.args:
            name_of = _base_name(value_node)
            if name_of:
                self.forget(name_of)
        return _unknown_of(receiver)

    def str_method(self, s: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if needs_of([args, kwargs]) is not None:
            return _unknown_of(args, kwargs)
        if name == "format":
            self.check_size([args, kwargs])
            fields = _FORMAT_FIELD.findall(s.replace("{{", "").replace("}}", ""))
            if not all(_SIMPLE_FORMAT_FIELD.fullmatch(f) for f in fields):
                return UNKNOWN
        elif name in _WIDTH_METHODS:
            if not args or type(args[0]) is not int or args[0] > self.limits.max_chars:
                return UNKNOWN
        elif name == "replace":
            if len(args) < 2 or type(args[0]) is not str or type(args[1]) is not str:
                return UNKNOWN
            grows = len(args[1]) - len(args[0])
            count = s.count(args[0]) if args[0] else len(s) + 1
            if len(s) + max(grows, len(args[1])) * count > self.limits.max_chars:
                raise _TooBig
        elif name == "join":
            parts = self.items(args[0]) if args else None
            if parts is None or not all(type(p) is str for p in parts):
                return UNKNOWN
            if sum(len(p) for p in parts) + len(s) * len(parts) > self.limits.max_chars:
                raise _TooBig
            args = [parts]
        return self.grew(_plain_result(getattr(s, name)(*args, **kwargs)))

    def list_method(self, lst: list, name: str, args: list[Any], kwargs: dict[str, Any], base: str | None) -> Any:
        if name in ("append", "insert"):
            if name == "insert" and (len(args) != 2 or type(args[0]) is not int):
                return self._spoil(base)
            getattr(lst, name)(*args)
            self.grew_by(1)
            return None
        if name == "extend":
            items = self.items(args[0]) if len(args) == 1 else None
            if items is None:
                return self._spoil(base)
            if len(lst) + len(items) > self.limits.max_items:
                raise _TooBig
            lst.extend(items)
            self.grew_by(len(items))
            return None
        if name == "clear" or name == "reverse":
            getattr(lst, name)()
            return None
        if name == "copy":
            return self.grew(list(lst))
        if needs_of([lst, args, kwargs]) is not None or (name == "sort" and any(k != "reverse" for k in kwargs)):
            return self._spoil(base) if name in _LIST_WRITE else _unknown_of(lst, args)
        if name == "sort":
            try:
                lst[:] = sorted(lst, **kwargs)  # on a copy first: a failed sort leaves the list as it was
            except TypeError:
                return self._spoil(base)
            return None
        if name in ("pop", "remove"):
            try:
                return _plain_result(getattr(lst, name)(*args))
            except (IndexError, ValueError, TypeError):
                return self._spoil(base)
        return _plain_result(getattr(lst, name)(*args, **kwargs))

    def dict_method(self, d: dict, name: str, args: list[Any], kwargs: dict[str, Any], base: str | None) -> Any:
        if name == "keys":
            return self.grew(list(d.keys()))
        if name == "values":
            return self.grew(list(d.values()))
        if name == "items":
            return self.grew(list(d.items()))
        if name == "copy":
            return self.grew(dict(d))
        if name == "clear":
            d.clear()
            return None
        if args and (needs_of(args[0]) is not None or not _hashable(args[0])) and name != "update":
            return self._spoil(base) if name in _DICT_WRITE else UNKNOWN
        if name == "update":
            other = args[0] if args else {}
            if type(other) is not dict or needs_of(list(other)) is not None:
                return self._spoil(base)
            d.update(other, **kwargs)
            self.grew_by(len(other) + len(kwargs))
            return None
        return getattr(d, name)(*args, **kwargs)

    def _spoil(self, base: str | None) -> Any:
        if base:
            self.forget(base)
        return UNKNOWN

    def builtin(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if name == "print":
            return None
        if name == "len":
            if len(args) == 1 and not kwargs and type(args[0]) in (str, list, tuple, dict, range):
                return len(args[0])
            return _unknown_of(*args)
        if name in ("list", "tuple", "reversed", "enumerate", "zip"):  # they move elements: unknown ones too
            if kwargs or not args or (name != "zip" and len(args) > (2 if name == "enumerate" else 1)):
                return UNKNOWN
            if name == "enumerate" and len(args) == 2 and type(args[1]) is not int:
                return _unknown_of(args[1])
            found = [self.items(a) for a in (args[:1] if name == "enumerate" else args)]
            sequences = [s for s in found if s is not None]
            if len(sequences) != len(found):
                return _unknown_of(*args)
            if name == "list":
                return self.grew(sequences[0])
            if name == "tuple":
                return self.grew(tuple(sequences[0]))
            if name == "reversed":
                return self.grew(sequences[0][::-1])
            if name == "enumerate":
                return self.grew(list(enumerate(sequences[0], *args[1:])))
            return self.grew(list(zip(*sequences)))  # noqa: B905 - zip's own semantics
        if needs_of([args, kwargs]) is not None:
            return _unknown_of(args, kwargs)
        if name == "range":
            if kwargs or not 1 <= len(args) <= 3 or not all(type(a) in (int, bool) for a in args):
                return UNKNOWN
            return range(*args)
        if name in ("str", "repr"):
            if len(args) != 1 or kwargs:
                return "" if name == "str" and not args and not kwargs else UNKNOWN
            self.check_size(args[0])
            return self.grew(str(args[0]) if name == "str" else repr(args[0]))
        if name == "int":
            if kwargs or not 1 <= len(args) <= 2 or (type(args[0]) is str and len(args[0]) > 1000):
                return UNKNOWN
            return self.grew(int(*args))
        if name == "format":
            if not 1 <= len(args) <= 2 or kwargs or (len(args) == 2 and type(args[1]) is not str):
                return UNKNOWN
            if len(args) == 2:
                self._check_spec(args[1])
            self.check_size(args[0])
            return self.grew(format(*args))
        if name in ("sorted", "sum", "min", "max", "any", "all", "dict"):
            if name == "dict":
                if len(args) > 1 or (args and type(args[0]) is not dict and self.items(args[0]) is None):
                    return UNKNOWN
                source = args[0] if args and type(args[0]) is dict else (self.items(args[0]) if args else [])
                return self.grew(dict(source, **kwargs))  # type: ignore[arg-type]
            allowed = {"sorted": {"reverse"}, "min": {"default"}, "max": {"default"}}.get(name, set())
            if any(k not in allowed for k in kwargs):
                return UNKNOWN
            if len(args) == 1:
                items = self.items(args[0])
                if items is None:
                    return UNKNOWN
                args = [items]
            elif name not in ("min", "max") or not args:
                return UNKNOWN
            fn: Any = {"sorted": sorted, "sum": sum, "min": min, "max": max, "any": any, "all": all}[name]
            return self.grew(fn(*args, **kwargs))
        scalar = {"float": float, "bool": bool, "abs": abs, "round": round, "divmod": divmod, "chr": chr, "ord": ord}
        fn = scalar.get(name)
        if fn is None or kwargs or any(type(a) not in _SCALARS for a in args):
            return UNKNOWN
        if name == "round" and len(args) == 2 and (type(args[1]) is not int or abs(args[1]) > 1000):
            return UNKNOWN
        if name == "float" and args and type(args[0]) is str and len(args[0]) > 1000:
            return UNKNOWN
        return self.grew(fn(*args))

    def check_size(self, value: Any) -> None:
        """Refuse to render ``value`` as text (str, repr, format) if that text could be too long."""
        budget = [self.limits.max_chars]

        def walk(v: Any, depth: int) -> None:
            kind = type(v)
            budget[0] -= len(v) + 2 if kind is str else 24
            if budget[0] < 0 or depth > 50:
                raise _TooBig
            if kind is list or kind is tuple:
                for item in v:
                    walk(item, depth + 1)
            elif kind is dict:
                for key, item in v.items():
                    walk(key, depth + 1)
                    walk(item, depth + 1)
            elif kind is int and v.bit_length() > self.limits.max_int_bits:
                raise _TooBig

        walk(value, 0)


def _plain_result(value: Any) -> Any:
    """Results of the exact types' methods: lists from ``split``, tuples from ``partition``, scalars."""
    kind = type(value)
    if kind in _SCALARS or kind is list or kind is tuple:
        return value
    return UNKNOWN


def _hashable(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is tuple:
        return all(_hashable(v) for v in value)
    return False


def _as_load(target: ast.expr) -> ast.expr:
    """The expression reading what an augmented assignment's target holds."""
    if isinstance(target, ast.Name):
        return ast.Name(id=target.id, ctx=ast.Load())
    if isinstance(target, ast.Subscript):
        return ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load())
    return ast.Constant(value=None)  # attributes: unknown (None here: AugAssign then fails, giving unknown)


__all__ = ["LIMITS", "UNKNOWN", "Limits", "Plan", "Planner", "Predicted", "Unknown", "needs_of", "plain"]
