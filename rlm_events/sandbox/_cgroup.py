"""The sandbox's cgroup: memory and processes bounded for the sandbox as a whole, where the host allows it.

One cgroup per sandbox (per worker), with `pids.max` and a memory limit (cgroup v2: `memory.max`, `memory.swap.max`
0; v1: `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` in each controller's hierarchy). The launcher joins
it before it becomes bubblewrap, so every process of the sandbox is inside. Where no writable cgroup offers a
controller (not root and nothing delegated, or the controller not enabled for children), the limit falls back to
the per-process one (`RLIMIT_AS`, `RLIMIT_NPROC`): see [`Sandboxed.limits`][rlm_events.sandbox.Sandboxed.limits].

Cgroups are named `rlm-events-sandbox-<host pid>-<random>`, so that those of a host killed without cleaning up
can be told and removed ([`rlm_events.sandbox._stale`][rlm_events.sandbox._stale]).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

CONTROLLERS = ("memory", "pids")
PREFIX = "rlm-events-sandbox-"


class CgroupUnavailable(OSError):
    """No writable cgroup offers a controller the sandbox asked for; the message says which and why."""


def _mounts() -> tuple[dict[str, str], str | None]:
    """`({controller: v1 mount point}, v2 mount point or None)`."""
    v1: dict[str, str] = {}
    v2 = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup":
                for option in tail[2].split(","):
                    if option in CONTROLLERS:
                        v1[option] = fields[4]
            elif tail[0] == "cgroup2":
                v2 = fields[4]
    return v1, v2


def hierarchies() -> dict[str, tuple[str, str]]:
    """`{controller: (this process's cgroup directory that offers it to children, "v1" or "v2")}` for memory and
    pids, where one is mounted (whether it is writable is known only when a child is made)."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    v1, v2 = _mounts()
    found: dict[str, tuple[str, str]] = {}
    for line in own:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        for controller in controllers.split(","):
            if controller in v1:
                found[controller] = (os.path.join(v1[controller], path.lstrip("/")), "v1")
    unified = next((line[3:] for line in own if line.startswith("0::")), None)
    if v2 and unified is not None:
        directory = os.path.join(v2, unified.lstrip("/"))
        with contextlib.suppress(OSError):
            enabled = Path(directory, "cgroup.subtree_control").read_text().split()
            for controller in CONTROLLERS:
                if controller in enabled and controller not in found:
                    found[controller] = (directory, "v2")
    return found


class SandboxCgroup:
    """The cgroup of one sandbox: made with its limits, joined by the launcher, emptied and removed.

    Raises [`CgroupUnavailable`][rlm_events.sandbox._cgroup.CgroupUnavailable] when a controller is missing or its
    hierarchy is not writable here."""

    def __init__(self, *, max_processes: int | None = None, memory_bytes: int | None = None) -> None:
        given = {"pids": max_processes, "memory": memory_bytes}
        wanted = {controller: limit for controller, limit in given.items() if limit is not None}
        offered = hierarchies()
        missing = [controller for controller in wanted if controller not in offered]
        if missing:
            raise CgroupUnavailable(
                f"no cgroup offers the {' and '.join(missing)} controller to this process (cgroup v1 hierarchy, or "
                "cgroup v2 with it in cgroup.subtree_control)"
            )
        name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # {directory: version}: v1 has one directory per controller, v2 one for both.
        self.directories: dict[str, str] = {}
        for controller in wanted:
            parent, version = offered[controller]
            self.directories.setdefault(os.path.join(parent, name), version)
        try:
            for directory in self.directories:
                os.mkdir(directory)
            for controller, limit in wanted.items():
                directory = os.path.join(offered[controller][0], name)
                for file, value in _settings(controller, offered[controller][1], limit):
                    target = Path(directory, file)
                    swap = file.endswith("memsw.limit_in_bytes") or file == "memory.swap.max"
                    if swap and not target.exists():  # no swap accounting: nothing to swap past the limit with
                        continue
                    target.write_text(value)
        except OSError as exc:
            self.remove()
            raise CgroupUnavailable(f"cannot make a cgroup of the sandbox ({exc})") from exc

    @property
    def procs(self) -> str:
        """A `cgroup.procs` listing every process of the sandbox."""
        return os.path.join(next(iter(self.directories)), "cgroup.procs")

    def launcher(self) -> list[str]:
        """A prefix for the command: the shell joins the cgroup, then becomes the rest (all it starts is inside)."""
        joins = " && ".join(f"echo $$ > {shlex.quote(os.path.join(d, 'cgroup.procs'))}" for d in self.directories)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh"]

    def out_of_memory_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup (at the memory limit)."""
        for directory, version in self.directories.items():
            name = "memory.events" if version == "v2" else "memory.oom_control"
            with contextlib.suppress(OSError, ValueError):
                for line in Path(directory, name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def kill(self) -> None:
        """SIGKILL to everything in the cgroup (the sandbox's processes die with its PID namespace anyway)."""
        kill_all(self.directories.items())

    def remove(self) -> None:
        """Remove the cgroup once its last process has gone (within 5 s; a cgroup left behind is empty)."""
        for directory, version in self.directories.items():
            remove_cgroup(directory, version)


def _settings(controller: str, version: str, limit: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [("pids.max", str(limit))]
    if version == "v2":
        return [("memory.max", str(limit)), ("memory.swap.max", "0")]
    return [("memory.limit_in_bytes", str(limit)), ("memory.memsw.limit_in_bytes", str(limit))]


def kill_all(directories: Iterable[tuple[str, str]]) -> None:
    for directory, version in directories:
        if version == "v2":
            with contextlib.suppress(OSError):
                Path(directory, "cgroup.kill").write_text("1")
                continue
        try:
            pids = [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def remove_cgroup(directory: str, version: str, patience: float = 5.0) -> bool:
    """Remove one cgroup directory, killing what is left in it, for up to `patience` seconds; whether it is gone."""
    deadline = time.monotonic() + patience
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            kill_all([(directory, version)])
            time.sleep(0.002)


def stale_cgroups() -> list[tuple[str, str, int]]:
    """`(directory, version, host pid)` of every sandbox cgroup under this process's hierarchies."""
    found = []
    for parent, version in set(hierarchies().values()):
        for path in Path(parent).glob(f"{PREFIX}*-*"):
            pid = path.name[len(PREFIX) :].split("-")[0]
            if pid.isdigit() and path.is_dir():
                found.append((str(path), version, int(pid)))
    return found


_LOGGED: set[str] = set()


def usable_controllers(limits: dict[str, int | None]) -> tuple[tuple[str, ...], list[str]]:
    """Which of `limits` (`{"memory": bytes, "pids": count}`, None for no limit) a sandbox cgroup can enforce here,
    tried by making one; and, for the others, why not."""
    usable, reasons = [], []
    for controller, limit in limits.items():
        if limit is None:
            continue
        try:
            made = SandboxCgroup(max_processes=limit) if controller == "pids" else SandboxCgroup(memory_bytes=limit)
            made.remove()
            usable.append(controller)
        except CgroupUnavailable as exc:
            reasons.append(str(exc))
    return tuple(usable), reasons


def log_fallback_once(text: str) -> None:
    """Log at WARNING, once per process and text, that a limit falls back to the per-process one."""
    if text not in _LOGGED:
        _LOGGED.add(text)
        import logging

        logging.getLogger("rlm_events.sandbox").warning("%s", text)
