"""What to do instead: the hint each refusal carries, in words meant for the LM (by module, member, dunder
attribute, and for the constructs the rules refuse)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._policy import GuardPolicy

# What to do instead of a refused module, by module (the first dotted component decides when not listed).
_SHELL = "there is no shell here: do the work in Python on your variables"
_FILES = "the data is already in your variables: work on them (io.StringIO(text) gives a file-like object)"
_NETWORK = "there is no network here: use llm_query(...) or the tools you were given"
_INTERNALS = "interpreter internals are off limits: use your variables and the allowed modules"
_CODE = "it runs strings as code: write the code itself in this step"
_IMPORTER = "it imports by name: use an import statement with an allowed module"
_THREADS = "use concurrent.futures.ThreadPoolExecutor in a with block"
_PICKLE = "use json for serialising data"
MODULE_HINTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "os",
            "posix",
            "nt",
            "subprocess",
            "_posixsubprocess",
            "pty",
            "shutil",
            "signal",
            "resource",
            "multiprocessing",
            "webbrowser",
            "platform",
            "pwd",
            "grp",
            "getpass",
        ],
        _SHELL,
    ),
    **dict.fromkeys(
        [
            "pathlib",
            "glob",
            "tempfile",
            "fileinput",
            "linecache",
            "filecmp",
            "mmap",
            "sqlite3",
            "dbm",
            "shelve",
            "_io",
            "os.path",
        ],
        _FILES,
    ),
    **dict.fromkeys(
        [
            "socket",
            "_socket",
            "ssl",
            "http",
            "urllib",
            "urllib3",
            "requests",
            "httpx",
            "aiohttp",
            "ftplib",
            "smtplib",
            "imaplib",
            "poplib",
            "nntplib",
            "telnetlib",
            "xmlrpc",
            "socketserver",
            "asyncio.streams",
            "dns",
        ],
        _NETWORK,
    ),
    **dict.fromkeys(
        [
            "sys",
            "builtins",
            "inspect",
            "gc",
            "ctypes",
            "_ctypes",
            "weakref",
            "dis",
            "traceback",
            "_imp",
            "faulthandler",
        ],
        _INTERNALS,
    ),
    **dict.fromkeys(
        ["code", "codeop", "timeit", "pdb", "bdb", "cProfile", "profile", "trace", "doctest", "runpy"], _CODE
    ),
    **dict.fromkeys(
        ["importlib", "pydoc", "pkgutil", "zipimport", "site", "pip", "ensurepip", "logging.config"], _IMPORTER
    ),
    **dict.fromkeys(["threading", "_thread"], _THREADS),
    **dict.fromkeys(["pickle", "_pickle", "marshal", "copyreg", "dill", "cloudpickle"], _PICKLE),
    "logging": "print() what you want to record",
    "asyncio": "use concurrent.futures.ThreadPoolExecutor in a with block",
    **dict.fromkeys(["zipfile", "tarfile", "xml"], "work on the data you were given (strings and bytes in variables)"),
    **dict.fromkeys(
        ["numpy", "pandas"],
        "use statistics, math, csv and collections (or a policy that allows it: .allow(modules={...}))",
    ),
}

GETATTR_HINT = (
    "spell the attribute names out: obj.name, getattr(obj, 'name'), or loop over a literal list "
    "(for f in ('a', 'b'): getattr(obj, f)); for a dataclass use dataclasses.asdict(obj)[key]"
)
DICT_HINT = (
    "use dataclasses.asdict(obj) or name the fields; obj.__dict__ is allowed on instances of classes defined in the "
    "same step (p = Point(...); p.__dict__)"
)
PRIVATE_HINT = "use the object's public API (private attributes are allowed only on self and on your own classes)"
STRING_NAME_HINT = "strings cannot carry attribute names past the guard; write the code plainly"
FORMAT_FIELD_HINT = "format values you computed: f'{value}', or '{}'.format(value)"
OPEN_HINT = "the data is already in your variables: work on them (io.StringIO(text) for a file-like object)"
ANNOTATION_HINT = "write annotations as expressions (x: int), not as strings"
DENIED_METHOD_HINTS = {
    "write": "writing files is not possible here; keep results in variables and SUBMIT them",
    "process": "there is no shell or subprocess here: do the work in Python",
    "network": "there is no network here: use llm_query(...) or the tools you were given",
}


def module_hint(name: str, policy: GuardPolicy) -> str:
    """What to use instead of the refused module `name`."""
    inside = sorted(m for m in policy.modules if m.startswith(f"{name}."))
    if inside:  # `import os` refused, `import os.path` allowed
        return f"import the allowed part by its full name ({', '.join(f'import {m}' for m in inside[:3])})"
    for key in (name, name.split(".")[0]):
        if key in MODULE_HINTS:
            return MODULE_HINTS[key]
    if name.split(".")[-1].startswith("_"):
        return "C modules and private modules are off limits: use the allowed modules"
    sample = [
        m for m in ("re", "json", "math", "statistics", "collections", "itertools", "datetime") if m in policy.modules
    ]
    return f"use the allowed modules ({', '.join(sample)}, …) and your variables" if sample else ""


def dunder_hint(attr: str) -> str:
    """What to use instead of the refused dunder attribute `attr`."""
    if attr in ("__bases__", "__base__", "__mro__", "__subclasses__"):
        return "use isinstance()/issubclass() to ask about types"
    if attr in ("__globals__", "__builtins__", "__code__", "__closure__", "__func__", "__self__"):
        return "use your variables and functions by name"
    if attr in ("__getattribute__", "__getattr__", "__setattr__", "__delattr__"):
        return "access attributes by name: obj.name"
    if attr == "__annotations__":
        return "use dataclasses.fields(obj) to list a dataclass's fields"
    return (
        "use the object's public API; of the dunder attributes only __class__, __name__, __dict__ (own objects) and "
        "the operator methods are allowed"
    )


def member_hint(path: str) -> str:
    """What to use instead of the denied member `path` of an allowed module."""
    hints = {
        "typing.get_type_hints": "it evaluates string annotations as code; use dataclasses.fields(cls) for fields",
        "string.Formatter": "use f-strings or str.format on a literal",
        "codecs.open": "use your variables; io.StringIO(text) gives a file-like object",
        "logging.FileHandler": "log with print() instead",
        "concurrent.futures.ProcessPoolExecutor": "use concurrent.futures.ThreadPoolExecutor",
        "contextlib.chdir": "work on your variables, not the file system",
    }
    if path in hints:
        return hints[path]
    if path.startswith("asyncio."):
        return "asyncio may run coroutines (asyncio.run, gather, sleep) but not open processes, sockets or loops"
    if path.startswith(("xml.etree.ElementTree.", "tarfile.", "zipfile.")):
        return "parse data you already have: ElementTree.fromstring(text), zipfile.ZipFile(io.BytesIO(data))"
    if path.startswith("threading."):
        return "threads may not trace or profile the interpreter"
    return "it reaches files, processes, the network or code execution"


__all__ = [
    "ANNOTATION_HINT",
    "DENIED_METHOD_HINTS",
    "DICT_HINT",
    "FORMAT_FIELD_HINT",
    "GETATTR_HINT",
    "MODULE_HINTS",
    "OPEN_HINT",
    "PRIVATE_HINT",
    "STRING_NAME_HINT",
    "dunder_hint",
    "member_hint",
    "module_hint",
]
