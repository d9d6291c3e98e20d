"""The guard reads which names each scope binds off the syntax tree (no second compile by `symtable`): for every use of
a name, its answers must be the ones Python's `symtable` gives, on the guard corpus, on this library's own source
and on snippets made to hit the corners (private-name mangling, class bodies inside functions, two scopes on one
line); code the tree cannot answer for must be sent to `symtable`."""

from __future__ import annotations

import ast
import symtable
import sys
from pathlib import Path

import pytest
from guard_corpus.escapes import ESCAPES
from guard_corpus.escapes_informed import DATA_ESCAPES, INFORMED
from guard_corpus.ordinary import ORDINARY
from guard_corpus.ordinary_informed import DATA_ORDINARY, ORDINARY_INFORMED

import rlm_events
from rlm_events.guard._scopes import Scopes

CORNERS = [
    "class C:\n    __x = 1\n    def m(self):\n        __y = 2\n        return __y, self.__x, __x\n",
    "class _:\n    __x = 1\n    def m(self):\n        __x = 2\n        return __x\n",
    "def f():\n    x = 1\n    class C:\n        y = x\n        x = 2\n        def g(self):\n            return x, y\n"
    "    return C\n",
    "def f(a):\n    g = lambda: a\n    h = lambda: a\n    return g, h, [a for a in 'ab'] + [b for b in a]\n",
    "def f():\n    try:\n        pass\n    except Exception as e:\n        del e\n    match 1:\n"
    "        case {'k': v, **rest}: return v, rest\n        case [*xs]: return xs\n",
    "import os.path as p, json\nfrom re import compile as c\ndef f(n=lambda: p):\n    import math\n"
    "    return [math for _ in n()], json, c\n",
    "def f():\n    if (n := 3) > 2:\n        return n, [n for _ in 'a']\n    return (m := 1), lambda: m\n",
    "class A:\n    k = 1\n    v = [k for _ in range(2)]\n    def m(self, k=k):\n        return k\n",
]
INLINED = (ast.ListComp, ast.SetComp, ast.DictComp)
NEEDS_SYMTABLE = [
    "def f():\n    global x\n    x = 1\n",
    "def f():\n    x = 1\n    def g():\n        nonlocal x\n        x = 2\n",
    "[y := 1 for _ in range(2)]\n",
    "[x for x in (y := [1, 2])]\n",
    "[(x := 1) for x in 'ab']\n",
    "class C:\n    v = [(y := 1) for _ in 'a']\n",
    "def f(x):\n    return [y for y in x if (z := y)], z\n",
    "from os import *\n",
    "from __future__ import annotations\ndef f(x: int) -> int:\n    return x\n",
    "def f(a, a):\n    pass\n",
    "class C:\n    def m(self):\n        return __class__\n",
]


def _snippets() -> list[str]:
    corpus = ESCAPES + INFORMED + DATA_ESCAPES + ORDINARY + ORDINARY_INFORMED + DATA_ORDINARY
    source = sorted(Path(rlm_events.__file__).parent.rglob("*.py"))
    future = "from __future__ import annotations\n"  # (which alone sends a module to symtable)
    modules = [path.read_text(encoding="utf-8").replace(future, "") for path in source]
    return [code for _, code in corpus] + modules + CORNERS


def _scope_key(scopes: Scopes, scope: ast.AST | None) -> tuple[str, int, int] | None:
    if scope is None:
        return None
    return type(scope).__name__, getattr(scope, "lineno", 0), getattr(scope, "col_offset", 0)


def test_the_tree_answers_as_symtable_does() -> None:
    compared = 0
    for code in _snippets():
        try:
            tree = ast.parse(code)
            table = symtable.symtable(code, "<step>", "exec")
        except (SyntaxError, ValueError):
            continue
        from_tree = Scopes(tree)
        if from_tree.needs_symtable:
            continue
        from_tree.use_tree()
        from_table = Scopes(ast.parse(code))
        from_table.use_symtable(table)
        assert from_tree.module_names() == from_table.module_names(), code
        names = [(a, b) for a, b in zip(from_tree.nodes, from_table.nodes, strict=True) if isinstance(a, ast.Name)]
        for ours, theirs in names:
            assert isinstance(theirs, ast.Name)
            got = (_scope_key(from_tree, from_tree.function_scope(ours)), from_tree.class_local(ours))
            want = (_scope_key(from_table, from_table.function_scope(theirs)), from_table.class_local(theirs))
            assert got == want, f"{ours.id!r} on line {ours.lineno} of:\n{code}"
            compared += 1
    assert compared > 5_000  # the comparison ran on a real amount of code (fewer on 3.12+: see INLINED)


@pytest.mark.parametrize("code", CORNERS)
def test_the_corners_are_read_off_the_tree(code: str) -> None:
    tree = ast.parse(code)
    inlined = sys.version_info >= (3, 12) and any(isinstance(n, INLINED) for n in ast.walk(tree))
    assert Scopes(tree).needs_symtable == inlined  # (3.12+ inlines list/set/dict comprehensions: symtable decides)


@pytest.mark.parametrize("code", NEEDS_SYMTABLE)
def test_what_the_tree_cannot_tell_goes_to_symtable(code: str) -> None:
    assert Scopes(ast.parse(code)).needs_symtable
