"""rlm_events.sandbox, issue 21's remaining limits: the scratch disk cap (`scratch_mb`), memory and processes for the
sandbox as a whole (its cgroup) or per process (the fallback), and the allowlist mode (`expose`).

As in tests/test_sandbox.py, every attack is code a ScriptedLM writes in a real dspy.RLM call, its effect checked on
the host; RLM_EVENTS_REQUIRE_SANDBOX=1 turns a sandbox that cannot run into a failure.
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sandbox import MISSING, ROOT, Recorder, needs_sandbox, outputs, run

from rlm_events.sandbox import Sandboxed, SandboxUnavailable, _cgroup, _isolation

CGROUP = Sandboxed(memory_mb=200).limits["memory_mb"].startswith("sandbox") if not MISSING else False
needs_cgroup = pytest.mark.skipif(not CGROUP, reason="no memory cgroup for the sandbox here (not root, none delegated)")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody (the sandbox's user on a root host) can read: pytest's tmp_path is private to root."""
    path = Path(tempfile.mkdtemp(prefix="rlm-sandbox-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- scratch_mb ------------------------------------------------------------------------------------------------------


@needs_sandbox
def test_writing_past_scratch_mb_is_enospc_the_lm_reads_and_the_host_disk_is_untouched(make_rlm):
    recorder = Recorder(scratch_mb=8)
    attack = """
import os
os.makedirs("deep/er", exist_ok=True)
with open("deep/er/fill", "wb") as f:
    for _ in range(64):  # 64 MiB into an 8 MiB scratch
        f.write(b"x" * 2**20)
"""
    seen: list[object] = []

    def on_host() -> str:
        interpreter = recorder.made[0]
        assert interpreter.scratch is not None and interpreter.working_directory is not None
        seen.append(sorted(os.listdir(interpreter.working_directory)))  # the host directory under the tmpfs
        return str((interpreter.scratch / "deep/er/fill").stat().st_size // 2**20)

    steps = [
        attack,
        "import os\nst = os.statvfs('.')\n"
        "print(st.f_blocks * st.f_frsize // 2**20, os.path.getsize('deep/er/fill') // 2**20)",
        "print('after the cap:', on_host())",
        "open('small.txt', 'w').write('still writable once room is made') if os.remove('deep/er/fill') is None else 0",
        "SUBMIT(answer=open('small.txt').read())",
    ]
    result = run(make_rlm, steps, recorder, tools=[on_host])
    out = outputs(result)
    assert out[0].startswith("[Error] OSError: [Errno 28] No space left on device"), out[0]
    size, written = out[1].split()
    assert size == "8" and int(written) <= 8, out[1]
    assert out[2] == f"after the cap: {written}"
    assert seen == [[]]  # nothing reached the host's disk: the files were on the sandbox's tmpfs
    assert result.answer == "still writable once room is made"
    assert Sandboxed().scratch_mb == 256 and Sandboxed().limits["scratch_mb"] == "sandbox: 256 MiB (tmpfs)"


@needs_sandbox
def test_a_bubblewrap_without_size_turns_the_default_cap_off_and_says_so(shared_dir, make_rlm, caplog):
    """bubblewrap before 0.8 (Ubuntu 22.04's 0.6) has no --size: left at its default, the scratch cap is off, logged
    once and said in `limits`, and the sandbox runs; `scratch_mb` given explicitly is refused there, by name."""
    real = shutil.which("bwrap")
    assert real is not None
    old = shared_dir / "bwrap-0.6"  # the real bubblewrap, whose --help no longer lists --size
    old.write_text(
        f'#!/bin/sh\nif [ "$1" = --help ]; then "{real}" --help 2>&1 | grep -v -- --size; exit 0; fi\n'
        f'exec "{real}" "$@"\n'
    )
    old.chmod(0o755)
    with caplog.at_level("WARNING", logger="rlm_events.sandbox"):
        sandbox = Sandboxed(bwrap=old)
    assert sandbox.scratch_mb is None and sandbox.limits["scratch_mb"] == "off (the host directory, uncapped)"
    assert any("has no --size" in r.getMessage() for r in caplog.records)
    result = run(make_rlm, ["print(open('f', 'w').write('x' * 10))", "SUBMIT(answer='ok')"], sandbox)
    assert outputs(result)[0] == "10" and result.answer == "ok"
    with pytest.raises(SandboxUnavailable, match=r"no --size option .*scratch_mb"):
        Sandboxed(bwrap=old, scratch_mb=256)


@needs_sandbox
def test_scratch_files_go_with_a_lost_worker_unless_scratch_mb_is_none(make_rlm):
    steps = [
        "open('kept', 'w').write('x')",
        "while True:\n    pass",
        "import os\nprint(os.path.exists('kept'))",
        "SUBMIT(answer='done')",
    ]
    capped = outputs(run(make_rlm, steps, Recorder(timeout=1)))
    assert "was lost, with the files in the working directory" in capped[1], capped[1]
    assert capped[2] == "False"
    uncapped = outputs(run(make_rlm, steps, Recorder(timeout=1, scratch_mb=None)))
    assert "files in the working directory were kept" in uncapped[1], uncapped[1]
    assert uncapped[2] == "True"


# --- memory and processes for the sandbox as a whole ---------------------------------------------------------------

THREE_HOLDERS = r"""
import subprocess, sys
hold = ("import sys; open('/proc/self/oom_score_adj', 'w').write('1000'); "
        "b = bytearray(b'\x01') * (90 * 2**20); print('held', flush=True); sys.stdin.read()")
children = [subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in range(3)]
held = [child.stdout.readline().decode().strip() for child in children]
for child in children:
    child.stdin.close()
print(peak(), [child.wait() for child in children])
"""


@needs_sandbox
@needs_cgroup
def test_three_processes_under_memory_mb_each_cannot_together_exceed_it(make_rlm):
    """Three children of 90 MiB each (each under memory_mb=200 of address space): in the cgroup, the kernel kills
    one of them as the sum reaches 200 MiB, and the cgroup's peak stays at most 200 MiB."""
    recorder = Recorder(memory_mb=200)

    def peak() -> int:
        cgroup = recorder.made[0]._resources.worker.cgroup  # type: ignore[union-attr]
        assert cgroup is not None
        for directory, version in cgroup.directories.items():
            name = "memory.peak" if version == "v2" else "memory.max_usage_in_bytes"
            if Path(directory, name).exists():
                return int(Path(directory, name).read_text())
        raise AssertionError("no memory accounting in the sandbox's cgroup")

    worker_hog = (
        "hold = \"import sys; b = bytearray(b'\\x01') * (60 * 2**20); print('held', flush=True); sys.stdin.read()\"\n"
        "kids = [subprocess.Popen([sys.executable, '-c', hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "        for _ in range(2)]\n"
        "print([kid.stdout.readline() for kid in kids])\n"
        "mine = bytearray(b'\\x01') * (100 * 2**20)"
    )
    steps = [THREE_HOLDERS, worker_hog, "print('fresh')", "SUBMIT(answer='done')"]
    result = run(make_rlm, steps, recorder, tools=[peak])
    out = outputs(result)
    top, codes = out[0].split(" ", 1)
    assert int(top) <= 200 * 2**20, out[0]
    assert codes.count("-9") >= 1 and set(codes.strip("[]").split(", ")) <= {"0", "-9"}, out[0]
    # The worker itself the biggest (100 MiB next to two of 60): killed, and the LM is told why.
    killed = "[Error] The sandboxed interpreter was killed by the kernel's out-of-memory killer"
    assert out[1].startswith(killed), out[1]
    assert "together reached memory_mb=200" in out[1]
    assert out[2] == "fresh" and result.answer == "done"


@needs_sandbox
def test_with_cgroup_false_each_process_has_memory_mb_and_the_sum_is_not_bounded(make_rlm):
    recorder = Recorder(memory_mb=200, cgroup=False)
    assert recorder.factory.limits["memory_mb"] == "per process: 200 MiB of address space (RLIMIT_AS)"
    assert recorder.factory.limits["max_processes"] == "per user namespace: 64 (RLIMIT_NPROC)"

    def peak() -> int:
        return 0

    result = run(make_rlm, [THREE_HOLDERS, "SUBMIT(answer='done')"], recorder, tools=[peak])
    assert outputs(result)[0] == "0 [0, 0, 0]"  # 270 MiB together: nothing bounds the sum


@needs_sandbox
def test_with_cgroup_false_rlimit_nproc_still_stops_a_flood(make_rlm):
    flood = """
import subprocess, sys
procs, error = [], None
for _ in range(40):
    try:
        procs.append(subprocess.Popen(["sleep", "60"]))
    except OSError as exc:
        error = exc
        break
print(len(procs), type(error).__name__)
"""
    result = run(make_rlm, [flood, "SUBMIT(answer='done')"], Recorder(max_processes=12, cgroup=False))
    started, kind = outputs(result)[0].split()
    assert 0 < int(started) < 12 and kind == "BlockingIOError", outputs(result)[0]


@needs_sandbox
@needs_cgroup
def test_limits_and_instructions_say_the_sandbox_as_a_whole():
    factory = Sandboxed(memory_mb=300, max_processes=20)
    assert factory.limits["memory_mb"].startswith("sandbox: 300 MiB (memory cgroup), and per process")
    assert factory.limits["max_processes"] == "sandbox: 20 (pids cgroup)"
    assert "300 MiB of memory per process and for all processes together" in factory.execution_instructions
    Sandboxed(cgroup=True)  # required, and here


# --- expose: the allowlist mode --------------------------------------------------------------------------------------


@needs_sandbox
def test_expose_hides_everything_but_the_allowlist_and_ordinary_code_runs(make_rlm, shared_dir):
    data = shared_dir / "data.json"
    data.write_text('{"values": [1, 4, 9]}')
    tag = uuid.uuid4().hex
    secret_home = Path.home() / f".rlm-sandbox-secret-{tag}"
    secret_home.write_text("secret")
    run_dir = Path("/run") if os.access("/run", os.W_OK) else None
    server = socket.socket(socket.AF_UNIX)
    socket_path = (run_dir or shared_dir) / f"rlm-sandbox-{tag}.sock"
    server.bind(str(socket_path))
    server.listen()
    probes = [
        str(ROOT / "pyproject.toml"),
        str(ROOT),
        "/run",
        "/var/run",
        "/home",
        str(secret_home),
        "/etc/passwd",
        "/etc/hostname",
        "/var",
        "/srv",
        "/sys/kernel",
    ]
    attack = f"""
import os, socket
seen = {{}}
for path in {probes!r}:
    try:
        seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read(10)
    except OSError as exc:
        seen[path] = type(exc).__name__
client = socket.socket(socket.AF_UNIX)
try:
    client.connect({str(socket_path)!r})
    seen["socket"] = "connected"
except OSError as exc:
    seen["socket"] = type(exc).__name__
print(seen)
"""
    ordinary = f"""
import json, math, re, statistics
values = json.load(open({str(data)!r}))["values"]
print(math.sqrt(sum(values)), re.findall(r"\\d", "a1b2"), statistics.mean(values), os.listdir({str(shared_dir)!r}))
"""
    try:
        factory = Recorder(expose=[shared_dir])
        result = run(make_rlm, [attack, ordinary, "SUBMIT(answer='done')"], factory)
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)
        secret_home.unlink(missing_ok=True)
    seen = ast.literal_eval(outputs(result)[0])
    # A virtual environment inside the checkout (.venv, CI's .venv-ci) is the interpreter's prefix, which Python
    # needs: the checkout then shows that one entry, and nothing else of it.
    prefix = Path(sys.prefix).resolve()
    own = [prefix.relative_to(ROOT).parts[0]] if prefix.is_relative_to(ROOT) else None
    if own is not None and seen[str(ROOT)] == own:
        seen[str(ROOT)] = "FileNotFoundError"
    assert set(map(str, seen.values())) == {"FileNotFoundError"}, seen
    assert outputs(result)[1] == "3.7416573867739413 ['1', '2'] 4.666666666666667 ['data.json']"
    assert result.answer == "done"


@needs_sandbox
def test_expose_keeps_the_sandbox_read_only_and_the_exposed_paths_too(make_rlm, shared_dir):
    (shared_dir / "f").write_text("x")
    attack = f"""
import os
out = []
for path in ("/new-file", "/usr/new-file", {str(shared_dir / "f")!r}, {str(shared_dir / "g")!r}):
    try:
        open(path, "w").write("escaped")
        out.append("written")
    except OSError as exc:
        out.append(exc.strerror)
open("scratch-ok", "w").write("y")
print(out, os.listdir("."))
"""
    result = run(make_rlm, [attack, "SUBMIT(answer='done')"], Recorder(expose=[str(shared_dir)]))
    assert outputs(result)[0] == f"{['Read-only file system'] * 4} ['scratch-ok']"
    assert (shared_dir / "f").read_text() == "x" and not (shared_dir / "g").exists()


# --- options are checked ---------------------------------------------------------------------------------------------


def test_new_options_are_checked_with_errors_naming_them(tmp_path):
    bad: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"scratch_mb": -1}, ValueError, r"scratch_mb must be an integer of at least 1, or None .*got -1"),
        ({"scratch_mb": 0}, ValueError, "scratch_mb must be an integer"),
        ({"scratch_mb": "64"}, ValueError, "scratch_mb must be an integer"),
        ({"scratch_mb": True}, ValueError, "scratch_mb must be an integer"),
        ({"expose": "/usr"}, TypeError, r"expose takes a sequence of paths, not one path"),
        ({"expose": ["/nonexistent/rlm-sandbox"]}, ValueError, r"expose: '/nonexistent/rlm-sandbox' does not exist"),
        ({"expose": [3]}, TypeError, r"expose takes paths \(str or os.PathLike\), not int"),
        ({"expose": ["/"]}, ValueError, r"expose: '/' exposes everything"),
        ({"cgroup": "yes"}, TypeError, r"cgroup must be None \(where the host allows one\), True or False"),
    ]
    for options, kind, message in bad:
        with pytest.raises(kind, match=message):
            Sandboxed(**options)  # type: ignore[arg-type]
    if os.geteuid() == 0:  # the sandbox runs as nobody, who cannot read a root-only directory
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        tmp_path.chmod(0o700)
        with pytest.raises(ValueError, match=r"expose: .* not readable by nobody \(uid 65534\)"):
            Sandboxed(expose=[private])


@needs_sandbox
def test_cgroup_true_without_one_is_named(monkeypatch):
    monkeypatch.setattr(_isolation, "_PROBED", {})
    monkeypatch.setattr(_cgroup, "hierarchies", lambda: {})
    with pytest.raises(SandboxUnavailable, match=r"cgroup=True, but no cgroup offers the memory controller"):
        Sandboxed(cgroup=True)
    with pytest.raises(SandboxUnavailable, match="pids controller"):
        Sandboxed(cgroup=True, memory_mb=None)
    assert Sandboxed(cgroup=True, memory_mb=None, max_processes=None).limits["memory_mb"] == "off"
