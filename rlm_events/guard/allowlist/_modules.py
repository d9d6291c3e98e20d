"""Modules: which ones code may import, which of their members it may reach, and which module names it is assumed
to mean without an import."""

from __future__ import annotations

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
        "os.path",  # only the members that compute paths (STRICT_ONLY_MEMBERS), none that touch the file system
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
        "sys",  # only version facts, sizes and the standard streams (STRICT_ONLY_MEMBERS)
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

# os.path: the functions that compute paths from strings (none that looks at the file system or the environment).
_OS_PATH_MEMBERS = (
    "join",
    "basename",
    "dirname",
    "split",
    "splitext",
    "splitdrive",
    "normpath",
    "normcase",
    "isabs",
    "commonprefix",
    "commonpath",
    "sep",
    "altsep",
    "extsep",
    "pathsep",
    "curdir",
    "pardir",
)
# sys: facts about the interpreter's version and sizes, and the standard streams (print(..., file=sys.stderr)).
_SYS_MEMBERS = (
    "version_info",
    "version",
    "hexversion",
    "implementation",
    "platform",
    "byteorder",
    "maxsize",
    "maxunicode",
    "float_info",
    "int_info",
    "hash_info",
    "getsizeof",
    "getrecursionlimit",
    "getdefaultencoding",
    "stdout",
    "stderr",
)

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
        *(f"os.path.{name}" for name in _OS_PATH_MEMBERS),
        *(f"sys.{name}" for name in _SYS_MEMBERS),
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

# Analysis libraries allowed by GuardPolicy.data_analysis() (and by .allow(modules=...)): their members that read or
# write files, unpickle, reach the network or run strings are refused wherever the libraries are allowed. Readers of
# text formats (pandas.read_csv, numpy.loadtxt …) are allowed on io.StringIO/BytesIO only (see BUFFER_READERS).
DATA_MODULES = frozenset(
    {"numpy", "numpy.linalg", "numpy.random", "numpy.fft", "numpy.ma", "numpy.polynomial", "numpy.typing"}
    | {"pandas", "pandas.api", "pandas.api.types", "pandas.errors", "pandas.tseries", "pandas.tseries.offsets"}
)
DATA_DENIED_MEMBERS = frozenset(
    {
        *(f"numpy.{name}" for name in ("save", "savez", "savez_compressed", "savetxt", "load", "fromfile", "memmap")),
        *(f"numpy.{name}" for name in ("fromregex", "DataSource", "lib", "ctypeslib", "f2py", "distutils", "testing")),
        *(f"numpy.{name}" for name in ("core", "show_config", "get_include")),
        *(f"pandas.{name}" for name in ("read_pickle", "to_pickle", "read_sql", "read_sql_query", "read_sql_table")),
        *(f"pandas.{name}" for name in ("read_gbq", "read_clipboard", "read_hdf", "HDFStore", "ExcelWriter", "eval")),
        *(f"pandas.{name}" for name in ("io", "util", "show_versions", "options", "set_option")),
    }
)

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
        "warnings.formatwarning",  # these three read any file's lines (linecache) to show them
        "warnings.showwarning",
        "warnings.warn_explicit",
        "zoneinfo.reset_tzpath",  # then ZoneInfo(key) reads files under any directory
        "xml.etree.ElementTree.ElementTree",
        "xml.etree.ElementTree.iterparse",
        "xml.etree.ElementTree.parse",
        "zipfile.PyZipFile",
        "zipfile.main",
    }
    | DATA_DENIED_MEMBERS
)

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
