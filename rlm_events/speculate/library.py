"""The library functions the shadow planner knows to be side-effect free, and how it names them.

LM-written code times and formats its work between its tool calls (`now = time.perf_counter` … `t0 = now()`,
`json.dumps(timings)`). A call the planner cannot follow is a *barrier*: it may change anything read after it.
Calls of the functions in `SIDE_EFFECT_FREE` are not barriers: they read their arguments and the clock, and
change nothing the code or a tool can see afterwards (their results are unknown to the planner all the same).

The planner knows a library function only through a name the code itself bound by an `import` statement (or an
alias of one, `now = time.perf_counter`): a `Library` value, never a REPL object, so no rebinding in the REPL can
make an unknown callable pass for one of these.
"""

from __future__ import annotations

from .._ast import Unknown


class Library(Unknown):
    """What a name bound by the code's `import` holds: the dotted `path` of a module or of one of its members
    (`time`, `time.perf_counter`). Unknown as a value; known only by its path when it is called."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def __repr__(self) -> str:
        return f"Library({self.path!r})"


def _members(module: str, names: str) -> frozenset[str]:
    return frozenset(f"{module}.{name}" for name in names.split())


SIDE_EFFECT_FREE: frozenset[str] = (
    # the clocks, and formatting times: they read the clock, and change nothing
    _members(
        "time",
        "perf_counter perf_counter_ns monotonic monotonic_ns time time_ns process_time process_time_ns "
        "thread_time thread_time_ns gmtime localtime strftime strptime asctime ctime mktime",
    )
    | _members("datetime.datetime", "now utcnow today fromtimestamp fromisoformat strptime")
    | _members("datetime.date", "today fromtimestamp fromisoformat")
    | _members("datetime", "datetime date timedelta")
    # encoding, formatting, parsing: functions of their arguments
    | _members("json", "dumps loads")
    | _members(
        "math",
        "sqrt floor ceil trunc log log2 log10 log1p exp expm1 pow fabs isnan isinf isfinite isclose fsum prod "
        "comb perm factorial gcd lcm sin cos tan asin acos atan atan2 hypot dist degrees radians copysign fmod",
    )
    | _members("statistics", "mean fmean median median_low median_high mode stdev pstdev variance pvariance")
    | _members("re", "compile match search fullmatch findall finditer split sub subn escape")
    | _members("textwrap", "dedent indent shorten wrap fill")
    | _members("string", "capwords")
    | _members("os.path", "join basename dirname splitext split normpath isabs")
    | _members("hashlib", "md5 sha1 sha256 sha512 blake2b")
)
"""Dotted paths of the library functions whose calls are not barriers to the planner."""


def side_effect_free(path: str) -> bool:
    """Whether a call of the library function at `path` (`time.perf_counter`) changes nothing the code sees."""
    return path in SIDE_EFFECT_FREE


__all__ = ["SIDE_EFFECT_FREE", "Library", "side_effect_free"]
