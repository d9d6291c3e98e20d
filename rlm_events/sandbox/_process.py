"""The host's side of one sandboxed worker process: starting it inside bubblewrap (`Worker`), its pipes and
messages, why it died, and what an interpreter holds outside Python (`Resources`)."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime import CodeInterpreterError
from . import _isolation
from ._cgroup import CgroupUnavailable, SandboxCgroup
from ._seccomp import SeccompMissing

if TYPE_CHECKING:
    from . import Sandboxed

# The host trusts nothing the worker sends: one message is at most this long, and at most this much is buffered
# before the host reads it (past that the reader stops reading, so the worker blocks on its pipe).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_BUFFERED_BYTES = 2 * MAX_MESSAGE_BYTES
# What one buffered line costs the host beyond its bytes (the bytes object's header, the queue's slot), charged
# against MAX_BUFFERED_BYTES too: 32 MiB of two-byte lines would otherwise be 16 million objects, about 700 MiB.
LINE_OVERHEAD = 64
# ... and it decodes into at most this many JSON values (containers and their items), nested at most this deep. The
# byte cap alone does not bound the host's memory: a 16 MiB line of `[[],[],...]` decodes into 5.6 million lists
# (over 500 MiB), and a line of `[[[...` overflows the decoder's recursion (RecursionError, which would end the
# whole RLM call) or, a little less deep, every later `repr` of the value on the host.
MAX_MESSAGE_VALUES = 2**20
MAX_MESSAGE_DEPTH = 100
# What the host keeps of the sandbox's standard error (bubblewrap's and the launcher's errors, for
# `startup_error`): its last bytes, in memory. Not a file: bubblewrap's init process (PID 1 in the sandbox) holds the
# descriptor, and where the sandbox runs as the host's own user (a host that is not root) the code reopens it
# through /proc/1/fd/2, so a file would let it fill the host's disk past scratch_mb.
STDERR_TAIL_BYTES = 4096

# A JSON string (escapes included): what the structure scan skips.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_NESTING = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def structure_problem(line: bytes) -> str | None:
    """Why the JSON text `line` decodes into too much for the host (more than `MAX_MESSAGE_VALUES` values, or
    nested deeper than `MAX_MESSAGE_DEPTH`), or None. Counted outside strings, before decoding: an ordinary message
    costs three byte counts; only one that might be over a bound is scanned (a regular expression, then a pass over
    its brackets alone)."""
    opening = line.count(b"[") + line.count(b"{")
    if opening + line.count(b",") <= MAX_MESSAGE_VALUES and opening <= MAX_MESSAGE_DEPTH:
        return None
    structure = _JSON_STRING.sub(b'""', line)
    opening = structure.count(b"[") + structure.count(b"{")
    if opening + structure.count(b",") > MAX_MESSAGE_VALUES:
        return f"more than {MAX_MESSAGE_VALUES} JSON values"
    if opening > MAX_MESSAGE_DEPTH:
        # each opening bracket +1, each closing one -1 (bytes 2 and 0, minus 1): the deepest running sum
        brackets = structure.translate(_NESTING, _NOT_BRACKETS)
        if max(itertools.accumulate(step - 1 for step in brackets), default=0) > MAX_MESSAGE_DEPTH:
            return f"JSON nested more than {MAX_MESSAGE_DEPTH} deep"
    return None


class WorkerLost(Exception):
    """The worker is gone (or must go): `str()` says why, for the LM."""


def run_in_thread(function: Callable[[], Any]) -> Future[Any]:
    outcome: Future[Any] = Future()

    def run() -> None:
        try:
            outcome.set_result(function())
        except BaseException as exc:
            outcome.set_exception(exc)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), daemon=True, name="rlm-events-sandbox-tool").start()
    return outcome


async def awaited(awaitable: Any) -> Any:
    """What `awaitable` returns (for `asyncio.run`, which takes a coroutine)."""
    return await awaitable


def remove_tree(path: str) -> None:
    """Remove a scratch directory, whatever modes the code left on it (never following its symlinks)."""
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Worker:
    """One sandboxed worker process and its pipes."""

    def __init__(self, sandbox: Sandboxed, scratch: str) -> None:
        self.sandbox = sandbox
        self.responses: queue.Queue[bytes | BaseException | None] = queue.Queue()
        self.buffered = 0
        self.buffer_room = threading.Condition()
        self.send_lock = threading.Lock()
        self.input_broken = False  # a send stopped part-way: the worker's input holds half a message
        self.killed_by_host = False
        self.abandoned_reads: set[str] = set()  # tags of reads the host stopped waiting for (see _reader)
        self.own_pids: set[int] = set()
        self.root_pid: int | None = None
        self.worker_handle: int | None = None  # a pidfd of the worker process (see pause())
        self.cgroup: SandboxCgroup | None = None
        self.stderr_tail = b""
        self.stderr_drained = threading.Event()
        memory = None if sandbox.memory_mb is None else sandbox.memory_mb * 1024 * 1024
        controllers = sandbox._controllers
        limits = {
            "memory_bytes": memory,  # per process too: one hog gets MemoryError before the cgroup's OOM killer
            "cpu_seconds": sandbox.cpu_seconds,
            "max_processes": None if "pids" in controllers else sandbox.max_processes,
        }
        fds: list[int] = []
        try:
            if controllers:
                self.cgroup = SandboxCgroup(
                    max_processes=sandbox.max_processes if "pids" in controllers else None,
                    memory_bytes=memory if "memory" in controllers else None,
                )
            layout = sandbox._layout
            prefix, fds = _isolation.sandbox_command(sandbox._bwrap, scratch, layout, sandbox.python, self.cgroup)
            command = [*prefix, sandbox.python, "-I", layout.worker, json.dumps(limits)]
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_isolation.sandbox_environment(scratch),
                start_new_session=True,
                close_fds=True,
                pass_fds=fds,
            )
        except (OSError, CgroupUnavailable, SeccompMissing, _isolation.SandboxUnavailable) as exc:
            self._release()
            raise CodeInterpreterError(f"Unable to start the sandbox: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
        # The host never blocks writing to the worker: code that stops reading its input (and fills the pipe) would
        # otherwise hang the host's execute(), its timeout never reached (see send()).
        assert self.process.stdin is not None
        os.set_blocking(self.process.stdin.fileno(), False)
        threading.Thread(target=self._read, daemon=True, name="rlm-events-sandbox-reader").start()
        threading.Thread(target=self._drain_stderr, daemon=True, name="rlm-events-sandbox-stderr").start()

    def _drain_stderr(self) -> None:
        """Read the sandbox's standard error until every process holding it is gone, keeping only its last
        `STDERR_TAIL_BYTES` (whatever the code writes there costs the host no more)."""
        stream = self.process.stderr
        assert stream is not None
        try:
            with contextlib.suppress(OSError, ValueError):
                while chunk := os.read(stream.fileno(), 65536):
                    self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            self.stderr_drained.set()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            while True:
                line = stream.readline(MAX_MESSAGE_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_MESSAGE_BYTES:
                    self.responses.put(WorkerLost(f"sent a message over {MAX_MESSAGE_BYTES // 2**20} MiB"))
                    return
                with self.buffer_room:
                    cost = len(line) + LINE_OVERHEAD
                    while self.buffered > MAX_BUFFERED_BYTES - cost and not self.killed_by_host:
                        self.buffer_room.wait(1.0)
                    self.buffered += cost
                self.responses.put(line)
        self.responses.put(None)

    def send(self, message: dict[str, Any], deadline: float | None) -> None:
        """Write one message to the worker by `deadline` (monotonic; None: no limit). The worker's input is
        non-blocking: a worker that stops reading it (code can park the protocol's reader) fills the pipe, and the
        host then waits for room only until the deadline, raising TimeoutError, never for good. Raises WorkerLost
        if the worker is gone, or its input holds half of a message an earlier send gave up on."""
        data = memoryview((json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode())
        if not self.send_lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise TimeoutError  # another send waits for room (a tool's answer)
        try:
            if self.input_broken:
                raise WorkerLost("stopped reading its input (a message to it was left half-written)")
            stdin = self.process.stdin
            assert stdin is not None
            room = select.poll()
            room.register(stdin.fileno(), select.POLLOUT)
            total, sent = len(data), 0
            while sent < total:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not room.poll(None if remaining is None else remaining * 1000):
                    raise TimeoutError
                with contextlib.suppress(BlockingIOError):
                    sent += os.write(stdin.fileno(), data[sent:])
                self.input_broken = 0 < sent < total
        except TimeoutError:
            raise
        except (OSError, ValueError) as exc:
            raise WorkerLost(self.death()) from exc
        finally:
            self.send_lock.release()

    def receive(self, deadline: float | None) -> dict[str, Any]:
        """The next message; raises WorkerLost (worker gone, bad message), TimeoutError, or what a tool raised."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            line = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            raise WorkerLost(self.death())
        if isinstance(line, BaseException):
            raise line
        with self.buffer_room:
            self.buffered -= len(line) + LINE_OVERHEAD
            self.buffer_room.notify()
        problem = structure_problem(line)
        if problem is not None:
            raise WorkerLost(f"broke the protocol (a message of {problem})")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: cannot happen past structure_problem; never let it out
            raise WorkerLost(f"broke the protocol (not JSON: {line[:200]!r})") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise WorkerLost(f"broke the protocol (not a message: {str(message)[:200]})")
        if message["type"] == "values" and message.get("execution") in self.abandoned_reads:
            self.abandoned_reads.discard(message["execution"])  # a read's late answer: nobody waits for it any more
            return self.receive(deadline)
        return message

    def started(self) -> None:
        """Note the sandbox's own processes (bubblewrap's and the worker), once the worker said it is ready; the
        worker is then paused until the host's first request (see `pause()`)."""
        self.own_pids = {self.process.pid, *descendants(self.process.pid)}
        self.root_pid = min(self.own_pids - {self.process.pid}, key=_depth, default=None)
        worker = max(self.own_pids - {self.process.pid}, key=_depth, default=None)
        with contextlib.suppress(OSError):
            self.worker_handle = None if worker is None else os.pidfd_open(worker)
        self.pause()

    def pause(self) -> None:
        """Between the host's requests no code of the sandbox runs: the worker is stopped (SIGSTOP, which nothing
        catches or ignores: no timer, thread or signal handler the code left in it runs), then every other process
        in the sandbox is killed (in this order, so that the worker cannot start one meanwhile). A worker that
        cannot be stopped is lost (WorkerLost). `resume()` continues it for the next request."""
        self._signal_worker(signal.SIGSTOP)
        self.kill_strays()

    def resume(self) -> None:
        """Continue the worker (SIGCONT) for a request of the host's."""
        self._signal_worker(signal.SIGCONT)

    def _signal_worker(self, number: int) -> None:
        # Through a pidfd opened while the worker was known alive: a PID reused since by another process of the host
        # is never signalled.
        if self.worker_handle is None:
            raise WorkerLost("could not be found among the sandbox's processes")
        try:
            signal.pidfd_send_signal(self.worker_handle, number)
        except OSError as exc:
            raise WorkerLost(self.death()) from exc

    def sandbox_path(self, path: str) -> str | None:
        """Where the host reads `path` of the sandbox's own mounts (its scratch tmpfs): through the `/proc` root of
        the sandbox's first process, while it runs."""
        return None if self.root_pid is None else f"/proc/{self.root_pid}/root{path}"

    def kill_strays(self) -> None:
        """SIGKILL every process in the sandbox but its own: what the code started does not outlive its execution.
        Repeated until none is left (a process may fork while the others die; the process limit bounds that)."""
        for _ in range(1000):
            strays = self._members() - self.own_pids
            if not strays:
                return
            for pid in strays:
                kill_if_under(pid, self.process.pid)
        raise WorkerLost("started processes faster than they could be stopped")

    def _members(self) -> set[int]:
        """The sandbox's live processes: its cgroup's list where it has one (a few reads), else a scan of /proc."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                listed = {int(p) for p in Path(self.cgroup.procs).read_text().split()}
                return {pid for pid in listed if _parent(pid) is not None} - {self.process.pid}
        return set(descendants(self.process.pid))

    def death(self) -> str:
        """Why the worker is gone, from its exit status (bwrap exits with 128 + N when signal N killed it)."""
        if self.killed_by_host:
            return "was stopped"
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        signal_number = -status if status < 0 else status - 128 if status > 128 else 0
        cpu = self.sandbox.cpu_seconds
        if signal_number == signal.SIGXCPU:
            return f"was killed by SIGXCPU: it used up its CPU time (cpu_seconds={cpu} per process)"
        if signal_number == signal.SIGKILL and self.cgroup is not None and self.cgroup.out_of_memory_kills():
            return (
                "was killed by the kernel's out-of-memory killer: the sandbox's processes together reached "
                f"memory_mb={self.sandbox.memory_mb}"
            )
        if signal_number == signal.SIGKILL:
            return (
                "was killed by SIGKILL (at its CPU-time hard limit"
                + (f", cpu_seconds={cpu}+1" if cpu else "")
                + ", or by the kernel's out-of-memory killer)"
            )
        if signal_number:
            return f"was killed by {signal_name(signal_number)}"
        return f"exited with status {status}"

    def startup_error(self) -> str:
        self.stderr_drained.wait(5)  # the sandbox has exited (or is about to): its last words are on their way
        text = self.stderr_tail[-2000:].decode(errors="replace").strip()
        return text or self.death()

    def kill(self) -> None:
        self.killed_by_host = True
        with self.buffer_room:
            self.buffer_room.notify_all()
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.kill()
        if self.cgroup is not None:
            self.cgroup.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._release()

    def _release(self) -> None:
        handle, self.worker_handle = self.worker_handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                os.close(handle)
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None


def _depth(pid: int) -> int:
    """How far `pid` is from the host's init (the sandbox's first process is the shallowest of its own)."""
    depth, ancestor = 0, _parent(pid)
    while ancestor not in (None, 0) and depth < 64:
        depth, ancestor = depth + 1, _parent(ancestor)
    return depth


def _parents() -> dict[int, int]:
    """`{pid: parent pid}` of the host's live processes (zombies left out: they are dead already)."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                found[int(entry.name)] = parent
    return found


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[1])


def descendants(root: int) -> list[int]:
    """The live processes below `root` (its children, theirs, ...), by host PID."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, pending = [], list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def kill_if_under(pid: int, root: int) -> None:
    """SIGKILL `pid` if it is still below `root`: checked through a pidfd, so a PID reused meanwhile by another
    process of the host is never signalled."""
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return
    try:
        ancestor: int | None = pid
        while ancestor not in (None, 0, 1, root):
            ancestor = _parent(ancestor)
        if ancestor == root:
            signal.pidfd_send_signal(handle, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(handle)


class Resources:
    """What an interpreter holds outside Python: released by shutdown(), or when it is collected or Python exits."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.scratch: str | None = None

    def drop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        self.drop_worker()
        scratch, self.scratch = self.scratch, None
        if scratch is not None:
            remove_tree(scratch)


__all__ = [
    "MAX_BUFFERED_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_DEPTH",
    "MAX_MESSAGE_VALUES",
    "Resources",
    "Worker",
    "WorkerLost",
    "awaited",
    "descendants",
    "remove_tree",
    "run_in_thread",
    "signal_name",
]
