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
    (
        "library",
        "import functools\ndef deco(fn):\n    @functools.wraps(fn)\n    def inner(*a, **k):\n        return fn(*a, **k)\n    return inner\n@deco\ndef add(a, b):\n    return a + b\nprint(add(1, 2), add.__name__)",
    ),
    (
        "library",
        "import dataclasses\nP = dataclasses.make_dataclass('P', [('x', int), ('y', int)])\np = P(1, 2)\nprint(dataclasses.asdict(p))",
    ),
    (
        "library",
        "from dataclasses import dataclass\n@dataclass\nclass Pt:\n    x: int\n    y: int\nmatch Pt(1, 2):\n    case Pt(x, y):\n        print(x, y)",
    ),
    (
        "library",
        "class V:\n    __match_args__ = ('a', 'b')\n    def __init__(self, a, b):\n        self.a, self.b = a, b\nmatch V(1, 2):\n    case V(a, b):\n        print(a + b)",
    ),
    ("library", "row = {'name': 'x', 'n': 3}\nprint('{name}: {n}'.format(**row))\nprint('{:.2f}'.format(3.14159))"),
    (
        "library",
        "tmpl = 'Summarise {topic} in {n} words'\nprompts = [tmpl.format(topic=t, n=50) for t in topics]\nprint(prompts[:2])",
    ),
    (
        "library",
        "import logging\nlogging.basicConfig(level=logging.INFO, format='{levelname}: {message}', style='{')\nlogging.info('started')",
    ),
    (
        "library",
        "import functools\n@functools.singledispatch\ndef show(x):\n    return str(x)\n@show.register\ndef _(x: int):\n    return f'int {x}'\nprint(show(3), show('a'))",
    ),
    (
        "library",
        "import typing\ndef f(x: int, y: list[str]) -> dict[str, int]:\n    return {}\nprint(typing.get_type_hints(f))",
    ),
    (
        "library",
        "from typing import get_type_hints\nfrom dataclasses import dataclass\n@dataclass\nclass Item:\n    name: str\n    qty: int\nprint(get_type_hints(Item))",
    ),
    ("library", "print(type(3.0).__name__, type(x) is int, isinstance(x, (int, float)))"),
    (
        "library",
        "import json\nclass Enc(json.JSONEncoder):\n    def default(self, o):\n        return str(o)\nprint(json.dumps({'a': {1, 2}}, cls=Enc))",
    ),
    ("stdlib", "import sys\nprint('warning: empty input', file=sys.stderr)"),
    ("stdlib", "import sys\nprint(sys.getsizeof(data), sys.version_info >= (3, 10), sys.version_info.major)"),
    ("stdlib", "import sys\nprint(sys.maxsize, sys.float_info.epsilon, sys.platform)"),
    (
        "stdlib",
        "import os.path\nprint(os.path.join('data', 'x.csv'), os.path.splitext(name)[0], os.path.basename(path))",
    ),
    ("stdlib", "from os.path import basename, splitext\nprint([splitext(basename(p))[0] for p in paths])"),
    ("stdlib", "import os.path\nexts = {os.path.splitext(f)[1] for f in files}\nprint(sorted(exts))"),
]

# Analysis code with numpy and pandas, for GuardPolicy.data_analysis().
DATA_ORDINARY: list[tuple[str, str]] = [
    (
        "data",
        "import pandas as pd\nimport io\ndf = pd.read_csv(io.StringIO(text))\nprint(df.describe())\nprint(df.to_csv(index=False)[:500])",
    ),
    (
        "data",
        "import numpy as np\na = np.array(values, dtype=float)\nprint(a.mean(), a.std(), np.percentile(a, [25, 50, 75]))",
    ),
    ("data", "import numpy as np\nm = np.array([[1, 2], [3, 4]])\nprint(np.linalg.inv(m), np.linalg.norm(m))"),
    ("data", "import numpy as np\nrng = np.random.default_rng(0)\nprint(rng.normal(size=5).round(2))"),
    (
        "data",
        "import pandas as pd\ndf = pd.DataFrame(records)\nprint(df.groupby('author')['n'].sum().sort_values(ascending=False).head(10))",
    ),
    ("data", "import pandas as pd\ns = pd.Series(['a1', 'b22'])\nprint(s.str.extract(r'(\\d+)'))"),
    (
        "data",
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\nprint(df.to_json(orient='records'), df.to_string())",
    ),
    ("data", "import pandas as pd\nimport io\ndf = pd.read_json(io.StringIO(payload))\nprint(df.dtypes)"),
]
