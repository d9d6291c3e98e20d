"""Escapes written with the guard's source in hand (issue 21): each class of hole in several variants. Never
executed.

Categories: scopes, own-objects, library-access, format-strings, file-readers, reads-to-writes, network-loops,
module-patching, annotations.
"""

from __future__ import annotations

INFORMED: list[tuple[str, str]] = [
    # --- scopes: a name bound somewhere else must not make a free use look bound ------------------------------
    ("scopes", "f = lambda __builtins__: 0\n__builtins__['__import__']('os').system('id')"),
    ("scopes", "def f():\n    global __loader__\n__loader__.load_module('os').system('id')"),
    ("scopes", "try:\n    pass\nexcept Exception as __builtins__:\n    pass\nprint(__builtins__['eval'])"),
    ("scopes", "def f(__spec__=None):\n    return 1\nprint(__spec__.loader.load_module('os'))"),
    ("scopes", "g = [0 for __builtins__ in range(1)]\nprint(__builtins__['exec'])"),
    ("scopes", "def f(*, __loader__=1):\n    pass\n__loader__.load_module('posix').system('id')"),
    ("scopes", "import json as __builtins__\nprint(__builtins__.__dict__)"),
    ("scopes", "class __builtins__:\n    pass\nprint(__builtins__)"),
    ("scopes", "g = lambda os: os\nos.system('id')"),
    ("scopes", "def helper(subprocess=None):\n    return subprocess\nsubprocess.run(['id'])"),
    ("scopes", "def f():\n    import json as os\nos.system('id')"),
    ("scopes", "class K:\n    import json as os\nos.system('id')"),
    ("scopes", "if False:\n    os = None\nos.system('id')"),
    ("scopes", "for os in []:\n    pass\nos.system('id')"),
    ("scopes", "x = [os for os in range(3)]\nos.system('id')"),
    ("scopes", "try:\n    1 / 0\nexcept ZeroDivisionError as sys:\n    pass\nsys.modules['os'].system('id')"),
    ("scopes", "def f():\n    global os\n    os = 1\nos.system('id')"),
    ("scopes", "os = 1\ndel os\nos.system('id')"),
    ("scopes", "class C:\n    os = 1\n    def m(self):\n        return os.system('id')\nC().m()"),
    ("scopes", "with ctx as (a, b):\n    pass\nif a:\n    shutil = a\nshutil.rmtree('/data')"),
    ("scopes", "match cmd:\n    case {'x': os}:\n        pass\nos.system('id')"),
    ("scopes", "(lambda pathlib=None: pathlib)()\npathlib.Path('/etc/passwd').read_text()"),
    # --- own objects: a class whose construction or decoration yields another object -------------------------
    ("own-objects", "class C:\n    __new__ = lambda cls, *a: target\nprint(vars(C()))"),
    ("own-objects", "class C:\n    def __new__(cls):\n        return target\nprint(getattr(C(), name))"),
    ("own-objects", "def deco(cls):\n    return target\n@deco\nclass C:\n    pass\nc = C()\nprint(getattr(c, name))"),
    (
        "own-objects",
        "import functools\n@functools.lru_cache\nclass C:\n    pass\nc = C()\nprint(c.__dict__)",
    ),
    ("own-objects", "class M(type):\n    pass\nclass C(metaclass=M):\n    pass\nprint(vars(C()))"),
    ("own-objects", "class C:\n    def __getattr__(self, n):\n        return 1\nc = C()\nprint(getattr(c, name))"),
    (
        "own-objects",
        "class C:\n    def get(self, name):\n        return getattr(self, name)\nget = C.get\nprint(get(target, name))",
    ),
    (
        "own-objects",
        "class C:\n    def get(self, name):\n        return getattr(self, name)\np = C()\n"
        "print(type(p).get(target, name))",
    ),
    (
        "own-objects",
        "class C:\n    def get(self, name):\n        return getattr(self, name)\nK = C\nprint(K.get(target, name))",
    ),
    (
        "own-objects",
        "class C:\n    def get(self, name):\n        return getattr(self, name)\nprint(vars(C)['get'](target, name))",
    ),
    (
        "own-objects",
        "class C:\n    def get(self, name):\n        return vars(self)[name]\np = C()\n"
        "print(p.__class__.get(target, name))",
    ),
    (
        "own-objects",
        "class C:\n    def put(self, k, v):\n        setattr(self, k, v)\nimport functools\n"
        "functools.partial(C.put, json_module)('dumps', print)",
    ),
    (
        "own-objects",
        "import operator\nclass C:\n    def get(self, name):\n        return getattr(self, name)\n"
        "operator.methodcaller('get', '__globals__')",
    ),
    (
        "own-objects",
        "def wrap(f):\n    return lambda s, n: f(target, n)\nclass C:\n    @wrap\n    def get(self, name):\n"
        "        return getattr(self, name)\nprint(C().get(name))",
    ),
    (
        "own-objects",
        "class C:\n    @classmethod\n    def get(cls, name):\n        return getattr(cls, name)\nprint(C.get(name))",
    ),
]
