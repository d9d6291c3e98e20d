"""Which seams one RLM class's loop has, detected from its methods' signatures and source, never from
version numbers; and the error for a loop that rlm-events cannot fit.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dspy

from ..errors import UnsupportedDSPyError

if TYPE_CHECKING:
    pass


ATTR = "_rlm_events"
BASE = "__rlm_events_base__"
NO_RESULT: Any = object()


# -- version adapters -----------------------------------------------------------------------------------------


class Params:
    """The parameters of one private method, to bind the arguments of a call to it by name and call it again.

    A seam binds the loop's call once (`bind()`), reads and replaces arguments in that dict, and calls the
    method with it (`call()`). The names are those of the outermost definition in the MRO that declares them
    all, as its loop passes them (an override taking `*args, **kwargs` only is skipped; one ending in `*rest`
    is extended with its parent's further names). An override may rename nothing, but may take fewer of them
    plus `*rest`, take `*args, **kwargs` only, or take them positionally only: it is called as it can be.
    """

    __slots__ = ("by_keyword", "method", "names")

    def __init__(self, cls: type, method: str, required: tuple[str, ...]) -> None:
        self.method = method
        definitions = [_parameters(fn) for fn in _definitions(cls, method)]
        outer = definitions[0]
        named = next((d for d in definitions if _declares(d, required, positional_only=True)), None)
        outer_names = _positional(outer)
        names = _positional(named) if named is not None else ()
        if named is not None and any(p.kind is p.VAR_POSITIONAL for p in named):
            # It passes the rest on (``*rest``): the caller's further arguments are those of a parent's definition.
            longer = (_positional(d) for d in definitions[definitions.index(named) + 1 :])
            names = next((n for n in longer if n[: len(names)] == names), names)
        if named is None or outer_names != names[: len(outer_names)]:
            declared = {p.name for p in outer}
            missing = [n for n in required if n not in declared] or [n for n in outer_names if n not in required]
            raise unsupported(cls, method, f"has no parameter {', '.join(missing)}")
        # The names positional arguments bind to, in order (up to *args or the keyword-only ones).
        self.names = names
        keywords = {p.name for p in outer if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.by_keyword = any(p.kind is p.VAR_KEYWORD for p in outer) or all(n in keywords for n in self.names)
        if (
            not self.by_keyword
            and not any(p.kind is p.VAR_POSITIONAL for p in outer)
            and len(outer_names) < len(self.names)
        ):
            raise unsupported(cls, method, f"does not accept {', '.join(self.names[len(outer_names) :])}")

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, to `call()` the method with."""
        if not args:  # called by keyword
            return dict(kwargs)
        if len(args) > len(self.names):
            raise TypeError(f"{self.method}() takes {len(self.names)} positional arguments but {len(args)} were given")
        bound = dict(zip(self.names, args, strict=False))  # fewer: the rest have defaults
        if kwargs:
            bound.update(kwargs)
        return bound

    def call(self, fn: Callable[..., Any], obj: Any, bound: dict[str, Any]) -> Any:
        """`fn(obj, ...)` with `bound`: as keywords where `fn` takes them, else the loop's names positionally."""
        if self.by_keyword:
            return fn(obj, **bound)
        positional = list(itertools.takewhile(lambda n: n in bound, self.names))
        return fn(obj, *[bound[n] for n in positional], **{k: v for k, v in bound.items() if k not in positional})


def _positional(params: list[inspect.Parameter]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in itertools.takewhile(lambda p: p.kind in kinds, params))


def _parameters(fn: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if params and params[0].name == "self" else params


def _declares(params: list[inspect.Parameter], names: tuple[str, ...], *, positional_only: bool = False) -> bool:
    kinds: set[inspect._ParameterKind] = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    if positional_only:
        kinds.add(inspect.Parameter.POSITIONAL_ONLY)
    declared = {p.name for p in params if p.kind in kinds}
    return all(n in declared for n in names)


def _definitions(cls: type, method: str) -> Iterator[Any]:
    """`method` as each class of `cls`'s MRO defines it, outermost first."""
    for klass in cls.__mro__:
        fn = klass.__dict__.get(method, NO_RESULT)
        if fn is not NO_RESULT:
            yield fn


def owner_of(cls: type, method: str) -> type:
    """The class whose definition of `method` `cls` uses."""
    return next((k for k in cls.__mro__ if method in k.__dict__), cls)


def _is_dspys(klass: type) -> bool:
    return klass.__module__ == "dspy" or klass.__module__.startswith("dspy.")


def unsupported(cls: type, method: str, piece: str) -> UnsupportedDSPyError:
    """The error for a loop rlm-events cannot fit: DSPy's own class changed, or a subclass's override differs."""
    owner = owner_of(cls, method)
    if _is_dspys(owner):
        return UnsupportedDSPyError(
            f"rlm-events cannot instrument {cls.__qualname__} on DSPy {dspy.__version__}: {owner.__name__}.{method}() "
            f"{piece}. Supported: DSPy 3.1.2 to 3.4.x; please report this DSPy version."
        )
    return UnsupportedDSPyError(
        f"rlm-events cannot instrument {cls.__qualname__}: {owner.__qualname__}.{method}() {piece}, which "
        f"rlm-events needs of a dspy.RLM subclass (DSPy {dspy.__version__})"
    )


class Seams:
    """What one RLM class's loop looks like, detected from its methods' signatures and source."""

    _REQUIRED = (
        "forward",
        "aforward",
        "_execute_iteration",
        "_aexecute_iteration",
        "_process_execution_result",
        "_extract_fallback",
        "_aextract_fallback",
        "_prepare_execution_tools",
    )

    def __init__(self, cls: Any) -> None:
        self.cls = cls  # the class whose methods do the work
        for name in self._REQUIRED:
            if not callable(getattr(cls, name, None)):
                raise unsupported(cls, name, "is missing")
        loop_args = ("repl", "variables", "history", "iteration", "input_args", "output_field_names")
        self.iteration = Params(cls, "_execute_iteration", loop_args)
        self.aiteration = Params(cls, "_aexecute_iteration", loop_args)
        # 3.2+ pass the stripped code explicitly; 3.1 records pred.code.
        self.result_takes_code = any(
            _declares(_parameters(fn), ("code",)) for fn in _definitions(cls, "_process_execution_result")
        )
        self.result = Params(
            cls, "_process_execution_result", ("pred", "result", "history", *(("code",) * self.result_takes_code))
        )
        self.extract = Params(cls, "_extract_fallback", ("variables", "history", "output_field_names"))
        self.aextract = Params(cls, "_aextract_fallback", ("variables", "history", "output_field_names"))
        # 3.2+ route execution through _execute_code; 3.1 calls repl.execute inline, so we wrap the REPL.
        self.has_execute_code = callable(getattr(cls, "_execute_code", None)) and all(
            method_calls(cls, method, "self._execute_code(") is not False
            for method in ("_execute_iteration", "_aexecute_iteration")
        )
        # The persistent prelude runs first, on its own, through the REPL given to _execute_code (3.2+) or
        # repl.execute (3.1): see _patch.prelude.
        self.execute = Params(cls, "_execute_code", ("repl", "code", "input_args")) if self.has_execute_code else None
        # Options of the call itself, never input args: 3.3's positional-only caller-owned interpreter is passed in
        # *args (a keyword of that name is an input), 3.4's keyword-only interpreter_factory in **kwargs.
        self.call_options = frozenset(
            p.name
            for fn in _definitions(cls, "forward")
            for p in _parameters(fn)
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        self._require_loop_calls(cls)
        # post_execution of an async call is fired after the loop body returned, where it can be awaited: that
        # needs the body to return _process_execution_result(...) as is. Otherwise it fires inside that method.
        self.defers = all(_returns_processed(cls, m) for m in ("_execute_iteration", "_aexecute_iteration"))
        from dspy.predict import rlm as rlm_module

        strip = getattr(rlm_module, "_strip_code_fences", None)
        self.strip: Callable[[str], str] = strip if callable(strip) else str.strip

    def stripped(self, raw: str) -> str:
        """The code as DSPy runs it: without its markdown fence."""
        try:
            return self.strip(raw)
        except SyntaxError:  # DSPy reports the bad fence; middleware still see (and may fix) the raw text
            return raw

    def _require_loop_calls(self, cls: type) -> None:
        """Each stage fires from a call the loop makes; a loop that no longer makes it would skip the stage."""
        execute = ("self._execute_code(", "repl.execute(")
        required = {
            "forward": (
                ("self._prepare_execution_tools(",),
                ("self._execute_iteration(",),
                ("self._extract_fallback(",),
            ),
            "aforward": (
                ("self._prepare_execution_tools(",),
                ("self._aexecute_iteration(",),
                ("self._aextract_fallback(",),
            ),
            "_execute_iteration": (("self.generate_action(",), execute),
            "_aexecute_iteration": (("self.generate_action.acall(",), execute),
        }
        for method, calls in required.items():
            missing = [alternatives[0] for alternatives in calls if _calls_any(cls, method, alternatives) is False]
            if missing:
                raise unsupported(cls, method, f"does not call {', '.join(c + '...)' for c in missing)}")


def _source(fn: Any) -> str | None:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):  # no source shipped
        return None


def _chain_sources(cls: type, method: str) -> Iterator[str | None]:
    """The sources of the definitions of `method` that run when `cls`'s is called: the outermost, and each
    parent's as long as an override calls `super().<method>(...)`. `None` for a definition without source."""
    for fn in _definitions(cls, method):
        source = _source(fn) if inspect.isfunction(fn) else None
        yield source
        if source is None or not re.search(rf"super\(\)\.{method}\(", source):
            return


def method_calls(cls: type, method: str, call: str) -> bool | None:
    """Whether running `cls`'s `method` makes `call` (by its source); `None` when a source is missing."""
    return _calls_any(cls, method, (call,))


def _calls_any(cls: type, method: str, calls: tuple[str, ...]) -> bool | None:
    unknown = False
    for source in _chain_sources(cls, method):
        if source is None:
            unknown = True
        elif any(c in source for c in calls):
            return True
    return None if unknown else False


def _returns_processed(cls: type, method: str) -> bool:
    """Whether each definition that runs returns `_process_execution_result(...)` (or its parent's result) as is."""
    for source in _chain_sources(cls, method):
        if source is None:
            return False
        lines = [line.strip() for line in source.splitlines()]
        delegations = [line for line in lines if f"super().{method}(" in line]
        if delegations:
            if any(not re.match(rf"return (await )?super\(\)\.{method}\(", line) for line in delegations):
                return False
            continue
        calls = [line for line in lines if "self._process_execution_result(" in line]
        return bool(calls) and all(line.startswith("return ") for line in calls)
    return False
