"""The operations a bounded evaluation models: Python's own on exact builtin types, after size checks.

Operators (`BINOPS`, `UNARY`, `COMPARISONS`), the read-only and list/dict-mutating methods of
`str`, `list` and `dict`, and the pure builtins of `BUILTIN_NAMES`. Anything
else is `Unknown`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from typing import Any

from .limits import TooBig
from .scope import Scoped
from .values import SCALARS, UNKNOWN, hashable, needs_of, plain_result, unknown_of

BINOPS: dict[type, Callable[[Any, Any], Any]] = {
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
UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
COMPARISONS: dict[type, Callable[[Any, Any], Any]] = {
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
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
_SIMPLE_FORMAT_FIELD = re.compile(r"\{(\d*|[A-Za-z_]\w*)\}")

STR_METHODS = frozenset(
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit isidentifier "  # noqa: SIM905 - a table of names
    "islower isnumeric isspace istitle isupper join lower lstrip partition removeprefix removesuffix "
    "replace rfind rindex rpartition rsplit rstrip split splitlines startswith strip swapcase title upper "
    "center ljust rjust zfill format".split()
)
WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
LIST_READ = frozenset({"index", "count", "copy"})
LIST_WRITE = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "reverse", "sort"})
DICT_READ = frozenset({"get", "keys", "values", "items", "copy"})
DICT_WRITE = frozenset({"update", "setdefault", "pop", "clear"})


class Operations(Scoped):
    """Iteration, operators, methods and builtins on plain data, each bounded by the evaluation's limits."""

    def items(self, value: Any) -> list[Any] | None:
        """The elements iterating `value` yields, or `None` when that is not known."""
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
            return unknown_of(left, right)
        if needs_of(right) is not None and type(right) not in (list, tuple):
            return unknown_of(left, right)
        kind = type(op)
        lk, rk = type(left), type(right)
        if kind is ast.Mult:
            sized, count = (left, right) if rk in (int, bool) else (right, left)
            if type(sized) in (str, list, tuple) and type(count) in (int, bool):
                limit = self.limits.max_chars if type(sized) is str else self.limits.max_items
                if len(sized) * max(int(count), 0) > limit:
                    raise TooBig
        big = lk in (int, bool) and rk in (int, bool) and right > 0
        if kind is ast.Pow and big and max(abs(left), 2).bit_length() * right > self.limits.max_int_bits:
            raise TooBig
        if kind is ast.LShift and rk in (int, bool) and right > self.limits.max_int_bits:
            raise TooBig
        if kind is ast.Mod and lk is str:
            self.check_percent(left)
            self.check_size(right)
        if kind is ast.Add and lk in (list, tuple) and rk is lk and len(left) + len(right) > self.limits.max_items:
            raise TooBig
        if (lk in (list, tuple) or rk in (list, tuple)) and kind not in (ast.Add, ast.Mult):
            return UNKNOWN
        if lk not in (*SCALARS, list, tuple) or rk not in (*SCALARS, list, tuple):
            return UNKNOWN
        return self.grew(BINOPS[kind](left, right))

    def str_method(self, s: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if needs_of([args, kwargs]) is not None:
            return unknown_of(args, kwargs)
        if name == "format":
            self.check_size([args, kwargs])
            fields = _FORMAT_FIELD.findall(s.replace("{{", "").replace("}}", ""))
            if not all(_SIMPLE_FORMAT_FIELD.fullmatch(f) for f in fields):
                return UNKNOWN
        elif name in WIDTH_METHODS:
            if not args or type(args[0]) is not int or args[0] > self.limits.max_chars:
                return UNKNOWN
        elif name == "replace":
            if len(args) < 2 or type(args[0]) is not str or type(args[1]) is not str:
                return UNKNOWN
            grows = len(args[1]) - len(args[0])
            count = s.count(args[0]) if args[0] else len(s) + 1
            if len(s) + max(grows, len(args[1])) * count > self.limits.max_chars:
                raise TooBig
        elif name == "join":
            parts = self.items(args[0]) if args else None
            if parts is None or not all(type(p) is str for p in parts):
                return UNKNOWN
            if sum(len(p) for p in parts) + len(s) * len(parts) > self.limits.max_chars:
                raise TooBig
            args = [parts]
        return self.grew(plain_result(getattr(s, name)(*args, **kwargs)))

    def list_method(self, lst: list, name: str, args: list[Any], kwargs: dict[str, Any], base: str | None) -> Any:
        if name in ("append", "insert"):
            if name == "insert" and (len(args) != 2 or type(args[0]) is not int):
                return self.spoil(base)
            getattr(lst, name)(*args)
            self.grew_by(1)
            return None
        if name == "extend":
            items = self.items(args[0]) if len(args) == 1 else None
            if items is None:
                return self.spoil(base)
            if len(lst) + len(items) > self.limits.max_items:
                raise TooBig
            lst.extend(items)
            self.grew_by(len(items))
            return None
        if name == "clear" or name == "reverse":
            getattr(lst, name)()
            return None
        if name == "copy":
            return self.grew(list(lst))
        if needs_of([lst, args, kwargs]) is not None or (name == "sort" and any(k != "reverse" for k in kwargs)):
            return self.spoil(base) if name in LIST_WRITE else unknown_of(lst, args)
        if name == "sort":
            try:
                lst[:] = sorted(lst, **kwargs)  # on a copy first: a failed sort leaves the list as it was
            except TypeError:
                return self.spoil(base)
            return None
        if name in ("pop", "remove"):
            try:
                return plain_result(getattr(lst, name)(*args))
            except (IndexError, ValueError, TypeError):
                return self.spoil(base)
        return plain_result(getattr(lst, name)(*args, **kwargs))

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
        if args and (needs_of(args[0]) is not None or not hashable(args[0])) and name != "update":
            return self.spoil(base) if name in DICT_WRITE else UNKNOWN
        if name == "update":
            other = args[0] if args else {}
            if type(other) is not dict or needs_of(list(other)) is not None:
                return self.spoil(base)
            d.update(other, **kwargs)
            self.grew_by(len(other) + len(kwargs))
            return None
        return getattr(d, name)(*args, **kwargs)

    def spoil(self, base: str | None) -> Any:
        if base:
            self.forget(base)
        return UNKNOWN

    def builtin(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if name == "print":
            return None
        if name == "len":
            if len(args) == 1 and not kwargs and type(args[0]) in (str, list, tuple, dict, range):
                return len(args[0])
            return unknown_of(*args)
        if name in ("list", "tuple", "reversed", "enumerate", "zip"):  # they move elements: unknown ones too
            if kwargs or not args or (name != "zip" and len(args) > (2 if name == "enumerate" else 1)):
                return UNKNOWN
            if name == "enumerate" and len(args) == 2 and type(args[1]) is not int:
                return unknown_of(args[1])
            found = [self.items(a) for a in (args[:1] if name == "enumerate" else args)]
            sequences = [s for s in found if s is not None]
            if len(sequences) != len(found):
                return unknown_of(*args)
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
            return unknown_of(args, kwargs)
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
                self.check_spec(args[1])
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
        if fn is None or kwargs or any(type(a) not in SCALARS for a in args):
            return UNKNOWN
        if name == "round" and len(args) == 2 and (type(args[1]) is not int or abs(args[1]) > 1000):
            return UNKNOWN
        if name == "float" and args and type(args[0]) is str and len(args[0]) > 1000:
            return UNKNOWN
        return self.grew(fn(*args))


__all__ = [
    "BINOPS",
    "COMPARISONS",
    "DICT_READ",
    "DICT_WRITE",
    "LIST_READ",
    "LIST_WRITE",
    "STR_METHODS",
    "UNARY",
    "WIDTH_METHODS",
    "Operations",
]
