"""rlm_events.sandbox: attacks run as LM-written code in real dspy.RLM calls, their effects checked on the host.

Every attack is code a ScriptedLM writes; each RLM call must complete, with the attack's error in its trajectory,
and the host must show no trace of it. Needs Linux, bubblewrap and user namespaces: without them these tests are
skipped, naming what is missing, unless RLM_EVENTS_REQUIRE_SANDBOX=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import sandbox
from rlm_events.sandbox import Sandboxed, SandboxedInterpreter, SandboxUnavailable, _cgroup, _isolation

ROOT = Path(__file__).resolve().parent.parent
try:
    Sandboxed()
    MISSING = ""
except SandboxUnavailable as error:
    MISSING = str(error)

if MISSING and os.environ.get("RLM_EVENTS_REQUIRE_SANDBOX") == "1":
    raise RuntimeError(f"RLM_EVENTS_REQUIRE_SANDBOX=1 but the sandbox cannot run here: {MISSING}")
needs_sandbox = pytest.mark.skipif(bool(MISSING), reason=f"no sandbox here: {MISSING}")


def outputs(result: Any) -> list[str]:
    return [str(step["output"]) for step in result.trajectory]


def run(make_rlm: Any, steps: list[str], factory: Any, **options: Any) -> Any:
    rlm, lm = make_rlm(steps, interpreter_factory=factory, **options)
    with dspy.context(lm=lm):
        return rlm(text="go")


def marked(marker: str) -> int:
    """Processes on the host whose command line contains ``marker``."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    count += 1
            except OSError:
                pass
    return count


class Recorder:
    """An interpreter factory that keeps what it made (to look at after the call)."""

    def __init__(self, **limits: Any) -> None:
        self.factory = Sandboxed(**limits)
        self.made: list[SandboxedInterpreter] = []
        self.execution_instructions = self.factory.execution_instructions

    def __call__(self, *args: Any, **kwargs: Any) -> SandboxedInterpreter:
        interpreter = self.factory(*args, **kwargs)
        self.made.append(interpreter)
        return interpreter


def test_it_imports_from_this_worktree():
    assert Path(rlm_events.__file__).resolve().is_relative_to(ROOT)
    assert set(sandbox.__all__) == {"DEFAULT_HIDDEN", "SandboxUnavailable", "Sandboxed", "SandboxedInterpreter"}


# --- the RLM works in it -------------------------------------------------------------------------------------------


@needs_sandbox
def test_an_rlm_call_runs_in_the_sandbox_with_tools_llm_query_and_submit(make_rlm):
    def shout(word: str) -> str:
        return word.upper() + "!"

    recorder = Recorder()
    steps = [
        "import os, socket\nprint(os.getpid(), socket.gethostname(), os.getcwd())",
        "x = shout(word='a') + shout('b') + llm_query('hi')",
        "SUBMIT(answer=x)",
    ]
    result = run(make_rlm, steps, recorder, tools=[shout], sub="sub")
    assert result.answer == "A!B!sub"
    pid, hostname, cwd = outputs(result)[0].split()
    assert int(pid) < 10 and hostname == "rlm-sandbox"  # its own PID and UTS namespaces
    assert cwd.startswith(os.path.join(os.path.realpath(os.path.dirname(cwd)), "rlm-sandbox-"))
    [interpreter] = recorder.made
    assert interpreter.scratch is None and not Path(cwd).exists()  # shut down, scratch removed
    assert "read-only except the working directory" in Sandboxed().execution_instructions


@needs_sandbox
def test_it_is_a_dspy_rlm_interpreter_factory_on_dspy_3_4():
    if "interpreter_factory" not in dspy.RLM.__init__.__code__.co_varnames:
        pytest.skip("dspy.RLM takes no interpreter_factory before DSPy 3.3")
    from rlm_events.testing import ScriptedLM

    rlm = dspy.RLM("text -> answer", max_iters=3, interpreter_factory=Sandboxed())
    with dspy.context(lm=ScriptedLM(["import os\nn = os.getpid()", "SUBMIT(answer=str(n))"])):
        assert int(rlm(text="go").answer) < 10


# --- the attacks ---------------------------------------------------------------------------------------------------


@needs_sandbox
def test_files_written_outside_scratch_do_not_exist_afterwards(make_rlm, tmp_path):
    tag = uuid.uuid4().hex
    targets = [
        ROOT / f".sandbox-escape-{tag}",  # the worktree: on the read-only root
        tmp_path / f"escape-{tag}",  # the host's /tmp: hidden, read-only
        Path.home() / f".sandbox-escape-{tag}",
        Path("/etc") / f"sandbox-escape-{tag}",
        Path(sys.prefix) / f"sandbox-escape-{tag}",  # the interpreter's own files, bound back read-only
    ]
    attack = f"""
import os, subprocess
errors = []
for target in {[str(t) for t in targets]!r}:
    try:
        with open(target, "w") as handle:
            handle.write("escaped")
    except OSError as exc:
        errors.append(type(exc).__name__ + ": " + str(exc.strerror))
    os.system(f"echo escaped > {{target}} 2>/dev/null; touch {{target}}.sh 2>/dev/null")
    subprocess.run(["cp", "/etc/hostname", target + ".cp"], stderr=subprocess.DEVNULL)
open("inside.txt", "w").write("kept for the call")
print(len(errors), sorted(set(errors)))
"""
    seen: dict[str, bool] = {}
    recorder = Recorder()

    def on_host(name: str) -> bool:
        path = str(recorder.made[0].scratch / name)  # the host's view of the sandbox's scratch tmpfs
        seen[path] = Path(path).exists()
        seen[str(recorder.made[0].working_directory)] = True
        return seen[path]

    steps = [attack, "print(on_host('inside.txt'))", "SUBMIT(answer='done')"]
    try:
        result = run(make_rlm, steps, recorder, tools=[on_host])
        assert result.answer == "done"
        last = outputs(result)[0].splitlines()[-1]
        # Read-only everywhere; the host's /tmp is hidden (an empty read-only tmpfs), so tmp_path is not even there.
        errors = ["FileNotFoundError: No such file or directory", "OSError: Read-only file system"]
        assert last == f"{len(targets)} {errors}"
        for target in targets:
            for suffix in ("", ".sh", ".cp"):
                assert not Path(f"{target}{suffix}").exists(), f"{target}{suffix} was written from the sandbox"
        # The one writable place is the scratch directory: the host saw the file during the call, then it went.
        [(inside, existed), (directory, _)] = seen.items()
        assert existed and outputs(result)[1] == "True"
        assert not Path(inside).exists() and not Path(inside).parent.exists() and not Path(directory).exists()
    finally:
        for target in targets:
            for suffix in ("", ".sh", ".cp"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)


@needs_sandbox
def test_a_connection_to_a_loopback_server_of_the_test_fails(make_rlm):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    host_sees_it = socket.create_connection(("127.0.0.1", port), timeout=2)  # the server works, from the host
    attack = f"""
import os, socket, urllib.request
errors = []
for attempt in (
    lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2),
    lambda: socket.create_connection(("localhost", {port}), timeout=2),
    lambda: urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=2),
):
    try:
        attempt()
        errors.append("connected")
    except OSError as exc:
        errors.append(type(exc).__name__)
import subprocess
shell = subprocess.run(["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode
print(errors, shell, [name for _, name in socket.if_nameindex()])
"""
    try:
        time.sleep(0.3)
        before = len(accepted)
        result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder())
        assert result.answer == "done"
        output = outputs(result)[0]
        assert "connected" not in output and "ConnectionRefusedError" in output, output
        assert output.endswith(" 1 ['lo']"), output  # bash failed too; a network namespace with its own loopback only
        assert len(accepted) == before == 1  # the host's own connection, nothing from the sandbox
    finally:
        stop.set()
        host_sees_it.close()
        thread.join(2)
        server.close()


@needs_sandbox
def test_os_system_cannot_touch_the_host(make_rlm, tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_EVENTS_TEST_SECRET", "s3cr3t-value")
    victim = subprocess.Popen(["sleep", "120"])
    outside = tmp_path / "touched"
    attack = f"""
import os
status = os.system("kill -9 {victim.pid}; touch {outside}; env; ps -e 2>/dev/null || ls /proc")
try:
    os.kill({victim.pid}, 9)
    print("killed")
except ProcessLookupError as exc:
    print("ProcessLookupError")
"""
    try:
        result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder())
        assert result.answer == "done"
        output = outputs(result)[0]
        assert "ProcessLookupError" in output and "killed" not in output, output
        assert victim.poll() is None, "the sandbox killed a host process"
        assert not outside.exists()
        assert "s3cr3t-value" not in output and "RLM_EVENTS_TEST_SECRET" not in output  # no host environment
        assert f"{victim.pid}" not in output.replace(f"kill -9 {victim.pid}", "")  # host processes are not visible
    finally:
        victim.kill()
        victim.wait()


@needs_sandbox
def test_a_bounded_process_flood_is_stopped_and_its_processes_die_with_the_sandbox(make_rlm):
    marker = f"rlm-flood-{uuid.uuid4().hex}"
    flood = f"""
import subprocess, sys
procs, error = [], None
for _ in range(40):  # bounded: never an unbounded fork bomb on a shared machine
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{marker}"]))
    except OSError as exc:
        error = exc
        break
print(count_marked())
print(len(procs), type(error).__name__, error)
"""
    during: list[int] = []

    def count_marked() -> int:
        during.append(marked(marker))
        return during[-1]

    steps = [flood, "print(count_marked())", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder(max_processes=16), tools=[count_marked])
    assert result.answer == "done"
    started, kind, *message = outputs(result)[0].splitlines()[-1].split()
    assert 0 < int(started) < 16 and kind == "BlockingIOError", outputs(result)[0]
    assert "Resource temporarily unavailable" in " ".join(message)
    # the flood ran (the host saw its processes during the execution), and was killed at its end, worker spared
    assert len(during) == 2 and 0 < during[0] <= int(started) and during[1] == 0, during
    assert marked(marker) == 0


@needs_sandbox
def test_a_memory_hog_is_stopped_and_the_interpreter_goes_on(make_rlm):
    steps = [
        "kept = 'state survives'",
        "hog = bytearray(2 * 1024 ** 3)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 ** 2))",
        "import subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', 'bytearray(2 * 1024 ** 3)'], capture_output=True).returncode)",
        "SUBMIT(answer=kept)",
    ]
    result = run(make_rlm, steps, Recorder(memory_mb=256), max_iters=6)
    assert result.answer == "state survives"
    out = outputs(result)
    assert out[1].startswith("[Error]") and "MemoryError" in out[1]
    assert out[2].startswith("[Error]") and "MemoryError" in out[2]
    assert out[3] == "1"  # a child process is limited too


@needs_sandbox
def test_a_runaway_is_killed_at_the_timeout_and_the_lm_is_told_that_state_was_lost(make_rlm):
    marker = f"rlm-runaway-{uuid.uuid4().hex}"
    recorder = Recorder(timeout=1.5)
    steps = [
        "state = 1",
        f"import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 120', '{marker}'])\nwhile True:\n    pass",
        "print(count_marked())",
        "print(state)",
        "state = 2\nSUBMIT(answer=str(state))",
    ]
    result = run(make_rlm, steps, recorder, tools=[count_marked_tool(marker)])
    assert result.answer == "2"
    out = outputs(result)
    assert out[1].startswith("[Error] Execution timed out after 1.5 s")
    assert "state (variables, imports, definitions) was lost" in out[1]
    assert out[2] == "0"  # what the runaway started died with it, before the call went on
    assert out[3].startswith("[Error]") and "NameError" in out[3]  # a fresh interpreter
    assert recorder.made[0].restarts == 1


def count_marked_tool(marker: str) -> Any:
    def count_marked() -> int:
        return marked(marker)

    return count_marked


@needs_sandbox
def test_the_cpu_time_limit_kills_the_worker_and_the_next_execution_gets_a_fresh_one(make_rlm):
    steps = ["while True:\n    pass", "print('alive')", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder(cpu_seconds=1, timeout=30))
    assert result.answer == "done"
    out = outputs(result)
    assert out[0].startswith("[Error] The sandboxed interpreter was killed by SIGXCPU"), out[0]
    assert "state (variables, imports, definitions) was lost" in out[0]
    assert out[1] == "alive"


@needs_sandbox
def test_the_dspy_facade_is_installed_again_after_a_restart(make_rlm):
    if not hasattr(dspy.RLM, "_setup_facade"):
        pytest.skip("the sandbox dspy facade is DSPy 3.4.1's (3.4.0 has none)")
    steps = ["while True: pass", "import dspy\nprint(type(dspy.Predict).__name__)", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder(timeout=1))
    assert outputs(result)[0].startswith("[Error] Execution timed out")
    assert outputs(result)[1] == "function"  # the shim's constructor, not ModuleNotFoundError


# --- lifecycle -----------------------------------------------------------------------------------------------------


@needs_sandbox
def test_shutdown_kills_every_process_and_removes_scratch_and_cgroup():
    interpreter = Sandboxed()()
    interpreter.execute("import subprocess\nsubprocess.Popen(['sleep', '120'])\nopen('f', 'w').write('x')")
    pid, scratch = interpreter.pid, interpreter.working_directory
    assert pid is not None and scratch is not None and interpreter.scratch is not None
    assert (interpreter.scratch / "f").read_text() == "x"  # the host reads the sandbox's scratch tmpfs
    interpreter.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not scratch.exists() and interpreter.pid is None and interpreter.scratch is None
    assert not [path for path, _, owner in _cgroup.stale_cgroups() if owner == os.getpid()]
    with pytest.raises(dspy.primitives.code_interpreter.CodeInterpreterError, match="shut down"):
        interpreter.execute("1")


@needs_sandbox
def test_results_match_dspy_local_interpreter():
    if not hasattr(dspy, "LocalInterpreter"):
        pytest.skip("dspy.LocalInterpreter is DSPy 3.4's")

    def lookup(key: str) -> str:
        return key.upper()

    def failing() -> None:
        raise KeyError("nope")

    snippets = [
        "x = 1",
        "x + 1",
        "print('a')\nprint('b')",
        "print('a'); 5",
        "lookup(key='k')",
        "failing()",
        "1/0",
        "import sys; sys.exit(3)",
        "object",
        "float('nan')",
        "def f(:",
        "eval('1 +')",
        "SUBMIT('a')",
        "SUBMIT(answer='b')",
        "SUBMIT(1, 2)",
        "SUBMIT(answer={1, 2})",
        "import threading; threading.Thread(target=lambda: None).start()",
        "[x, {'k': (1, 2)}]",
    ]
    tools = {"lookup": lookup, "failing": failing}
    fields = [{"name": "answer", "type": "str"}]

    def results(interpreter: Any) -> list[str]:
        seen = []
        for code in snippets:
            try:
                seen.append(repr(interpreter.execute(code)))
            except Exception as exc:
                seen.append(f"{type(exc).__name__}: {str(exc).split(' at 0x')[0]}")
        interpreter.shutdown()
        return seen

    ours = results(Sandboxed()(dict(tools), fields))
    theirs = results(dspy.LocalInterpreter(dict(tools), fields))
    assert ours == theirs


# --- where it cannot run, it says what is missing ------------------------------------------------------------------


def test_a_missing_bwrap_is_named():
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap \(bwrap\) /nonexistent/bwrap is not an executable"):
        Sandboxed(bwrap="/nonexistent/bwrap")


def test_no_bwrap_on_path_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match=r"bwrap\) not found on PATH: install it .*apt-get install bubblewrap"):
        Sandboxed()


def test_a_sandbox_that_cannot_start_is_named_with_bwraps_reason(monkeypatch):
    home = Path(
        tempfile.mkdtemp(prefix="rlm-fake-bwrap-")
    )  # pytest's tmp_path is private to root; bwrap runs as nobody
    try:
        home.chmod(0o755)
        fake = home / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(_isolation, "_PROBED", {})
        with pytest.raises(
            SandboxUnavailable, match=r"could not start a sandbox .*No permissions to creating new namespace"
        ):
            Sandboxed(bwrap=fake)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_without_a_cgroup_limits_fall_back_to_per_process_ones_and_say_so(monkeypatch, caplog):
    monkeypatch.setattr(_isolation, "_PROBED", {})
    monkeypatch.setattr(_cgroup, "hierarchies", lambda: {})
    monkeypatch.setattr(_cgroup, "_LOGGED", set())
    if MISSING:
        pytest.skip(f"no sandbox here: {MISSING}")
    with pytest.raises(SandboxUnavailable, match=r"cgroup=True, but no cgroup offers the memory controller"):
        Sandboxed(cgroup=True)
    with caplog.at_level("WARNING", logger="rlm_events.sandbox"):
        first, second = Sandboxed(), Sandboxed()
    assert first.limits["memory_mb"] == "per process: 1024 MiB of address space (RLIMIT_AS)"
    assert first.limits["max_processes"] == "per user namespace: 64 (RLIMIT_NPROC)"
    [record] = [r for r in caplog.records if r.name == "rlm_events.sandbox"]  # logged once, not per construction
    assert "limits per process, not for the sandbox as a whole" in record.getMessage()
    assert second.limits == first.limits and "per process" in first.execution_instructions


def test_other_systems_are_named(monkeypatch):
    monkeypatch.setattr(_isolation.sys, "platform", "darwin")
    with pytest.raises(SandboxUnavailable, match=r"needs Linux .* this is darwin"):
        Sandboxed()


def test_limits_are_checked():
    for bad in ({"timeout": 0}, {"memory_mb": 1}, {"max_processes": 2}, {"cpu_seconds": 0}, {"hide": "/tmp"}):
        with pytest.raises((ValueError, TypeError)):
            Sandboxed(**bad)


def test_nothing_here_imports_the_sandbox_worker_into_the_host():
    # The worker rewires file descriptors 0-2 only when it runs as a script, never on import.
    done = subprocess.run(
        [sys.executable, "-c", "import rlm_events.sandbox._worker as w; print(w.MAX_CAPTURED_BYTES)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.stdout.strip() == str(4 * 1024 * 1024), done.stderr


@pytest.fixture(autouse=True)
def _no_leaked_sandboxes() -> Iterator[None]:
    yield
    assert not [path for path, _, owner in _cgroup.stale_cgroups() if owner == os.getpid()]


@needs_sandbox
def test_for_a_non_root_host_rlimit_nproc_in_the_namespace_stops_a_flood():
    """The limit a non-root host relies on (as root, the pids cgroup does the work): the worker of an unprivileged
    user, started as Sandboxed starts it, cannot exceed max_processes. Run as nobody with Debian's Python."""
    python, setpriv = Path("/usr/bin/python3"), Path("/usr/bin/setpriv")
    if os.geteuid() != 0 or not python.exists() or not setpriv.exists():
        pytest.skip("needs root (to become nobody), /usr/bin/python3 and setpriv")
    scratch = Path(tempfile.mkdtemp(prefix="rlm-sandbox-nobody-"))  # pytest's tmp_path is private to root
    worker = scratch / "_worker.py"
    worker.write_text(_isolation.WORKER.read_text())
    os.chown(scratch, 65534, 65534)
    limits = {"memory_bytes": 256 * 2**20, "cpu_seconds": 10, "max_processes": 12}
    command = [
        str(setpriv), "--reuid", "65534", "--regid", "65534", "--clear-groups",
        *_isolation.bwrap_arguments(
            _isolation.find_bwrap(None) or "bwrap", str(scratch), _isolation.Layout(hide=()), str(python)
        ),
        "--", str(python), "-I", str(worker), json.dumps(limits),
    ]  # fmt: skip
    flood = (
        "import os, subprocess\nprocs, error = [], None\nfor _ in range(40):\n    try:\n"
        "        procs.append(subprocess.Popen(['sleep', '30']))\n    except OSError as exc:\n        error = exc\n"
        "        break\nprint(os.getuid(), len(procs), type(error).__name__)"
    )
    request = {"type": "execute", "code": flood, "variables": {}, "tools": [], "output_fields": None}
    try:
        done = subprocess.run(
            command,
            input=json.dumps(request) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=_isolation.sandbox_environment(str(scratch)),
            check=False,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert [m["type"] for m in messages] == ["ready", "result"], (done.stdout, done.stderr)
    uid, started, kind = messages[1]["stdout"].split()
    assert uid == "65534" and 0 < int(started) < 12 and kind == "BlockingIOError"


@needs_sandbox
def test_the_benchmark_runs(capsys):
    if not hasattr(dspy, "LocalInterpreter"):
        pytest.skip("the benchmark compares with dspy.LocalInterpreter (DSPy 3.4+)")
    spec = importlib.util.spec_from_file_location("sandbox_benchmark", ROOT / "benchmarks" / "sandbox.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    table = capsys.readouterr().out
    for measure in ("statement", "tool call", "print", "compute", "session: all", "RLM call (5 iterations)"):
        assert f"| {measure} |" in table


@needs_sandbox
def test_rlm_events_sees_every_stage_of_a_sandboxed_call(make_rlm):
    def shout(word: str) -> str:
        return word.upper()

    rlm, lm = make_rlm(
        ["print(shout(word='a'))", "SUBMIT(answer='done')"], interpreter_factory=Sandboxed(), tools=[shout]
    )
    events = rlm_events.instrument(rlm)
    stages: list[str] = []
    events.tap(list(rlm_events.Stage), lambda ctx: stages.append(ctx.stage.value), inline=True)
    with dspy.context(lm=lm):
        assert rlm(text="go").answer == "done"
    assert "tool_call" in stages and stages[0] == "run_start" and stages[-1] == "run_end"


# --- issue 21: no more rights than an unprivileged user, seccomp, per-execution cleanup, a distrustful protocol ----


@needs_sandbox
def test_as_root_or_not_the_code_has_no_rights_of_the_host_user(make_rlm):
    """/proc/sys written and read back on the host, /etc/shadow, a setuid-root file in scratch: all refused."""
    before = Path("/proc/sys/kernel/printk_ratelimit").read_text()
    forged = str(int(before) + 7)
    attack = f"""
import os, stat
out = [os.getuid(), os.getgid(), os.getgroups()]
for path, text in (("/proc/sys/kernel/printk_ratelimit", "{forged}"), ("/sys/kernel/uevent_helper", "/x")):
    try:
        with open(path, "w") as f:
            f.write(text)
        out.append("written")
    except OSError as exc:
        out.append(type(exc).__name__)
try:
    open("/etc/shadow").read(1); out.append("read")
except OSError as exc:
    out.append(type(exc).__name__)
import shutil
shutil.copy("/bin/sh", "rootshell")
try:
    os.chown("rootshell", 0, 0); out.append("chowned")
except OSError as exc:
    out.append(type(exc).__name__)
os.chmod("rootshell", 0o4755)
st = os.stat(".")
out += [oct(stat.S_IMODE(st.st_mode)), st.st_uid == os.getuid()]
print(out)
"""

    recorder = Recorder()

    def setuid_file_owner() -> str:
        path = str(recorder.made[0].scratch)  # the host's view of the sandbox's scratch
        st = os.stat(os.path.join(path, "rootshell"))
        return f"{st.st_uid} {oct(st.st_mode & 0o7777)} {oct(os.stat(path).st_mode & 0o777)} {os.stat(path).st_uid}"

    steps = [attack, "print(setuid_file_owner())", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, recorder, tools=[setuid_file_owner])
    out = outputs(result)
    assert Path("/proc/sys/kernel/printk_ratelimit").read_text() == before, "a host kernel setting was changed"
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    assert out[0].startswith(f"[{uid}, "), out[0]
    assert "written" not in out[0] and "'read'" not in out[0] and "chowned" not in out[0], out[0]
    # /proc/sys: EACCES; /sys: read-only; /etc/shadow: EACCES; chown to root: refused (EPERM, or EINVAL where uid 0
    # is not even mapped in the sandbox's user namespace)
    assert out[0].endswith("'PermissionError', 'OSError', 'PermissionError', 'OSError', '0o700', True]"), out[0]
    owner, _mode, scratch_mode, scratch_owner = out[1].split()
    # the setuid file belongs to the unprivileged user, in a directory only that user can enter
    assert owner == str(uid) and owner != "0" and scratch_mode == "0o700" and scratch_owner == str(uid), out[1]


SECCOMP_CLASSES = {  # x86-64 numbers: one call per denied class, each expected to fail with EPERM
    "keyctl": 250,
    "add_key": 248,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "mount": 165,
    "unshare": 272,
    "setns": 308,
    "ptrace": 101,
    "init_module": 175,
    "kexec_load": 246,
    "open_by_handle_at": 304,
    "swapon": 167,
    "reboot": 169,
    "clock_settime": 227,
    "process_vm_readv": 310,
    "inotify_init1": 294,  # counted per host user: 128 instances, shared with the host user's other processes
    "mq_open": 240,
}


@needs_sandbox
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers of x86-64")
def test_the_seccomp_filter_refuses_each_denied_class_with_eperm(make_rlm):
    attack = f"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
seen = {{}}
for name, number in {SECCOMP_CLASSES!r}.items():
    ctypes.set_errno(0)
    status = libc.syscall(number, 0, 0, 0, 0, 0)
    seen[name] = (status, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
# a namespace through clone flags: CLONE_NEWUSER
ctypes.set_errno(0)
seen["clone(CLONE_NEWUSER)"] = (libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), errno.errorcode.get(ctypes.get_errno()))
print(seen)
"""
    result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder())
    seen = ast.literal_eval(outputs(result)[0])
    assert seen == {name: (-1, "EPERM") for name in [*SECCOMP_CLASSES, "clone(CLONE_NEWUSER)"]}, seen


@needs_sandbox
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers of x86-64")
def test_sockets_only_of_unix_ip_and_netlink_families_the_rest_refused_with_eperm(make_rlm):
    """AF_VSOCK is not network-namespaced (on a VM it reaches the hypervisor and other VMs); AF_ALG, AF_TIPC, AF_KEY
    are kernel surface; a family with high bits set (the kernel truncates it to an int) is refused too."""
    attack = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
seen = {}
for name, family, kind in (("AF_UNIX", 1, 1), ("AF_INET", 2, 1), ("AF_INET6", 10, 2), ("AF_NETLINK", 16, 3),
                           ("AF_VSOCK", 40, 1), ("AF_ALG", 38, 5), ("AF_TIPC", 30, 2), ("AF_KEY", 15, 3),
                           ("AF_VSOCK+2**32", 2**32 + 40, 1)):
    ctypes.set_errno(0)
    fd = libc.syscall(41, ctypes.c_long(family), kind, 0)  # socket
    seen[name] = "ok" if fd >= 0 else errno.errorcode.get(ctypes.get_errno())
    pair = (ctypes.c_int * 2)()
    ctypes.set_errno(0)
    if libc.syscall(53, ctypes.c_long(family), kind, 0, pair) == -1 and ctypes.get_errno() == errno.EPERM:
        seen[name + " pair"] = "EPERM"  # socketpair
print(seen)
print(socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4])
"""
    result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder())
    seen, address = outputs(result)[0].split("\n")
    refused = ["AF_VSOCK", "AF_ALG", "AF_TIPC", "AF_KEY", "AF_VSOCK+2**32"]
    expected = {"AF_UNIX": "ok", "AF_INET": "ok", "AF_INET6": "ok", "AF_NETLINK": "ok"}
    expected |= {name: "EPERM" for name in refused} | {name + " pair": "EPERM" for name in refused}
    assert ast.literal_eval(seen) == expected, seen
    assert address == "('127.0.0.1', 80)", address  # the C library's resolver still works


@needs_sandbox
def test_signals_queued_in_the_sandbox_stop_at_its_own_bound_not_the_host_users(make_rlm):
    """Pending signals are counted per host user across namespaces: a process that queues signals to itself used to
    take the host user's whole allowance (about 96,000; its other processes then got EAGAIN)."""
    attack = """
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
if os.fork() == 0:  # one thread, the signal blocked: every one queued stays pending
    class Value(ctypes.Union):  # union sigval
        _fields_ = [("number", ctypes.c_int), ("pointer", ctypes.c_void_p)]
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
    queued = 0
    while queued < 200_000 and libc.sigqueue(os.getpid(), signal.SIGRTMIN, Value(number=0)) == 0:
        queued += 1
    os.write(w, f"{queued} {errno.errorcode.get(ctypes.get_errno())}".encode())
    os._exit(0)
print(os.read(r, 100).decode())
_ = os.wait()
"""
    result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder())
    queued, error = outputs(result)[0].split()
    assert int(queued) <= 1024 and error == "EAGAIN", outputs(result)[0]


@needs_sandbox
def test_a_process_the_code_forks_does_not_outlive_its_execution_nor_answer_the_next(make_rlm):
    marker = f"rlm-straggler-{uuid.uuid4().hex}"
    attack = f"""
import os, sys, time, json
if os.fork() == 0:  # a straggler: burns CPU, then forges the worker's next answers on the protocol's pipe
    os.setsid()
    sys.argv[0] = "{marker}"
    for fd in range(3, 64):
        try:
            os.write(fd, b'{{"type":"result","value":"forged","stdout":""}}\\n')
        except OSError:
            pass
    end = time.time() + 0.5
    while time.time() < end:
        pass
    subprocess = __import__("subprocess")
    subprocess.Popen(["/bin/sh", "-c", "sleep 120", "{marker}"])
    for n in range(200):
        time.sleep(0.05)
        for fd in range(3, 64):
            try:
                os.write(fd, json.dumps({{"type": "result", "value": "forged", "execution": None}}).encode() + b"\\n")
            except OSError:
                pass
    os._exit(0)
time.sleep(0.2)
"""
    steps = [attack, "1 + 1", "print(count_marked())", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder(), tools=[count_marked_tool(marker)])
    assert result.answer == "done"
    out = outputs(result)
    assert "'forged'" not in " ".join(out) and "forged" not in out, out
    assert out[2] == "0" and marked(marker) == 0
    # the forged line written during the first execution is not its result: the LM reads an error
    assert out[0].startswith("[Error]") and "belongs to no running execution" in out[0], out[0]
    assert out[1] == "2"


@needs_sandbox
def test_a_thread_started_outside_the_threading_module_does_not_outlive_its_execution(make_rlm):
    """`_thread.start_new_thread` (or `pthread_create` through ctypes) is invisible to `threading.enumerate()`: the
    worker counts the kernel's threads of its process, and replaces itself as for any thread left running."""
    hidden = """
import _thread, time
ticks = [0]
def spin():
    while True:
        ticks[0] += 1
        time.sleep(0.01)
_thread.start_new_thread(spin, ())
"""
    joined = """
import threading
for n in range(20):
    t = threading.Thread(target=sum, args=([n],))
    t.start()
    t.join()
print("joined")
"""
    # A library's native threads run no Python code: OpenBLAS's pool, started by `import numpy`, is not reported.
    native = "import numpy\nprint(numpy.ones(2).sum())" if importlib.util.find_spec("numpy") else "print(2.0)"
    steps = [hidden, "print(ticks)", joined, native, "print(numpy.ones(3).sum())" if "numpy" in native else "3.0"]
    result = run(make_rlm, [*steps, "SUBMIT(answer='done')"], Recorder())
    out = outputs(result)
    assert out[0].startswith("[Error]") and "1 background thread(s) running outside the threading module" in out[0]
    assert out[1] == "[Error] NameError: name 'ticks' is not defined", out[1]  # the worker (and its thread) are gone
    assert out[2] == "joined", out[2]  # threads the code joined are not reported
    assert out[3:5] == ["2.0", "3.0"], out[3:5]  # the worker (and its state) kept


@needs_sandbox
def test_what_the_code_writes_to_the_sandboxs_standard_error_never_reaches_the_hosts_disk(make_rlm):
    """bubblewrap's init (PID 1 in the sandbox) holds the sandbox's standard error; where the sandbox runs as the
    host's own user (a host that is not root) the code reopens it through /proc/1/fd/2. It is a pipe the host drains
    into a small buffer, never a file of the host's (which 64 MiB written there would fill, past scratch_mb)."""
    attack = """
import os
try:
    fd = os.open("/proc/1/fd/2", os.O_WRONLY)
except OSError as exc:  # a root host: the sandbox runs as nobody, who may not reopen it
    print(type(exc).__name__)
else:
    for _ in range(64):
        os.write(fd, b"x" * 2**20)
    print("written")
"""
    recorder = Recorder()

    def host_side() -> str:
        import stat

        held = 0  # the host's open files that are deleted (a temporary file is)
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)"):
                    held += os.fstat(int(fd)).st_size
        kind = os.stat(f"/proc/{recorder.made[0].pid}/fd/2").st_mode
        return f"{stat.S_ISFIFO(kind)} {held < 2**20}"

    result = run(make_rlm, [attack, "print(host_side())", "SUBMIT(answer='done')"], recorder, tools=[host_side])
    out = outputs(result)
    assert out[0] in ("written", "PermissionError"), out[0]
    assert out[1] == "True True", out[1]


@needs_sandbox
def test_a_worker_that_stops_reading_its_input_cannot_hang_the_host_past_the_timeout(make_rlm):
    """The code parks the protocol's reader on a pipe of its own: nothing reads the worker's input any more (but
    for what a read already under way takes), and a message to it larger than the pipe (here the LM's next code,
    200 kB) used to block the host's write for good, the execution's timeout never reached. The host's writes wait
    for room only until the deadline."""
    park = """
import gc, os
channel = next(o for o in gc.get_objects() if type(o).__name__ == "type" and o.__name__ == "Channel")
r, w = os.pipe()
os.dup2(r, channel.input.fileno())
"""
    big = "x = '" + "a" * 200_000 + "'\nprint(len(x))"
    steps = [park, big, "print('fresh')", "SUBMIT(answer='done')"]
    finished: list[Any] = []
    call = threading.Thread(target=lambda: finished.append(run(make_rlm, steps, Recorder(timeout=3))), daemon=True)
    call.start()
    call.join(300)  # not a timing check: without the bound on writes the call never returns, and the test fails
    assert finished, "the host hung writing to a worker that stopped reading"
    out = outputs(finished[0])
    assert out[1].startswith("[Error] Execution timed out after 3 s"), out[1][:300]
    assert out[2] == "fresh" and finished[0].answer == "done", out


@needs_sandbox
def test_no_code_of_an_execution_starts_processes_while_the_lm_thinks(make_rlm):
    """The worker is the code's: it switches off the worker's own hygiene (timers and signal handlers reset, threads
    counted), then leaves an interval timer's signal handler and a hidden thread starting processes, and replaces the
    function that answers the host's variable reads (Speculate). Between requests the host keeps the worker stopped
    (SIGSTOP) and kills the rest: nothing the code left runs while the LM thinks, and what the read started is
    killed after it."""
    from rlm_events.sandbox._reader import read_variables

    marker = f"rlm-between-{uuid.uuid4().hex}"
    arm = f"""
import _thread, signal, subprocess, sys, time
worker = sys.modules["__main__"]
worker.restore_signals = lambda handlers: None
worker.ThreadWatch.left_running = lambda self: 0
def spawn(*_):
    subprocess.Popen(["/bin/sh", "-c", "sleep 60", "{marker}"])
def spawning():
    while True:
        time.sleep(0.02)
        spawn()
signal.signal(signal.SIGALRM, spawn)
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
_thread.start_new_thread(spawning, ())
answer = worker.read
def read(namespace, request):
    spawn()
    return answer(namespace, request)
worker.read = read
x = 1
"""
    recorder = Recorder()
    between: list[int] = []

    def thinking(_index: int) -> str:  # the LM, between the two executions: it thinks, Speculate reads
        time.sleep(0.3)
        between.append(marked(marker))
        values, _bound = read_variables(recorder.made[0], ["x"], max_items=10, max_chars=10, max_total=100)
        between.append(marked(marker))
        return f"print({values['x']})"

    result = run(make_rlm, [arm, thinking, "SUBMIT(answer='done')"], recorder)
    assert outputs(result)[1] == "1"
    assert between == [0, 0], f"processes started after the execution that armed them had ended: {between}"


@needs_sandbox
def test_forged_tool_requests_run_at_most_max_tool_concurrency_tools_at_once(make_rlm):
    running, peak, calls = [0], [0], [0]
    lock = threading.Lock()

    def slow() -> str:
        with lock:
            running[0] += 1
            calls[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return "ok"

    # 150 tool_request lines written straight to the protocol channel, tagged like the execution's own
    attack = """
import gc, json
proto = next(o for o in gc.get_objects() if type(o).__name__ == "Protocol")
channel = next(o for o in gc.get_objects() if type(o).__name__ == "type" and o.__name__ == "Channel")
for n in range(150):
    line = json.dumps({"type": "tool_request", "execution": proto.execution, "id": 10_000 + n, "name": "slow",
                       "args": [], "kwargs": {}})
    channel.output.write(line + "\\n")
channel.output.flush()
print(slow())
"""
    result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder(max_tool_concurrency=3), tools=[slow])
    assert result.answer == "done"
    assert outputs(result)[0] == "ok"
    assert calls[0] == 151 and 1 <= peak[0] <= 3, (calls, peak)


@needs_sandbox
def test_a_flood_of_tiny_lines_is_buffered_by_what_it_costs_the_host_not_by_its_bytes(make_rlm):
    """While the host waits for a tool slot it does not read messages; the worker's lines pile up, at most 32 MiB of
    them. Two-byte lines used to be counted by their bytes: 16 million objects (about 700 MiB of the host's memory).
    Each line is charged its overhead too."""
    from rlm_events.sandbox._process import LINE_OVERHEAD, MAX_BUFFERED_BYTES

    recorder = Recorder(max_tool_concurrency=1)
    seen: list[int] = []

    def hold() -> str:  # runs while the host waits for its slot: returns once the reader has stopped buffering
        worker = recorder.made[0]._resources.worker
        assert worker is not None
        while not worker.killed_by_host and worker.responses.qsize() <= 2_000_000:
            if worker.buffered > MAX_BUFFERED_BYTES - 2 - LINE_OVERHEAD:  # the reader waits for room
                break
            time.sleep(0.01)
        seen.append(worker.responses.qsize())
        return "ok"

    attack = """
import gc, json, os
proto = next(o for o in gc.get_objects() if type(o).__name__ == "Protocol")
channel = next(o for o in gc.get_objects() if type(o).__name__ == "type" and o.__name__ == "Channel")
for n in range(2):  # the second waits for the first's slot: meanwhile the host reads nothing
    request = {"type": "tool_request", "execution": proto.execution, "id": 10_000 + n, "name": "hold", "args": [],
               "kwargs": {}}
    channel.output.write(json.dumps(request) + "\\n")
channel.output.flush()
for _ in range(32):
    os.write(channel.output.fileno(), b" \\n" * 2**19)
"""
    result = run(make_rlm, [attack, "print('fresh')", "SUBMIT(answer='done')"], recorder, tools=[hold])
    out = outputs(result)
    assert out[0].startswith("[Error]") and "broke the protocol" in out[0], out[0][:300]
    assert out[1] == "fresh"
    assert seen and seen[0] <= MAX_BUFFERED_BYTES // LINE_OVERHEAD, seen


@needs_sandbox
def test_a_message_over_the_cap_fails_the_execution_with_an_error_the_lm_reads(make_rlm):
    steps = ["'x' * (17 * 1024 * 1024)", "print('fresh')", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder())
    out = outputs(result)
    assert out[0].startswith("[Error]") and "over 16 MiB" in out[0], out[0][:300]
    assert out[1] == "fresh"


FORGE = """
import gc
proto = next(o for o in gc.get_objects() if type(o).__name__ == "Protocol")
channel = next(o for o in gc.get_objects() if type(o).__name__ == "type" and o.__name__ == "Channel")
channel.output.write('{{"type":"result","execution":"%s","value":%s}}\\n' % (proto.execution, {value}))
channel.output.flush()
"""


@needs_sandbox
def test_a_message_that_decodes_into_too_much_is_an_error_the_lm_reads_not_a_host_crash(make_rlm):
    """Under 16 MiB, but nested 100,000 deep (the host's JSON decoder would raise RecursionError, ending the whole
    call), or 5 million empty lists (over 500 MiB of the host's memory once decoded): both refused before decoding."""
    deep = FORGE.format(value='"[" * 100_000 + "]" * 100_000')
    wide = FORGE.format(value='"[" + "[]," * 5_000_000 + "[]]"')
    strings = '"[{,]}" * 400_000'  # 2 million brackets and commas, inside a string: they count for nothing
    steps = [deep, "print('fresh')", wide, strings, "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, Recorder())
    out = outputs(result)
    assert result.answer == "done"
    assert out[0].startswith("[Error]") and "nested more than 100 deep" in out[0], out[0][:300]
    assert out[1] == "fresh"
    assert out[2].startswith("[Error]") and "more than 1048576 JSON values" in out[2], out[2][:300]
    assert out[3].startswith("[{,]}[{,]}"), out[3][:300]


@needs_sandbox
def test_stale_scratch_and_cgroups_of_a_killed_host_are_removed():
    code = (
        "import os, sys\nsys.path.insert(0, sys.argv[1])\nfrom rlm_events.sandbox import Sandboxed\n"
        'i = Sandboxed()()\ni.execute(\'import subprocess\\nsubprocess.Popen(["sleep", "60"])\\n1\')\n'
        "print(i.working_directory, os.getpid(), flush=True)\nos.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    directory, host = done.stdout.split()
    scratch = Path(directory)
    assert scratch.name.startswith("rlm-sandbox-") and scratch.exists(), done.stderr
    cgroups = [path for path, _, owner in _cgroup.stale_cgroups() if owner == int(host)]
    if Sandboxed().limits["memory_mb"].startswith("sandbox"):
        assert cgroups, "the killed host's cgroups (memory, pids) were expected to be left"
    assert not scratch.exists()
    assert not [path for path, _, owner in _cgroup.stale_cgroups() if owner == int(host)]
