"""What a host killed without cleaning up (`SIGKILL`, a crash) leaves behind, and its removal: scratch directories
named after the process that made them, and pids cgroups named so too."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import _isolation


def scratch_prefix() -> str:
    """Scratch directories are named after the process that made them (its PID namespace and PID), so that
    [`remove_stale()`][rlm_events.sandbox._stale.remove_stale] can tell those of a dead host."""
    return f"rlm-sandbox-{_pid_namespace()}-{os.getpid()}-"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]") or "0"
    except OSError:
        return "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(scratch_base: str | None) -> list[str]:
    """Remove what a host killed without cleaning up (SIGKILL, a crash) left behind: its scratch directories in
    `scratch_base` (default: the temporary directory) and its pids cgroups. Only those of a process of this PID
    namespace that is gone; returns the paths removed."""
    import tempfile

    from ._process import remove_tree

    removed = []
    namespace = _pid_namespace()
    base = Path(scratch_base or tempfile.gettempdir())
    for path in base.glob(f"rlm-sandbox-{namespace}-*-*"):
        pid = path.name.split("-")[3]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir() and not path.is_symlink():
            remove_tree(str(path))
            removed.append(str(path))
    found = _isolation._pids_hierarchy()
    for path in Path(found[0]).glob("rlm-events-sandbox-*-*") if found else ():
        pid = path.name.split("-")[3]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.rmdir()  # a cgroup whose processes are gone (they die with their sandbox's PID namespace)
                removed.append(str(path))
    return removed
