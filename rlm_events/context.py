"""The mutable context object of each stage, as pydantic v2 models.

Every context validates assignments (``ctx.code = 3`` raises :class:`pydantic.ValidationError` naming the field),
forbids unknown fields, and carries ``stage``, ``iteration`` (0-based; ``None`` on run-level stages),
``input_args`` and ``run``. What a middleware leaves in a context when its chain returns is what the loop uses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, ClassVar, TypeVar

from dspy import Prediction
from dspy.primitives.repl_types import REPLHistory, REPLVariable
from pydantic import BaseModel, ConfigDict, Field

from .stages import Stage

_CONFIG = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, extra="forbid")
_IMMUTABLE_DEFAULTS = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, Enum)

_REQUIRED: Any = object()
_set_attribute = object.__setattr__
M = TypeVar("M", bound="_FastConstruct")


class _Recipe:
    """How to build one model class without pydantic's per-call field introspection, computed once per class."""

    __slots__ = ("defaults", "factories", "required")

    def __init__(self, defaults: dict[str, Any], factories: tuple[tuple[str, Callable[[], Any]], ...]) -> None:
        self.defaults = defaults  # every field, in declaration order; required ones and factories as _REQUIRED
        self.factories = factories
        self.required = frozenset(n for n, v in defaults.items() if v is _REQUIRED) - {n for n, _ in factories}


@cache
def _recipe(cls: type[BaseModel]) -> _Recipe | None:
    """``None`` when the fast path could not reproduce pydantic's ``model_construct`` exactly (aliases,
    data-taking or mutable defaults, post-init, private attributes, extra fields)."""
    if cls.__pydantic_post_init__ or cls.__private_attributes__ or cls.model_config.get("extra") == "allow":
        return None
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    fields = getattr(cls, "__pydantic_fields__", None) or cls.model_fields  # the former before pydantic 2.10
    for name, field in fields.items():
        if field.alias not in (None, name) or field.validation_alias not in (None, name):
            return None
        if field.default_factory is not None:
            if getattr(field, "default_factory_takes_validated_data", False):
                return None
            factories.append((name, field.default_factory))  # type: ignore[arg-type]  # takes no data: checked
            defaults[name] = _REQUIRED
        elif field.is_required():
            defaults[name] = _REQUIRED
        elif isinstance(field.default, _IMMUTABLE_DEFAULTS):
            defaults[name] = field.default
        else:  # pydantic deep-copies a mutable default for every instance
            return None
    return _Recipe(defaults, tuple(factories))


class _FastConstruct(BaseModel):
    """``model_construct`` without pydantic's per-call field introspection (contexts are built on every stage of
    every iteration). Same result: fields in declaration order, defaults and factories applied, unknown keywords
    ignored, missing required fields left unset, no validation."""

    @classmethod
    def model_construct(cls: type[M], _fields_set: set[str] | None = None, **values: Any) -> M:
        recipe = _recipe(cls)
        if recipe is None:
            return super().model_construct(_fields_set, **values)
        defaults = recipe.defaults
        fields = {**defaults, **values}  # declaration order, given values in place of the defaults
        unknown = len(fields) != len(defaults)
        if unknown:  # pydantic ignores unknown keywords: they are neither fields nor "set"
            fields = {k: v for k, v in fields.items() if k in defaults}
        for name, factory in recipe.factories:
            if name not in values:
                fields[name] = factory()
        if not recipe.required <= values.keys():
            fields = {k: v for k, v in fields.items() if v is not _REQUIRED}
        if _fields_set is None:
            _fields_set = values.keys() & defaults.keys() if unknown else set(values)
        return construct(cls, fields, _fields_set)


def construct(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """An instance of ``cls`` holding ``values`` as they are (taken, not copied): what ``cls.model_construct(**values)``
    returns when ``values`` names every field of ``cls`` in declaration order, without its per-call work. No
    validation. ``fields_set`` defaults to every name in ``values``."""
    instance = _new(cls)
    _set_dict(instance, values)
    _set_fields_set(instance, set(values) if fields_set is None else fields_set)
    _set_extra(instance, None)
    _set_private(instance, None)
    return instance


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """Sets BaseModel's slot ``name`` through its descriptor: without the attribute lookup along each context
    class's MRO that ``object.__setattr__`` does (the contexts of every stage are built this way); through
    ``object.__setattr__`` where this pydantic keeps it elsewhere."""
    descriptor = BaseModel.__dict__.get(name)
    setter = getattr(descriptor, "__set__", None)
    return setter if callable(setter) else lambda instance, value: _set_attribute(instance, name, value)


def _new_via_class(cls: Any) -> Any:
    return cls.__new__(cls)


# object.__new__ unless this pydantic's BaseModel defines its own.
_new: Callable[[Any], Any] = object.__new__ if "__new__" not in BaseModel.__dict__ else _new_via_class
_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


class Run(_FastConstruct):
    """One call of an RLM: shared by every context of that call and by no other call.

    ``state`` is a dict private to this call: middleware shared by concurrent calls keep per-call counters there.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    id: str
    module: Any = Field(repr=False, description="The dspy.RLM instance being called.")
    started_at: datetime
    state: dict[str, Any] = Field(default_factory=dict, repr=False)


class StageContext(_FastConstruct):
    """Fields every stage's context has."""

    model_config = _CONFIG
    STAGE: ClassVar[Stage]

    stage: Stage
    iteration: int | None = None
    input_args: dict[str, Any] = Field(default_factory=dict)
    run: Run = Field(repr=False)


class RunStartContext(StageContext):
    """A call starts. ``input_args`` is mutable: what is left there is what the RLM is called with."""

    STAGE: ClassVar[Stage] = Stage.RUN_START


class PreIterationContext(StageContext):
    """Before the LM writes this iteration's code.

    * ``extra_vars`` are bound in the REPL namespace for this iteration's code and listed among the variables the
      LM is shown.
    * ``python_code`` is this iteration's prelude: prepended to this iteration's code (after the pre_execution
      chain changed it), so it runs with it and the history records it as part of it. Later iterations do not get
      it again (what it defines stays in the REPL namespace, like anything the code defines).
    * ``persistent_python_code`` is the call's persistent prelude: on entry the one in force ("" for none);
      what is left here runs before every execution of this call from this iteration on, until a later iteration
      changes it ("" clears it). It is not recorded in the history.
    * ``prompt_context`` is text the LM is shown in this iteration's action prompt only, after the variables'
      descriptions (the ``variables_info`` input); it is never executed, and neither the history nor the next
      iteration's prompt has it.
    * ``history`` is what the LM will see.
    """

    STAGE: ClassVar[Stage] = Stage.PRE_ITERATION

    history: REPLHistory
    variables: list[REPLVariable]
    extra_vars: dict[str, Any] = Field(default_factory=dict)
    python_code: str | None = None
    persistent_python_code: str = ""
    prompt_context: str = ""


class PreExecutionContext(StageContext):
    """The LM wrote ``code``; it has not run.

    ``code`` is mutable: the changed code is what runs *and* what the history records. To skip execution and
    supply the result instead, call :meth:`skip` (or set ``result`` to anything but ``None``).
    """

    STAGE: ClassVar[Stage] = Stage.PRE_EXECUTION

    code: str
    reasoning: str = ""
    history: REPLHistory
    result: Any = None

    def skip(self, result: Any) -> None:
        """Do not run the code; use ``result`` as if the interpreter had returned it (text, ``[Error] …``, …)."""
        if result is None:
            raise ValueError("pre_execution: skip() needs a result; use '' for empty output")
        if not isinstance(result, str) and type(result).__name__ != "FinalOutput":
            raise TypeError(
                f"pre_execution: skip() expects the text the interpreter would have printed (a str, e.g. "
                f"'[Error] not allowed'), or DSPy's FinalOutput; got {type(result).__name__}: {result!r}"
            )
        self.result = result

    @property
    def skipped(self) -> bool:
        """Whether execution will be skipped."""
        return self.result is not None


class PostExecutionContext(StageContext):
    """The code ran (or was skipped). ``result`` is the raw interpreter result: output text, an ``[Error] …``
    string, or DSPy's ``FinalOutput`` after ``SUBMIT``. Both fields are mutable and are what the history records."""

    STAGE: ClassVar[Stage] = Stage.POST_EXECUTION

    code: str
    result: Any = None
    history: REPLHistory


class PostIterationContext(StageContext):
    """The result was folded into the history.

    ``history`` (mutable) is what the next iteration sees. ``prediction`` is the final ``Prediction`` when
    ``SUBMIT`` succeeded, else ``None``; set it to ``None`` to reject a submission and go on, or to a
    ``Prediction`` to finish now. Set ``stop = True`` to end the loop: DSPy's extract fallback then produces the
    answer from the history so far. ``action`` is the LM's output for this iteration (``reasoning``, ``code``).
    """

    STAGE: ClassVar[Stage] = Stage.POST_ITERATION

    history: REPLHistory
    prediction: Prediction | None = None
    stop: bool = False
    action: Prediction | None = Field(default=None, repr=False)
    code: str = ""
    result: Any = Field(default=None, repr=False)


class ExtractContext(StageContext):
    """DSPy's extract fallback runs (``max_iters`` reached, or ``stop`` was set).

    ``history`` is what the extractor sees. The innermost ``next`` runs the extractor and sets ``prediction``; a
    middleware that sets ``prediction`` itself and does not call ``next`` replaces it.
    """

    STAGE: ClassVar[Stage] = Stage.EXTRACT

    history: REPLHistory
    variables: list[REPLVariable]
    prediction: Prediction | None = None


class ToolCallContext(StageContext):
    """Executed code calls ``llm_query``, ``llm_query_batched`` or a user tool.

    The innermost ``next`` performs the real call with ``args``/``kwargs`` and sets ``result``; a middleware can
    deny (return without calling ``next``, after setting ``result`` or raising), cache or meter it.
    """

    STAGE: ClassVar[Stage] = Stage.TOOL_CALL

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    result: Any = None


class RunEndContext(StageContext):
    """A call ended. Fires for every call, failed ones included, after the interpreter was shut down.

    ``prediction`` and ``error`` are mutable: the call returns ``prediction`` when ``error`` is ``None``,
    else raises ``error``.
    """

    STAGE: ClassVar[Stage] = Stage.RUN_END

    prediction: Prediction | None = None
    error: BaseException | None = None
    iterations: int = 0
    forced_extract: bool = False
    duration_s: float = 0.0


CONTEXT_TYPES: dict[Stage, type[StageContext]] = {
    cls.STAGE: cls
    for cls in (
        RunStartContext,
        PreIterationContext,
        PreExecutionContext,
        PostExecutionContext,
        PostIterationContext,
        ExtractContext,
        ToolCallContext,
        RunEndContext,
    )
}


@cache
def _frozen(cls: type[StageContext]) -> type[StageContext]:
    config = ConfigDict(**{**cls.model_config, "frozen": True})  # type: ignore[typeddict-item]
    return type(cls.__name__, (cls,), {"model_config": config, "__module__": cls.__module__})


def snapshot(ctx: StageContext) -> StageContext:
    """A read-only copy of ``ctx`` as it is now: assigning a field raises, and dict/list fields are copies, so an
    observer can neither change the run nor see later changes. It is still an instance of ``type(ctx)``."""
    # The fields are already those of type(ctx): copy them as they are, without building the model again.
    values = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in ctx.__dict__.items()}
    return construct(_frozen(type(ctx)), values, set(ctx.model_fields_set))
