"""The interpreter process of [`rlm_events.sandbox.SandboxedInterpreter`][rlm_events.sandbox.SandboxedInterpreter]: run
inside the sandbox as a script
(`python -I _worker.py LIMITS_JSON`), standard library only.

It speaks the line protocol of `dspy.LocalInterpreter`'s worker (DSPy 3.4), one JSON object per line: it says
`ready`, then answers each `execute` request (code, variables, tool names, output fields) with `result`,
`final` (`SUBMIT`), `syntax`, `execution_error` or `terminal_error`; a tool called by the code becomes a
`tool_request` answered by the host with `tool_result` or `tool_error`. What code sees is what it sees there:
a persistent namespace, tools and `SUBMIT` as globals, the value of a final expression as the result (else the
printed output), errors as `"Type: message"`, values through JSON (`repr` where they are not JSON).

Before anything else it lowers its own resource limits (inherited by every process the code starts, and never
raised again: the sandbox holds no capability). Everything here is inside the boundary: the host trusts none of
what this process sends.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import itertools
import json
import keyword
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import types
from typing import Any

# Printed output kept per execution: the host and the LM need a readable amount, not a flood.
MAX_CAPTURED_BYTES = 4 * 1024 * 1024
# Signals queued and memory locked by the sandbox's processes together (see apply_limits).
PENDING_SIGNALS = 1024
LOCKED_BYTES = 64 * 1024


def apply_limits(limits: dict[str, Any]) -> None:
    """Soft and hard limits at once, so executed code cannot raise them back."""
    import resource  # POSIX only, and only here: the in-process interpreter imports this module for `submitted()`

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Counted per host user across every user namespace (ucounts), and bounded, for the sandbox's processes together,
    # by their own limit: without these, code could queue the ~96,000 pending signals the host user is allowed
    # (its other processes, and the other sandboxes, then get EAGAIN from sigqueue and timer_create), or lock its
    # memory. The sandbox's user is a host user: nobody for a root host, else the host's own user.
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (PENDING_SIGNALS, PENDING_SIGNALS))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (LOCKED_BYTES, LOCKED_BYTES))
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    memory = limits.get("memory_bytes")
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = limits.get("cpu_seconds")
    if cpu:
        # SIGXCPU at the soft limit, SIGKILL a second later if that signal is caught.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    processes = limits.get("max_processes")
    if processes:
        # Counted per user in this user namespace (it does not bind uid 0 of the host: the host side then puts the
        # sandbox in a pids cgroup).
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


class Channel:
    """The protocol's own copies of stdin and stdout; file descriptors 0, 1 and 2 then point to /dev/null, so code
    that writes to them (or reads) outside an execution cannot break the protocol."""

    input: Any = None
    output: Any = None
    lock = threading.Lock()

    @classmethod
    def open(cls) -> None:
        cls.output = os.fdopen(os.dup(1), "w", encoding="utf-8")
        cls.input = os.fdopen(os.dup(0), "r", encoding="utf-8")
        sink = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(sink, fd)
        os.close(sink)


_worker_stdout, _worker_stderr = sys.stdout, sys.stderr


class Submission(BaseException):
    """What `SUBMIT` raises to end the execution with `value`, the submitted fields."""

    def __init__(self, value: Any) -> None:
        self.value = value


def submitted(output_fields: list[dict[str, Any]] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Submission:
    """`SUBMIT(*args, **kwargs)` checked against the output fields (`None`: one value, named `output`), as the
    `Submission` to raise; a call that does not match raises `TypeError`.
    Shared with `rlm_events.inprocess.InProcessInterpreter`, so both submit alike."""
    if output_fields is None:
        if len(args) != 1 or kwargs:
            raise TypeError("SUBMIT requires one output value")
        return Submission({"output": args[0]})
    names = [field["name"] for field in output_fields]
    if args and kwargs:
        raise TypeError("SUBMIT accepts positional or keyword values, not both")
    values = dict(zip(names, args, strict=False)) if args else dict(kwargs)
    if set(values) != set(names) or len(args) > len(names):
        raise TypeError("SUBMIT fields do not match the configured output fields")
    return Submission(values)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def send(message: dict[str, Any]) -> None:
    line = json.dumps(message, separators=(",", ":"), allow_nan=False)
    with Channel.lock:
        Channel.output.write(line + "\n")
        Channel.output.flush()


def receive() -> dict[str, Any]:
    line = Channel.input.readline()
    if not line:
        raise EOFError
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("protocol messages must be tagged objects")
    return message


class Protocol:
    """Reads the host's messages on a thread: tool answers go to the waiting call, the rest to `commands`."""

    def __init__(self) -> None:
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.pending: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.execution: Any = None  # the running execution's tag, sent back with each of its messages
        threading.Thread(target=self._read, daemon=True, name="rlm-events-sandbox-protocol").start()

    def _read(self) -> None:
        try:
            while True:
                message = receive()
                request_id = message.get("id")
                if message["type"] in {"tool_result", "tool_error"} and isinstance(request_id, int):
                    with self.lock:
                        response = self.pending.get(request_id)
                    if response is not None:
                        response.put(message)
                else:
                    self.commands.put(message)
        except EOFError:
            pass
        except BaseException as exc:
            self.commands.put({"type": "protocol_error", "error": describe(exc)})
        self.commands.put(None)
        with self.lock:
            waiting = list(self.pending.values())
        for response in waiting:
            response.put(None)

    def call_tool(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request_id = next(self.ids)
        response: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        with self.lock:
            self.pending[request_id] = response
        try:
            send(
                {
                    "type": "tool_request",
                    "execution": self.execution,
                    "id": request_id,
                    "name": name,
                    "args": list(args),
                    "kwargs": kwargs,
                }
            )
            message = response.get()
        finally:
            with self.lock:
                self.pending.pop(request_id, None)
        if message is None:
            raise EOFError("the host closed the connection")
        if message.get("type") == "tool_error":
            raise RuntimeError(message.get("error"))
        return message.get("value")


class CapturedOutput:
    """Everything written to file descriptors 1 and 2 during one execution (subprocesses' output included)."""

    value = ""

    def __enter__(self) -> CapturedOutput:
        # In the sandbox's /dev/shm (a tmpfs of its own), not the scratch directory the code may have filled.
        shared = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.file = tempfile.TemporaryFile(dir=shared)
        for stream in (_worker_stdout, _worker_stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = _worker_stdout, _worker_stderr
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *_: Any) -> None:
        for stream in (sys.stdout, sys.stderr, _worker_stdout, _worker_stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = _worker_stdout, _worker_stderr
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        size = self.file.seek(0, os.SEEK_END)
        self.file.seek(0)
        text = self.file.read(MAX_CAPTURED_BYTES).decode(errors="replace")
        if size > MAX_CAPTURED_BYTES:
            text += f"\n... [output truncated: {size} bytes in all]"
        self.value = text.rstrip("\n")
        self.file.close()


def signal_handlers() -> dict[int, Any]:
    """The worker's own handler of each signal Python can handle (read at start, before any code ran)."""
    found: dict[int, Any] = {}
    for number in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(number)
            if handler is not None:  # None: set outside Python, left alone
                found[number] = handler
    return found


def restore_signals(handlers: dict[int, Any]) -> None:
    """Nothing the code armed fires in the next request: its interval timers and alarm are cancelled and every
    signal handler is the worker's own again. Hygiene, not a boundary (this process is the code's, which can patch
    it): between requests the host keeps the worker stopped (`Worker.pause` in `_process`). Main thread only, as
    `signal.signal`."""
    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        signal.setitimer(timer, 0)
    for number, handler in handlers.items():
        with contextlib.suppress(OSError, ValueError, TypeError):
            if signal.getsignal(number) is not handler:
                signal.signal(number, handler)


def python_threads() -> set[int]:
    """The threads of this process running Python code (`sys._current_frames()`), by thread id: those the
    `threading` module does not list too (`_thread.start_new_thread`, a `ctypes` thread calling back into Python).
    A library's native threads (OpenBLAS's pool, started by `import numpy`) run no Python code and are not in it."""
    return set(sys._current_frames())


def kernel_threads() -> set[str]:
    """Every thread of this process, by the kernel's thread id (`/proc/self/task`), Python code or not."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


class ThreadWatch:
    """Threads left running by an execution, the `threading` module's or not. A thread appears in
    `python_threads()` only once it has run, which it does when it gets the GIL: while the kernel lists a thread it
    did not before, the check yields the GIL for up to `patience` seconds before it decides. A new thread that has
    run no Python code by then is a library's native thread (OpenBLAS's pool), accepted from then on. Like
    `restore_signals`, this tells the LM what it left behind; the host's pause between requests is the boundary."""

    def __init__(self, patience: float = 0.25) -> None:
        self.patience = patience
        self.python = python_threads()
        self.known = kernel_threads()

    def left_running(self) -> int:
        """How many threads beyond the worker's own run Python code (after `patience`, if any is new)."""
        deadline = time.monotonic() + self.patience
        while True:
            extra = len(python_threads() - self.python)
            tasks = kernel_threads()
            self.known &= tasks  # a thread id the kernel gives again is a new thread
            new = tasks - self.known
            if not extra and not new:
                return 0
            if time.monotonic() > deadline:
                if not extra:
                    self.known |= new
                return extra
            time.sleep(0.005)  # the GIL, to a thread that has yet to start


def guard_layer(sources: dict[str, str]) -> Any:
    """The guard's run-time layer (`rlm_events.guard._runtime`), loaded from the sources of its modules the host sent
    with the request (the sandbox exposes this script, not the package): as the modules of a package of their own, in
    the order sent (each imports only the ones before it, relatively); its last module, the layer's entry point. Once
    per distinct set of sources."""
    key = tuple(sources.items())
    layer = _GUARD_LAYERS.get(key)
    if layer is None:
        package = types.ModuleType(GUARD_PACKAGE)
        package.__path__ = []  # a package: its modules' relative imports resolve, from sys.modules
        sys.modules[GUARD_PACKAGE] = package
        for name, source in sources.items():
            layer = types.ModuleType(f"{GUARD_PACKAGE}.{name}")
            layer.__package__ = GUARD_PACKAGE
            sys.modules[layer.__name__] = layer  # (its classes name their module; the later modules import it)
            exec(compile(source, f"<rlm_events.guard.{name}>", "exec"), layer.__dict__)
            setattr(package, name, layer)
        _GUARD_LAYERS[key] = layer
    return layer


GUARD_PACKAGE = "rlm_events_guard_runtime"  # the package the run-time layer's modules are loaded into
_GUARD_LAYERS: dict[tuple[tuple[str, str], ...], Any] = {}


class Session:
    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.guard: tuple[dict[str, Any], Any, Any] | None = None  # (request's spec, layer module, RuntimeGuard)
        self.worker_threads = set(threading.enumerate())
        self.threads = ThreadWatch()
        self.signal_handlers = signal_handlers()
        self.namespace: dict[str, Any] = {"__builtins__": vars(builtins).copy()}
        self.tool_names: set[str] = set()
        self.output_fields: list[dict[str, Any]] | None = None

    def configure(self, tool_names: list[str], output_fields: list[dict[str, Any]] | None) -> None:
        for name in tool_names:
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError("tool names must be Python identifiers")
        for name in self.tool_names:
            self.namespace.pop(name, None)
        self.tool_names = set(tool_names)
        self.output_fields = output_fields
        for name in tool_names:
            self.namespace[name] = self._tool(name)
        self.namespace["__builtins__"] = vars(builtins).copy()
        self.namespace["SUBMIT"] = self.submit

    def _tool(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.protocol.call_tool(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def submit(self, *args: Any, **kwargs: Any) -> None:
        raise submitted(self.output_fields, args, kwargs)

    def runtime_guard(self, spec: Any) -> tuple[dict[str, Any], Any, Any] | None:
        """The run-time guard a request asks for (`{"rules": ..., "sources": ...}`), or None; kept while the rules
        are the same (the classes the code defined stay its own)."""
        if not isinstance(spec, dict):
            return None
        if self.guard is None or self.guard[0] != spec:
            layer = guard_layer(spec["sources"])
            self.guard = (spec, layer, layer.RuntimeGuard(layer.Rules(spec["rules"]), self.namespace))
        return self.guard

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        self.protocol.execution = request.get("execution")
        try:
            outcome = self._execute(request)
        finally:
            restore_signals(self.signal_handlers)
        outcome["execution"] = request.get("execution")
        return outcome

    def _execute(self, request: dict[str, Any]) -> dict[str, Any]:
        self.configure(list(request.get("tools") or []), request.get("output_fields"))
        variables = request.get("variables") or {}
        if {"SUBMIT", "__builtins__", *self.tool_names} & variables.keys():
            raise ValueError("variables cannot replace interpreter-owned globals")
        code = request["code"]
        self.namespace.update(variables)
        guard = self.runtime_guard(request.get("guard"))
        outcome: dict[str, Any]
        with CapturedOutput() as captured:
            try:
                tree = ast.parse(code, mode="exec")
                if guard is not None:
                    tree = guard[1].rewrite(tree)
                last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
                with guard[2].armed(process_wide=True) if guard is not None else contextlib.nullcontext():
                    exec(compile(tree, "<interpreter>", "exec"), self.namespace)
                    value = (
                        eval(compile(ast.Expression(last.value), "<interpreter>", "eval"), self.namespace)
                        if last
                        else None
                    )
                outcome = {"type": "result", "value": jsonable(value)}
            except Submission as submission:
                outcome = {"type": "final", "value": jsonable(submission.value)}
            except SyntaxError as exc:
                outcome = {"type": "syntax", "error": str(exc)}
            except BaseException as exc:
                outcome = {"type": "execution_error", "error": describe(exc)}
        outcome["stdout"] = captured.value
        leaked = [thread.name for thread in threading.enumerate() if thread not in self.worker_threads]
        if leaked:
            return {"type": "terminal_error", "error": f"executed code left background threads running: {leaked!r}"}
        hidden = self.threads.left_running()
        if hidden:
            return {
                "type": "terminal_error",
                "error": f"executed code left {hidden} background thread(s) running outside the threading module",
            }
        return outcome


def read(namespace: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Answer a `read` request: the names asked that hold plain data, copied (`values`), and every name asked that
    is bound (`bound`). Read only: exact type checks and the exact builtin types' own C methods, so no code of any
    other class runs (no `__eq__`, `__iter__`, property or descriptor); nothing is assigned, printed or called.
    A tuple is sent as `{"\\u0000tuple": [...]}` (JSON has none). Within the request's bounds (`max_items` per
    container, `max_chars` per string, `max_total` in all), else the value is left out."""
    names = [n for n in request.get("names") or [] if type(n) is str]
    bounds = request.get("limits") or {}
    max_items, max_chars = int(bounds.get("max_items", 1000)), int(bounds.get("max_chars", 100_000))
    budget = [int(bounds.get("max_total", 1_000_000))]

    def copy(value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            budget[0] -= len(value)
            if len(value) > max_chars or budget[0] < 0:
                raise ValueError
            return value
        if kind is bool or value is None or (kind is int and -(2**53) <= value <= 2**53):
            return value
        if kind is float and value == value and value - value == 0.0:
            return value
        if depth < 8 and (kind is list or kind is tuple) and len(value) <= max_items:
            budget[0] -= len(value)
            items = [copy(item, depth + 1) for item in list(value)]
            return items if kind is list else {"\u0000tuple": items}
        if depth < 8 and kind is dict and len(value) <= max_items:
            budget[0] -= len(value)
            pairs = list(value.items())
            if not all(type(key) is str for key, _ in pairs):
                raise ValueError
            return {key: copy(item, depth + 1) for key, item in pairs}
        raise ValueError

    values: dict[str, Any] = {}
    bound = [name for name in names if name in namespace]
    for name in bound:
        with contextlib.suppress(ValueError, RecursionError):
            values[name] = copy(namespace[name], 0)
    return {"type": "values", "execution": request.get("execution"), "values": values, "bound": bound}


def main() -> None:
    apply_limits(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    Channel.open()
    protocol = Protocol()
    session = Session(protocol)
    send({"type": "ready", "pid": os.getpid()})
    try:
        while True:
            request = protocol.commands.get()
            if request is None or request.get("type") == "shutdown":
                return
            if request.get("type") == "protocol_error":
                raise ValueError(request.get("error"))
            if request.get("type") == "read":
                send(read(session.namespace, request))
                continue
            if request.get("type") != "execute":
                raise ValueError(f"unknown request {request.get('type')!r}")
            response = session.execute(request)
            send(response)
            if response["type"] == "terminal_error":
                return
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            send({"type": "terminal_error", "error": describe(exc)})


if __name__ == "__main__":
    main()
