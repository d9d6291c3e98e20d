"""A sandbox behind the guard: the RLM's code runs in a Python interpreter inside OS isolation (Linux).

`rlm_events.builtins.CodeGuard` reads code before it runs; that is a check, not a boundary.
[`Sandboxed`][rlm_events.sandbox.Sandboxed] is
an interpreter factory whose interpreters run their worker process inside bubblewrap (`bwrap`,
https://github.com/containers/bubblewrap; the Debian and Ubuntu package `bubblewrap`), unprivileged, in new
user, PID, network, mount, IPC and UTS namespaces:

```text
rlm = dspy.RLM("question -> answer", interpreter_factory=rlm_events.sandbox.Sandboxed(timeout=10))
```

Inside: no network (only a loopback interface of its own); the host's filesystem read-only, with temporary
directories, `/run` and home directories hidden (`hide`), and one writable scratch directory, the working
directory, removed when the interpreter shuts down; a fresh `/proc` of its own PID namespace, so the host's
processes are out of sight and everything the code starts dies with the sandbox; no capabilities; none of the
host's environment variables. Limits: CPU time, memory and processes (per process `setrlimit`, plus a pids cgroup
when the host runs as root, whom `RLIMIT_NPROC` never binds), and a wall-clock `timeout` per execution, watched
from the host, that kills the sandbox and tells the LM `[Error] Execution timed out after N s ...`; the next
execution gets a fresh worker (its state lost, the LM told so).

Where the isolation cannot run (not Linux, no `bwrap`, user namespaces disabled, root without a pids cgroup), the
constructor raises [`SandboxUnavailable`][rlm_events.sandbox._isolation.SandboxUnavailable] naming what is missing. It
never runs code without isolation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._interpreter import SandboxedInterpreter
from ._isolation import DEFAULT_HIDDEN, SandboxUnavailable, find_bwrap, needs_cgroup, problems
from ._stale import remove_stale

__all__ = ["DEFAULT_HIDDEN", "SandboxUnavailable", "Sandboxed", "SandboxedInterpreter"]


class Sandboxed:
    """An interpreter factory: each call returns a fresh
    [`SandboxedInterpreter`][rlm_events.sandbox._interpreter.SandboxedInterpreter] with these limits.

    Pass it as `dspy.RLM(..., interpreter_factory=Sandboxed())` (DSPy 3.3+ calls it once per RLM call and shuts
    the interpreter down at the end; on earlier releases use `rlm_events.testing.build_rlm`, or pass
    `interpreter=Sandboxed()()`). `None` turns a limit off, explicitly.

    Args:
        timeout: wall-clock seconds one execution may take, host tool calls included (default 30). On expiry the
            sandbox is killed, the LM reads `[Error] Execution timed out after N s ...` and the next execution
            runs in a fresh worker: variables, imports and definitions are lost; files in scratch are kept.
        memory_mb: address space of each process in the sandbox, in MiB (`RLIMIT_AS`; default 1024). An
            allocation past it raises `MemoryError` in the code; the interpreter goes on.
        max_processes: processes and threads in the sandbox at once, the worker's included (default 64): fork,
            `subprocess` and thread creation fail with `EAGAIN` past it. `RLIMIT_NPROC` for a non-root host;
            for root, whom that limit never binds, also a pids cgroup of the sandbox's own.
        cpu_seconds: CPU seconds each process in the sandbox may use over its life (`RLIMIT_CPU`; default 120):
            past it the kernel kills the process (`SIGXCPU`, then `SIGKILL`). For the worker that is its whole
            session; the LM is told, and the next execution starts a fresh worker.
        scratch: the directory in which each interpreter's scratch directory is created (default: the system's
            temporary directory). The scratch directory is the sandbox's one writable place and its working
            directory (`HOME` and `TMPDIR` too); it is removed, with its contents, at shutdown.
        hide: directories covered by an empty read-only tmpfs in the sandbox (default
            [`DEFAULT_HIDDEN`][rlm_events.sandbox._isolation.DEFAULT_HIDDEN]: the
            temporary directories, `/run` and home directories); the interpreter's own files under them stay
            visible. `()` leaves the whole filesystem readable.
        bwrap: the bubblewrap executable (default: `bwrap` on `PATH`).
        python: the Python that runs the worker (default: this one, `sys.executable`); its packages are importable
            in the sandbox. When the host runs as root it must be readable by nobody (uid 65534).
        max_tool_concurrency: host tool calls (`llm_query` included) run at once for one execution (default 4);
            further requests wait for a free slot (the worker waits with them).

    Raises:
        SandboxUnavailable: the isolation cannot run here; the message names what is missing. The first
            construction with a configuration starts one sandbox to check (cached for the process).
    """

    def __init__(
        self,
        *,
        timeout: float | None = 30.0,
        memory_mb: int | None = 1024,
        max_processes: int | None = 64,
        cpu_seconds: int | None = 120,
        scratch: str | os.PathLike[str] | None = None,
        hide: Sequence[str] = DEFAULT_HIDDEN,
        bwrap: str | os.PathLike[str] | None = None,
        python: str | None = None,
        max_tool_concurrency: int = 4,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive, or None for no wall-clock limit")
        for name, value, least in (("memory_mb", memory_mb, 32), ("max_processes", max_processes, 8)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer of at least {least}, or None for no limit")
        if cpu_seconds is not None and (not isinstance(cpu_seconds, int) or cpu_seconds < 1):
            raise ValueError("cpu_seconds must be a positive integer, or None for no limit")
        if scratch is not None and not os.path.isdir(scratch):
            raise ValueError(f"scratch must be an existing directory: {scratch!r}")
        if isinstance(hide, str):
            raise TypeError("hide takes a sequence of directories, not one string")
        if not isinstance(max_tool_concurrency, int) or max_tool_concurrency < 1:
            raise ValueError("max_tool_concurrency must be a positive integer")
        self.max_tool_concurrency = max_tool_concurrency
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.cpu_seconds = cpu_seconds
        self.scratch = scratch
        self.hide: tuple[str, ...] = tuple(hide)
        self.python = python or sys.executable
        found = self.problems(bwrap)
        if found:
            raise SandboxUnavailable("; ".join(found))
        located = find_bwrap(bwrap)
        assert located is not None
        self._bwrap = located
        self._uses_cgroup = needs_cgroup(max_processes)
        remove_stale(None if scratch is None else os.fspath(scratch))

    @staticmethod
    def cleanup(scratch: str | os.PathLike[str] | None = None) -> list[str]:
        """Remove the scratch directories (in `scratch`, default the temporary directory) and pids cgroups that a
        host process killed without cleaning up (`SIGKILL`, a crash) left behind; every construction does it too.
        Returns the paths removed."""
        return remove_stale(None if scratch is None else os.fspath(scratch))

    def problems(self, bwrap: str | os.PathLike[str] | None = None) -> list[str]:
        """What stops this configuration's sandbox from running here (empty if nothing)."""
        return problems(bwrap, self.python, self.hide, self.max_processes)

    @classmethod
    def check(cls, **options: Any) -> None:
        """Raise [`SandboxUnavailable`][rlm_events.sandbox._isolation.SandboxUnavailable], naming what is missing, if
        `Sandboxed(**options)` cannot run here."""
        cls(**options)

    def __call__(
        self, tools: dict[str, Callable[..., Any]] | None = None, output_fields: list[dict[str, Any]] | None = None
    ) -> SandboxedInterpreter:
        return SandboxedInterpreter(tools, output_fields, sandbox=self)

    @property
    def execution_instructions(self) -> str:
        """What the RLM's action prompt says about the runtime (DSPy 3.4 reads it from the factory)."""
        limits = []
        if self.memory_mb is not None:
            limits.append(f"{self.memory_mb} MiB of memory per process")
        if self.cpu_seconds is not None:
            limits.append(f"{self.cpu_seconds} s of CPU time per process")
        if self.max_processes is not None:
            limits.append(f"{self.max_processes} processes and threads")
        text = (
            "Code runs as Python in a persistent subprocess inside an OS sandbox: no network; the filesystem is "
            "read-only except the working directory (scratch space, deleted when this run ends)"
            + (f"; at most {', '.join(limits)}" if limits else "")
            + ". State, imports, functions, and JSON-compatible variables persist between executions. Host tools and "
            "SUBMIT are available as global functions. All threads must finish before each code execution returns."
        )
        if self.timeout is not None:
            text += (
                f" An execution running longer than {self.timeout:g} s is stopped, and the interpreter restarts "
                "without its state."
            )
        return text

    def __repr__(self) -> str:
        return (
            f"Sandboxed(timeout={self.timeout!r}, memory_mb={self.memory_mb!r}, max_processes={self.max_processes!r}, "
            f"cpu_seconds={self.cpu_seconds!r}, scratch={self.scratch!r})"
        )
