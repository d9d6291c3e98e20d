"""The data behind [`default()`][rlm_events.guard.GuardPolicy.default] and
[`strict()`][rlm_events.guard.GuardPolicy.strict]:
what generated code may reach.

Everything here is an allowlist except `DENIED_MEMBERS` (functions inside allowed modules that run strings as
code, write files or reach the network), `FRAME_ATTRIBUTES` (public names of frame, code, generator and traceback
internals) and `DENIED_METHODS` (method names that write files or start processes/connections on any object).
What is not listed is refused: a module that is not in `*_MODULES`, a member of a module that is private,
module-valued (`logging.os`) or outside the module's `ONLY_MEMBERS`, a built-in outside `*_BUILTINS`, a dunder
attribute outside `DUNDERS`, a private attribute outside `PRIVATE` (except on the code's own objects).

The tables are plain Python (typed, commented entry by entry, importable without a loader), split by what they
govern: modules, calls and built-ins, attributes.
"""

from ._attributes import DENIED_METHODS, DUNDER_STRINGS, DUNDERS, FRAME_ATTRIBUTES, PRIVATE
from ._calls import (
    ANNOTATION_EVALUATORS,
    ARCHIVES,
    ATTRIBUTE_NAME_ARGUMENTS,
    BUFFER_READERS,
    BUILTIN_HINTS,
    CALL_ONLY_BUILTINS,
    CALL_ONLY_MEMBERS,
    DEFAULT_BUILTINS,
    ENTRY_POINTS,
    FORMAT_STYLES,
    NAME_TAKING,
    OPENERS,
    PATH_WRITERS,
    STRICT_BUILTINS,
    WRITING_KEYWORDS,
)
from ._modules import (
    DATA_MODULES,
    DEFAULT_MODULES,
    DEFAULT_ONLY_MEMBERS,
    DENIED_MEMBERS,
    RISKY_MODULE_NAMES,
    STRICT_MODULES,
    STRICT_ONLY_MEMBERS,
)

__all__ = [
    "ANNOTATION_EVALUATORS",
    "ARCHIVES",
    "ATTRIBUTE_NAME_ARGUMENTS",
    "BUFFER_READERS",
    "BUILTIN_HINTS",
    "CALL_ONLY_BUILTINS",
    "CALL_ONLY_MEMBERS",
    "DATA_MODULES",
    "DEFAULT_BUILTINS",
    "DEFAULT_MODULES",
    "DEFAULT_ONLY_MEMBERS",
    "DENIED_MEMBERS",
    "DENIED_METHODS",
    "DUNDERS",
    "DUNDER_STRINGS",
    "ENTRY_POINTS",
    "FORMAT_STYLES",
    "FRAME_ATTRIBUTES",
    "NAME_TAKING",
    "OPENERS",
    "PATH_WRITERS",
    "PRIVATE",
    "RISKY_MODULE_NAMES",
    "STRICT_BUILTINS",
    "STRICT_MODULES",
    "STRICT_ONLY_MEMBERS",
    "WRITING_KEYWORDS",
]
