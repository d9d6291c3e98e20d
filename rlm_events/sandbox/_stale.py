"""What a host killed without cleaning up (`SIGKILL`, a crash) leaves behind, and its removal: scratch directories
named after the process that made them, and cgroups (memory, pids) named so too. (Scratch tmpfs mounts and the
allowlist root live in the sandbox's own mount namespace: they go with its last process, whatever kills the host.)"""

from __future__ import annotations

import os
from pathlib import Path

from ._cgroup import remove_cgroup, stale_cgroups


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
    `scratch_base` (default: the temporary directory) and its cgroups. Only those of a process of this PID
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
    for directory, version, owner in stale_cgroups():
        # Its processes die with their sandbox's PID namespace (bubblewrap's --die-with-parent); any left are killed.
        if not _alive(owner) and remove_cgroup(directory, version, patience=1.0):
            removed.append(directory)
    return removed
