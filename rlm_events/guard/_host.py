"""What the guard's own Python knows about names: its built-ins, the allowed modules as it imports them, and which
dotted paths are modules. The guard imports an allowed module to learn whether `module.attr` is itself a module
(`logging.os`); it never runs the checked code."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import re
import sys
import types
from functools import cache, lru_cache
from typing import Any

from . import allowlist

MISSING = object()  # what host_attr returns for an attribute the module does not have (None is a value)
HOST_BUILTINS = frozenset(dir(builtins))
# Names that are built-ins to the guard even where the host lacks them: call-only ones and the refused ones.
ALWAYS_BUILTIN = allowlist.CALL_ONLY_BUILTINS | frozenset(allowlist.BUILTIN_HINTS)
DUNDER = re.compile(r"__\w+__\Z")


def is_dunder(name: str) -> bool:
    """Whether `name` has the `__name__` shape (more than the four underscores)."""
    # (the string tests first: most names are not dunders, and a regex match costs more than both)
    return name[:2] == "__" and name[-2:] == "__" and len(name) > 4 and bool(DUNDER.match(name))


@cache
def host_module(name: str) -> types.ModuleType | None:
    """The allowed module `name` on the guard's Python (imported once), or `None` if it cannot be imported."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except BaseException:  # an allowed module that is not installed here
        return None


def host_attr(module: str, attr: str) -> Any:
    """`module.attr` on the guard's Python, or `MISSING`."""
    mod = host_module(module)
    return MISSING if mod is None else getattr(mod, attr, MISSING)


def module_name(value: types.ModuleType) -> str:
    """The name a module was imported under (`posixpath` for `os.path`)."""
    spec = getattr(value, "__spec__", None)
    return getattr(spec, "name", None) or value.__name__


@cache
def is_submodule(path: str) -> bool:
    """Whether `path` (not an attribute of its module here) names a module: a stdlib name or a real submodule."""
    if path.rpartition(".")[2] in sys.stdlib_module_names:
        return True
    try:
        return importlib.util.find_spec(path) is not None
    except BaseException:
        return False


@lru_cache(maxsize=16)
def packages(modules: frozenset[str]) -> frozenset[str]:
    """Every proper dotted prefix of the allowed modules (`xml`, `xml.etree` for `xml.etree.ElementTree`)."""
    return frozenset(".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1))


__all__ = [
    "ALWAYS_BUILTIN",
    "HOST_BUILTINS",
    "MISSING",
    "host_attr",
    "host_module",
    "is_dunder",
    "is_submodule",
    "module_name",
    "packages",
]
