"""The OS isolation under [`rlm_events.sandbox`][rlm_events.sandbox]: the filesystem layout and bubblewrap's command
line, the launch (cgroup, unprivileged user, seccomp), and the checks that name what is missing.

All of it is Linux-only; nothing here falls back to running without isolation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._allowlist import WORKER_IN_SANDBOX, allowlist_mounts
from ._cgroup import SandboxCgroup

WORKER = Path(__file__).with_name("_worker.py")

# Covered by an empty read-only tmpfs inside the sandbox: temporary files and the Unix sockets of the host's daemons
# (a socket on a read-only mount can still be connected to), and home directories. The interpreter's own files
# under them (a pyenv Python in /root, a virtual environment in a home) are bound back read-only.
DEFAULT_HIDDEN: tuple[str, ...] = ("/tmp", "/var/tmp", "/run", "/home", "/root", "~")

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SHARED_MEMORY_BYTES = 16 * 2**20

# The host user the sandbox runs as when the host runs as root: nobody, who owns no file and holds no privilege.
# (A user namespace made by root maps its uid 0 to the host's uid 0: files owned by root, /proc/sys included, stay
# writable to it. bubblewrap is therefore started as this user, so the namespace maps to it.)
UNPRIVILEGED_USER = (65534, 65534)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message names what is missing (and how to get it)."""


def find_bwrap(bwrap: str | os.PathLike[str] | None) -> str | None:
    if bwrap is not None:
        path = os.fspath(bwrap)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which("bwrap")


_HELP: dict[str, str] = {}


def bwrap_help(bwrap: str) -> str:
    if bwrap not in _HELP:
        try:
            done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
            _HELP[bwrap] = done.stdout + done.stderr
        except (OSError, subprocess.SubprocessError):
            _HELP[bwrap] = ""
    return _HELP[bwrap]


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def under(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or below it (both real, absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def hidden_directories(hide: Iterable[str]) -> list[str]:
    """The real directories to hide, outermost only, without duplicates (`/var/run` is often `/run`)."""
    found: list[str] = []
    for entry in hide:
        real = _real(entry)
        if real != "/" and os.path.isdir(real) and real not in found:
            found.append(real)
    return [d for d in found if not any(other != d and under(d, other) for other in found)]


def interpreter_paths(python: str) -> list[str]:
    """What the sandboxed interpreter reads to start: its prefixes (standard library, the virtual environment's
    site-packages), its executable and the worker script."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, python, _real(python), str(WORKER)]
    unique: list[str] = []
    for path in paths:
        real = _real(path)
        for candidate in (os.path.abspath(path), real):
            if os.path.exists(candidate) and candidate not in unique:
                unique.append(candidate)
    # A path inside a directory bound whole is there already (binding it again would mount over, e.g., the
    # virtual environment's bin/python symlink).
    directories = [p for p in unique if os.path.isdir(p) and not os.path.islink(p)]
    return [p for p in unique if not any(d != p and under(p, d) for d in directories)]


def sandbox_user() -> tuple[int, int] | None:
    """The host `(uid, gid)` bubblewrap is started as: nobody when the host runs as root; None otherwise (the
    sandbox then runs as the host's own user, who is unprivileged already)."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def find_setpriv() -> str | None:
    return shutil.which("setpriv") or next((p for p in ("/usr/bin/setpriv", "/bin/setpriv") if os.path.isfile(p)), None)


def unprivileged(command: list[str]) -> list[str]:
    """`command` run as [`sandbox_user()`][rlm_events.sandbox._isolation.sandbox_user] (util-linux's `setpriv`): no
    supplementary groups, no inheritable capabilities, and no new privileges (a setuid file gives none)."""
    user = sandbox_user()
    if user is None:
        return command
    setpriv = find_setpriv()
    if setpriv is None:
        raise SandboxUnavailable(_NO_SETPRIV)
    uid, gid = user
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--no-new-privs",
        *command,
    ]


def prepare_scratch(path: str) -> None:
    """The scratch directory belongs to the sandbox's user alone (mode 0700): no other local user reaches what the
    code leaves there (a setuid file, a socket)."""
    os.chmod(path, 0o700)
    user = sandbox_user()
    if user is not None:
        os.chown(path, *user)


_NO_SETPRIV = (
    "the host runs as root and the sandbox must drop to an unprivileged user (nobody), which needs setpriv "
    "(util-linux; Debian/Ubuntu: apt-get install util-linux)"
)


@dataclass(frozen=True)
class Layout:
    """The sandbox's filesystem: `hide` covered (the default mode), or only `expose` and what Python needs (allowlist
    mode, `expose` not None; see [`rlm_events.sandbox._allowlist`][rlm_events.sandbox._allowlist]); and the scratch
    directory, on a tmpfs of `scratch_bytes` (None: the host directory itself, uncapped)."""

    hide: tuple[str, ...] = DEFAULT_HIDDEN
    expose: tuple[str, ...] | None = None
    scratch_bytes: int | None = None

    @property
    def covered(self) -> tuple[str, ...]:
        """The directories whose content the sandbox does not see (the root stage may cover them on the host)."""
        return self.hide if self.expose is None else (*self.hide, *DEFAULT_HIDDEN)

    @property
    def worker(self) -> str:
        """The worker script's path inside the sandbox."""
        return str(WORKER) if self.expose is None else WORKER_IN_SANDBOX


def bwrap_arguments(
    bwrap: str,
    scratch: str,
    layout: Layout,
    python: str,
    seccomp_fd: int | None = None,
    opened: dict[str, int] | None = None,
) -> list[str]:
    """`bwrap` and its options, up to (not including) the command: every namespace unshared (user, PID, network,
    mount, IPC, UTS, cgroup), no capabilities, the filesystem of `layout` read-only (the host's `/` with `hide`
    covered, or the allowlist root), a fresh `/proc` and a minimal read-only `/dev`, `scratch` the one writable
    directory (and the working one; a tmpfs of `layout.scratch_bytes` when set), and the seccomp filter read from
    `seccomp_fd` (see [`rlm_events.sandbox._seccomp`][rlm_events.sandbox._seccomp]). The interpreter's files under
    hidden directories are bound back from `opened` (`{path: O_PATH descriptor}`) where given: opened by the host,
    they need not be reachable by the unprivileged user (a Python in `/root`)."""
    opened = opened or {}
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",  # required, never "try": no user namespace means no sandbox
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "rlm-sandbox",
    ]
    if "--disable-userns" in bwrap_help(bwrap):
        args.append("--disable-userns")
    hidden = hidden_directories(layout.hide) if layout.expose is None else []
    if layout.expose is None:
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    else:
        args += allowlist_mounts(interpreter_paths(python), layout.expose, str(WORKER))
        args += ["--dev", "/dev", "--proc", "/proc"]
    for directory in hidden:
        args += ["--tmpfs", directory]
    for path in interpreter_paths(python):
        if any(under(path, directory) for directory in hidden):
            args += ["--ro-bind-fd", str(opened[path]), path] if path in opened else ["--ro-bind", path, path]
    if layout.scratch_bytes is None:
        args += ["--bind", scratch, scratch]
    else:
        args += ["--size", str(layout.scratch_bytes), "--perms", "0700", "--tmpfs", scratch]
    # Shared memory of the sandbox's own, capped (multiprocessing's semaphores; the worker's captured output, which
    # must not share the scratch directory's room: code that fills scratch still has its output read).
    # Without --size (bubblewrap before 0.8) /dev/shm stays read-only, and the worker captures output in scratch.
    if "--size" in bwrap_help(bwrap):
        args += ["--size", str(SHARED_MEMORY_BYTES), "--perms", "01777", "--tmpfs", "/dev/shm"]
    for directory in hidden if layout.expose is None else ["/"]:
        args += ["--remount-ro", directory]
    args += ["--remount-ro", "/dev", "--chdir", scratch]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args


def sandbox_environment(scratch: str) -> dict[str, str]:
    """The whole environment the sandbox starts with: none of the host's variables (API keys stay outside)."""
    return {"PATH": SANDBOX_PATH, "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


# --- what is missing ----------------------------------------------------------------------------------------------

_PROBED: dict[tuple[str, str, Layout, tuple[str, ...]], str | None] = {}
_PROBE_LOCK = threading.Lock()


def _userns_hints() -> list[str]:
    hints = []
    for path, bad, text in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "unprivileged user namespaces are disabled"),
        ("/proc/sys/user/max_user_namespaces", "0", "user namespaces are disabled"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor restricts them"),
    ):
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == bad:
                hints.append(f"{text} ({path} is {bad})")
    return hints


def problems(
    bwrap: str | os.PathLike[str] | None, python: str, layout: Layout, controllers: Sequence[str]
) -> list[str]:
    """What stops the sandbox from running here, each naming the missing primitive; empty when it runs. The first
    check on a configuration starts a real sandbox (cached for the process), in a cgroup with `controllers`."""
    if not sys.platform.startswith("linux"):
        return [f"rlm_events.sandbox needs Linux (user, PID, network and mount namespaces); this is {sys.platform}"]
    found = find_bwrap(bwrap)
    if found is None:
        where = f"{os.fspath(bwrap)} is not an executable file" if bwrap is not None else "not found on PATH"
        return [f"bubblewrap (bwrap) {where}: install it (Debian/Ubuntu: apt-get install bubblewrap)"]
    usage = bwrap_help(found)
    if layout.scratch_bytes is not None and "--tmpfs" in usage and "--size" not in usage:
        return [f"bubblewrap ({found}) has no --size option (0.8 or later needed) for scratch_mb; pass scratch_mb=None"]
    key = (found, python, layout, tuple(controllers))
    with _PROBE_LOCK:
        if key not in _PROBED:
            _PROBED[key] = _probe(found, python, layout, controllers)
        failure = _PROBED[key]
    return [] if failure is None else [failure]


def sandbox_command(
    bwrap: str, scratch: str, layout: Layout, python: str, cgroup: SandboxCgroup | None
) -> tuple[list[str], list[int]]:
    """The whole command up to the sandboxed program: join `cgroup`, drop to the unprivileged user (as root), then
    bubblewrap with the seccomp filter; and the file descriptors the child must get (`pass_fds`; the caller closes
    them once it started)."""
    from ._reachable import interpreter_reachable
    from ._seccomp import seccomp_fd

    fd = seccomp_fd()
    try:
        arguments = bwrap_arguments(bwrap, scratch, layout, python, fd)
        prefix = cgroup.launcher() if cgroup is not None else []
        reachable = interpreter_reachable(python, layout.covered, scratch)
        return [*prefix, *reachable, *unprivileged(arguments), "--"], [fd]
    except BaseException:
        os.close(fd)
        raise


def _probe(bwrap: str, python: str, layout: Layout, controllers: Sequence[str]) -> str | None:
    import tempfile

    from ._seccomp import SeccompMissing

    scratch = tempfile.mkdtemp(prefix="rlm-sandbox-probe-")
    cgroup = None
    fds: list[int] = []
    try:
        try:
            prepare_scratch(scratch)
            if controllers:
                cgroup = SandboxCgroup(
                    max_processes=64 if "pids" in controllers else None,
                    memory_bytes=512 * 2**20 if "memory" in controllers else None,
                )
            command, fds = sandbox_command(bwrap, scratch, layout, python, cgroup)
            command += [python, "-I", "-c", "print('ok')"]
        except (SandboxUnavailable, SeccompMissing, OSError) as exc:
            return str(exc)
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=30,
                env=sandbox_environment(scratch),
                check=False,
                pass_fds=fds,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap ({bwrap}) could not start a sandbox: {exc}"
        if done.returncode == 0 and done.stdout.strip() == "ok":
            return None
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")[-600:]
        hints = "".join(f"; {hint}" for hint in _userns_hints())
        if sandbox_user() is not None:
            hints += f"; the sandbox runs as uid {UNPRIVILEGED_USER[0]} (nobody), who must be able to read {python}"
        return (
            f"bubblewrap ({bwrap}) could not start a sandbox (user, PID, network and mount namespaces): {detail}{hints}"
        )
    finally:
        for fd in fds:
            os.close(fd)
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(scratch, ignore_errors=True)
