"""The host side of the sandbox: [`SandboxedInterpreter`][rlm_events.sandbox._interpreter.SandboxedInterpreter], a
`CodeInterpreter` whose worker process runs
inside bubblewrap, with a watchdog per execution and a lazy restart after the worker is lost."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import keyword
import os
import secrets
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy.primitives import code_interpreter as _ci

from .. import inprocess  # the module, not its name: inprocess imports this package's worker
from ..guard._runtime_policy import worker_guard
from ..runtime import CodeInterpreterError, ExecutionError
from . import _isolation, _stale
from ._process import Resources, Worker, WorkerLost, awaited, run_in_thread

if TYPE_CHECKING:
    from . import Sandboxed

STARTUP_TIMEOUT = 20.0
STATE_LOST = (
    "the interpreter restarts on the next execution, and its state (variables, imports, definitions) was lost; "
    "files in the working directory were kept"
)
# With scratch_mb, the working directory is a tmpfs of the sandbox's own: its files go with the worker.
STATE_AND_FILES_LOST = (
    "the interpreter restarts on the next execution, and its state (variables, imports, definitions) was lost, "
    "with the files in the working directory"
)
# Executions DSPy's RLM makes to set an interpreter up, replayed on a restarted worker: the sandbox dspy facade
# (DSPy 3.4) is installed with this variable.
_SETUP_VARIABLE = "__dspy_host_token"


class SandboxedInterpreter:
    """A persistent Python interpreter in an OS sandbox, implementing DSPy's `CodeInterpreter` protocol.

    Made by [`rlm_events.sandbox.Sandboxed`][rlm_events.sandbox.Sandboxed] (`Sandboxed()()`), which holds the limits.
    Code sees what it
    sees in `dspy.LocalInterpreter`'s worker (DSPy 3.4): a persistent namespace, tools and `SUBMIT` as global
    functions, the value of a final expression as the result, else the printed output; values cross as JSON. One
    difference: a tool that takes only keyword arguments (DSPy wraps user tools so) also accepts them positionally,
    bound by its signature, as in
    [`rlm_events.inprocess.InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter].

    Tools run in this process, on threads, called over the worker's pipes. An execution that outlives
    `timeout` seconds (tool calls included) kills the sandbox and raises `CodeExecutionError` (shown to the LM
    as `[Error] Execution timed out after N s ...`); so does a worker that dies (its CPU-time limit, a crash,
    `os._exit`). The next execution starts a fresh worker, re-installing what DSPy set up (its `dspy` facade);
    everything else the code had defined is lost, which the error says. Files in the working directory
    ([`scratch`][rlm_events.sandbox._interpreter.SandboxedInterpreter.scratch] from the host) go with it on the
    sandbox's tmpfs (`scratch_mb`, the default), or survive the restart (`scratch_mb=None`);
    [`shutdown()`][rlm_events.sandbox._interpreter.SandboxedInterpreter.shutdown] removes them.

    Attributes:
        restarts: how many times a lost worker was replaced.
    """

    def __init__(
        self,
        tools: dict[str, Callable[..., Any]] | None = None,
        output_fields: list[dict[str, Any]] | None = None,
        *,
        sandbox: Sandboxed | None = None,
    ) -> None:
        if sandbox is None:
            from . import Sandboxed

            sandbox = Sandboxed()
        self.sandbox = sandbox
        self.tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = None if output_fields is None else [dict(field) for field in output_fields]
        self.restarts = 0
        self._resources = Resources()
        self._finalizer = weakref.finalize(self, self._resources.close)
        self._lock = threading.Lock()
        self._ended = False
        self._lost = False
        self._setup: list[tuple[str, dict[str, Any]]] = []

    @property
    def execution_instructions(self) -> str:
        return self.sandbox.execution_instructions

    @property
    def working_directory(self) -> Path | None:
        """The sandbox's writable working directory, as the code sees it (a fresh one per interpreter), or None
        before start."""
        return None if self._resources.scratch is None else Path(self._resources.scratch)

    @property
    def scratch(self) -> Path | None:
        """Where the host reads the sandbox's working directory: the directory itself with `scratch_mb=None`; else
        its tmpfs seen through the sandbox's `/proc/<pid>/root` while a worker runs. None when there is none.
        What is in it, the code wrote: a symlink there resolves on the host's filesystem, so do not follow them."""
        directory = self._resources.scratch
        if directory is None or self.sandbox.scratch_mb is None:
            return None if directory is None else Path(directory)
        worker = self._resources.worker
        view = None if worker is None else worker.sandbox_path(directory)
        return None if view is None else Path(view)

    @property
    def _state_lost(self) -> str:
        return STATE_LOST if self.sandbox.scratch_mb is None else STATE_AND_FILES_LOST

    @property
    def pid(self) -> int | None:
        """The host PID of the sandbox's outermost process (bwrap), while a worker runs."""
        worker = self._resources.worker
        return None if worker is None else worker.process.pid

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker, or return if it runs. Raises `CodeInterpreterError` if the sandbox cannot start."""
        if self._ended:
            raise CodeInterpreterError("SandboxedInterpreter session has been shut down.")
        if self._resources.worker is not None:
            return
        if self._resources.scratch is None:
            base = None if self.sandbox.scratch is None else os.fspath(self.sandbox.scratch)
            self._resources.scratch = tempfile.mkdtemp(prefix=_stale.scratch_prefix(), dir=base)
            _isolation.prepare_scratch(self._resources.scratch)
        try:
            worker = Worker(self.sandbox, self._resources.scratch)
        except _isolation.SandboxUnavailable as exc:
            raise CodeInterpreterError(f"The sandboxed interpreter did not start: {exc}") from exc
        self._resources.worker = worker
        try:
            message = worker.receive(time.monotonic() + STARTUP_TIMEOUT)
        except TimeoutError:
            self._resources.drop_worker()
            raise CodeInterpreterError(
                f"The sandboxed interpreter did not start within {STARTUP_TIMEOUT:g} s."
            ) from None
        except WorkerLost:
            error = worker.startup_error()
            self._resources.drop_worker()
            raise CodeInterpreterError(f"The sandboxed interpreter did not start: {error}") from None
        if message.get("type") != "ready":
            self._resources.drop_worker()
            raise CodeInterpreterError(f"The sandboxed interpreter sent {message!r} instead of 'ready'")
        try:
            worker.started()
        except WorkerLost as lost:
            self._resources.drop_worker()
            raise CodeInterpreterError(f"The sandboxed interpreter {lost}") from None
        if self._lost:
            self._lost = False
            self.restarts += 1
            for code, variables in self._setup:
                with contextlib.suppress(Exception):
                    self._execute(code, variables)

    def shutdown(self) -> None:
        """Kill the sandbox (every process in it) and remove the scratch directory."""
        self._ended = True
        self._resources.close()

    def __enter__(self) -> SandboxedInterpreter:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.shutdown()

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    # --- execution -------------------------------------------------------------------------------------------------

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Run `code` in the sandbox's persistent namespace, `variables` bound first (JSON-compatible).

        Returns `FinalOutput` on `SUBMIT`, else the final expression's value or the printed output (or None).
        Raises `SyntaxError`; `CodeExecutionError` for an error in the code or a tool, a timeout, or a lost
        worker; `CodeInterpreterError` for invalid arguments or a sandbox that cannot start.
        """
        if not self._lock.acquire(blocking=False):
            raise CodeInterpreterError("SandboxedInterpreter already has an active execution.")
        try:
            variables = self._checked(code, variables)
            if self._resources.worker is None:
                self.start()
                if self._resources.worker is None:  # lost again while DSPy's setup was replayed
                    self._lost = True
                    raise ExecutionError(f"The sandboxed interpreter could not be set up again; {self._state_lost}.")
            if _SETUP_VARIABLE in variables:
                self._setup.append((code, dict(variables)))
            return self._execute(code, variables)
        finally:
            self._lock.release()

    def _checked(self, code: Any, variables: Any) -> dict[str, Any]:
        if not isinstance(code, str):
            raise CodeInterpreterError("code must be a string")
        variables = {} if variables is None else variables
        if not isinstance(variables, dict):
            raise CodeInterpreterError("variables must map Python identifiers to JSON-compatible values")
        reserved = {"SUBMIT", "__builtins__", *self.tools}
        invalid = [
            name
            for name in [*self.tools, *variables]
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name)
        ] + [name for name in variables if name in reserved]
        if invalid:
            raise CodeInterpreterError(
                f"tool and variable names must be distinct, non-reserved Python identifiers: {invalid!r}"
            )
        try:
            json.dumps([variables, self.output_fields], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CodeInterpreterError(f"variables and output fields must be JSON-compatible: {exc}") from exc
        return variables

    def _execute(self, code: str, variables: dict[str, Any]) -> Any:
        worker = self._resources.worker
        assert worker is not None
        timeout = self.sandbox.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        tool_calls: list[Future[Any]] = []
        slots = threading.BoundedSemaphore(self.sandbox.max_tool_concurrency)
        tag = secrets.token_hex(16)  # messages of this execution carry it; anything else is forged or late
        try:
            worker.resume()  # stopped between requests (see Worker.pause)
            worker.send(
                {
                    "type": "execute",
                    "execution": tag,
                    "code": code,
                    "variables": variables,
                    "tools": list(self.tools),
                    "output_fields": self.output_fields,
                    "guard": worker_guard(variables),  # the run-time layer of the run's CodeGuard, if any
                },
                deadline,
            )
            message = _tagged(worker.receive(deadline), tag)
            while message["type"] == "tool_request":
                # At most max_tool_concurrency tools at once: the next request is read once a slot is free.
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not slots.acquire(timeout=remaining):
                    raise TimeoutError
                tool_calls.append(run_in_thread(functools.partial(self._handle_tool, message, worker, slots, deadline)))
                message = _tagged(worker.receive(deadline), tag)
            for call in tool_calls:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    call.result(remaining)
                except FutureTimeoutError:
                    raise TimeoutError from None
            kind = message["type"]
            if kind == "terminal_error":
                raise WorkerLost(f"failed: {message.get('error')}")
            worker.pause()  # the worker stopped, what the code started killed: nothing runs until the next request
        except TimeoutError:
            self._lose()
            raise ExecutionError(
                f"Execution timed out after {timeout:g} s: the sandbox was killed, with every process in it; "
                + self._state_lost
                + "."
            ) from None
        except WorkerLost as lost:
            self._lose()
            raise ExecutionError(f"The sandboxed interpreter {lost}; {self._state_lost}.") from None
        except BaseException:  # e.g. KeyboardInterrupt in a tool: the worker still waits for its answer
            self._lose()
            raise
        if kind == "syntax":
            raise SyntaxError(message.get("error"))
        if kind == "execution_error":
            raise ExecutionError(message.get("error"))
        if kind == "final":
            return _ci.FinalOutput(message.get("value"))
        if kind == "result":
            value, stdout = message.get("value"), message.get("stdout")
            return value if value is not None else (stdout or None)
        self._lose()
        raise ExecutionError(f"The sandboxed interpreter broke the protocol (sent {kind!r}); {self._state_lost}.")

    def _lose(self) -> None:
        self._resources.drop_worker()
        self._lost = True

    def _handle_tool(
        self, request: dict[str, Any], worker: Worker, slots: threading.BoundedSemaphore, deadline: float | None
    ) -> None:
        try:
            self._run_tool(request, worker, deadline)
        finally:
            slots.release()

    def _run_tool(self, request: dict[str, Any], worker: Worker, deadline: float | None) -> None:
        request_id = request.get("id")
        try:
            name, args, kwargs = request.get("name"), request.get("args", []), request.get("kwargs", {})
            if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
                raise CodeInterpreterError("malformed tool request")
            value = self.invoke_tool(name, args, kwargs)
            json.dumps(value, allow_nan=False)
            response = {"type": "tool_result", "id": request_id, "value": value}
        except Exception as exc:
            response = {"type": "tool_error", "id": request_id, "error": f"{type(exc).__name__}: {exc}"}
        except BaseException as exc:  # KeyboardInterrupt and the like reach the caller, as in LocalInterpreter
            worker.responses.put(exc)
            return
        # By the execution's deadline: past it the execution times out and the worker goes anyway.
        with contextlib.suppress(WorkerLost, TimeoutError):
            if self._resources.worker is worker:
                worker.send(response, deadline)

    def invoke_tool(self, tool_name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call one registered host tool, as code in the sandbox called it (awaiting it if it is async)."""
        tool = self.tools.get(tool_name)
        if tool is None:
            raise CodeInterpreterError(f"Unknown tool: {tool_name}")
        if args and inprocess.takes_keywords_only(tool):
            kwargs = dict(inspect.signature(tool).bind(*args, **kwargs).arguments)
            args = []
        result = tool(*args, **kwargs)
        return asyncio.run(awaited(result)) if inspect.isawaitable(result) else result


def _tagged(message: dict[str, Any], tag: str) -> dict[str, Any]:
    """`message` if it belongs to the running execution; a forged or late one loses the worker (the LM is told)."""
    if message.get("execution") != tag:
        raise WorkerLost(
            f"sent a message that belongs to no running execution ({str(message.get('type'))[:40]!r}, forged by a "
            "process the code started, or late)"
        )
    return message
