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
directories, `/run` and home directories hidden (`hide`), or, with `expose=[...]`, only those paths and what
Python needs to run; one writable scratch directory, the working directory, on a tmpfs of `scratch_mb` MiB, gone
with the sandbox; a fresh `/proc` of its own PID namespace, so the host's processes are out of sight and everything
the code starts dies with the sandbox; no capabilities; none of the host's environment variables. Limits: memory and
processes for the sandbox as a whole in a cgroup of its own where the host allows one (root, or a delegated cgroup),
else per process (`setrlimit`; [`Sandboxed.limits`][rlm_events.sandbox.Sandboxed.limits] says which is in force);
CPU time per process; and a wall-clock `timeout` per execution, watched from the host, that kills the sandbox and
tells the LM `[Error] Execution timed out after N s ...`; the next execution gets a fresh worker (its state lost,
the LM told so).

Where the isolation cannot run (not Linux, no `bwrap`, user namespaces disabled, `cgroup=True` without a cgroup),
the constructor raises [`SandboxUnavailable`][rlm_events.sandbox._isolation.SandboxUnavailable] naming what is
missing. It never runs code without isolation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._allowlist import checked_exposed
from ._cgroup import log_fallback_once, usable_controllers
from ._interpreter import SandboxedInterpreter
from ._isolation import DEFAULT_HIDDEN, Layout, SandboxUnavailable, bwrap_help, find_bwrap, problems, sandbox_user
from ._reachable import reachable_by_others
from ._stale import remove_stale

__all__ = ["DEFAULT_HIDDEN", "SandboxUnavailable", "Sandboxed", "SandboxedInterpreter"]


class _Default:
    """`scratch_mb` left at its default: `size_mb` where bubblewrap can size a tmpfs, else off (logged once)."""

    def __init__(self, size_mb: int) -> None:
        self.size_mb = size_mb

    def __repr__(self) -> str:
        return str(self.size_mb)


DEFAULT_SCRATCH = _Default(256)
"""`Sandboxed`'s default `scratch_mb`: 256 MiB, where bubblewrap is 0.8 or later."""


def _no_tmpfs_size(bwrap: str | os.PathLike[str] | None) -> bool:
    """Whether this bubblewrap mounts a tmpfs but cannot size it (before 0.8); logged once when so."""
    found = find_bwrap(bwrap)
    usage = "" if found is None else bwrap_help(found)
    if "--tmpfs" in usage and "--size" not in usage:
        log_fallback_once(
            f"rlm_events.sandbox: scratch is the host directory, uncapped: bubblewrap ({found}) has no --size "
            "(0.8 or later) to cap it (pass scratch_mb=None to silence this)"
        )
        return True
    return False


class Sandboxed:
    """An interpreter factory: each call returns a fresh
    [`SandboxedInterpreter`][rlm_events.sandbox._interpreter.SandboxedInterpreter] with these limits.

    Pass it as `dspy.RLM(..., interpreter_factory=Sandboxed())` (DSPy 3.3+ calls it once per RLM call and shuts
    the interpreter down at the end; on earlier releases use `rlm_events.testing.build_rlm`, or pass
    `interpreter=Sandboxed()()`). `None` turns a limit off, explicitly.

    Args:
        timeout: wall-clock seconds one execution may take, host tool calls included (default 30). On expiry the
            sandbox is killed, the LM reads `[Error] Execution timed out after N s ...` and the next execution
            runs in a fresh worker: variables, imports and definitions are lost; files in scratch too,
            unless `scratch_mb=None`.
        memory_mb: memory in MiB (default 1024): the address space of each process (`RLIMIT_AS`: an allocation
            past it raises `MemoryError` in the code, and the interpreter goes on; memory held outside an address
            space, a `memfd` written to, shared memory, socket buffers, is bounded only by the cgroup), and, where a
            memory cgroup is in force, what all the sandbox's processes use together, scratch files included (past it
            the kernel's out-of-memory killer kills one of them; the LM is told).
        max_processes: processes and threads in the sandbox at once, the worker's included (default 64): fork,
            `subprocess` and thread creation fail with `EAGAIN` past it. The cgroup's `pids.max` where one is in
            force, else `RLIMIT_NPROC` (counted per user in the sandbox's user namespace).
        cpu_seconds: CPU seconds each process in the sandbox may use over its life (`RLIMIT_CPU`; default 120):
            past it the kernel kills the process (`SIGXCPU`, then `SIGKILL`). For the worker that is its whole
            session; the LM is told, and the next execution starts a fresh worker.
        scratch: the directory in which each interpreter's scratch directory is created (default: the system's
            temporary directory). The scratch directory is the sandbox's one writable place and its working
            directory (`HOME` and `TMPDIR` too); it is removed, with its contents, at shutdown.
        scratch_mb: the scratch directory's size in MiB (default 256): a tmpfs of that size mounted over it inside
            the sandbox, so a write past it fails with `OSError: [Errno 28] No space left on device` and the host's
            disk is untouched. Its files then live with the worker: a restarted worker (timeout, lost) starts with
            an empty one. `None`: the host directory itself, uncapped, kept across restarts. Left at its default
            where bubblewrap is older than 0.8 (no `--size`: Ubuntu 22.04's 0.6), the cap is off, logged once and
            said in [`limits`][rlm_events.sandbox.Sandboxed.limits]; `scratch_mb=256` given explicitly raises
            [`SandboxUnavailable`][rlm_events.sandbox.SandboxUnavailable] there instead.
        hide: directories covered by an empty read-only tmpfs in the sandbox (default
            [`DEFAULT_HIDDEN`][rlm_events.sandbox._isolation.DEFAULT_HIDDEN]: the
            temporary directories, `/run` and home directories); the interpreter's own files under them stay
            visible. `()` leaves the whole filesystem readable.
        expose: allowlist mode: only these paths (existing files or directories, read-only) and what Python needs to
            run (the system's `/usr` and libraries, `/etc/ld.so.*`, the interpreter's prefixes with the virtual
            environment's site-packages) are in the sandbox; everything else (the project directory, `/run`,
            `/var`, `/home`, `/root`, `/etc`, ...) is absent. Symlinks are resolved: a path is bound at its real
            location. `None` (default): the host's filesystem minus `hide`.
        cgroup: bound memory and processes for the sandbox as a whole in a cgroup of its own: `None` (default)
            where the host allows it (root, or a delegated cgroup), else per process, logged once at WARNING;
            `True` requires it (`SandboxUnavailable` otherwise); `False` never (per-process limits only).
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
        scratch_mb: int | _Default | None = DEFAULT_SCRATCH,
        hide: Sequence[str] = DEFAULT_HIDDEN,
        expose: Sequence[str | os.PathLike[str]] | None = None,
        cgroup: bool | None = None,
        bwrap: str | os.PathLike[str] | None = None,
        python: str | None = None,
        max_tool_concurrency: int = 4,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive, or None for no wall-clock limit")
        if isinstance(scratch_mb, _Default):
            scratch_mb = None if _no_tmpfs_size(bwrap) else scratch_mb.size_mb
        sizes = (("memory_mb", memory_mb, 32), ("max_processes", max_processes, 8), ("scratch_mb", scratch_mb, 1))
        for name, value, least in sizes:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(f"{name} must be an integer of at least {least}, or None for no limit; got {value!r}")
        if cgroup not in (None, True, False):
            raise TypeError(f"cgroup must be None (where the host allows one), True or False; got {cgroup!r}")
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
        self.scratch_mb = scratch_mb
        self.hide: tuple[str, ...] = tuple(hide)
        self.expose = None if expose is None else checked_exposed(expose)
        if self.expose is not None and sandbox_user() is not None:
            unreachable = [path for path in self.expose if not reachable_by_others(path)]
            if unreachable:
                raise ValueError(
                    f"expose: {unreachable} not readable by nobody (uid 65534), whom the sandbox runs as when the host "
                    "runs as root (make them readable by others, or expose a copy)"
                )
        self.cgroup = cgroup
        self.python = python or sys.executable
        self._layout = Layout(self.hide, self.expose, None if scratch_mb is None else scratch_mb * 2**20)
        self._controllers = self._cgroup_controllers()
        found = self.problems(bwrap)
        if found:
            raise SandboxUnavailable("; ".join(found))
        located = find_bwrap(bwrap)
        assert located is not None
        self._bwrap = located
        remove_stale(None if scratch is None else os.fspath(scratch))

    def _cgroup_controllers(self) -> tuple[str, ...]:
        """The cgroup controllers in force for this configuration (see `cgroup`), falling back or raising."""
        memory = None if self.memory_mb is None else self.memory_mb * 2**20
        wanted = {"memory": memory, "pids": self.max_processes}
        if self.cgroup is False or not sys.platform.startswith("linux"):
            return ()
        usable, reasons = usable_controllers(wanted)
        if reasons and self.cgroup:
            raise SandboxUnavailable(f"cgroup=True, but {'; '.join(reasons)}")
        if reasons:
            log_fallback_once(
                "rlm_events.sandbox: limits per process, not for the sandbox as a whole, because "
                + "; ".join(reasons)
                + " (Sandboxed.limits says which limit is enforced how; cgroup=False silences this)"
            )
        return usable

    @property
    def limits(self) -> dict[str, str]:
        """How each limit is enforced here, by option name: `"sandbox: ..."` for the sandbox as a whole (its cgroup,
        its tmpfs), `"per process: ..."`, `"per user namespace: ..."`, `"per execution: ..."`, or `"off"`."""
        found = dict.fromkeys(("timeout", "memory_mb", "max_processes", "cpu_seconds"), "off")
        if self.timeout is not None:
            found["timeout"] = f"per execution: {self.timeout:g} s wall clock (host)"
        if self.memory_mb is not None:
            whole = f"sandbox: {self.memory_mb} MiB (memory cgroup), and " if "memory" in self._controllers else ""
            found["memory_mb"] = f"{whole}per process: {self.memory_mb} MiB of address space (RLIMIT_AS)"
        if self.max_processes is not None:
            found["max_processes"] = (
                f"sandbox: {self.max_processes} (pids cgroup)"
                if "pids" in self._controllers
                else f"per user namespace: {self.max_processes} (RLIMIT_NPROC)"
            )
        if self.cpu_seconds is not None:
            found["cpu_seconds"] = f"per process: {self.cpu_seconds} s (RLIMIT_CPU)"
        found["scratch_mb"] = "off (the host directory, uncapped)"
        if self.scratch_mb is not None:
            found["scratch_mb"] = f"sandbox: {self.scratch_mb} MiB (tmpfs)"
        return found

    @staticmethod
    def cleanup(scratch: str | os.PathLike[str] | None = None) -> list[str]:
        """Remove the scratch directories (in `scratch`, default the temporary directory) and the cgroups that a
        host process killed without cleaning up (`SIGKILL`, a crash) left behind; every construction does it too.
        Returns the paths removed."""
        return remove_stale(None if scratch is None else os.fspath(scratch))

    def problems(self, bwrap: str | os.PathLike[str] | None = None) -> list[str]:
        """What stops this configuration's sandbox from running here (empty if nothing)."""
        return problems(bwrap, self.python, self._layout, self._controllers)

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
            whole = " per process and for all processes together" if "memory" in self._controllers else " per process"
            limits.append(f"{self.memory_mb} MiB of memory{whole}")
        if self.cpu_seconds is not None:
            limits.append(f"{self.cpu_seconds} s of CPU time per process")
        if self.max_processes is not None:
            limits.append(f"{self.max_processes} processes and threads")
        text = (
            "Code runs as Python in a persistent subprocess inside an OS sandbox: no network; the filesystem is "
            "read-only except the working directory (scratch space, deleted when this run ends"
            + (f", at most {self.scratch_mb} MiB" if self.scratch_mb is not None else "")
            + ")"
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
            f"cpu_seconds={self.cpu_seconds!r}, scratch={self.scratch!r}, scratch_mb={self.scratch_mb!r}, "
            f"expose={self.expose!r}, cgroup={self.cgroup!r})"
        )
