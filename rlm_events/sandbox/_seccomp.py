"""The sandbox's seccomp filter: system calls the code never needs, refused with `EPERM` (Docker's default profile
as the model), compiled to BPF by libseccomp (through `pyseccomp`) and handed to bubblewrap (`--seccomp FD`).

The filter allows by default and refuses, on the native architecture, the calls that reach kernel-wide state or
widen the kernel's attack surface: keyrings, BPF, perf, `userfaultfd`, io_uring, mounts and namespaces, `ptrace`
and cross-process memory, kernel modules and `kexec`, swap, reboot, clocks, `open_by_handle_at`, `syslog`,
`acct`, `quotactl`, and the kernel objects counted per host user (inotify, POSIX message queues). `socket` and
`socketpair` are refused for every address family but Unix, IPv4, IPv6 and netlink (see `SOCKET_FAMILIES`).
`clone` with a namespace flag is refused; `clone3`, whose flags sit in memory a filter cannot read, answers
`ENOSYS` (the C library then falls back to `clone`). A system call of another architecture (32-bit calls on
x86-64, x32) kills the process: libseccomp's default for a foreign architecture.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from typing import Any

from .._optional import requiring

# Docker's default profile refuses these to a container without the matching capability (every one of them is
# refused here: the sandbox holds no capability it could be granted).
DENIED: tuple[str, ...] = (
    # kernel keyrings (shared with the host user's session)
    "keyctl",
    "add_key",
    "request_key",
    # kernel attack surface
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "kcmp",
    # mounts, namespaces and roots
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "iopl",
    "ioperm",
    # host-wide clocks
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    # file handles reach files outside the mount namespace
    "open_by_handle_at",
    "name_to_handle_at",
    # kernel objects counted per host user, across every user namespace (ucounts): inotify instances (128 by
    # default) and watches, POSIX message queue bytes. The sandbox's user is a host user (nobody for a root host,
    # else the host's own user), so a sandbox that took them all would leave none to the host user's other
    # processes (an editor's file watchers) or to the other sandboxes, for as long as it runs.
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "mq_open",
    # obsolete or host-wide
    "uselib",
    "ustat",
    "sysfs",
    "vhangup",
    "nfsservctl",
    "fanotify_init",
)

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
    0x00000080,
)

# The address families the code may open sockets of (`socket`, `socketpair`): Unix sockets, IPv4 and IPv6 (inside
# the sandbox's own network namespace: its loopback only) and netlink (that namespace's routing, which the C
# library's getaddrinfo asks). Every other family is refused. Some are not network-namespaced at all: AF_VSOCK
# reaches the hypervisor's services and other VMs from inside any network namespace (Docker's profile refuses it for
# that reason), so on a VM the network namespace alone would not keep the code off the network. The rest (AF_ALG,
# AF_TIPC, AF_RDS, AF_KCM, ...) is kernel code ordinary Python never needs, with a history of exploits.
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES: tuple[int, ...] = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)

_CACHE: dict[str, bytes] = {}
_LOCK = threading.Lock()


class SeccompMissing(RuntimeError):
    """pyseccomp or libseccomp is not installed; the message says which and how to get it."""


def _library() -> Any:
    with requiring("sandbox", "the seccomp filter", "pyseccomp", hint="or pip install pyseccomp", error=SeccompMissing):
        import pyseccomp
    try:
        pyseccomp.get_api()
    except Exception as exc:  # pyseccomp loads libseccomp.so.2 lazily: OSError, AttributeError
        raise SeccompMissing(
            f"the seccomp filter needs libseccomp (Debian/Ubuntu: apt-get install libseccomp2): {exc}"
        ) from exc
    return pyseccomp


def seccomp_program() -> bytes:
    """The filter as a BPF program for bubblewrap's `--seccomp` (built once per process).

    Raises:
        SeccompMissing: pyseccomp or libseccomp is missing.
    """
    with _LOCK:
        if "bpf" not in _CACHE:
            _CACHE["bpf"] = _build()
        return _CACHE["bpf"]


def _build() -> bytes:
    sc = _library()
    refuse = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED:
        try:
            sc.resolve_syscall(sc.system_arch(), name)
        except Exception:  # not a system call of this architecture (iopl on arm64, ...)
            continue
        rules.add_rule(refuse, name)
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(refuse, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        rules.add_rule(refuse, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # Refused: each family below the largest allowed one that is not allowed, and every value above it (the filter
    # compares all 64 bits, so a family smuggled in with high bits set, which the kernel truncates to an int, is
    # above too).
    highest = max(SOCKET_FAMILIES)
    for call in ("socket", "socketpair"):
        for family in range(highest):
            if family not in SOCKET_FAMILIES:
                rules.add_rule(refuse, call, sc.Arg(0, sc.EQ, family))
        rules.add_rule(refuse, call, sc.Arg(0, sc.GT, highest))
    with contextlib.suppress(Exception):  # a libseccomp too old to know clone3
        rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as sink:
        rules.export_bpf(sink)
        sink.seek(0)
        return sink.read()


def seccomp_fd() -> int:
    """A fresh, inheritable file descriptor holding the BPF program, positioned at its start (bubblewrap reads it
    whole). The caller closes it after starting bubblewrap."""
    program = seccomp_program()
    made = os.memfd_create("rlm-sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(made, program)
        os.lseek(made, 0, os.SEEK_SET)
        # Above 9: the launcher's shell uses descriptors 3-9 (see _reachable.interpreter_reachable).
        return fcntl.fcntl(made, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(made)
