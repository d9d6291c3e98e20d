"""The fast path over pydantic's internals: model instances built without `model_construct`'s per-call work.

The contexts of every stage of every iteration are built with `construct()` (every field given) or
`FastConstruct.model_construct()`. Both build what `Model.model_construct(**fields)` builds, from what pydantic
keeps per class and per instance, without its per-call field introspection. They rely on:

* `pydantic.BaseModel` defines no `__new__` and keeps an instance's state in exactly these slots:
  `__dict__`, `__pydantic_fields_set__`, `__pydantic_extra__` and `__pydantic_private__`, whose descriptors
  set them;
* a model class's fields are `__pydantic_fields__` (`model_fields` before pydantic 2.10), `FieldInfo` objects
  with `alias`, `validation_alias`, `default`, `default_factory`, `is_required()` and (2.10+)
  `default_factory_takes_validated_data`; `__pydantic_post_init__`, `__private_attributes__`,
  `__pydantic_root_model__` and `model_config` tell the classes that `model_construct` builds differently,
  which are left to it;
* an instance built so is what `model_construct` builds: the same `__dict__` (values and order), fields set,
  extra and private state, equal to it with the same repr, and assignments are still validated.

Checked against pydantic 2.14.4 (pydantic-core 2.50.5), the newest release tested; 2.11.0 (pydantic-core 2.33.0), the
lowest DSPy 3.4 takes; and 2.7.0 (pydantic-core 2.18.1), the lowest supported (CI runs the suite on it). Earlier
releases fail the probe: their `model_construct` keeps unknown keywords in `__dict__`.

`probe()` checks all of the above once at import, on models shaped like the contexts and on models the fast path
must leave to pydantic. If anything is not as expected, `FAST` is `False` (`REASON` says why) and both
go through the public `Model.model_construct(**fields)`: slower, never different. `RLM_EVENTS_FAST_PATHS=0` in
the environment does so without probing; `fallback()` does so for a while (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo

from . import Unexpected, disabled, failure, switched

FAST = True  # set below, from the probe; True while the probe runs
REASON: str | None = None  # why the public API is used, when it is

M = TypeVar("M", bound=BaseModel)

_SLOTS = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
_IMMUTABLE_DEFAULTS = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, Enum)
_REQUIRED: Any = object()


def _slot_setters() -> tuple[Callable[[Any, Any], None], ...]:
    """The `__set__` of each of BaseModel's slots in `_SLOTS`: setting a slot through its descriptor skips the
    attribute lookup along each model class's MRO that `object.__setattr__` does."""
    setters = []
    for name in _SLOTS:
        setter = getattr(BaseModel.__dict__.get(name), "__set__", None)
        if name not in getattr(BaseModel, "__slots__", ()) or not callable(setter):
            raise Unexpected(f"BaseModel has no {name!r} slot")
        setters.append(setter)
    return tuple(setters)


def _unset(instance: Any, value: Any) -> None:
    raise Unexpected("BaseModel's slots were not found")


try:
    _set_dict, _set_fields_set, _set_extra, _set_private = _slot_setters()
except Unexpected:  # the probe says so; construct() uses model_construct
    _set_dict = _set_fields_set = _set_extra = _set_private = _unset
_new = object.__new__


def construct(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """`cls.model_construct(fields_set, **values)` when `values` names every field of `cls` in declaration order
    (a model with no post-init, private attributes or root). No validation; `fields_set` defaults to every name in
    `values`. On the fast path the instance takes `values` itself as its `__dict__`."""
    if not FAST:
        return cls.model_construct(set(values) if fields_set is None else fields_set, **values)
    instance = _new(cls)
    _set_dict(instance, values)
    _set_fields_set(instance, set(values) if fields_set is None else fields_set)
    _set_extra(instance, None)
    _set_private(instance, None)
    return instance


class _Recipe:
    """How to build one model class without pydantic's per-call field introspection, computed once per class."""

    __slots__ = ("defaults", "factories", "required")

    def __init__(self, defaults: dict[str, Any], factories: tuple[tuple[str, Callable[[], Any]], ...]) -> None:
        self.defaults = defaults  # every field, in declaration order; required ones and factories as _REQUIRED
        self.factories = factories
        self.required = frozenset(n for n, v in defaults.items() if v is _REQUIRED) - {n for n, _ in factories}


@cache
def _recipe(cls: type[BaseModel]) -> _Recipe | None:
    """`None` when the fast path could not reproduce pydantic's `model_construct` exactly (aliases,
    data-taking or mutable defaults, post-init, private attributes, extra fields, root models)."""
    if cls.__pydantic_post_init__ or cls.__private_attributes__ or cls.__pydantic_root_model__:
        return None
    if cls.model_config.get("extra") == "allow":
        return None
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    fields = getattr(cls, "__pydantic_fields__", None) or cls.model_fields  # the former from pydantic 2.10 on
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


F = TypeVar("F", bound="FastConstruct")


class FastConstruct(BaseModel):
    """`model_construct` without pydantic's per-call field introspection (contexts are built on every stage of
    every iteration). Same result: fields in declaration order, defaults and factories applied, unknown keywords
    ignored, missing required fields left unset, no validation."""

    @classmethod
    def model_construct(cls: type[F], _fields_set: set[str] | None = None, **values: Any) -> F:
        recipe = _recipe(cls) if FAST else None
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


# -- choosing the path ---------------------------------------------------------------------------------------------


def _pydantic_construct(cls: type[M], _fields_set: set[str] | None = None, **values: Any) -> M:
    return BaseModel.model_construct.__func__(cls, _fields_set, **values)  # type: ignore[attr-defined, no-any-return]


def _differs(built: BaseModel, reference: BaseModel) -> str | None:
    """How `built` differs from pydantic's `reference`, or `None`."""
    if type(built) is not type(reference):
        return f"type {type(built).__name__}, not {type(reference).__name__}"
    if list(built.__dict__.items()) != list(reference.__dict__.items()):
        return f"fields {list(built.__dict__.items())}, not {list(reference.__dict__.items())}"
    for name in _SLOTS[1:]:
        if getattr(built, name, None) != getattr(reference, name, None):
            return f"{name} {getattr(built, name, None)!r}, not {getattr(reference, name, None)!r}"
    if built != reference or repr(built) != repr(reference):
        return f"{built!r} is not {reference!r}"
    return None


def _probe_models() -> tuple[tuple[type[BaseModel], bool], ...]:
    """Models to build, each with whether the fast path must take it on (shaped like the contexts) or leave it to
    pydantic (a model `model_construct` builds with more than the fields)."""

    class Shaped(FastConstruct):  # every kind of field the contexts have
        model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, extra="forbid")
        required: int
        text: str = ""
        flag: bool = False
        anything: Any = Field(default=None, repr=False)
        mapping: dict[str, Any] = Field(default_factory=dict)

    class Frozen(Shaped):  # snapshot()'s read-only copies
        model_config = ConfigDict(**{**Shaped.model_config, "frozen": True})  # type: ignore[typeddict-item]

    class Aliased(FastConstruct):
        required: int = Field(alias="other")
        text: str = ""

    class MutableDefault(FastConstruct):
        items: list[int] = [1]  # pydantic copies it for every instance
        required: int

    class PostInit(FastConstruct):
        required: int
        text: str = ""

        def model_post_init(self, context: Any) -> None:
            self.__dict__["text"] = "post-init"

    class Private(FastConstruct):
        required: int
        _private: int = PrivateAttr(default=1)

    class Extra(FastConstruct):
        model_config = ConfigDict(extra="allow")
        required: int

    models: list[tuple[type[BaseModel], bool]] = [(Shaped, True), (Frozen, True)]
    models += [(Aliased, False), (MutableDefault, False), (PostInit, False), (Private, False), (Extra, False)]
    if hasattr(FieldInfo, "default_factory_takes_validated_data"):  # pydantic 2.10+

        class TakesData(FastConstruct):
            required: int
            derived: int = Field(default_factory=lambda data: data.get("required", 0) + 1)  # type: ignore[call-arg]

        models.append((TakesData, False))
    return tuple(models)


def _check() -> None:
    """Raise `Unexpected` where the fast path would build other than `model_construct` builds."""
    if "__new__" in BaseModel.__dict__:
        raise Unexpected("BaseModel defines __new__")
    _slot_setters()
    if unset := sorted(set(getattr(BaseModel, "__slots__", ())) - set(_SLOTS)):
        raise Unexpected(f"BaseModel has slots the fast path does not set: {', '.join(unset)}")
    for model, shaped in _probe_models():
        if (_recipe(model) is not None) != shaped:
            raise Unexpected(f"the fast path would {'not ' * shaped}build {model.__name__} itself")
        if not shaped:  # left to pydantic's own model_construct
            continue
        calls: list[tuple[set[str] | None, dict[str, Any]]] = [
            (None, {"required": 1}),  # defaults and factories
            (None, {"required": 1, "text": "t", "mapping": {"k": 1}, "anything": [2], "other": 3}),  # unknown
            (None, {"text": "t"}),  # a required field missing: left unset
            ({"required"}, {"required": 1, "text": "t"}),  # the fields set given
        ]
        for fields_set, values in calls:
            built = model.model_construct(fields_set, **values)
            if difference := _differs(built, _pydantic_construct(model, fields_set, **values)):
                raise Unexpected(f"{model.__name__}.model_construct(**{values}) builds {difference}")
        values = {"required": 1, "text": "t", "flag": True, "anything": None, "mapping": {}}
        for fields_set in (None, {"required"}):
            built = construct(model, dict(values), fields_set)
            if difference := _differs(built, _pydantic_construct(model, fields_set, **values)):
                raise Unexpected(f"construct({model.__name__}, {values}) builds {difference}")
        one, two = model.model_construct(required=1), model.model_construct(required=1)
        if one.mapping is two.mapping:  # type: ignore[attr-defined]
            raise Unexpected(f"{model.__name__}'s default factory is shared between instances")
        try:
            built.required = "not a number"  # type: ignore[attr-defined]
        except ValidationError:
            pass
        else:
            raise Unexpected(f"assigning a field of {model.__name__} built so is not validated")


def probe() -> str | None:
    """Why the fast path would not build what `model_construct` builds on this pydantic, or `None` when it would.
    Runs the fast path itself on probe models (`FAST` is `True` meanwhile): for the import, and for tests."""
    with switched(__name__, True):
        return failure(_check)


def fallback() -> AbstractContextManager[None]:
    """Use the public `model_construct` inside the block, as when the probe fails (for tests; not thread-safe)."""
    return switched(__name__, False)


REASON = disabled() or probe()
FAST = REASON is None
