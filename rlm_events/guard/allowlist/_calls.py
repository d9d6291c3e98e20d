"""Calls: the built-ins code may use, and the functions whose arguments the guard checks (openers and their modes,
writing keywords, functions that take attribute names)."""

from __future__ import annotations

import builtins

# --- calls whose arguments are checked -------------------------------------------------------------------------------

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
# Library functions that read or set the attributes named by an argument: (position, keyword) of each such argument.
# The names must be literals, and are checked like `obj.name` (the library does `getattr(obj, name)` for the code).
ATTRIBUTE_NAME_ARGUMENTS: dict[str, tuple[tuple[int, str], ...]] = {
    "functools.update_wrapper": ((2, "assigned"), (3, "updated")),
    "functools.wraps": ((1, "assigned"), (2, "updated")),
}
# Functions that format with a style: (position of the format, its keyword, position of `style`). With the "{"
# style, fields traverse attributes ("{name.__class__}"), so the format must be a string the guard can see.
FORMAT_STYLES: dict[str, tuple[int, str, int]] = {
    "logging.Formatter": (0, "fmt", 2),
    "logging.basicConfig": (99, "format", 99),
    "logging.StrFormatStyle": (0, "fmt", 99),
}
# Functions that evaluate annotations (strings in them are run as code): only for the code's own functions and
# classes whose annotations are visible types.
ANNOTATION_EVALUATORS = frozenset({"typing.get_type_hints"})
# Readers that open a path or URL when given one: allowed only on an in-memory buffer (io.StringIO / io.BytesIO),
# by the keyword that names their source.
BUFFER_READERS: dict[str, str] = {
    f"pandas.read_{kind}": "filepath_or_buffer"
    for kind in [
        "csv",
        "table",
        "fwf",
        "json",
        "excel",
        "html",
        "xml",
        "parquet",
        "feather",
        "orc",
        "stata",
        "sas",
        "spss",
    ]
} | {"numpy.loadtxt": "fname", "numpy.genfromtxt": "fname"}
# Methods that return text when called without a destination, and write a file when given one (pandas' to_csv,
# numpy's ndarray.dump): refused with a positional argument or their destination keyword.
PATH_WRITERS: dict[str, str] = {
    "to_csv": "path_or_buf",
    "to_json": "path_or_buf",
    "to_html": "buf",
    "to_latex": "buf",
    "to_markdown": "buf",
    "to_string": "buf",
    "to_xml": "path_or_buffer",
    "dump": "file",
}
# Members whose arguments are checked may only be called directly: as a value (functools.partial(gzip.open, p, "wb"),
# map(...)) they could be called later with anything.
CALL_ONLY_MEMBERS = (
    NAME_TAKING
    | (frozenset(OPENERS) - {"open"})
    | frozenset(WRITING_KEYWORDS)
    | frozenset(ATTRIBUTE_NAME_ARGUMENTS)
    | frozenset(FORMAT_STYLES)
    | ANNOTATION_EVALUATORS
    | frozenset(BUFFER_READERS)
    | {"dataclasses.make_dataclass"}
)
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
