"""`RetryHint`: turn an `[Error]` result into one the LM can act on in its next iteration."""

from __future__ import annotations

import ast
import builtins
import difflib
import logging
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from .._ast import bound_names, class_members, converted, parse
from ..builtin import RLM_BUILTIN_TOOLS, Builtin, check_int
from ..context import PostExecutionContext
from ..stages import Stage

logger = logging.getLogger("rlm_events")

_EXCEPTION = re.compile(r"^\[Error\]\s*(?:[\w.]+\.)?([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Iteration))\b")
_NAME_ERROR = re.compile(r"name '(\w+)' is not defined")
_OBJECT_ATTRIBUTE = re.compile(r"'(\w+)' object has no attribute '(\w+)'")
_MODULE_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_TYPE_ATTRIBUTE = re.compile(r"type object '(\w+)' has no attribute '(\w+)'")
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_KEY_ERROR = re.compile(r"KeyError:\s*(.+)$", re.M)

_ADVICE = {
    "IndexError": "check the length before indexing",
    "ZeroDivisionError": "guard the divisor against zero",
    "TypeError": "print type(...) of the values involved",
    "ValueError": "print the offending value before converting it",
    "UnicodeDecodeError": "decode with errors='replace' or check the encoding",
    "RecursionError": "rewrite the recursion as a loop",
}
_SUBMIT_AND_PRINT = ("SUBMIT", "print")


class RetryHint(Builtin):
    """A `post_execution` middleware that appends a short `[Hint] …` line to `[Error]` results.

    The hint names the exception, quotes the failing line of this iteration's code when it can be located (the
    interpreter's message rarely has a line number), and, for `NameError`/`AttributeError`, offers close
    matches (`difflib`) among the names in scope: what this and earlier iterations' code defined, the inputs, the
    tools, built-ins, and the attributes of built-in types, loaded modules and classes the code defined.
    `ModuleNotFoundError` gets close standard-library names, `KeyError` the missing key, `SyntaxError` the
    parser's own line and message.

    Guarantees: only `str` results starting with `[Error]` are changed, by appending (the original error text
    stays first); a result that already has a hint, or names no exception (a CodeGuard refusal), is left alone;
    the hint is at most `max_chars` long; a failure while building a hint is logged and leaves the result as it
    was. The hint is added after the rest of the chain ran, so it describes the result the history records.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.POST_EXECUTION,)

    def __init__(self, *, max_matches: int = 2, max_chars: int = 300) -> None:
        self.max_matches = check_int("RetryHint", "max_matches", max_matches, 0)
        self.max_chars = check_int("RetryHint", "max_chars", max_chars, 40)

    def __call__(self, ctx: Any, next: Any) -> Any:
        if not isinstance(ctx, PostExecutionContext):
            raise self._wrong_stage(ctx)
        ctx = next(ctx)
        result = ctx.result
        if not isinstance(result, str) or not result.startswith("[Error]") or "\n[Hint] " in result:
            return ctx
        try:
            scope = [e.code for e in ctx.history]
            tools = [*RLM_BUILTIN_TOOLS, *_SUBMIT_AND_PRINT, *(getattr(ctx.run.module, "tools", {}) or {})]
            text = self.hint(result, ctx.code, earlier_code=scope, names=[*ctx.input_args, *tools])
        except Exception:  # a hint is a courtesy: never let it break the iteration
            logger.warning("RetryHint could not build a hint for %r", result[:200], exc_info=True)
            return ctx
        if text:
            ctx.result = f"{result}\n{text}"
        return ctx

    def hint(self, error: str, code: str, *, earlier_code: Iterable[str] = (), names: Iterable[str] = ()) -> str | None:
        """The `[Hint] …` line for the `[Error]` text `error` raised by `code`, or `None`.

        `earlier_code` is the code of previous iterations (what it defined is still in scope) and `names` are
        further names in scope (inputs, tools).
        """
        tree = parse(code)
        if tree is None:
            return self._clip(_syntax_hint(code))
        found = _EXCEPTION.match(error)
        if found is None:
            return None
        exception = found.group(1)
        trees = [t for t in (parse(c) for c in earlier_code) if t is not None] + [tree]
        detail, line = self._detail(exception, error, tree, code.splitlines(), trees, set(names))
        where = f" on line {line[0]} `{_short(line[1])}`" if line else ""
        return self._clip(f"[Hint] {exception}{where}: {detail}")

    def _detail(
        self,
        exception: str,
        error: str,
        tree: ast.Module,
        lines: list[str],
        trees: list[ast.Module],
        names: set[str],
    ) -> tuple[str, tuple[int, str] | None]:
        if exception == "NameError" and (m := _NAME_ERROR.search(error)):
            name = m.group(1)
            defined = names | {n for t in trees for n in bound_names(t)}
            line = _first_line(tree, lines, lambda n: isinstance(n, ast.Name) and n.id == name)
            return f"{name!r} is not defined.{self._matches(name, defined, set(dir(builtins)))}", line
        if exception == "AttributeError":
            for pattern in (_OBJECT_ATTRIBUTE, _MODULE_ATTRIBUTE, _TYPE_ATTRIBUTE):
                if m := pattern.search(error):
                    owner, attr = m.group(1), m.group(2)
                    members = _members(owner, pattern is _MODULE_ATTRIBUTE, trees)
                    line = _first_line(tree, lines, _is_attribute(attr))
                    return f"{owner} has no attribute {attr!r}.{self._matches(attr, members)}", line
        if exception in ("ModuleNotFoundError", "ImportError") and (m := _NO_MODULE.search(error)):
            module = m.group(1)
            stdlib = {k for k in getattr(sys, "stdlib_module_names", ()) if not k.startswith("_")}
            loaded = {k.split(".")[0] for k in sys.modules if not k.startswith("_")}
            line = _first_line(tree, lines, lambda n: isinstance(n, (ast.Import, ast.ImportFrom)))
            detail = f"no module {module!r} here; use the standard library.{self._matches(module, stdlib, loaded)}"
            return detail, line
        if exception == "KeyError" and (m := _KEY_ERROR.search(error)):
            key = m.group(1).strip()
            line = _first_line(tree, lines, lambda n: isinstance(n, ast.Subscript))
            return f"key {key} is missing; print the available keys (list(d)[:20]) or use d.get(key).", line
        advice = _ADVICE.get(exception, "print intermediate values to find the cause")
        return f"{advice}.", _only_line(lines)

    def _matches(self, name: str, *tiers: Iterable[str]) -> str:
        """Close matches from the first tier that has any (what the code defined beats what Python provides)."""
        for tier in tiers if self.max_matches else ():
            close = difflib.get_close_matches(name, sorted(set(tier) - {name}), n=self.max_matches, cutoff=0.6)
            if close:
                return f" Did you mean {' or '.join(repr(c) for c in close)}?"
        return ""

    def _clip(self, text: str | None) -> str | None:
        if text is None or len(text) <= self.max_chars:
            return text
        return text[: self.max_chars - 1] + "…"

    def __repr__(self) -> str:
        return f"RetryHint(max_matches={self.max_matches}, max_chars={self.max_chars})"


def _syntax_hint(code: str) -> str | None:
    try:
        converted(lambda: compile(code, "<code>", "exec"))
    except SyntaxError as exc:
        lines = code.splitlines()
        number = exc.lineno or 0
        where = f" on line {number} `{_short(lines[number - 1])}`" if 0 < number <= len(lines) else ""
        return f"[Hint] SyntaxError{where}: {exc.msg}. Write plain Python (no markdown or prose in the code)."
    except ValueError:
        return "[Hint] The code contains null bytes; write plain Python text."
    return None


def _members(owner: str, is_module: bool, trees: list[ast.Module]) -> set[str]:
    """Attribute names of `owner`: a loaded module, a built-in type, or a class the code defined."""
    if is_module:
        module = sys.modules.get(owner)
        return set(dir(module)) if module is not None else set()
    builtin = type(None) if owner == "NoneType" else getattr(builtins, owner, None)
    if isinstance(builtin, type):
        return {n for n in dir(builtin) if not n.startswith("__")}
    return {m for t in trees for m in class_members(t).get(owner, set())}


def _first_line(tree: ast.Module, lines: list[str], test: Callable[[ast.AST], bool]) -> tuple[int, str] | None:
    """The first source line (number, text) holding a node that passes `test`."""
    numbers = [getattr(n, "lineno", 0) for n in ast.walk(tree) if test(n)]
    numbers = [n for n in numbers if isinstance(n, int) and n > 0]
    number = min(numbers, default=0)
    return (number, lines[number - 1]) if 0 < number <= len(lines) else None


def _is_attribute(name: str) -> Callable[[ast.AST], bool]:
    return lambda node: isinstance(node, ast.Attribute) and node.attr == name


def _only_line(lines: list[str]) -> tuple[int, str] | None:
    """The code's single statement line, when it has just one: then it is the failing line."""
    code = [(i, line) for i, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    return code[0] if len(code) == 1 else None


def _short(line: str, limit: int = 100) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = ["RetryHint"]
