"""The data behind :meth:`GuardPolicy.default` and :meth:`GuardPolicy.strict`: what generated code may reach.

Everything here is an allowlist except ``DENIED_MEMBERS`` (functions inside allowed modules that run strings as
code, write files or reach the network), ``FRAME_ATTRIBUTES`` (public names of frame, code, generator and traceback
internals) and ``DENIED_METHODS`` (method names that write files or start processes/connections on any object).
What is not listed is refused: a module that is not in ``*_MODULES``, a member of a module that is private,
module-valued (``logging.os``) or outside the module's ``ONLY_MEMBERS``, a built-in outside ``*_BUILTINS``, a dunder
attribute outside ``DUNDERS``, a private attribute outside ``PRIVATE`` (except on the code's own objects).
"""

from __future__ import annotations

import builtins

# --- modules ---------------------------------------------------------------------------------------------------------

# Pure data processing: no files, processes, network or interpreter internals behind any public member.
STRICT_MODULES = frozenset(
    {
        "__future__",
        "abc",
        "ast",
        "base64",
        "binascii",
        "bisect",
        "bz2",
        "calendar",
        "cmath",
        "codecs",
        "collections",
        "collections.abc",
        "colorsys",
        "concurrent.futures",
        "contextlib",
        "copy",
        "csv",
        "dataclasses",
        "datetime",
        "decimal",
        "difflib",
        "dspy",
        "enum",
        "fnmatch",
        "fractions",
        "functools",
        "graphlib",
        "gzip",
        "hashlib",
        "heapq",
        "hmac",
        "html",
        "html.entities",
        "html.parser",
        "io",
        "ipaddress",
        "itertools",
        "json",
        "keyword",
        "lzma",
        "math",
        "numbers",
        "operator",
        "pprint",
        "queue",
        "random",
        "re",
        "reprlib",
        "secrets",
        "shlex",
        "statistics",
        "string",
        "struct",
        "textwrap",
        "time",
        "types",
        "typing",
        "unicodedata",
        "urllib.parse",
        "uuid",
        "warnings",
        "zlib",
        "zoneinfo",
    }
)
# default adds modules whose risky members are denied one by one below (and file reads, see DEFAULT_BUILTINS).
DEFAULT_MODULES = STRICT_MODULES | {"asyncio", "logging", "tarfile", "threading", "xml.etree.ElementTree", "zipfile"}

# Modules whose members are allowlisted one by one: "module.member". Both presets.
STRICT_ONLY_MEMBERS = frozenset(
    {
        "__future__.annotations",
        "ast.literal_eval",
        "bz2.BZ2Compressor",
        "bz2.BZ2Decompressor",
        "bz2.compress",
        "bz2.decompress",
        "dspy.ChainOfThought",
        "dspy.Example",
        "dspy.InputField",
        "dspy.OutputField",
        "dspy.Predict",
        "dspy.Prediction",
        "dspy.RLM",
        "dspy.ReAct",
        "dspy.ReActV2",
        "dspy.Signature",
        "gzip.BadGzipFile",
        "gzip.compress",
        "gzip.decompress",
        "io.BufferedIOBase",
        "io.BytesIO",
        "io.DEFAULT_BUFFER_SIZE",
        "io.IOBase",
        "io.RawIOBase",
        "io.SEEK_CUR",
        "io.SEEK_END",
        "io.SEEK_SET",
        "io.StringIO",
        "io.TextIOBase",
        "io.TextIOWrapper",
        "io.UnsupportedOperation",
        "lzma.LZMAError",
        "lzma.compress",
        "lzma.decompress",
        "types.EllipsisType",
        "types.GenericAlias",
        "types.MappingProxyType",
        "types.NoneType",
        "types.NotImplementedType",
        "types.SimpleNamespace",
        "types.UnionType",
    }
)
# default lets code open files for reading, through these too (their mode is checked like open()'s).
DEFAULT_ONLY_MEMBERS = STRICT_ONLY_MEMBERS | {
    "bz2.BZ2File",
    "bz2.open",
    "gzip.GzipFile",
    "gzip.open",
    "io.open",
    "lzma.LZMAFile",
    "lzma.open",
}

# Members of allowed modules that are refused: they run strings as code, resolve names, write or connect.
DENIED_MEMBERS = frozenset(
    {
        "asyncio.AbstractEventLoop",
        "asyncio.AbstractEventLoopPolicy",
        "asyncio.BaseEventLoop",
        "asyncio.DefaultEventLoopPolicy",
        "asyncio.SelectorEventLoop",
        "asyncio.create_subprocess_exec",
        "asyncio.create_subprocess_shell",
        "asyncio.get_event_loop",
        "asyncio.get_event_loop_policy",
        "asyncio.get_running_loop",
        "asyncio.new_event_loop",
        "asyncio.open_connection",
        "asyncio.open_unix_connection",
        "asyncio.set_event_loop",
        "asyncio.set_event_loop_policy",
        "asyncio.start_server",
        "asyncio.start_unix_server",
        "codecs.EncodedFile",
        "codecs.open",
        "concurrent.futures.ProcessPoolExecutor",
        "contextlib.chdir",
        "logging.FileHandler",
        "logging.setLogRecordFactory",
        "logging.setLoggerClass",
        "string.Formatter",
        "tarfile.main",
        "threading.excepthook",
        "threading.setprofile",
        "threading.setprofile_all_threads",
        "threading.settrace",
        "threading.settrace_all_threads",
        "typing.ForwardRef",  # .evaluate() (3.14) runs the string
        "typing.evaluate_forward_ref",
        "typing.get_type_hints",
        "xml.etree.ElementTree.ElementTree",
        "xml.etree.ElementTree.iterparse",
        "xml.etree.ElementTree.parse",
        "zipfile.PyZipFile",
        "zipfile.main",
    }
)

# Functions that open a file: (position of the mode argument, default mode). Checked in every policy that allows
# them: a mode that writes, a mode that is not a literal, ``**kwargs`` or an ``opener=`` are refused.
OPENERS: dict[str, int] = {
    "open": 1,
    "io.open": 1,
    "gzip.open": 1,
    "gzip.GzipFile": 1,
    "bz2.open": 1,
    "bz2.BZ2File": 1,
    "lzma.open": 1,
    "lzma.LZMAFile": 1,
    "zipfile.ZipFile": 1,
    "tarfile.open": 1,
    "tarfile.TarFile": 1,
    "tarfile.TarFile.open": 1,
    "tarfile.TarFile.taropen": 1,
    "tarfile.TarFile.gzopen": 1,
    "tarfile.TarFile.bz2open": 1,
    "tarfile.TarFile.xzopen": 1,
}
# Keyword arguments that make an allowed function write a file.
WRITING_KEYWORDS: dict[str, frozenset[str]] = {
    "logging.basicConfig": frozenset({"filename", "filemode", "handlers", "stream"}),
}
# Members that may only be called directly with literal attribute names (never passed around as values).
NAME_TAKING = frozenset({"operator.attrgetter", "operator.methodcaller"})
# Members whose arguments are checked may only be called directly: as a value (functools.partial(gzip.open, p, "wb"),
# map(...)) they could be called later with anything.
CALL_ONLY_MEMBERS = NAME_TAKING | (frozenset(OPENERS) - {"open"}) | frozenset(WRITING_KEYWORDS)
# Command-line entry points of modules (zipfile.main(["-e", ...]) extracts, base64.main() reads files).
ENTRY_POINTS = frozenset({"main", "test"})
# Calls that return an archive object (its .extract() writes files).
ARCHIVES = frozenset(
    {
        "zipfile.ZipFile",
        "tarfile.open",
        "tarfile.TarFile",
        *(f"tarfile.TarFile.{m}" for m in ("open", "taropen", "gzopen", "bz2open", "xzopen")),
    }
)

# --- built-ins -------------------------------------------------------------------------------------------------------

_EXCEPTIONS = frozenset(
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), BaseException)
)
STRICT_BUILTINS = _EXCEPTIONS | {
    "Ellipsis",
    "NotImplemented",
    "__debug__",
    "__doc__",
    "__name__",
    "abs",
    "aiter",
    "all",
    "anext",
    "any",
    "ascii",
    "bin",
    "bool",
    "bytearray",
    "bytes",
    "callable",
    "chr",
    "classmethod",
    "complex",
    "delattr",
    "dict",
    "dir",
    "divmod",
    "enumerate",
    "filter",
    "float",
    "format",
    "frozenset",
    "getattr",
    "hasattr",
    "hash",
    "hex",
    "id",
    "int",
    "isinstance",
    "issubclass",
    "iter",
    "len",
    "list",
    "map",
    "max",
    "memoryview",
    "min",
    "next",
    "object",
    "oct",
    "ord",
    "pow",
    "print",
    "property",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "setattr",
    "slice",
    "sorted",
    "staticmethod",
    "str",
    "sum",
    "super",
    "tuple",
    "type",
    "vars",
    "zip",
}
DEFAULT_BUILTINS = STRICT_BUILTINS | {"open"}  # read-only: open(path), open(path, "rb")
# Built-ins that may only be called directly (a reference could be called later with anything).
CALL_ONLY_BUILTINS = frozenset({"getattr", "setattr", "delattr", "vars", "open"})
# Why a built-in is refused, and what to do instead.
BUILTIN_HINTS: dict[str, str] = {
    "eval": "compute the value in plain Python; to parse a literal use ast.literal_eval(text)",
    "exec": "write the code itself in this step",
    "compile": "write the code itself in this step",
    "__import__": "use an import statement with an allowed module",
    "__build_class__": "use a class statement",
    "globals": "use your variables by name",
    "locals": "use your variables by name",
    "breakpoint": "print() what you want to inspect",
    "help": "print() what you want to inspect",
    "input": "the REPL has no stdin; use your input variables",
    "exit": "call SUBMIT(...) when you are done",
    "quit": "call SUBMIT(...) when you are done",
    "open": "work on the variables you were given (the data is already loaded)",
}

# --- attributes ------------------------------------------------------------------------------------------------------

# Dunder attributes code may access on any object: naming, construction and the operator protocols. Everything that
# leads to classes' relatives, functions' globals, frames or loaders (__bases__, __subclasses__, __mro__,
# __globals__, __code__, __closure__, __func__, __self__, __builtins__, __getattribute__, __reduce_ex__, __loader__,
# __spec__, __traceback__, __annotations__, __wrapped__ …) is not listed, so it is refused.
DUNDERS = frozenset(
    {
        "__class__",
        "__name__",
        "__qualname__",
        "__module__",
        "__doc__",
        "__dict__",  # only on the code's own objects, see _policy_check
        "__init__",
        "__new__",
        "__post_init__",
        "__repr__",
        "__str__",
        "__format__",
        "__bytes__",
        "__hash__",
        "__bool__",
        "__len__",
        "__length_hint__",
        "__iter__",
        "__next__",
        "__reversed__",
        "__contains__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__missing__",
        "__enter__",
        "__exit__",
        "__aenter__",
        "__aexit__",
        "__aiter__",
        "__anext__",
        "__await__",
        "__call__",
        "__copy__",
        "__deepcopy__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__neg__",
        "__pos__",
        "__abs__",
        "__invert__",
        "__complex__",
        "__int__",
        "__float__",
        "__index__",
        "__round__",
        "__trunc__",
        "__floor__",
        "__ceil__",
        "__slots__",
        "__match_args__",
        "__all__",
        "__version__",
    }
    | {
        f"__{prefix}{op}__"
        for op in (
            [
                "add",
                "sub",
                "mul",
                "matmul",
                "truediv",
                "floordiv",
                "mod",
                "divmod",
                "pow",
                "lshift",
                "rshift",
                "and",
                "xor",
                "or",
            ]
        )
        for prefix in ("", "r", "i")
    }
)
# Dunder strings that may appear as literals besides DUNDERS.
DUNDER_STRINGS = frozenset({"__main__"})
# Private attributes that are public API: namedtuple's.
PRIVATE = frozenset({"_asdict", "_replace", "_fields", "_field_defaults", "_make"})
# Public attribute names of frames, code objects, generators, coroutines and tracebacks.
FRAME_ATTRIBUTES = frozenset(
    {
        "f_back",
        "f_builtins",
        "f_code",
        "f_globals",
        "f_lasti",
        "f_lineno",
        "f_locals",
        "f_trace",
        "f_trace_lines",
        "f_trace_opcodes",
        "gi_code",
        "gi_frame",
        "gi_running",
        "gi_suspended",
        "gi_yieldfrom",
        "cr_await",
        "cr_code",
        "cr_frame",
        "cr_origin",
        "cr_running",
        "cr_suspended",
        "ag_await",
        "ag_code",
        "ag_frame",
        "ag_running",
        "tb_frame",
        "tb_lasti",
        "tb_lineno",
        "tb_next",
        "co_code",
        "co_consts",
        "co_names",
        "co_varnames",
        "co_cellvars",
        "co_freevars",
        "co_filename",
        "co_name",
        "co_qualname",
        "co_flags",
        "co_lines",
        "co_positions",
        "co_linetable",
        "co_lnotab",
        "co_exceptiontable",
        "func_globals",
        "func_code",
    }
)
# Method names refused on any object (the guard cannot know the object's type): they write files outside open(),
# or start processes and connections from an event loop.
DENIED_METHODS: dict[str, str] = {
    "write_text": "write",
    "write_bytes": "write",
    "extractall": "write",
    "tofile": "write",
    "to_pickle": "write",
    "symlink_to": "write",
    "hardlink_to": "write",
    "makefile": "write",  # TarFile.makefile(tarinfo, path) and its siblings write files
    "makedir": "write",
    "makelink": "write",
    "makefifo": "write",
    "makedev": "write",
    "subprocess_exec": "process",
    "subprocess_shell": "process",
    "create_connection": "network",
    "create_server": "network",
    "create_datagram_endpoint": "network",
    "create_unix_connection": "network",
    "create_unix_server": "network",
    "connect_accepted_socket": "network",
    "sock_connect": "network",
    "connect_read_pipe": "process",
    "connect_write_pipe": "process",
}

# --- names the guard recognises without an import --------------------------------------------------------------------

# A bare name like these that the code does not bind is taken to be the module (left in the REPL by other code),
# so `os.system(...)` without `import os` is refused too. (Inputs and tools of the same name shadow them.)
RISKY_MODULE_NAMES = frozenset(
    {
        "_io",
        "_socket",
        "_thread",
        "asyncio",
        "builtins",
        "code",
        "codeop",
        "ctypes",
        "gc",
        "importlib",
        "inspect",
        "io",
        "marshal",
        "multiprocessing",
        "nt",
        "os",
        "pathlib",
        "pickle",
        "posix",
        "pty",
        "requests",
        "resource",
        "shutil",
        "signal",
        "socket",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "urllib",
    }
)

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
