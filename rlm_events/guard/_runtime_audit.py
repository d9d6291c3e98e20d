"""The guard's run-time layer ([`rlm_events.guard._runtime`][rlm_events.guard._runtime]) for what the interpreter
itself reports: one CPython audit hook per process (PEP 578), and the process-wide patches that let it follow the
code into the threads it starts and into `copy`'s rebuilding of objects.

The hook and the patches are installed by [`install_hook()`][rlm_events.guard._runtime_audit.install_hook], at the
first guarded execution (never at import), and cannot be removed: while no guarded namespace is watched
([`watch()`][rlm_events.guard._runtime_audit.watch]), the hook is one dictionary test. An event is refused
([`check_event()`][rlm_events.guard._runtime_audit.check_event]) by the guard of the code on the calling thread's stack,
else the one applying to the whole process (inside [`every_thread()`][rlm_events.guard._runtime_audit.every_thread]),
else that of the code that started the thread. Never inside host code
([`host_code()`][rlm_events.guard._runtime_audit.host_code]); under a host API's own frames (`HOST_APIS`) only the
annotation strings a library evaluates are checked.

Standard library only, importing of this package only `_runtime_rules` (relatively; the guard's type only for type
checking): the sandbox's worker loads the layer's modules from their source (see
[`rlm_events.guard._runtime`][rlm_events.guard._runtime]).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import contextvars
import copy
import functools
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._runtime_rules import TYPE_EXPRESSION, WRITE_MODE

if TYPE_CHECKING:  # (the guard uses this module: importing it back at run time would be a cycle)
    from ._runtime import RuntimeGuard

# Packages whose calls act for the host: a dspy sub-agent's LM call uses the network and DSPy's disk cache. Audit
# events under one of their frames (and no frame of the code nearer) are theirs.
HOST_APIS = frozenset({"dspy"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _events(names: str, rule: str, what: str) -> dict[str, tuple[str, str]]:
    return dict.fromkeys(names.split(), (rule, what))


# Audit events refused whoever makes the call, while guarded code runs: (policy rule, what it is).
ANY_CALLER: dict[str, tuple[str, str]] = {
    **_events(
        """os.system os.exec os.posix_spawn os.spawn os.fork os.forkpty os.kill os.killpg subprocess.Popen pty.spawn
        os.startfile signal.pthread_kill""",
        "call",
        "starting or signalling a process",
    ),
    **_events(
        """socket.connect socket.bind socket.getaddrinfo socket.gethostbyname socket.gethostbyaddr socket.sendto
        socket.sendmsg socket.sethostname http.client.connect urllib.Request ftplib.connect smtplib.connect
        imaplib.open poplib.connect nntplib.connect webbrowser.open""",
        "module",
        "using the network",
    ),
    **_events(
        """os.remove os.rename os.rmdir os.mkdir os.chmod os.chown os.truncate os.symlink os.link os.utime
        os.setxattr os.removexattr os.putenv os.unsetenv os.chdir shutil.copyfile shutil.copymode shutil.copystat
        shutil.copytree shutil.move shutil.rmtree shutil.chown shutil.make_archive shutil.unpack_archive""",
        "write",
        "changing files, directories or the environment",
    ),
    **_events(
        """ctypes.dlopen ctypes.dlsym ctypes.dlsym/handle ctypes.cdata ctypes.cdata/buffer ctypes.call_function
        ctypes.addressof ctypes.string_at ctypes.wstring_at ctypes.PyObj_FromPtr sys.settrace sys.setprofile
        sys._current_frames sys._current_exceptions sys.addaudithook gc.get_objects gc.get_referrers
        gc.get_referents function.__new__ pickle.find_class""",
        "attribute",
        "reaching native code, other objects' references or the interpreter's hooks",
    ),
}
# Audit events refused when the code itself (or a C function it called) makes them; library code may.
FROM_THE_CODE: dict[str, tuple[str, str]] = {
    "compile": ("call", "compiling code at run time"),
    "exec": ("call", "running code built at run time"),
    "code.__new__": ("call", "building a code object"),
    "marshal.loads": ("call", "loading a code object"),
    "builtins.input": ("call", "reading standard input"),
}
# Library modules whose compilations the code cannot turn into its own code: `ast` only parses, `dataclasses` and
# `collections` (namedtuple) generate code from identifiers.
_GENERATORS = frozenset({"ast", "dataclasses", "collections"})
# Libraries that evaluate annotation strings (`ForwardRef`): also under a host API (pydantic under `dspy.Signature`).
_EVALUATORS = frozenset({"typing", "typing_extensions", "pydantic"})


def check_library_compile(guard: RuntimeGuard, args: tuple[Any, ...], library: str, host_api: bool) -> None:
    """A library compiling source while the code runs: `typing` (and pydantic, for a `dspy.Signature`) evaluate
    the code's annotation strings with `eval`, in C and with the namespaces they choose (the real built-ins),
    where no check of this layer runs. Such a source may only be a type expression: names that are not refused
    built-ins, dotted names the attribute rules allow, subscripts, tuples, `|` and constants; no call. The
    parsers and generators (`ast`, `dataclasses`, `namedtuple`) compile what they build from identifiers, and
    a host API's other compilations (templates of an LM client) are the host's."""
    top = library.partition(".")[0]
    if not library or top in _GENERATORS or (host_api and top not in _EVALUATORS):
        return  # ("": no frame of the code on the stack, in a thread it did not start: the sandbox's worker)
    source = args[0] if args else None
    shown = repr(source)[:60]
    refused = guard.rules.refusal(
        "call",
        f"{library or 'a library'} compiling {shown} while the code runs",
        "code a library evaluates for the code (an annotation string) may only be a type expression",
    )
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source).decode("utf-8", "replace")
    try:
        tree = ast.parse(source.strip(), mode="eval") if isinstance(source, str) else source
    except SyntaxError:
        raise refused from None
    if not isinstance(tree, ast.AST):
        raise refused
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found = guard.rules.name_refusal(node.attr, False, f"{library} compiling {shown}: it reads")
            if found is not None:
                raise found
        elif isinstance(node, ast.Name):
            value = vars(builtins).get(node.id)
            if node.id.startswith("__") or (
                value is not None and not isinstance(value, type) and guard.builtins.get(node.id) is not value
            ):
                raise refused  # `__import__`, `getattr`: the namespace may hold the real built-ins
        elif not isinstance(node, TYPE_EXPRESSION):
            raise refused


def check_event(
    guard: RuntimeGuard, event: str, args: tuple[Any, ...], from_the_code: bool, host_api: bool, library: str = ""
) -> None:
    """Refuse the audit `event` if the rules deny it (see the module's docstring). `library`: the module of the
    nearest Python frame, when it is not the code's."""
    if event == "compile" and not from_the_code:
        check_library_compile(guard, args, library, host_api)
    if host_api:  # the host's API acting for the code (a dspy sub-agent's LM call, its cache)
        return
    rule = ANY_CALLER.get(event)
    if rule is not None:
        raise guard.rules.refusal(rule[0], f"{event}{_shown(args)}", f"{rule[1]} is denied")
    if event == "open":
        mode, flags = (args[1], args[2]) if len(args) > 2 else (None, 0)
        if (isinstance(mode, str) and WRITE_MODE & set(mode)) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise guard.rules.refusal("write", f"open({args[0]!r}, {mode or flags!r}) for writing")
        return
    if not from_the_code:
        return
    if event == "import":
        found = guard.rules.module_refusal(str(args[0]), "import of")
        if found is not None:
            raise found
    elif event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
        guard.check_attribute(args[0], args[1], f"{event} on a {type(args[0]).__name__}:")
    elif event in FROM_THE_CODE:
        rule = FROM_THE_CODE[event]
        raise guard.rules.refusal(rule[0], f"{event}{_shown(args)}", f"{rule[1]} is denied")


def _shown(args: tuple[Any, ...]) -> str:
    text = ", ".join(repr(a) if not isinstance(a, (list, dict, tuple)) else "…" for a in args[:2])
    return f"({text if len(text) <= 80 else text[:77] + '...'})"


# --- the audit hook: one per process ---------------------------------------------------------------------------------

# What `id()` gives (the object's address, reversibly scrambled: one key per live object), without `id()`'s audit
# event: the hook reads the namespace of every frame on the stack, and each `id()` there raised an event of its own
# (32 nested calls of the hook for one host `compile()` 30 frames deep).
identity: Callable[[object], int] = object.__hash__
# identity(namespace) -> its guard, from its first guarded execution for as long as the guard lives: the audit hook
# applies to frames of these namespaces whenever they run.
_WATCHED: dict[int, weakref.ref[RuntimeGuard]] = {}
_PROCESS_WIDE: RuntimeGuard | None = None
_HOST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("rlm_events_guard_host_code", default=False)
# Per thread: `carried`, the guard of the code that started the thread (set for the thread's whole life, see
# `_started`); `busy`, while the hook itself runs (its frame reads raise audit events of their own).
_THREAD = threading.local()
_hook_installed = False
_INSTALLING = threading.Lock()


def watch(guard: RuntimeGuard) -> None:
    """Have the audit hook apply to the frames of `guard`'s namespace from now on, for as long as `guard` lives."""
    key = identity(guard.namespace)
    kept = _WATCHED.get(key)
    if kept is not None and kept() is guard:
        return

    def forget(ref: weakref.ref[RuntimeGuard]) -> None:
        if _WATCHED.get(key) is ref:  # (a later guard of the same namespace replaced it)
            del _WATCHED[key]

    _WATCHED[key] = weakref.ref(guard, forget)


@contextlib.contextmanager
def host_code() -> Iterator[None]:
    """Host code called from the code (a tool): the audit hook does not apply to it, nor to what it starts in
    threads that copy its context."""
    token = _HOST_CODE.set(True)
    try:
        yield
    finally:
        _HOST_CODE.reset(token)


def install_hook() -> None:
    """Install the audit hook once per process (it cannot be removed; idle, it is one dictionary test), and have
    every thread started from guarded code carry that code's guard (see `_started`)."""
    global _hook_installed
    with _INSTALLING:  # interpreters arming at once on several threads: one hook, each function wrapped once
        if _hook_installed:
            return
        _hook_installed = True
        sys.addaudithook(_audit)
        # What `Thread.start()` calls: `_start_joinable_thread(function, handle=, daemon=)` from Python 3.13,
        # `_start_new_thread(function, args, kwargs)` before. Both start `function` in the new thread.
        for name in ("_start_joinable_thread", "_start_new_thread"):
            starter = getattr(threading, name, None)
            if starter is not None:
                setattr(threading, name, functools.partial(_started, starter))
                break
        copy._reconstruct = functools.partial(_reconstructed, copy._reconstruct)  # type: ignore[attr-defined]


@contextlib.contextmanager
def every_thread(guard: RuntimeGuard | None) -> Iterator[None]:
    """While the block runs, the audit hook applies `guard` (if not `None`) to every thread of the process whose stack
    holds no frame of a guarded namespace: the sandbox's worker. Re-entrant: the previous one applies again after."""
    global _PROCESS_WIDE
    previous = _PROCESS_WIDE
    if guard is not None:
        _PROCESS_WIDE = guard
    try:
        yield
    finally:
        _PROCESS_WIDE = previous


def _reconstructed(
    reconstruct: Callable[..., Any], x: Any, memo: Any, func: Any, args: Any, *rest: Any, **kw: Any
) -> Any:
    """`copy`'s rebuilding of an object from what its reducer returned (`__reduce_ex__`: a callable, its arguments,
    and state to write into the result): while guarded code runs, the state is written only into a new object of
    the copied one's class, never into whatever the callable returns (a module: `json`'s namespace patched). The
    code may define reducers in classes it builds with `type()` or `dataclasses.make_dataclass`, where
    `__build_class__` does not see them."""
    if any(part is not None for part in rest[:3]) and (_WATCHED or _PROCESS_WIDE is not None):
        _THREAD.busy = True
        try:
            guard = _caller(sys._getframe(1))[0] or getattr(_THREAD, "carried", None)
        finally:
            _THREAD.busy = False
        if guard is not None:
            made = func(*args)
            if not isinstance(made, type(x)) or isinstance(made, (type, types.ModuleType)):
                raise guard.rules.refusal(
                    "attribute",
                    f"copying a {type(x).__name__} whose reducer rebuilt it as {type(made).__name__!r}",
                    "the copy protocol writes the object's state into what its reducer returns",
                )
            return reconstruct(x, memo, lambda *_: made, args, *rest, **kw)
    return reconstruct(x, memo, func, args, *rest, **kw)


def _started(starter: Callable[..., Any], function: Callable[..., Any], *rest: Any, **options: Any) -> Any:
    """`threading`'s thread starter: a thread started while guarded code is on the stack (a `Thread` or `Timer`
    of the code, an executor's worker, an event loop's default executor) carries that code's guard for its whole
    life, so what it runs (a C function such as `io.open`, a callback after the execution returned) is checked as
    the code's. The host's threads (started by host code, tools and host APIs) carry none."""
    guard = None
    if (_WATCHED or _PROCESS_WIDE is not None) and not _HOST_CODE.get():
        guard = getattr(_THREAD, "carried", None)
        if guard is None:
            _THREAD.busy = True
            try:
                found, _, host_api, _ = _caller(sys._getframe(1))
            finally:
                _THREAD.busy = False
            guard = None if host_api or found is _PROCESS_WIDE else found
    if guard is None:
        return starter(function, *rest, **options)

    def carrying(*inner: Any, **named: Any) -> Any:
        _THREAD.carried = guard
        return function(*inner, **named)

    return starter(carrying, *rest, **options)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED and _PROCESS_WIDE is None:
        return
    if event not in ANY_CALLER and event not in FROM_THE_CODE and event not in _OTHER_EVENTS:
        return
    if _HOST_CODE.get() or getattr(_THREAD, "busy", False):
        return
    _THREAD.busy = True
    try:
        if event in _NEAREST_ONLY:
            # Refused only when the code itself raises it (`check_event`): one look at the nearest frame, not a walk
            # of the stack, for the host's own imports, audited reads (logging's `f_code`, DSPy's caller check) …
            guard = _code_guard_at(sys._getframe(1))
            if guard is not None:
                check_event(guard, event, args, True, False)
            return
        guard, from_the_code, host_api, library = _caller(sys._getframe(1))
        if guard is None:  # no frame of guarded code: a thread that code started (running a C function …)?
            guard = getattr(_THREAD, "carried", None)
    finally:
        _THREAD.busy = False
    if guard is not None:
        check_event(guard, event, args, from_the_code, host_api, library)


_OTHER_EVENTS = frozenset({"open", "import", "object.__getattr__", "object.__setattr__", "object.__delattr__"})
# The events `check_event` refuses only when the nearest frame (past the import machinery) is the code's.
_NEAREST_ONLY = frozenset((_OTHER_EVENTS | FROM_THE_CODE.keys()) - {"open", "compile"} - ANY_CALLER.keys())


def _code_guard_at(frame: types.FrameType | None) -> RuntimeGuard | None:
    """The guard of the code whose frame is the nearest past the import machinery, else `None` (as `_caller`
    finds the code's frame when it is the nearest)."""
    while frame is not None:
        namespace = frame.f_globals
        ref = _WATCHED.get(identity(namespace))
        guard = ref() if ref is not None else None
        if guard is not None and guard.namespace is namespace:
            return guard
        module = namespace.get("__name__")
        if not (isinstance(module, str) and module.startswith("importlib")):
            return None
        frame = frame.f_back
    return None


def _caller(frame: types.FrameType | None) -> tuple[RuntimeGuard | None, bool, bool, str]:
    """The guard whose code is on this stack (else the process-wide one), whether the nearest Python frame (past
    the import machinery) is that code, whether a host API's frame is in between, and the module of the nearest
    Python frame when it is not the code's (`""` when it is)."""
    if _PROCESS_WIDE is None and not _carried() and not _holds_code(frame):
        # The host's own event (its `compile()` or `open()`), no code on the stack: nothing applies, so the frames'
        # modules are not looked at (a host API's check reads each frame's code and file).
        return None, False, False, ""
    nearest, host_api, library = True, False, ""
    while frame is not None:
        namespace = frame.f_globals
        ref = _WATCHED.get(identity(namespace))
        guard = ref() if ref is not None else None
        if guard is not None and guard.namespace is namespace:
            return guard, nearest, host_api, library
        module = namespace.get("__name__")
        module = module if isinstance(module, str) else ""
        if not module.startswith("importlib") and nearest:
            nearest, library = False, module or "?"
        if module.partition(".")[0] in HOST_APIS and _host_api_frame(frame, module):
            host_api = True
        frame = frame.f_back
    return _PROCESS_WIDE, False, host_api, library if _carried() else ""


def _carried() -> bool:
    return getattr(_THREAD, "carried", None) is not None


def _holds_code(frame: types.FrameType | None) -> bool:
    """Whether a frame of a watched namespace is on this stack (one dictionary test a frame)."""
    while frame is not None:
        if identity(frame.f_globals) in _WATCHED:
            return True
        frame = frame.f_back
    return False


def _host_api_frame(frame: types.FrameType, module: str) -> bool:
    """Whether `frame` runs a host API's own code: its globals are the module's and its code comes from the
    package's files. (Code can give its classes `__module__ = "dspy"`, and `dataclasses` then compiles their
    `__init__` with that module's globals: a frame of code the code wrote, which must not pass for the host's.)"""
    loaded = sys.modules.get(module)
    if loaded is None or getattr(loaded, "__dict__", None) is not frame.f_globals:
        return False
    top = sys.modules.get(module.partition(".")[0])
    where = getattr(top, "__file__", None)
    if not isinstance(where, str):
        return False
    # (frame.f_code raises an audit event of its own: the hook is `busy` meanwhile and lets it through.)
    return frame.f_code.co_filename.startswith(os.path.dirname(where) + os.sep)


__all__ = [
    "ANY_CALLER",
    "FROM_THE_CODE",
    "HOST_APIS",
    "check_event",
    "check_library_compile",
    "every_thread",
    "host_code",
    "install_hook",
    "watch",
]
