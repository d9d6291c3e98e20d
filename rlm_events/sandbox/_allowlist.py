"""The sandbox's filesystem in allowlist mode (`Sandboxed(expose=[...])`): an empty root with only what Python
needs to run and the exposed paths bound in, read-only.

What Python needs: the system's programs and libraries (`/usr`, and `/bin`, `/lib`, ... as they are on the host:
directories bound, merged-`/usr` symlinks recreated), the dynamic linker's configuration (`/etc/ld.so.*`), the time
zone (`/etc/localtime`) and `/etc/alternatives`, the interpreter's prefixes (standard library, the virtual
environment's site-packages; see
[`interpreter_paths()`][rlm_events.sandbox._isolation.interpreter_paths]) and the worker script, bound at
[`WORKER_IN_SANDBOX`][rlm_events.sandbox._allowlist.WORKER_IN_SANDBOX] so that the checkout holding it stays out
of sight. Everything else (the project directory, `/home`, `/root`, `/run` and its daemon sockets, `/var`, `/srv`,
`/opt`, `/mnt`, `/sys`, the rest of `/etc`) is absent: a read is `FileNotFoundError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Where the worker script is bound in allowlist mode (the root is an empty tmpfs there, so any path can be made).
WORKER_IN_SANDBOX = "/rlm-events/worker.py"

SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/etc/localtime",
    "/etc/alternatives",
)


def checked_exposed(expose: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """`expose` as absolute, real paths; raises `TypeError`/`ValueError` naming the option for bad entries."""
    if isinstance(expose, (str, bytes, os.PathLike)):
        raise TypeError("expose takes a sequence of paths, not one path: expose=[path]")
    found: list[str] = []
    for entry in expose:
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"expose takes paths (str or os.PathLike), not {type(entry).__name__}: {entry!r}")
        path = os.path.realpath(os.path.expanduser(os.fspath(entry)))
        if not os.path.exists(path):
            raise ValueError(f"expose: {os.fspath(entry)!r} does not exist (expected an existing file or directory)")
        if path == "/":
            raise ValueError("expose: '/' exposes everything; leave expose=None for the whole filesystem read-only")
        if path not in found:
            found.append(path)
    return tuple(found)


def allowlist_mounts(interpreter: Sequence[str], exposed: Sequence[str], worker: str) -> list[str]:
    """bubblewrap options that build the allowlist root (see the module), before scratch, `/dev` and `/proc`:
    the system directories, `interpreter` paths (each bound where it is) and `exposed` read-only, `worker` at
    `WORKER_IN_SANDBOX`. The caller remounts `/` read-only once everything is in place."""
    args: list[str] = []
    for path in SYSTEM_DIRECTORIES:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    bound = [p for p in SYSTEM_DIRECTORIES if os.path.isdir(p) and not os.path.islink(p)]
    outside = [p for p in interpreter if os.path.realpath(p) != os.path.realpath(worker)]  # the worker goes elsewhere
    for path in [*SYSTEM_FILES, *outside, *exposed]:
        if os.path.lexists(path) and not any(path == b or path.startswith(b + "/") for b in bound):
            args += ["--ro-bind", path, path]
            if os.path.isdir(path) and not os.path.islink(path):
                bound.append(path)
    args += ["--ro-bind", worker, WORKER_IN_SANDBOX]
    return args
