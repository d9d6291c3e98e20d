"""Building an RLM the same way on every DSPy release: the constructor's iteration limit, interpreter and tools."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import dspy
from dspy.primitives.code_interpreter import CodeInterpreter

if TYPE_CHECKING:
    pass

from .detect import Params, method_calls, unsupported

# -- building an RLM the same way on every version ------------------------------------------------------------


class RLMConstructor:
    """How one RLM class's constructor takes the iteration limit, the interpreter and the tools.

    `arguments()` translates the DSPy 3.3+ arguments (`max_iters`, `interpreter_factory`, `tools` as a
    list) into what this class takes, and `finish()` completes a freshly constructed instance, so that an RLM
    built this way behaves the same on every supported release: before 3.3 the constructor takes
    `max_iterations` and one `interpreter` that every call shares and nobody shuts down, so the instance is
    given a fresh interpreter from the factory per call, shut down when the call ends (as 3.3+ do).
    """

    def __init__(self, cls: Any) -> None:
        params = inspect.signature(cls.__init__).parameters
        limit = next((name for name in ("max_iters", "max_iterations") if name in params), None)
        if limit is None:
            raise unsupported(cls, "__init__", "takes neither max_iters nor max_iterations")
        self.limit: str = limit
        self.takes_factory = "interpreter_factory" in params
        if not self.takes_factory:
            if "interpreter" not in params:
                raise unsupported(cls, "__init__", "takes neither interpreter_factory nor interpreter")
            Params(cls, "_interpreter_context", ("execution_tools",))
            Params(cls, "_inject_execution_context", ("interpreter", "execution_tools"))
        # 3.1.2 takes {name: function}; 3.1.3+ take a list of functions or dspy.Tool (normalised by _normalize_tools).
        self.tools_as_dict = not callable(getattr(cls, "_normalize_tools", None))

    def arguments(
        self,
        *,
        max_iters: int | None = None,
        interpreter_factory: Callable[[], Any] | None = None,
        tools: Iterable[Any] | None = None,
        **options: Any,
    ) -> tuple[dict[str, Any], Callable[[], Any] | None]:
        """This class's constructor keywords, and the factory `finish()` must install (`None`: nothing to)."""
        kwargs = dict(options)
        if max_iters is not None:
            kwargs[self.limit] = max_iters
        if isinstance(tools, Mapping):  # {name: function}: 3.1.2's form, e.g. build_rlm's arguments passed on again
            tools = [dspy.Tool(fn, name=name) for name, fn in tools.items()]
        if tools is not None:
            kwargs["tools"] = _tools_by_name(tools) if self.tools_as_dict else list(tools)
        if interpreter_factory is None:
            return kwargs, None
        if self.takes_factory:  # DSPy validates it
            kwargs["interpreter_factory"] = interpreter_factory
            return kwargs, None
        is_interpreter = not isinstance(interpreter_factory, type) and isinstance(interpreter_factory, CodeInterpreter)
        if is_interpreter or not callable(interpreter_factory):
            raise TypeError(
                "interpreter_factory must be a zero-argument callable that creates a CodeInterpreter (one per call), "
                f"not {'an interpreter' if is_interpreter else 'a'} {type(interpreter_factory).__name__}"
            )
        return kwargs, interpreter_factory

    @staticmethod
    def finish(rlm: Any, factory: Callable[[], Any] | None) -> None:
        """Make `rlm` (before 3.3) create its interpreter per call with `factory`; a no-op for `None`."""
        if factory is not None:
            rlm.__dict__["_interpreter_context"] = _InterpreterPerCall(rlm, factory)


@functools.cache
def constructor_of(cls: Any) -> RLMConstructor:
    """The `RLMConstructor` of an RLM class (detected once per class)."""
    return RLMConstructor(cls)


def _tools_by_name(tools: Iterable[Any]) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for tool in tools:
        if isinstance(tool, dspy.Tool):
            name, fn = tool.name, tool.func
        elif callable(tool):
            name, fn = getattr(tool, "__name__", type(tool).__name__), tool
        else:
            raise TypeError(f"Tool {tool!r} must be callable, got {type(tool).__name__}")
        if name in found:
            raise ValueError(f"Duplicate tool name '{name}'")
        found[name] = fn
    return found


class _InterpreterPerCall:
    """`_interpreter_context` of one RLM before DSPy 3.3: a fresh interpreter from `factory` for each call,
    given the call's tools, and shut down when the call ends, failed and cancelled calls included."""

    def __init__(self, rlm: Any, factory: Callable[[], Any]) -> None:
        self.rlm, self.factory = rlm, factory

    @contextlib.contextmanager
    def __call__(self, execution_tools: dict[str, Callable[..., Any]]) -> Iterator[Any]:
        interpreter = self.factory()
        try:
            self.rlm._inject_execution_context(interpreter, execution_tools)
            yield interpreter
        finally:
            interpreter.shutdown()


def batched_queries_keep_context(cls: Any) -> bool:
    """Whether `llm_query_batched` of this RLM class runs its prompts with the caller's context variables.

    DSPy 3.3+ do (`contextvars.copy_context()`). Before, its worker threads see neither `dspy.context(...)` nor
    the rlm-events run, so their sub-LM calls cannot be attributed to the run (a DSPy limitation we do not patch
    around: the executor is module-global in DSPy, and patching it would change RLMs we do not instrument).
    """
    return method_calls(cls, "_make_llm_tools", "copy_context") is not False


def iteration_limit(rlm: Any) -> int | None:
    """The iteration limit of `rlm` (`max_iters`; `max_iterations` before DSPy 3.3), or `None`."""
    for name in ("max_iters", "max_iterations"):
        value = getattr(rlm, name, None)
        if isinstance(value, int):
            return value
    return None
