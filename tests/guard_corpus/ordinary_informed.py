"""Ordinary analysis code next to the informed escapes (issue 21): what the closed classes must keep allowing, and
code real LMs wrote that the guard used to refuse. Never executed here."""

# ruff: noqa: E501  (data: snippets are kept on one line, as the LM wrote them)
from __future__ import annotations

ORDINARY_INFORMED: list[tuple[str, str]] = [
    ("scopes", "for code in codes:\n    print(code, len(code))"),
    ("scopes", "total = 0\nfor row in rows:\n    total += row['n']\nprint(total)"),
    (
        "scopes",
        "def score(item, weight=2):\n    return item['v'] * weight\nprint(sorted(items, key=lambda it: score(it)))",
    ),
    (
        "scopes",
        "try:\n    value = int(raw)\nexcept ValueError as err:\n    print('bad', err)\n    value = 0\nprint(value)",
    ),
    ("scopes", "import json\ndef load(s):\n    return json.loads(s)\nprint([load(x) for x in lines])"),
    (
        "scopes",
        "counts = {}\ndef bump(k):\n    global counts\n    counts[k] = counts.get(k, 0) + 1\nfor w in words:\n    bump(w)\nprint(counts)",
    ),
    ("scopes", "with open_doc as doc:\n    print(doc)\n"),
    ("scopes", "type_ = 'x'\nid_ = 3\nprint(type_, id_, [str(i) for i in range(id_)])"),
    (
        "scopes",
        "def outer():\n    data = [1, 2]\n    def inner():\n        return sum(data)\n    return inner()\nprint(outer())",
    ),
    (
        "own-objects",
        "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n    y: int\np = P(1, 2)\nprint(vars(p), p.__dict__)",
    ),
    (
        "own-objects",
        "class Base:\n    def __init__(self, **kw):\n        for k, v in kw.items():\n            setattr(self, k, v)\nclass Sub(Base):\n    def __init__(self, **kw):\n        super().__init__(**kw)\ns = Sub(a=1)\nprint(s.__dict__)",
    ),
    (
        "own-objects",
        "class Rec:\n    def __init__(self, d):\n        self.d = d\n    def has(self, k):\n        return hasattr(self, k)\nr = Rec({})\nprint(r.has('d'), isinstance(r, Rec), vars(r))",
    ),
    (
        "own-objects",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\np = Point(1, 2)\nprint(p, vars(p))",
    ),
    ("own-objects", "from types import SimpleNamespace\nns = SimpleNamespace(a=1, b=2)\nprint(vars(ns))"),
    ("own-objects", "import types\nprint(vars(types.SimpleNamespace(x=1, y=[2])))"),
]
