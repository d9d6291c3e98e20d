"""CodeGuard and GuardPolicy: the AST policy on many code variants, and refusals in real RLM loops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dspy
import pytest

import rlm_events
from rlm_events.builtins import CodeGuard, GuardPolicy, Violation
from rlm_events.context import Run

DEFAULT = GuardPolicy.default()
STRICT = GuardPolicy.strict()

# (code, kind, name) the default policy must refuse.
CAUGHT = [
    ('import os as o\no.system("ls")', "module", "os"),
    ("import os.path\nos.path.exists('/etc/passwd')", "module", "os.path.exists"),
    ("from os import system as s\ns('ls')", "module", "os.system"),
    ('getattr(__builtins__, "ev" + "al")("1")', "attribute", "__builtins__"),
    ('__builtins__["eval"]("1")', "attribute", "__builtins__"),
    ('__import__("os").system("ls")', "call", "__import__"),
    ('import subprocess\nsubprocess.run(["ls"])', "module", "subprocess"),
    ('from subprocess import run as r\nr(["ls"])', "module", "subprocess"),
    ('import importlib\nimportlib.import_module("os")', "module", "importlib"),
    ('open("out.txt", "w").write("x")', "write", "open"),
    ('open("out.txt", mode="a")', "write", "open"),
    ('open("out.txt", "r+")', "write", "open"),
    ("open(path, mode)", "write", "open"),
    ('import io\nio.open("out.txt", "wb")', "write", "io.open"),
    ('from pathlib import Path\nPath("x").write_text("a")', "write", "write_text"),
    ('from pathlib import Path\nPath("x").open("w")', "write", ".open"),
    ('eval("6*7")', "call", "eval"),
    ('run = exec\nrun("x = 1")', "call", "exec"),
    ("print([eval][0]('1'))", "call", "eval"),
    ("compile('1', '<s>', 'eval')", "call", "compile"),
    ("().__class__.__bases__[0].__subclasses__()", "attribute", "__subclasses__"),
    ("f.__globals__['__builtins__']", "attribute", "__globals__"),
    ('getattr(f, "__globals__")', "attribute", "__globals__"),
    ("print.__self__.eval('1')", "attribute", "__self__"),
    ("globals()['x'] = 1", "call", "globals"),
    ("os.system('ls')", "module", "os.system"),  # a module left in the namespace by earlier code
    ("import sys\nsys.modules['os']", "module", "sys.modules"),
    ("import ctypes", "module", "ctypes"),
    ("def f():\n    import socket\n    return socket", "module", "socket"),
]

PASSES = [
    'print("eval is fine in a string")',
    "x = 'exec(compile(__import__))'\nprint(x)",
    "# eval() in a comment\nprint(1)",
    "import re\nprint(re.compile('a+').findall(text))",
    "import json, math, collections\nprint(json.dumps({'pi': math.pi}))",
    "with open('data.txt') as f:\n    print(f.read())",
    "open('data.txt', 'r').read()",
    "import zipfile\nzipfile.ZipFile('a.zip').open('data.csv')",
    "print(getattr(obj, 'upper'))",
    "result = llm_query('please eval this text')",
    "evaluate = 1\nprint(evaluate)",
    "obj.system_prompt = 'x'",
    "SUBMIT(answer=str(sum(range(10))))",
]


@pytest.mark.parametrize(("code", "kind", "name"), CAUGHT)
def test_default_policy_catches(code, kind, name):
    violations = DEFAULT.check(code)
    assert (kind, name) in {(v.kind, v.name) for v in violations}, violations
    assert STRICT.check(code), "strict denies everything default denies"


@pytest.mark.parametrize("code", PASSES)
def test_default_policy_passes(code):
    assert DEFAULT.check(code) == []


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("with open('data.txt') as f:\n    print(f.read())", "open"),
        ("import threading", "threading"),
        ("import logging\nlogging.info('x')", "logging"),
        ("class R:\n    def __repr__(self):\n        return str(self.__dict__)", "__dict__"),
        ("import zipfile\nzipfile.ZipFile('a.zip').namelist()", "zipfile"),
    ],
)
def test_strict_adds_file_thread_and_introspection_denials(code, name):
    assert DEFAULT.check(code) == []
    assert name in {v.name for v in STRICT.check(code)}


@pytest.mark.parametrize(
    ("code", "kind", "name"),
    [
        # denied by default too since the redesign (an allowlist of modules, no computed attribute names)
        ("print(getattr(obj, attribute_name))", "dynamic", "getattr"),
        ("import pathlib", "module", "pathlib"),
        ("import pickle", "module", "pickle"),
        ("print(obj.__dict__)", "attribute", "__dict__"),
    ],
)
def test_both_presets_refuse(code, kind, name):
    for policy in (DEFAULT, STRICT):
        assert (kind, name) in {(v.kind, v.name) for v in policy.check(code)}


def test_strict_refuses_computed_getattr_names():
    violations = STRICT.check('getattr(obj, "ev" + name)')
    assert "dynamic" in {v.kind for v in violations}


def test_inputs_and_tools_shadow_builtins_and_modules_of_the_same_name():
    code = "print(input.upper(), code.count('x'))"
    assert {v.name for v in DEFAULT.check(code)} == {"input", "code"}
    assert DEFAULT.check(code, shadowed={"input", "code"}) == []
    assert DEFAULT.check("import code", shadowed={"code"})  # importing the module is still refused


def test_an_rlm_whose_inputs_are_named_like_builtins_still_works(make_rlm):
    rlm, lm = make_rlm(["print(len(code), input)", "SUBMIT(answer=input)"], signature="code, input -> answer")
    CodeGuard().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(code="abc", input="hi")
    assert result.trajectory[0]["output"] == "3 hi"
    assert result.answer == "hi"


def test_code_that_does_not_parse_is_refused_with_the_parsers_message():
    [violation] = DEFAULT.check("import os\nx = (")
    assert (violation.kind, violation.line) == ("syntax", 2)
    assert "'(' was never closed" in violation.detail and "nothing was run" in violation.detail
    assert "fix the syntax" in violation.hint
    [null] = DEFAULT.check("x = 1\x00")
    assert null.kind == "syntax" and "null bytes" in null.detail


def test_violations_are_ordered_located_and_explained():
    violations = DEFAULT.check("x = 1\nimport os\ny = eval('2')")
    assert [(v.line, v.kind, v.name) for v in violations] == [(2, "module", "os"), (3, "call", "eval")]
    assert isinstance(violations[0], Violation)
    assert str(violations[0]).startswith("line 2: import of module 'os' (")
    assert "denied" in violations[1].reason


def test_policies_are_immutable_and_derive_variants():
    custom = DEFAULT.allow(modules={"sys", "shutil"}).deny(modules={"requests", "shutil.rmtree", "json"})
    assert "sys" in custom.modules and "json" not in custom.modules and "shutil.rmtree" in custom.deny_members
    assert "shutil" not in DEFAULT.modules  # the preset itself is unchanged
    assert custom.check("import sys\nprint(sys.version)") == []
    assert {v.name for v in custom.check("import shutil\nshutil.rmtree('/x')")} == {"shutil.rmtree"}
    assert custom.check("import shutil\nshutil.copy('a', 'b')") == []
    assert {v.name for v in custom.check("import json")} == {"json"}
    assert custom.extend(deny_modules={"sys"}).check("import sys")  # the former name of deny()
    loose = STRICT.allow(calls={"open"}, attributes={"__annotations__", "_secret"}, members={"typing.get_type_hints"})
    assert loose.check("print(open('f').read(), f.__annotations__, o._secret)") == []
    assert loose.check("from typing import get_type_hints") == []
    tight = DEFAULT.deny(calls={"print"}, attributes={"__class__", "name"})
    assert {v.name for v in tight.check("print(x.__class__, x.name)")} == {"print", "__class__", "name"}
    with pytest.raises(Exception, match="frozen"):
        custom.literal_formats = False


def test_bad_policies_and_guards_fail_at_construction():
    with pytest.raises(TypeError, match=r"collection of names.*'print'"):
        GuardPolicy(builtins="print")
    with pytest.raises(ValueError, match="not an identifier"):
        GuardPolicy(builtins={"not a name"})
    with pytest.raises(ValueError, match="not a module name"):
        GuardPolicy(modules={"os..path"})
    with pytest.raises(ValueError, match=r"target_python takes \(major, minor\)"):
        GuardPolicy(target_python=(3,))
    with pytest.raises(ValueError, match="target_python"):
        CodeGuard(target_python=(2, 7))
    with pytest.raises(ValueError, match="unknown GuardPolicy preset 'lenient'"):
        CodeGuard("lenient")
    with pytest.raises(TypeError, match="takes a GuardPolicy"):
        CodeGuard(policy=42)  # type: ignore[arg-type]
    assert CodeGuard("strict").policy == STRICT
    assert CodeGuard(policy=DEFAULT).policy == DEFAULT


def _runs(events):
    runs = []
    events.tap(["run_end"], lambda ctx: runs.append(ctx.run), inline=True)
    return runs


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_refused_code_never_runs_the_lm_sees_why_and_recovers(make_rlm, tmp_path, mode):
    marker = tmp_path / "ran"
    steps = [
        f"import os as o\no.system('touch {marker}')",
        "print(len(text))",
        "SUBMIT(answer=str(len(text)))",
    ]
    rlm, lm = make_rlm(steps)
    events = rlm_events.instrument(rlm)
    CodeGuard().install(events)
    runs = _runs(events)
    with dspy.context(lm=lm):
        result = rlm(text="hello") if mode == "sync" else asyncio.run(rlm.acall(text="hello"))

    assert not marker.exists()
    refused = result.trajectory[0]["output"]
    assert refused.startswith("[Error] CodeGuard refused to run this code; nothing was executed.")
    assert "line 1: import of module 'os'" in refused
    second_prompt = str(lm.history[1]["messages"])
    assert "CodeGuard refused" in second_prompt  # the LM saw the refusal before writing step 2
    assert result.trajectory[1]["output"] == "5"
    assert result.answer == "5"
    [record] = CodeGuard.refusals(runs[0])
    assert record["iteration"] == 0 and record["violations"][0].name == "os"
    assert runs[0].state["guard"] == [record]  # the documented per-run state the accessor reads


def test_refusals_are_read_through_the_guard_per_run_and_per_context(make_rlm):
    rlm, lm = make_rlm(["print(1)", "import os", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    CodeGuard().install(events)
    seen = []
    events.tap(["post_execution"], lambda ctx: seen.append(len(CodeGuard.refusals(ctx))), inline=True)
    runs = _runs(events)
    with dspy.context(lm=lm):
        assert rlm(text="x").answer == "ok"
    assert seen == [0, 1, 1]  # from a context, as the run goes
    refusals = CodeGuard.refusals(runs[0])
    assert [r["iteration"] for r in refusals] == [1] and refusals[0]["code"] == "import os"
    refusals.clear()  # a copy: the run's own record is untouched
    assert len(CodeGuard.refusals(runs[0])) == 1
    unguarded = Run(id="unguarded", module=rlm, started_at=datetime.now(tz=timezone.utc))
    assert CodeGuard.refusals(unguarded) == []  # a run no guard checked


def test_write_mode_open_is_refused_and_reading_still_works(make_rlm, tmp_path):
    target = tmp_path / "out.txt"
    source = tmp_path / "in.txt"
    source.write_text("data")
    steps = [f"open({str(target)!r}, 'w').write('x')", f"print(open({str(source)!r}).read())", "SUBMIT(answer='ok')"]
    rlm, lm = make_rlm(steps)
    CodeGuard().install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert not target.exists()
    assert "opens a file for writing" in result.trajectory[0]["output"]
    assert result.trajectory[1]["output"] == "data"


def test_code_rewritten_after_the_guard_is_checked_again(make_rlm):
    rlm, lm = make_rlm(["print('safe')", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    CodeGuard().install(events)

    @events.middleware("pre_execution")
    def sneaky(ctx, next):
        if ctx.iteration == 0:
            ctx.code = "import subprocess\nprint('ran')"
        return next(ctx)

    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"].startswith("[Error] CodeGuard refused")
    assert "subprocess" in result.trajectory[0]["output"]


def test_unparseable_code_is_refused_with_the_parsers_message(make_rlm, tmp_path):
    marker = tmp_path / "ran"
    rlm, lm = make_rlm([f"open({str(marker)!r}, 'x')\nx = (", "SUBMIT(answer='ok')"])
    CodeGuard("strict").install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="x")
    output = result.trajectory[0]["output"]
    assert output.startswith("[Error] CodeGuard refused to run this code; nothing was executed.")
    assert "line 2: this is not valid Python" in output and "never closed" in output
    assert "fix the syntax" in output
    assert not marker.exists()
    assert result.answer == "ok"


def test_the_guard_leaves_a_result_decided_earlier_alone(make_rlm):
    rlm, lm = make_rlm(["import os", "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    events.use("pre_execution", lambda ctx, next: (ctx.skip("cached output"), next(ctx))[1])
    CodeGuard().install(events)
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "cached output"


def test_module_readme_names_are_exported():
    from rlm_events import builtins

    for name in ("CodeGuard", "GuardPolicy", "Budget", "RetryHint", "HistoryTrimmer", "ToolCallCache"):
        assert name in builtins.__all__
    assert Path(builtins.__file__).parent.name == "builtins"


# --- the allowlist redesign: what is reached through allowed modules, names in strings, own objects, grammar ----


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("import uuid\nuuid.os.system('id')", "uuid.os"),
        ("import random\nrandom._os.system('id')", "random._os"),
        ("import collections\ncollections._sys.modules", "collections._sys"),
        ("from uuid import os", "uuid.os"),
        ("import json\njson.codecs.open('x', 'w')", "codecs.open"),
        ("import json\njson.decoder.re", "json.decoder"),
        ("import posix", "posix"),
        ("import _socket", "_socket"),
        ("from _pickle import loads", "_pickle"),
        ("import string\nstring.Formatter().get_field('0.x', [1], {})", "string.Formatter"),
        ("import io\nio.FileIO('x')", "io.FileIO"),
        ("import xml\nxml.dom.minidom", "xml"),
        ("import urllib.request", "urllib.request"),
        ("from . import x", "."),
        ("from json import *", "json"),
    ],
)
def test_only_allowlisted_modules_and_their_public_non_module_members(code, name):
    for policy in (DEFAULT, STRICT):
        found = policy.check(code)
        assert ("module", name) in {(v.kind, v.name) for v in found}, found
        assert all(v.hint for v in found)


@pytest.mark.parametrize(
    "code",
    [
        "import collections\nprint(collections.abc.Mapping)",  # a module-valued member that is allowed
        "import concurrent.futures\nconcurrent.futures.ThreadPoolExecutor",
        "import xml.etree.ElementTree as ET\nET.fromstring('<a/>')",
        "from collections import abc\nisinstance(x, abc.Mapping)",
        "import json\ndef f():\n    return json.loads('1')",
        "from urllib.parse import urlparse\nurlparse(u).netloc",
    ],
)
def test_allowed_modules_work_as_written(code):
    assert DEFAULT.check(code) == []


def test_a_module_object_cannot_travel_in_a_value():
    for code in ("import json\nm = json\nm.codecs", "import json as j\nitems = [j]", "print(json)"):
        assert "module" in {v.kind for v in DEFAULT.check(code)}, code
    assert DEFAULT.check("import json\nprint(json.loads('1'))") == []
    assert DEFAULT.check("json = load()\nprint(json)") == []  # a variable of that name, bound here


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("print('{0.__globals__}'.format(f))", "__globals__"),
        ("print('{x.__init__.__globals__[os]}'.format(x=o))", "__globals__"),
        ("print('{0:{1.__class__.__mro__}}'.format(1, 2))", "__mro__"),
        ("import operator\noperator.attrgetter('a.__globals__')(f)", "__globals__"),
        ("from operator import methodcaller\nmethodcaller('__subclasses__')(object)", "__subclasses__"),
        ("import operator\noperator.attrgetter(name)(f)", "operator.attrgetter"),
        ("import operator\nget = operator.attrgetter", "operator.attrgetter"),
        ("import functools\nfunctools.reduce(getattr, ['a'], f)", "getattr"),
        ("match f:\n    case object(__globals__=g):\n        pass", "__globals__"),
        ("getattr(f, '__glo' + 'bals__')", "__globals__"),
        ("getattr(f, ''.join(map(chr, [95, 95, 99, 111, 100, 101, 95, 95])))", "__code__"),
        ("n = '__edoc__'[::-1]\ngetattr(f, n)", "__code__"),
        ("getattr(f, name_from_data)", "getattr"),
        ("vars(type)['x']", "__dict__"),
        ("x = '__builtins__'", "__builtins__"),
    ],
)
def test_attribute_names_cannot_be_smuggled_in_strings_or_patterns(code, name):
    for policy in (DEFAULT, STRICT):
        assert name in {v.name for v in policy.check(code)}, policy.check(code)


@pytest.mark.parametrize(
    "code",
    [
        "for field in ('title', 'year'):\n    print(getattr(movie, field))",
        "fields = ['a', 'b']\nprint({f: getattr(rec, f) for f in fields})",
        "names = 'a b c'.split()\nfor n in names:\n    print(getattr(rec, n, None))",
        "import dataclasses\nfor f in dataclasses.fields(rec):\n    print(getattr(rec, f.name))",
        "print(hasattr(obj, name_from_data))",  # a bool only
        "print('{0.name} {0[key]}'.format(row))",
        "print(f'{obj.__class__.__name__}')",
        "import operator\nrows.sort(key=operator.attrgetter('score', 'name'))",
    ],
)
def test_attribute_names_the_code_spells_out_pass(code):
    assert STRICT.check(code) == []


def test_the_codes_own_objects():
    own = (
        "class P:\n"
        "    def __init__(self, **kw):\n"
        "        self._cache = {}\n"
        "        for k, v in kw.items():\n"
        "            setattr(self, k, v)\n"
        "    def get(self, name):\n"
        "        return getattr(self, name)\n"
        "    def show(self):\n"
        "        return dict(self.__dict__), vars(self)\n"
        "p = P(a=1)\n"
        "print(p.__dict__, vars(p), p._cache, getattr(p, some_name))"
    )
    assert DEFAULT.check(own) == []
    # strict: inside a method `self` may be any object (P.get(type, '__subclasses__')), so no introspection of it
    assert {(v.line, v.name) for v in STRICT.check(own)} == {(7, "getattr"), (9, "__dict__")}
    assert {v.name for v in DEFAULT.check("x._private\nother.__dict__")} == {"_private", "__dict__"}
    called_on_class = "class A:\n    def g(self):\n        return self.__dict__\nA.g(type)"
    assert "A.g" in {v.name for v in DEFAULT.check(called_on_class)}
    assert DEFAULT.check("class B(A):\n    def __init__(self):\n        A.__init__(self)") == []
    tricky = "class X:\n    def __new__(cls):\n        return json\nx = X()\nx.__dict__"  # not a plain instance
    assert "__dict__" in {v.name for v in STRICT.check(tricky)}


def test_string_annotations_are_checked_as_code():
    assert "__import__" in {v.name for v in DEFAULT.check("def f(x: \"__import__('os').system('id')\"): pass")}
    assert "exec" in {v.name for v in DEFAULT.check("class C:\n    x: 'list[exec(\"1\")]'")}
    assert DEFAULT.check("def f(x: 'list[int]') -> 'dict[str, int]': pass") == []
    assert {v.kind for v in DEFAULT.check("def f(x: 'not ( python'): pass")} == {"dynamic"}


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("import gzip\ngzip.open('x.gz', 'wb')", "gzip.open"),
        ("import tarfile\ntarfile.open('a.tar', mode='w:gz')", "tarfile.open"),
        ("import zipfile\nzipfile.ZipFile('a.zip', 'a')", "zipfile.ZipFile"),
        ("import zipfile\nwith zipfile.ZipFile('a.zip') as z:\n    z.extract('a')", "extract"),
        ("open('x', **{'mode': 'w'})", "open"),
        ("o = open\no('x', 'w')", "open"),
        ("m = 'w'\nopen('x', m)", "open"),
        ("open('x', opener=my_opener)", "open"),
        ("import logging\nlogging.basicConfig(filename='x.log')", "logging.basicConfig"),
        ("import logging\nlogging.basicConfig(**cfg)", "logging.basicConfig"),
    ],
)
def test_file_writes_that_do_not_go_through_a_literal_open(code, name):
    assert ("write", name) in {(v.kind, v.name) for v in DEFAULT.check(code)}
    assert STRICT.check(code)


def test_default_reads_files_and_archives():
    reads = (
        "import gzip, zipfile\nprint(gzip.open('a.gz').read(), zipfile.ZipFile('a.zip').namelist(), open('f', 'rb'))"
    )
    assert DEFAULT.check(reads) == []
    assert STRICT.check(reads)


def test_code_is_parsed_with_the_target_grammar():
    match = "match x:\n    case 1:\n        pass"
    [old] = DEFAULT.check(match, target_python=(3, 9))
    assert old.kind == "syntax" and "not valid Python 3.9" in old.detail
    assert DEFAULT.check(match, target_python=(3, 10)) == []
    assert DEFAULT.with_target((3, 9)).check(match)
    newer = "type Alias = list[int]"
    host = sys.version_info[:2]
    if host < (3, 12):
        [skew] = DEFAULT.check(newer, target_python=(3, 13))
        assert skew.kind == "syntax"
        assert f"the guard runs on Python {host[0]}.{host[1]} and cannot parse this code" in skew.detail
        assert "the sandbox runs Python 3.13" in skew.detail and "`type X = ...`" in skew.hint
        assert DEFAULT.check(newer)[0].detail.startswith(f"this is not valid Python {host[0]}.{host[1]}")
    else:  # the host parses it, so it is checked like any other code
        assert DEFAULT.check(newer, target_python=(3, 13)) == []
        assert DEFAULT.check("type A = __import__('os')", target_python=(3, 13))


@pytest.mark.parametrize("first", ["rlm_events.guard", "rlm_events.builtins"])
def test_the_guard_is_its_own_package_and_the_builtins_reexport_it(first):
    """Either package can be imported first (a fresh interpreter each), and both name the same objects."""
    both = (
        f"import {first}\n"
        "from rlm_events import builtins, guard\n"
        "from middleware.errors import middleware_name\n"
        "assert (builtins.CodeGuard, builtins.GuardPolicy, builtins.Violation) == "
        "(guard.CodeGuard, guard.GuardPolicy, guard.Violation)\n"
        "print(middleware_name(guard.CodeGuard()))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run([sys.executable, "-c", both], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rlm_events.guard.CodeGuard"  # the name errors, notes and telemetry show


def test_the_guard_infers_the_sandboxs_python(make_rlm):
    from rlm_events.guard import PYODIDE_PYTHON, interpreter_python

    assert interpreter_python(dspy.RLM("text -> answer")) == PYODIDE_PYTHON  # DSPy's default Deno/Pyodide sandbox
    rlm, _ = make_rlm(["SUBMIT(answer='x')"])
    assert interpreter_python(rlm) is None  # a host-Python interpreter: the guard's own grammar
    assert CodeGuard(target_python=(3, 10)).policy.target_python == (3, 10)
    assert CodeGuard().infer_target and not CodeGuard(target_python=None).infer_target


def test_refusals_say_what_to_do_instead():
    from rlm_events.guard import refusal

    text = refusal(DEFAULT.check("import subprocess\nimport logging\nlogging.os"), DEFAULT)
    assert "there is no shell here" in text and "which is not allowed" in text
    assert "the allowed modules (re, json, math" in text


def test_a_reexported_escape_is_refused_in_a_real_rlm_and_the_lm_recovers(make_rlm, tmp_path):
    marker = tmp_path / "ran"
    steps = [
        f"import logging\nlogging.os.system('touch {marker}')",
        "import random\nrandom._os.system('id')",
        "words = text.split()\nprint(len(words))",
        "SUBMIT(answer=str(len(words)))",
    ]
    rlm, lm = make_rlm(steps)
    events = rlm_events.instrument(rlm)
    CodeGuard("default").install(events)
    runs = _runs(events)
    with dspy.context(lm=lm):
        result = rlm(text="one two three")
    assert not marker.exists()
    first, second = result.trajectory[0]["output"], result.trajectory[1]["output"]
    assert first.startswith("[Error] CodeGuard refused") and "logging.os is the module 'os'" in first
    assert "a private member of random" in second
    assert "CodeGuard refused" in str(lm.history[1]["messages"])
    assert result.trajectory[2]["output"] == "3" and result.answer == "3"
    assert [r["iteration"] for r in CodeGuard.refusals(runs[0])] == [0, 1]


def test_strict_runs_a_thread_pool_around_llm_query_in_a_real_rlm(make_rlm):
    from rlm_events.testing import ScriptedLM

    sub = ScriptedLM(["unused"], sub="summary")
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "class Chunk:\n"
        "    def __init__(self, text):\n"
        "        self.text = text\n"
        "    def __repr__(self):\n"
        "        return f'{self.__class__.__name__}({self.text!r})'\n"
        "chunks = [Chunk(w) for w in text.split()]\n"
        "with ThreadPoolExecutor(max_workers=2) as ex:\n"
        "    out = list(ex.map(lambda c: llm_query(c.text), chunks))\n"
        "print(out, chunks[0])"
    )
    rlm, lm = make_rlm([code, "SUBMIT(answer=str(len(out)))"], sub_lm=sub)
    CodeGuard("strict").install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="a b")
    assert result.trajectory[0]["output"] == "['summary', 'summary'] Chunk('a')"
    assert result.answer == "2"


def test_names_imported_by_earlier_steps():
    assert "json.codecs" not in {v.name for v in DEFAULT.check("j.codecs.open('x')")}  # j: unknown
    later = DEFAULT.check("j.codecs.open('x')", imported={"j": "json"})
    assert "codecs.open" in {v.name for v in later}
    # a variable named like an allowed module, from an earlier step that imported nothing of that name
    assert DEFAULT.check("print(html[:10], types)", imported={}) == []
    assert {v.name for v in DEFAULT.check("print(html[:10])")} == {"html"}  # earlier steps unknown
    assert DEFAULT.check("print(json)", imported={"json": "json"})


def test_the_guard_remembers_what_earlier_steps_imported(make_rlm):
    steps = ["import json as j\nprint(j.dumps(1))", "print(j.codecs)", "html = '<b>'\nprint(1)", "print(html)"]
    rlm, lm = make_rlm([*steps, "SUBMIT(answer='ok')"])
    events = rlm_events.instrument(rlm)
    CodeGuard("strict").install(events)
    runs = _runs(events)
    with dspy.context(lm=lm):
        result = rlm(text="x")
    outputs = [e["output"] for e in result.trajectory]
    assert outputs[0] == "1"
    assert outputs[1].startswith("[Error] CodeGuard refused") and "json.codecs" in outputs[1]
    assert outputs[3] == "<b>"
    assert runs[0].state["guard_imports"] == {"j": "json"}


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("import functools, gzip\nfunctools.partial(gzip.open, 'x.gz', 'wb')()", "gzip.open"),
        ("import gzip\nlist(map(gzip.open, ['x.gz'], ['wb']))", "gzip.open"),
        ("import logging, functools\nfunctools.partial(logging.basicConfig, filename='x')()", "logging.basicConfig"),
        ("import zipfile\nzipfile.ZipFile('a.zip').extract('a', '/')", "extract"),
        ("import zipfile\ne = zipfile.ZipFile('a.zip').extract", "extract"),
        ("import tarfile\ntarfile.TarFile.gzopen('a.tgz', 'w')", "tarfile.TarFile.gzopen"),
        ("import tarfile\nt = tarfile.open('a.tar')\nt.makefile(t.getmember('a'), '/tmp/a')", "makefile"),
    ],
)
def test_writers_cannot_be_passed_around_or_reached_sideways(code, name):
    assert ("write", name) in {(v.kind, v.name) for v in DEFAULT.check(code)}


def test_module_entry_points_and_forward_refs_are_refused():
    for code, name in (
        ("import calendar\ncalendar.main(['x'])", "calendar.main"),
        ("import base64\nbase64.main()", "base64.main"),
        ("import typing\ntyping.ForwardRef(\"__import__('os')\")", "typing.ForwardRef"),
    ):
        assert name in {v.name for v in STRICT.check(code)}
