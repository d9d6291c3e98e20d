"""CodeGuard and GuardPolicy: the AST policy on many code variants, and refusals in real RLM loops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dspy
import pytest

import rlm_events
from rlm_events.builtins import CodeGuard, GuardPolicy, Violation

DEFAULT = GuardPolicy.default()
STRICT = GuardPolicy.strict()

# (code, kind, name) the default policy must refuse.
CAUGHT = [
    ('import os as o\no.system("ls")', "module", "os"),
    ("import os.path", "module", "os"),
    ("from os import system as s\ns('ls')", "module", "os"),
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
    ("os.system('ls')", "module", "os"),  # a module left in the namespace by earlier code
    ("import sys\nsys.modules['os']", "module", "sys"),
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
        ("print(getattr(obj, attribute_name))", "getattr"),
        ("import pathlib", "pathlib"),
        ("import threading", "threading"),
        ("print(obj.__dict__)", "__dict__"),
        ("import pickle", "pickle"),
    ],
)
def test_strict_adds_file_thread_and_introspection_denials(code, name):
    assert DEFAULT.check(code) == []
    assert name in {v.name for v in STRICT.check(code)}


def test_strict_refuses_computed_getattr_names():
    violations = STRICT.check('getattr(obj, "ev" + "al")')
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


def test_code_that_does_not_parse_is_left_to_the_interpreter():
    assert DEFAULT.check("import os\nx = (") == []


def test_violations_are_ordered_located_and_explained():
    violations = DEFAULT.check("x = 1\nimport os\ny = eval('2')")
    assert [(v.line, v.kind, v.name) for v in violations] == [(2, "module", "os"), (3, "call", "eval")]
    assert isinstance(violations[0], Violation)
    assert str(violations[0]).startswith("line 2: import of module 'os' (")
    assert "denied" in violations[1].reason


def test_policies_are_immutable_and_derive_variants():
    custom = DEFAULT.allow(modules={"sys", "shutil"}).extend(deny_modules={"requests", "shutil.rmtree"})
    assert "requests" in custom.deny_modules and "sys" not in custom.deny_modules
    assert "sys" in DEFAULT.deny_modules  # the preset itself is unchanged
    assert custom.check("import sys\nprint(sys.version)") == []
    assert {v.name for v in custom.check("import shutil\nshutil.rmtree('/x')")} == {"shutil.rmtree"}
    assert custom.check("import shutil\nshutil.copy('a', 'b')") == []
    with pytest.raises(Exception, match="frozen"):
        custom.deny_write_open = False


def test_bad_policies_and_guards_fail_at_construction():
    with pytest.raises(TypeError, match=r"collection of names.*'eval'"):
        GuardPolicy(deny_calls="eval")
    with pytest.raises(ValueError, match="not an identifier"):
        GuardPolicy(deny_calls={"not a name"})
    with pytest.raises(ValueError, match="not a module name"):
        GuardPolicy(deny_modules={"os..path"})
    with pytest.raises(ValueError, match="unknown GuardPolicy preset 'lenient'"):
        CodeGuard("lenient")
    with pytest.raises(TypeError, match="takes a GuardPolicy"):
        CodeGuard(policy=42)  # type: ignore[arg-type]
    assert CodeGuard("strict").policy == STRICT
    assert CodeGuard(policy=DEFAULT).policy == DEFAULT


def _runs(events):
    runs = []
    events.tap(["run_end"], lambda ctx: runs.append(ctx.run))
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
    [record] = runs[0].state["guard"]
    assert record["iteration"] == 0 and record["violations"][0].name == "os"


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


def test_unparseable_code_reaches_the_interpreter(make_rlm):
    rlm, lm = make_rlm(["x = (", "SUBMIT(answer='ok')"])
    CodeGuard("strict").install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="x")
    output = result.trajectory[0]["output"]
    assert output.startswith("[Error]") and "CodeGuard" not in output
    assert "never closed" in output


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
