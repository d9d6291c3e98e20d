"""The guard's run-time layer: escapes whose names are computed at run time, refused as they happen, in real
dspy.RLM calls (a ScriptedLM writes the code) on the in-process interpreter and in the sandbox; ordinary analysis
code still runs.

In-process, the layer is asked for with `InProcessInterpreter(guard=...)` or comes with a CodeGuard checking the
run. In the sandbox it comes with the run's CodeGuard; the escapes there are run under a CodeGuard whose static
pass lets everything through (`StaticPassMissed`), so that what stops them is the run-time layer alone.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events.builtins import CodeGuard
from rlm_events.guard import RuntimeRefusal
from rlm_events.guard._runtime_policy import RUNTIME_POLICY_KEY
from rlm_events.sandbox import Sandboxed
from rlm_events.testing import InProcessInterpreter

sys.path.insert(0, str(Path(__file__).parent))
from guard_corpus.ordinary import ORDINARY
from guard_corpus.ordinary_informed import ORDINARY_INFORMED
from test_sandbox import needs_sandbox  # skipped where the sandbox cannot run, unless CI requires it

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "RuntimeRefusal: CodeGuard refused at run time"


class StaticPassMissed(CodeGuard):
    """A CodeGuard whose static pass finds nothing: the run-time layer of its policy is all that stands."""

    def _enforce(self, ctx: Any) -> None:
        ctx.run.state[RUNTIME_POLICY_KEY] = self.policy


def escapes(marker: Path) -> list[tuple[str, str, str]]:
    """(name, code, what the refusal names): each computes at run time what the static pass would have to see."""
    return [
        (
            "getattr-joined-name",
            "name = ''.join(['__cla', 'ss__'])\nbase = ''.join(['__ba', 'se__'])\n"
            "print(getattr(getattr(text, name), base))",
            "'__base__', a dunder attribute the policy does not list",
        ),
        ("getattr-subclasses", "print(getattr(type(text), '__subcl' + 'asses__')())", "'__subclasses__'"),
        ("vars-of-a-module", "import json\nk = 'co' + 'decs'\nprint(vars(json)[k])", "vars() of module 'json'"),
        ("import-from-input", "mod = __import__(text)\nprint(mod.getcwd())", "import of module 'os'"),
        (
            "format-built-at-run-time",
            "def f():\n    pass\nfmt = '{0.__init__.__glo' + 'bals__}'\nprint(fmt.format(f))",
            "the format field {0.__init__.__globals__} reads '__globals__'",
        ),
        (
            "open-computed-path-for-writing",
            f"path = {str(marker)!r}[:-1] + {str(marker)[-1]!r}\nmode = 'w' if len(path) else 'r'\n"
            "open(path, mode).write('x')",
            "open(",
        ),
        (
            "os-system-through-a-chain",
            f"import os.path\nrun = [os.path.dirname, os][1].__dict__['sys' + 'tem']\nrun('touch {marker}')",
            "os.__dict__",
        ),
        (
            "os-system-from-a-thread",
            "import os.path\nfrom concurrent.futures import ThreadPoolExecutor\n"
            f"def go():\n    return [os][0].system('touch {marker}')\n"
            "with ThreadPoolExecutor(1) as pool:\n    print(pool.submit(go).result())",
            "os.system",
        ),
    ]


def run(make_rlm: Any, steps: list[str], factory: Any, guard: CodeGuard | None = None) -> list[str]:
    rlm, lm = make_rlm(steps, interpreter_factory=factory)
    if guard is not None:
        guard.install(rlm_events.instrument(rlm))
    with dspy.context(lm=lm):
        result = rlm(text="os")
    assert result.answer == "done"
    return [str(step["output"]) for step in result.trajectory]


@pytest.mark.parametrize("policy", ["default", "strict"])
@pytest.mark.parametrize("index", range(8))
def test_an_escape_computed_at_run_time_is_refused_in_process(make_rlm, tmp_path, policy, index):
    name, code, named = escapes(tmp_path / "pwned")[index]
    first = run(make_rlm, [code, "SUBMIT(answer='done')"], lambda **kw: InProcessInterpreter(guard=policy, **kw))[0]
    assert REFUSED in first and named in first and "policy rule" in first, (name, first)
    assert not (tmp_path / "pwned").exists()


@needs_sandbox
@pytest.mark.parametrize("index", range(8))
def test_an_escape_computed_at_run_time_is_refused_in_the_sandbox(make_rlm, index):
    factory = Sandboxed(timeout=30)
    # The sandbox's scratch directory is writable: the run-time layer is what refuses the write there.
    marker = Path("pwned")
    name, code, named = escapes(marker)[index]
    exists = "try:\n    open('pwned').close()\n    print(True)\nexcept OSError:\n    print(False)"
    steps = [code, exists, "SUBMIT(answer='done')"]
    outputs = run(make_rlm, steps, factory, StaticPassMissed("default"))
    assert REFUSED in outputs[0] and named in outputs[0], (name, outputs[0])
    assert outputs[1] == "False"


def test_a_codeguard_arms_the_run_time_layer_where_its_static_pass_cannot_know(make_rlm, tmp_path):
    # In-process inputs can be any object: the static pass cannot know that an attribute of one is a module.
    marker = tmp_path / "pwned"
    config = types.SimpleNamespace(helpers=os)
    code = f"config.helpers.system('touch {marker}')"
    for guard, refused in ((CodeGuard("default"), True), (CodeGuard("default", runtime=False), False)):
        rlm, lm = make_rlm(
            [code, "SUBMIT(answer='done')"], signature="config -> answer", interpreter_factory=InProcessInterpreter
        )
        guard.install(rlm_events.instrument(rlm))
        with dspy.context(lm=lm):
            first = str(rlm(config=config).trajectory[0]["output"])
        assert "CodeGuard refused to run this code" not in first  # the static pass let it run
        assert (REFUSED in first and "reaches module 'os'" in first) is refused, first
        assert marker.exists() is not refused
        marker.unlink(missing_ok=True)


@needs_sandbox
def test_the_sandbox_runs_dspys_setup_and_ordinary_code_under_the_runs_codeguard(make_rlm, caplog):
    steps = ["import json, statistics\nprint(json.dumps(statistics.mean([1, 2, 3])))", "SUBMIT(answer='done')"]
    first = run(make_rlm, steps, Sandboxed(timeout=30), CodeGuard("default"))[0]
    assert first == "2"
    assert "sub-agents are unavailable" not in caplog.text  # DSPy's own setup is the host's code: not refused


def test_tools_are_host_code_and_other_interpreters_are_not_guarded(make_rlm, tmp_path):
    written = tmp_path / "by-the-tool"

    def save(text: str) -> str:
        written.write_text(text)  # host code: the run-time layer does not apply to tools
        return "saved"

    rlm, lm = make_rlm(
        ["print(save(text='ok'))", "SUBMIT(answer='done')"],
        tools=[save],
        interpreter_factory=lambda **kw: InProcessInterpreter(guard="strict", **kw),
    )
    with dspy.context(lm=lm):
        result = rlm(text="x")
    assert result.trajectory[0]["output"] == "saved" and written.read_text() == "ok"
    # The audit hook stays installed, idle for code no guard watches.
    plain = InProcessInterpreter()
    assert plain.execute("import os\nos.path.basename(os.getcwd()) == os.path.basename(os.getcwd())") is True


def test_a_refusal_is_an_oserror_the_code_can_see_and_the_namespace_keeps_working():
    interpreter = InProcessInterpreter(guard="default")
    assert issubclass(RuntimeRefusal, PermissionError)
    code = "try:\n    getattr(len, '__self__')\nexcept PermissionError as exc:\n    caught = str(exc)\ncaught"
    assert "'__self__'" in interpreter.execute(code)
    assert interpreter.execute("class P:\n    def __init__(self):\n        self._x = 1\nvars(P())") == {"_x": 1}
    assert interpreter.execute("getattr(P(), '_x') + len('{} {x}'.format(1, x=2))") == 4


@pytest.mark.parametrize("policy", ["default", "strict"])
def test_ordinary_analysis_code_still_runs(policy, tmp_path, monkeypatch):
    """Each ordinary snippet of the corpus runs the same with and without the run-time layer (≥ 98%)."""
    monkeypatch.chdir(tmp_path)

    def outcome(interpreter: InProcessInterpreter, code: str) -> str:
        try:
            return repr(interpreter.execute(code))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    samples = ORDINARY + ORDINARY_INFORMED
    refused = [code for _, code in samples if "RuntimeRefusal" in outcome(InProcessInterpreter(guard=policy), code)]
    allowed = 1 - len(refused) / len(samples)
    print(f"{policy}: the run-time layer lets {allowed:.1%} of {len(samples)} ordinary snippets run")
    assert allowed >= 0.98, refused
    # Refused or not, a snippet that succeeds bare succeeds guarded with the same value (clock readings aside).
    same = sum(
        outcome(InProcessInterpreter(), code) == outcome(InProcessInterpreter(guard=policy), code)
        for _, code in samples
        if "perf_counter" not in code and "time.time" not in code
    )
    assert same >= 0.98 * len(samples) - len(refused) - 2


def test_the_guard_cost_benchmark_runs_and_reports_every_figure(tmp_path):
    """benchmarks/guard_cost.py --quick: every step size and policy, uncached and cached figures (no timing
    asserted)."""
    out = tmp_path / "guard_cost.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "guard_cost.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = report["checks"]
    assert [
        (row["policy"], row["lines"] >= size) for row, size in zip(rows, [10, 10, 50, 50, 200, 200], strict=True)
    ] == [
        ("strict", True),
        ("default", True),
    ] * 3
    for row in rows:
        assert row["fastest_us"] > 0 and row["median_us"] >= row["fastest_us"] and row["cached_us"] > 0
    assert [row["target_us"] for row in rows] == [None, None, 1000.0, 1000.0, None, None]
    assert "(target ≤ 1000 µs uncached)" in done.stdout
    runtime = report["runtime"]  # each step run with and without the run-time layer (it raises if a step failed)
    assert [row["step"] for row in runtime] == ["analysis", "attributes"]
    for row in runtime:
        assert row["plain_us"] > 0 and row["guarded_us"] > 0
        assert row["ratio"] == pytest.approx(row["guarded_us"] / row["plain_us"])
    for when in ("before", "guarded_interpreter_alive"):
        assert set(report["host"][when]) == {"log_record_us", "compile_us"}
        assert all(us > 0 for us in report["host"][when].values())


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("import json\nsetattr(json, 'dumps', len)", "patching them is denied"),
        ("import collections\nvars(collections.OrderedDict)", "a class's namespace"),
        ("import logging\ngetattr(logging.getLogger('x'), '_cache')", "'_cache', a private attribute"),
        ("import json\ngetattr(json, 'de' + 'coder')", "module 'json.decoder', which the policy does not allow"),
        ("import importlib", "import of module 'importlib'"),
        ("from json import scanner", "module 'json.scanner'"),
        ("'{0.__class__.__base__}'.format(1)", "'__base__'"),
        ("import string\nstring.Formatter().vformat('{0.__self__}', (print,), {})", "'string.Formatter'"),
        ("breakpoint()", "the built-in breakpoint()"),
        ("def f():\n    pass\nimport operator\noperator.attrgetter('__co' + 'de__')(f)", "'__code__'"),
        ("import os.path\nos.remove('/nonexistent-' + 'x')", "os.remove"),
        ("import os.path\nos.open('/tmp/x', os.O_WRONLY)", "os.open"),
        # The guard's own state hangs off objects the code holds: attribute syntax is checked like getattr().
        ("getattr.__self__", "'__self__'"),
        ("(lambda: 0).__globals__", "'__globals__'"),
        ("import logging\nlogging.sys.modules['rlm_events.guard._runtime'].host_code", "'sys.modules'"),
        ("import logging\nlogging.os.system", "reaches module 'os'"),
        ("import json\njson.dumps = len", "patching them is denied"),
        ("try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame", "'__traceback__'"),
        ("def g():\n    yield 1\ng().gi_frame.f_back", "'gi_frame'"),
        ("class A:\n    pass\nA.__subclasses__", "'__subclasses__'"),
        # Attributes read in C: class patterns, operator's getters (imported either way), typing's eval.
        ("import logging\nmatch logging:\n    case object(sys=s):\n        s.modules", "'sys.modules'"),
        ("import logging\nmatch logging:\n    case object(os=o):\n        o", "reaches module 'os'"),
        (
            "class M(type):\n    def __instancecheck__(cls, x):\n        return True\n"
            "class C(metaclass=M):\n    __match_args__ = ('__globals__',)\n"
            "match (lambda: 0):\n    case C(g):\n        g",
            "'__globals__'",
        ),
        ("from operator import attrgetter\nimport logging\nattrgetter('sys.modules')(logging)", "'sys.modules'"),
        ("import operator\noperator.methodcaller('__subclasses__')(object)", "'__subclasses__'"),
        (
            "import typing\ndef f(x: '().__class__.__base__.__subclasses__()'):\n    pass\ntyping.get_type_hints(f)",
            "a string annotation is run as code",
        ),
        ("import typing\ndef f(x: int):\n    pass\ntyping.get_type_hints(f, globalns={})", "namespaces"),
    ],
)
def test_run_time_rules(code, refused):
    with pytest.raises(Exception, match="RuntimeRefusal") as caught:
        InProcessInterpreter(guard="default").execute(code)
    assert refused in str(caught.value)


@pytest.mark.parametrize(
    ("code", "value"),
    [
        ("from os.path import join\njoin('a', 'b')", "a/b"),
        ("import collections\ngetattr(collections.Counter('aab'), 'most_common')(1)", [["a", 2]]),
        ("class C:\n    def __init__(self):\n        self._n = 1\nsetattr(C(), '_n', 2) or getattr(C(), '_n')", 1),
        ("import types\nns = types.SimpleNamespace(a=1)\nvars(ns)['a']", 1),
        ("'{0.real} {x[k]}'.format(3, x={'k': 'v'})", "3 v"),
        ("import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\ndataclasses.asdict(P(1))", {"x": 1}),
        ("hasattr([], '__len__')", True),
        # A class pattern's class is evaluated when its case is tried, as Python does: a later case's is never.
        ("match 1:\n    case int():\n        x = 'int'\n    case Undefined(x=1):\n        x = 'no'\nx", "int"),
    ],
)
def test_ordinary_access_at_run_time(code, value):
    assert InProcessInterpreter(guard="default").execute(code) == value


@pytest.mark.parametrize(
    ("code", "value"),
    [
        ("import os.path\nos.path.join('a', 'b')", "a/b"),
        ("import xml.etree.ElementTree\nxml.etree.ElementTree.fromstring('<a/>').tag", "a"),
        (
            "import collections\nclass B(collections.UserDict):\n    def __init__(self):\n        super().__init__()\n"
            "        self._x, self.__y = 1, 2\n    def total(self):\n        return self._x + self.__y\nB().total()",
            3,
        ),
        (
            "import dataclasses\n@dataclasses.dataclass(frozen=True)\nclass P:\n    x: int\n    y: int = 2\n"
            "match dataclasses.replace(P(1), y=5):\n    case P(x, y=y):\n        found = [x, y]\nfound",
            [1, 5],
        ),
        ("match 5:\n    case int(v):\n        pass\nv", 5),
        (
            "from operator import attrgetter, methodcaller\n[attrgetter('real')(3), methodcaller('upper')('a')]",
            [3, "A"],
        ),
        ("from collections import *\nCounter('aab')['a']", 2),
        (
            "from __future__ import annotations\nimport typing\ndef f(x: list[int]):\n    pass\n"
            "str(typing.get_type_hints(f))",
            "{'x': list[int]}",
        ),
        ("import json\nclass C:\n    pass\nC.tag = 'x'\nc = C()\nc.name = 'y'\ndel c.name\nC.tag", "x"),
        # Lazy annotations stay as written (strings for typing to evaluate, checked when it compiles them).
        (
            "from __future__ import annotations\nimport typing, collections\n"
            "def f(a: collections.Counter) -> typing.List[int]:\n    return []\n"
            "str(typing.get_type_hints(f)['return'])",
            "typing.List[int]",
        ),
    ],
)
def test_attribute_syntax_of_ordinary_code_at_run_time(code, value):
    assert InProcessInterpreter(guard="default").execute(code) == value


@pytest.mark.parametrize(
    "start",
    [
        "t = threading.Thread(target=io.open, args=(path, 'w'))\nt.start()",  # a C function: no frame of the code
        "t = threading.Timer(0, io.open, (path, 'w'))\nt.start()",
        "pool = concurrent.futures.ThreadPoolExecutor(1)\nt = pool.submit(io.open, path, 'w')",
        # A function of the code, run after the execution returned (the host releases it below).
        "gate = queue.Queue()\ndef later():\n    gate.get()\n    io.open(path, 'w')\n"
        "t = threading.Thread(target=later)\nt.start()",
    ],
)
def test_threads_the_code_starts_carry_its_guard_after_the_execution(tmp_path, start):
    target = tmp_path / "written"
    interpreter = InProcessInterpreter(guard="default")
    interpreter.execute(
        f"import concurrent.futures, io, queue, threading\npath = {str(target)!r}\n{start}", variables={}
    )
    namespace = interpreter.namespace
    if "gate" in namespace:
        namespace["gate"].put(None)  # host code: the thread goes on, outside any guarded execution
    handle = namespace["t"]
    if hasattr(handle, "exception"):
        assert isinstance(handle.exception(), RuntimeRefusal)
        namespace["pool"].shutdown()
    else:
        handle.join()
    assert not target.exists()
    # The host's own threads are not the code's.
    done: list[str] = []
    worker = __import__("threading").Thread(target=lambda: done.append(target.write_text("host") and "ok"))
    worker.start()
    worker.join()
    assert done == ["ok"] and target.read_text() == "host"


def test_a_class_claiming_a_host_apis_module_is_still_the_codes(tmp_path):
    """dataclasses compiles `__init__` with the globals of the class's `__module__`: a frame that looks like the host
    API's (dspy's), running the code's `__post_init__`, must not make the code's writes the host's."""
    code = (
        "import dataclasses, functools, io, zipfile\nbuf = io.BytesIO()\n"
        "with zipfile.ZipFile(buf, 'w') as z:\n    z.writestr('written', 'x')\n"
        "@dataclasses.dataclass\nclass X:\n    __module__ = 'dspy'\n"
        f"    __post_init__ = functools.partial(zipfile.ZipFile(buf).extract, 'written', {str(tmp_path)!r})\nX()"
    )
    with pytest.raises(Exception, match="RuntimeRefusal") as caught:
        InProcessInterpreter(guard="default").execute(code)
    assert "for writing" in str(caught.value)
    assert not (tmp_path / "written").exists()


@pytest.mark.parametrize("policy", ["default", "strict"])
def test_classes_of_modules_the_policy_does_not_allow_are_not_handed_to_the_code(policy):
    """dspy resolves a string signature's types by importing any module: `pathlib.Path` (files in strict) reaches the
    code as a field's annotation, past the static pass (the names are in a string)."""
    for code in (
        "import dspy\nS = dspy.Signature('x: pathlib.Path -> y')\nS.input_fields['x'].annotation('/').iterdir()",
        # Inside a type expression, which typing.get_args() opens.
        "import dspy, typing\nS = dspy.Signature('x: Type[pathlib.Path] -> y')\n"
        "typing.get_args(S.input_fields['x'].annotation)[0]('/').iterdir()",
    ):
        with pytest.raises(Exception, match="RuntimeRefusal") as caught:
            InProcessInterpreter(guard=policy).execute(code)
        assert "'Path' of module 'pathlib" in str(caught.value)  # 'pathlib._local' from Python 3.13
    ordinary = (
        "import threading, hashlib, json, io\nfrom concurrent.futures import ThreadPoolExecutor\n"
        "[threading.Lock.__name__, hashlib.blake2b.__name__, json.JSONDecodeError.__name__, io.BytesIO.__name__,"
        " ThreadPoolExecutor.__name__, io.StringIO().__class__.__name__]"
    )
    assert InProcessInterpreter(guard="default").execute(ordinary) == [
        threading.Lock.__name__,
        "blake2b",
        "JSONDecodeError",
        "BytesIO",
        "ThreadPoolExecutor",
        "StringIO",
    ]  # fmt: skip  (threading.Lock is `allocate_lock` before Python 3.13, `lock` from 3.13)


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        # functools.update_wrapper copies the attributes it is given the names of (the guard behind `getattr`).
        (
            "import functools\nclass O:\n    pass\no = O()\n"
            "functools.update_wrapper(o, getattr, assigned=('__self__',), updated=())\nvars(o)",
            "'__self__'",
        ),
        (
            "import functools, json\nclass O:\n    pass\n"
            "functools.update_wrapper(O(), json, assigned=(), updated=('__dict__',))",
            "'__dict__'",
        ),
        # Libraries evaluate annotation strings in C with namespaces of their choosing (the real built-ins).
        (
            "import functools\n@functools.singledispatch\ndef f(x):\n    return 0\n"
            "@f.register\ndef _(x: 'getattr.__self__'):\n    return 1",
            "typing compiling b'getattr.__self__'",
        ),
        (
            "import dspy\nclass S(dspy.Signature):\n    q: \"__import__('os').getcwd() or str\" = dspy.InputField()\n"
            "    a: str = dspy.OutputField()",
            "may only be a type expression",
        ),
    ],
)
def test_library_functions_that_read_names_or_evaluate_strings_for_the_code(code, refused):
    with pytest.raises(Exception, match="RuntimeRefusal") as caught:
        InProcessInterpreter(guard="default").execute(code)
    assert refused in str(caught.value)


def test_decorators_signatures_and_annotations_of_ordinary_code_still_work():
    code = (
        "import dspy, functools, typing, dataclasses\n"
        "def deco(fn):\n    @functools.wraps(fn)\n    def inner(*a):\n        return fn(*a)\n    return inner\n"
        "@deco\ndef add(x: int, y: int) -> int:\n    return x + y\n"
        "class S(dspy.Signature):\n    q: 'str' = dspy.InputField()\n"
        "    a: typing.Optional[list[str]] = dspy.OutputField()\n"
        "P = dspy.Predict('question: str, n: int -> answer: list[str]')\n"
        "@functools.singledispatch\ndef g(x):\n    return 'obj'\n@g.register\ndef _(x: 'str'):\n    return 'str'\n"
        "class NT(typing.NamedTuple):\n    a: int\n    b: 'str'\n"
        "[add(1, 2), add.__name__, str(S.input_fields['q'].annotation), g('s'), NT(1, 'x').b,"
        " functools.wraps(len)(deco).__name__]"
    )
    assert InProcessInterpreter(guard="default").execute(code) == [3, "add", "<class 'str'>", "str", "x", "len"]


def test_host_files_open_for_writing_and_the_copy_protocol_are_not_the_codes(tmp_path):
    log = tmp_path / "host.log"
    handler = __import__("logging").FileHandler(log)
    interpreter = InProcessInterpreter(guard="default", tools={})
    interpreter.namespace["handler"] = handler  # e.g. what logging.getLogger().handlers[0] gives in a host that logs
    interpreter.namespace["box"] = types.SimpleNamespace(stream=handler.stream)
    try:
        for code in ("handler.stream.write('injected')", "vars(box)['stream']"):
            with pytest.raises(Exception, match="RuntimeRefusal") as caught:
                interpreter.execute(code)
            assert "a file open for writing" in str(caught.value)
    finally:
        handler.close()
    assert log.read_text() == ""
    for reducer in (
        "import copy, json\nclass R:\n    def __reduce_ex__(self, protocol):\n"
        "        return (lambda: json, (), {'dumps': len})\ncopy.copy(R())",
        "import copy, json, dataclasses\nX = dataclasses.make_dataclass('X', [('a', int)],"
        " namespace={'__reduce__': lambda s: (lambda: json, (), {'loads': len})})\ncopy.deepcopy([X(1)])",
    ):
        with pytest.raises(Exception, match="RuntimeRefusal") as caught:
            InProcessInterpreter(guard="default").execute(reducer)
        assert "whose reducer rebuilt it as 'module'" in str(caught.value)
    assert json.dumps([1]) == "[1]" and json.loads("1") == 1
    ordinary = (
        "import copy, collections\nclass Q:\n    def __init__(self):\n        self.a = [1]\n"
        "[copy.copy(Q()).a, copy.deepcopy(collections.OrderedDict(a=1))['a']]"
    )
    assert InProcessInterpreter(guard="default").execute(ordinary) == [[1], 1]
    assert InProcessInterpreter(guard="default").execute("import sys, copy\nsys.stdout.writable() or True") is True


def test_evaluated_annotations_are_checked_like_other_code():
    with pytest.raises(Exception, match="RuntimeRefusal") as caught:
        InProcessInterpreter(guard="default").execute("import logging\nx: logging.sys.modules = 1")
    assert "'sys.modules'" in str(caught.value)


@pytest.mark.parametrize(
    "code",
    [
        "__builtins__['<guard:format>'](getattr, '__self__')",
        "b = __builtins__\nb['<guard:attribute>'] = b['<guard:format>']",
    ],
)
def test_the_builtins_table_holding_the_lookups_is_not_the_codes(code):
    with pytest.raises(Exception, match="RuntimeRefusal") as caught:
        InProcessInterpreter(guard="default").execute(code)
    assert "'__builtins__'" in str(caught.value)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="type parameter syntax (PEP 695) is Python 3.12's")
def test_type_parameter_bounds_are_compiled_through_the_lookups():
    # A bound is evaluated when read (`__bound__`), outside the class body: its attribute reads go through the
    # guard's lookups like the rest of the code (the read itself is a dunder the policies refuse).
    from rlm_events.guard._runtime_rewrite import ATTRIBUTE_LOOKUP, rewrite

    tree = rewrite(ast.parse("import logging\nclass C[T: logging.os]:\n    x: int = logging.INFO"))
    bound = tree.body[1].type_params[0].bound  # type: ignore[attr-defined]
    assert isinstance(bound, ast.Call) and bound.func.id == ATTRIBUTE_LOOKUP  # type: ignore[attr-defined]
    assert ast.unparse(bound) == "<guard:attribute>(logging, 'os')"
