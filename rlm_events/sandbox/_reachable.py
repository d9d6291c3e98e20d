"""The root stage of the sandbox's launch: what the unprivileged user bubblewrap runs as must be able to reach.

When the host runs as root, bubblewrap is started as nobody
([`sandbox_user()`][rlm_events.sandbox._isolation.sandbox_user]). The interpreter's files (a pyenv Python in `/root`,
mode 0700) and the scratch directory may lie where nobody cannot go: this stage, run as root in a private mount
namespace of its own (not the sandbox's), covers each such directory with a tmpfs (mode 0755) and binds those paths
back (the interpreter's read-only, the scratch directory writable). Paths nobody can already reach are left alone.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence
from pathlib import Path

from ._isolation import SandboxUnavailable, hidden_directories, interpreter_paths, sandbox_user, under


def reachable_by_others(path: str) -> bool:
    """Whether a user who neither owns `path` nor is in its group can reach it: every directory above searchable by
    others, and `path` itself readable (and, for a directory, searchable) by them."""
    try:
        if any(not os.stat(parent).st_mode & stat.S_IXOTH for parent in Path(path).parents):
            return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & needed == needed


def interpreter_reachable(python: str, hide: Sequence[str], scratch: str) -> list[str]:
    """For a root host: the prefix that runs the rest of the command in the root stage (see the module), or an
    empty list when nobody reaches everything already (or the host is not root)."""
    if sandbox_user() is None:
        return []
    hidden = hidden_directories(hide)
    paths = [p for p in interpreter_paths(python) if any(under(p, d) for d in hidden) and not reachable_by_others(p)]
    writable = [scratch] if any(under(scratch, d) for d in hidden) else []
    covers = [d for d in hidden if any(under(p, d) for p in paths)]
    if not covers:
        return []
    writable = [w for w in writable if any(under(w, d) for d in covers)]
    bound = paths + writable
    if len(bound) > 7:  # the shell's descriptors 3-9
        raise SandboxUnavailable(f"too many interpreter paths under hidden directories to bind back: {bound}")
    script = ["set -e"]
    # Opened before the covers go on, bound from the open descriptor after (-c: mount must not re-resolve the path).
    script += [f"exec {3 + n}<{shlex.quote(path)}" for n, path in enumerate(bound)]
    script += [f"mount -t tmpfs -o mode=0755,size=64k rlm-sandbox {shlex.quote(d)}" for d in covers]
    for n, path in enumerate(bound):
        quoted = shlex.quote(path)
        script.append(f"mkdir -p {quoted}" if os.path.isdir(path) else f'mkdir -p "$(dirname {quoted})"; : > {quoted}')
        script.append(f"mount -c --bind /proc/self/fd/{3 + n} {quoted}")
        if path not in writable:
            script.append(f"mount -c -o remount,bind,ro {quoted}")
        script.append(f"exec {3 + n}<&-")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(script), "sh"]
